"""The large config's first training steps, one line per step: loss per word, gradient norm, largest |c|.

    python results/large_first_steps.py MODE STEPS [SEED]     # from the project root; MODE: fast, block, basic

Builds the training graph as ptb_word_lm.py does (same seed, same variable order, so the same initial
weights and dropout masks), saves the initial weights to /tmp/large_init_SEED.npz on its first run and
loads them on later ones, so that two modes start from the very same weights. A diagnostic kept with
its output (results/large-first-steps.txt): why --seed=1 of the large config stops learning.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import configs  # noqa: E402
import reader  # noqa: E402
from model import PTBModel, dropout_seed  # noqa: E402
from tools.tf1 import tf  # noqa: E402

mode, steps = sys.argv[1], int(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
data = reader.load_ptb(os.environ.get("PTB_DATA", "../shared/data/ptb"))
config = configs.get_config("large")
config.vocab_size = len(data.vocab)
init_file = f"/tmp/large_init_{seed}.npz"
with tf.Graph().as_default():
    tf.set_random_seed(seed)
    with tf.variable_scope("Model", initializer=tf.random_uniform_initializer(-config.init_scale, config.init_scale)):
        m = PTBModel(True, config, config.batch_size, config.num_steps, mode)
        seed_var = dropout_seed()
    session = tf.Session()
    session.run(tf.global_variables_initializer())
    session.run(seed_var.assign(seed))
    if os.path.exists(init_file):
        values = np.load(init_file)
        for v in tf.trainable_variables():
            v.load(values[v.op.name], session)
    else:
        np.savez(init_file, **{v.op.name: session.run(v) for v in tf.trainable_variables()})
    m.assign_lr(session, config.learning_rate)
    state = None
    for i, (x, y) in enumerate(reader.ptb_iterator(data.train, config.batch_size, config.num_steps)):
        if i == steps:
            break
        feed = {m.input_data: x, m.targets: y}
        if state is not None:
            feed[m.initial_state] = state
        start = time.time()
        cost, state, norm, _ = session.run([m.cost, m.final_state, m.grad_norm, m.train_op], feed)
        print(f"{mode} seed {seed} step {i + 1:3d} loss {cost / config.num_steps:8.4f} grad_norm {norm:10.3f} "
              f"max|c| layer 0 {np.abs(state[0, 0]).max():9.3f} layer 1 {np.abs(state[1, 0]).max():9.3f}", flush=True)
