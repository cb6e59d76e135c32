"""rnn_mode fast with the other options of its kernel (kernels.fast_block_lstm), which benchmark.py times and
tests/test_kernels.py checks against the reference: they live here so that PTBModel stays the tutorial's graph."""
from model import PTBModel
from tools import kernels


class FastVariant(PTBModel):
    """rnn_mode fast with kernels.fast_block_lstm's `options`: its gradient stepping back in a tf.while_loop
    (unroll=False), or split_lstm's forward (forward="split", in training graphs of a known window only)."""

    def __init__(self, *args, options, **kwargs):
        self.options = options
        super().__init__(*args, **kwargs)

    def lstm_layer(self, x, c, h, kernel, bias):
        options = dict(self.options)
        if not (self.is_training and self.num_steps is not None):
            options.pop("forward", None)
        return kernels.fast_block_lstm(x, c, h, kernel, bias, self.precision, **options)
