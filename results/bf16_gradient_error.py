"""Which part of a bf16 training step rounds the update most? Restores a checkpoint of ptb_word_lm.py and, on
the same training windows (same weights, same dropout masks, the same LSTM state carried in), computes the
clipped gradient that SGD applies four ways: all in fp32 (the reference); --precision=bf16 as trained; bf16 only
in the softmax's matmuls (forward and gradient); bf16 only in the fast LSTM gradient's matmuls. Prints, for each
variable and in all, how far each one's gradient is from fp32's, ||g - g_fp32|| / ||g_fp32|| (the mean over the
windows), and how much of that error is noise, which SGD's many small steps average out, and how much is the
same window after window, which they add up.
Usage, from the project root: python results/bf16_gradient_error.py runs/medium-bf16 ../shared/data/ptb [windows]"""
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reader  # noqa: E402
from model import PTBModel, carry_state, dropout_seed  # noqa: E402
from tools import checkpoint, kernels, runfolder  # noqa: E402
from tools.tf1 import tf  # noqa: E402


class SoftmaxOnly(PTBModel):
    """bf16 in the softmax (precision bf16), the LSTM's gradient in fp32."""

    def lstm_layer(self, x, c, h, kernel, bias):
        return kernels.fast_block_lstm(x, c, h, kernel, bias, "fp32")


class LSTMGradientOnly(PTBModel):
    """bf16 in the fast LSTM's gradient, the softmax in fp32 (precision fp32)."""

    def lstm_layer(self, x, c, h, kernel, bias):
        return kernels.fast_block_lstm(x, c, h, kernel, bias, "bf16")


VARIANTS = {"bf16 (as trained)": (PTBModel, "bf16"), "softmax only": (SoftmaxOnly, "bf16"),
            "LSTM gradient only": (LSTMGradientOnly, "fp32")}


def main(save_path, data_path, windows):
    config, vocab, prefix = checkpoint.load(save_path)
    record = runfolder.read_marker(save_path) or {}
    assert config.cell == "lstm", "the variants differ in the LSTM's gradient: an LSTM's checkpoint is needed"
    data = reader.load_ptb(data_path)
    assert data.vocab == vocab, "the checkpoint's vocabulary is not this corpus's"
    with tf.Graph().as_default():
        with tf.variable_scope("Model", reuse=tf.AUTO_REUSE):
            reference = PTBModel(True, config, config.batch_size, config.num_steps, "fast", "fp32")
            variants = {name: cls(True, config, config.batch_size, config.num_steps, "fast", precision,
                                  inputs=(reference.input_data, reference.targets, reference.initial_state))
                        for name, (cls, precision) in VARIANTS.items()}
            seed = dropout_seed()
        global_step = tf.train.get_or_create_global_step()
        names = [v.op.name.replace("Model/", "").replace("RNN/multi_rnn_cell/", "").replace("/basic_lstm_cell", "")
                 for v in tf.trainable_variables()]
        session = tf.Session()
        restore(session, prefix, tf.trainable_variables() + [global_step], optional=[seed])
        step = session.run(global_step)
        fetches = {"reference": dense(reference.clipped_grads),
                   **{name: dense(m.clipped_grads) for name, m in variants.items()}}
        relative = {name: [] for name in variants}  # per window: ||g - g_fp32|| / ||g_fp32||, per variable and all
        summed = {}                                  # the sum over windows of g - g_fp32, per variable
        squares = {name: 0 for name in variants}    # the sum over windows of ||g - g_fp32||^2, per variable and all
        batches = itertools.islice(reader.ptb_iterator(data.train, config.batch_size, config.num_steps), windows)
        for i, (_, vals) in enumerate(carry_state(session, batches, lambda _: (reference, fetches))):
            global_step.load(step + i + 1, session)  # the next window's dropout masks: the next step's, as in training
            for name in variants:
                errors = [g - r for g, r in zip(vals[name], vals["reference"])]
                error_norms = with_all(errors)
                relative[name].append(error_norms / with_all(vals["reference"]))
                summed[name] = errors if i == 0 else [s + e for s, e in zip(summed[name], errors)]
                squares[name] = squares[name] + error_norms ** 2
    print(f"# {save_path} ({record.get('model')}, trained in {record.get('precision', 'an unrecorded precision')}, "
          f"global step {step}): the first {windows} windows of ptb.train.txt, with the dropout masks of steps "
          f"{step}-{step + windows - 1}")
    print("# error: ||g - g_fp32|| / ||g_fp32||, the mean over the windows")
    print("# repeated: the share of the error that is the same window after window, (||sum of (g - g_fp32)||^2 / "
          "sum of ||g - g_fp32||^2 - 1) / (windows - 1): about 0 for noise, 1 for one error repeated; "
          "'exact' where the gradients equal fp32's")
    print(f"{'':30}" + "".join(f"{c:>14}" for c in names + ["all"]))
    for name in variants:
        print(f"{name + ', error':30}" + "".join(f"{e:14.2e}" for e in np.mean(relative[name], axis=0)))
        with np.errstate(invalid="ignore", divide="ignore"):
            repeated = (with_all(summed[name]) ** 2 / squares[name] - 1) / (windows - 1)
        print(f"{name + ', repeated':30}" +
              "".join(f"{r:14.2f}" if squares[name][j] else f"{'exact':>14}" for j, r in enumerate(repeated)))


def restore(session, prefix, variables, optional):
    """Restores `variables` from the checkpoint, and those of `optional` it has (the others keep their initial value:
    a dropout seed of 0 in checkpoints older than the saved seed); the variants' learning rates are not read."""
    in_checkpoint = {name for name, _ in tf.train.list_variables(prefix)}
    missing = [v.op.name for v in variables if v.op.name not in in_checkpoint]
    assert not missing, f"{prefix} lacks {missing}"
    session.run(tf.global_variables_initializer())
    tf.train.Saver(variables + [v for v in optional if v.op.name in in_checkpoint]).restore(session, prefix)


def dense(gradients):
    """The gradients as dense tensors (the embedding's comes as IndexedSlices)."""
    return [tf.convert_to_tensor(g) for g in gradients]


def with_all(arrays):
    """The norm of each array, then of all of them as one vector."""
    each = np.array([np.linalg.norm(a) for a in arrays])
    return np.append(each, np.sqrt(np.sum(each ** 2)))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and not (sys.argv[3].isdigit() and int(sys.argv[3]) >= 2)):
        sys.exit(__doc__.splitlines()[-1] + "   (windows: 2 or more)")
    try:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 20)
    except (ValueError, AssertionError) as e:  # a folder that is not a run's (CheckpointError), a corpus not its own
        sys.exit(f"error: {e}")
