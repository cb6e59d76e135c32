"""The first training steps of a config for several seeds: does each run learn, or stop learning?

    python results/first_steps.py --model=large --seeds=1-10 --steps=250      # from the project root

Builds the training graph as ptb_word_lm.py builds it (the same seed, so the same initial weights and dropout
masks, and the default rnn_mode and precision unless given) and trains on the start of ptb.train.txt (PTB_DATA,
default ../shared/data/ptb). Prints, for each seed, every --every steps: the window's loss per word, the mean
loss per word since the first step (the running train loss, whose exp is the perplexity the progress lines
print), the largest |value| of the carried state per layer (the cell state c for the LSTM, h otherwise) after
that step, and the largest after any step so far ("peak"). The data behind the stop-learning check of
ptb_word_lm.py (tools/guard.py, --max_cell_state).
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import configs  # noqa: E402
import reader  # noqa: E402
from model import PTBModel, dropout_seed  # noqa: E402
from tools.tf1 import tf  # noqa: E402


def seeds(text):
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def first_steps(data, config, seed, steps, every, rnn_mode, precision):
    with tf.Graph().as_default():
        tf.set_random_seed(seed)
        initializer = tf.random_uniform_initializer(-config.init_scale, config.init_scale)
        with tf.variable_scope("Model", initializer=initializer):
            m = PTBModel(True, config, config.batch_size, config.num_steps, rnn_mode, precision)
            seed_var = dropout_seed()
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            session.run(seed_var.assign(seed))
            m.assign_lr(session, config.learning_rate)
            state, total, start, peak = None, 0.0, time.time(), np.zeros(config.num_layers)
            for i, (x, y) in enumerate(reader.ptb_iterator(data.train, config.batch_size, config.num_steps)):
                if i == steps:
                    break
                feed = {m.input_data: x, m.targets: y}
                if state is not None:
                    feed[m.initial_state] = state
                cost, state, _ = session.run([m.cost, m.final_state, m.train_op], feed)
                loss = cost / config.num_steps
                total += loss
                peak = np.maximum(peak, np.abs(state[:, 0]).max(axis=(1, 2)))
                if (i + 1) % every == 0 or i + 1 == steps:
                    carried = " ".join(f"{np.abs(state[l, 0]).max():9.3f}" for l in range(config.num_layers))
                    peaks = " ".join(f"{p:9.3f}" for p in peak)
                    print(f"{config.name} seed {seed:3d} step {i + 1:4d} loss {loss:8.4f} mean {total / (i + 1):8.4f} "
                          f"max|state| per layer {carried} peak {peaks}   ({time.time() - start:.0f} s)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="large", choices=list(configs.CONFIGS))
    parser.add_argument("--seeds", type=seeds, default=seeds("1-10"), help="a seed, or a range like 1-10")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--cell", default="lstm", choices=configs.CELLS)
    parser.add_argument("--rnn_mode", default="fast")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    data = reader.load_ptb(os.environ.get("PTB_DATA", "../shared/data/ptb"))
    config = configs.get_config(args.model)
    config.vocab_size, config.cell, config.name = len(data.vocab), args.cell, args.model
    if args.cell != "lstm":
        config.name += "-" + args.cell
    print(f"# {config.name}: ln(vocabulary) = {math.log(config.vocab_size):.4f}, {args.rnn_mode}, {args.precision}",
          flush=True)
    for seed in args.seeds:
        first_steps(data, config, seed, args.steps, args.every, args.rnn_mode, args.precision)


if __name__ == "__main__":
    main()
