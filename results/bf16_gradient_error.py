"""Which part of a bf16 training step rounds the update most? Restores a checkpoint of ptb_word_lm.py and, on
the same training windows (same weights, same dropout masks, the same LSTM state carried in), computes the
clipped gradient that SGD applies four ways: all in fp32 (the reference); --precision=bf16 as trained; bf16 only
in the softmax's matmuls (forward and gradient); bf16 only in the fast LSTM gradient's matmuls. Prints, for each
variable and in all, how far each one's gradient is from fp32's, ||g - g_fp32|| / ||g_fp32|| (the mean over the
windows), and whether that error is noise, which SGD's many small steps average out, or a bias, the same
direction window after window, which they add up.
Usage, from the project root: python results/bf16_gradient_error.py runs/medium-bf16 ../shared/data/ptb [windows]"""
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
    model_name = (runfolder.read_marker(save_path) or {}).get("model")
    data = reader.load_ptb(data_path)
    assert data.vocab == vocab, "the checkpoint's vocabulary is not this corpus's"
    with tf.Graph().as_default():
        with tf.variable_scope("Model", reuse=tf.AUTO_REUSE):
            reference = PTBModel(True, config, config.batch_size, config.num_steps, "fast", "fp32")
            others = {name: cls(True, config, config.batch_size, config.num_steps, "fast", precision,
                                inputs=(reference.input_data, reference.targets, reference.initial_state))
                      for name, (cls, precision) in VARIANTS.items()}
        names = [v.op.name.replace("Model/", "").replace("RNN/multi_rnn_cell/", "").replace("/basic_lstm_cell", "")
                 for v in tf.trainable_variables()]
        # The weights, the step and the dropout seed where the checkpoint has one (older ones start at 0); each
        # variant's learning-rate variable is not read.
        wanted = tf.trainable_variables() + [tf.train.get_or_create_global_step(), dropout_seed()]
        in_checkpoint = {name for name, _ in tf.train.list_variables(prefix)}
        session = tf.Session()
        session.run(tf.global_variables_initializer())
        tf.train.Saver([v for v in wanted if v.op.name in in_checkpoint]).restore(session, prefix)
        step = session.run(tf.train.get_or_create_global_step())
        dense = lambda grads: [tf.convert_to_tensor(g) for g in grads]  # the embedding's comes as IndexedSlices
        fetches = {"reference": dense(reference.clipped_grads),
                   **{name: dense(m.clipped_grads) for name, m in others.items()}}
        batches = reader.ptb_iterator(data.train, config.batch_size, config.num_steps)
        relative = {name: [] for name in others}  # per window: ||g - g_fp32|| / ||g_fp32||, per variable and all
        summed = {name: None for name in others}  # the sum over windows of g - g_fp32, per variable
        squares = {name: 0 for name in others}    # the sum over windows of ||g - g_fp32||^2, per variable
        for _, vals in carry_state(session, (next(batches) for _ in range(windows)), lambda _: (reference, fetches)):
            for name in others:
                errors = [g - r for g, r in zip(vals[name], vals["reference"])]
                relative[name].append(np.append(norms(errors), norm_all(errors)) /
                                      np.append(norms(vals["reference"]), norm_all(vals["reference"])))
                summed[name] = errors if summed[name] is None else [s + e for s, e in zip(summed[name], errors)]
                squares[name] = squares[name] + np.append(norms(errors), norm_all(errors)) ** 2
    print(f"# {save_path} ({model_name}, global step {step}), the first {windows} windows of ptb.train.txt")
    print(f"# error: ||g - g_fp32|| / ||g_fp32||, mean over windows; bias: ||sum of (g - g_fp32)|| / "
          f"sqrt(sum of ||g - g_fp32||^2), 1 for independent noise, {np.sqrt(windows):.2f} for the same error each window")
    print(f"{'':26}" + "".join(f"{c:>14}" for c in names + ["all"]))
    for name in others:
        print(f"{name + ', error':26}" + "".join(f"{e:14.2e}" for e in np.mean(relative[name], axis=0)))
        bias = np.append(norms(summed[name]), norm_all(summed[name])) / np.sqrt(squares[name])
        print(f"{name + ', bias':26}" + "".join(f"{b:14.2f}" for b in bias))


def norms(arrays):
    return np.array([np.linalg.norm(a) for a in arrays])


def norm_all(arrays):
    """The norm of all the arrays as one vector."""
    return np.sqrt(sum(np.sum(a ** 2) for a in arrays))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20)
