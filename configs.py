"""Hyperparameters of the four models of Zaremba et al. (2014) and the TensorFlow tutorial.

| config | epochs | units | steps | dropout keep | test ppl (tutorial / paper) |
| ------ | ------ | ----- | ----- | ------------ | --------------------------- |
| small  | 13     | 200   | 20    | 1.0          | 115.91 / 114.5              |
| medium | 39     | 650   | 35    | 0.5          |  82.07 /  82.7              |
| large  | 55     | 1500  | 35    | 0.35         |  78.29 /  78.4              |
| test   | 1      | 2     | 2     | 1.0          | (a smoke test)              |

small_tied, beyond the paper: the small size with tied embeddings, variational dropout and a
longer schedule, 24 epochs: test perplexity 90.06 on this project's CPU (docs/reproducing.md, results/small-tied.log).

The learning rate stays at `learning_rate` for `max_epoch` epochs, then is
multiplied by `lr_decay` once per epoch until `max_max_epoch`.

What each field may hold, and the check of every config a run builds or reads back: tools/ranges.py.
"""
CELLS = ("lstm", "gru", "rnn")
# How the graph runs them (model.py says what each is); here, beside the configs, so that the programs' flags can
# name them without TensorFlow's import.
RNN_MODES = ("basic", "block", "fast")
PRECISIONS = ("fp32", "bf16", "fp16")


class Options:
    """What goes beyond the paper, all off here: the four configs below are Zaremba et al.'s."""
    cell = "lstm"                # or "gru", "rnn" (tanh)
    embedding_size = None        # None: hidden_size
    tie_embeddings = False       # softmax weight = transposed embedding (Press & Wolf 2017)
    variational_dropout = False  # one dropout mask per sequence, shared by its time steps (Gal & Ghahramani 2016)
    state_keep_prob = 1.0        # dropout on the recurrent state (cell-by-cell graph only)
    word_keep_prob = 1.0         # dropout of whole words from the embedding


class SmallConfig(Options):
    init_scale = 0.1
    learning_rate = 1.0
    max_grad_norm = 5
    num_layers = 2
    num_steps = 20
    hidden_size = 200
    max_epoch = 4
    max_max_epoch = 13
    keep_prob = 1.0
    lr_decay = 0.5
    batch_size = 20
    vocab_size = 10000


class MediumConfig(Options):
    init_scale = 0.05
    learning_rate = 1.0
    max_grad_norm = 5
    num_layers = 2
    num_steps = 35
    hidden_size = 650
    max_epoch = 6
    max_max_epoch = 39
    keep_prob = 0.5
    lr_decay = 0.8
    batch_size = 20
    vocab_size = 10000


class LargeConfig(Options):
    init_scale = 0.04
    learning_rate = 1.0
    max_grad_norm = 10
    num_layers = 2
    num_steps = 35
    hidden_size = 1500
    max_epoch = 14
    max_max_epoch = 55
    keep_prob = 0.35
    lr_decay = 1 / 1.15
    batch_size = 20
    vocab_size = 10000


class TestConfig(Options):
    init_scale = 0.1
    learning_rate = 1.0
    max_grad_norm = 1
    num_layers = 1
    num_steps = 2
    hidden_size = 2
    max_epoch = 1
    max_max_epoch = 1
    keep_prob = 1.0
    lr_decay = 0.5
    batch_size = 20
    vocab_size = 10000


class SmallTiedConfig(SmallConfig):
    """The small model's size (2 x 200) with what came after the paper: tied embeddings,
    variational dropout on the embedding and the layer outputs, longer windows, a longer schedule."""
    tie_embeddings = True
    variational_dropout = True
    keep_prob = 0.7
    num_steps = 35
    max_epoch = 10
    lr_decay = 0.65
    max_max_epoch = 24


CONFIGS = {"small": SmallConfig, "medium": MediumConfig, "large": LargeConfig, "test": TestConfig,
           "small_tied": SmallTiedConfig}


def get_config(name):
    """A fresh instance of the named config, safe to modify."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name]()


def learning_rate(config, epoch):
    """The learning rate of 0-based `epoch`: constant, then decayed once per epoch."""
    return config.learning_rate * config.lr_decay ** max(epoch + 1 - config.max_epoch, 0)


def matmul_flops_per_word(config):
    """Multiply-adds x 2 of one word's forward pass: the recurrent layers ([x, h] @ kernel) and the softmax."""
    size, gates = config.hidden_size, dict(zip(CELLS, (4, 3, 1)))[config.cell]
    kernel_rows = (config.embedding_size or size) + size + (config.num_layers - 1) * 2 * size
    return 2 * (kernel_rows * gates * size + size * config.vocab_size)
