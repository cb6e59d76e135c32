"""What every value a user gives may hold, in one table: the config's fields (given as flags, or read back from a
checkpoint's config.json) and the programs' other flags (some also read back from adapt.json).

    RANGES[name] = (kind, test, the allowed values in words)    kinds: integer, number (finite), bool, or choices

cli.py checks the flags against it when the command line is parsed, before TensorFlow is imported;
check_config checks every config a run builds and every config.json read back (config_from_fields).
"""
import math

import configs

FLOAT32_MAX = 3.4028234663852886e38  # a learning rate beyond it is inf inside the graph


def _probability(v):
    return 0 < v <= 1


# The config's fields (configs.SmallConfig and configs.Options).
CONFIG_FIELDS = {
    "init_scale": ("number", lambda v: v > 0, "above 0"),
    "learning_rate": ("number", lambda v: 0 <= v <= FLOAT32_MAX, "from 0 to 3.4e38"),
    "max_grad_norm": ("number", lambda v: v > 0, "above 0"),
    "num_layers": ("integer", lambda v: v >= 1, "of at least 1"),
    "num_steps": ("integer", lambda v: v >= 1, "of at least 1"),
    "hidden_size": ("integer", lambda v: v >= 1, "of at least 1"),
    "max_epoch": ("integer", lambda v: v >= 0, "of at least 0"),
    "max_max_epoch": ("integer", lambda v: v >= 0, "of at least 0"),
    "keep_prob": ("number", _probability, "above 0 and at most 1"),
    "lr_decay": ("number", lambda v: 0 < v <= FLOAT32_MAX, "above 0"),
    "batch_size": ("integer", lambda v: v >= 1, "of at least 1"),
    "vocab_size": ("integer", lambda v: v >= 2, "of at least 2"),
    "cell": (configs.CELLS, None, ""),
    "embedding_size": ("integer", lambda v: v >= 1, "of at least 1 (or none: hidden_size)"),
    "tie_embeddings": ("bool", None, ""),
    "variational_dropout": ("bool", None, ""),
    "state_keep_prob": ("number", _probability, "above 0 and at most 1"),
    "word_keep_prob": ("number", _probability, "above 0 and at most 1"),
}

RANGES = {
    **CONFIG_FIELDS,
    # ptb_word_lm.py
    "seed": ("integer", lambda v: 0 <= v < 2 ** 31, "from 0 to 2147483647"),
    "max_vocab": ("integer", lambda v: v >= 3, "of at least 3 (<eos>, <unk> and one word)"),
    "train_words": ("integer", lambda v: v >= 1, "of at least 1"),
    "checkpoint_minutes": ("number", lambda v: v > 0, "above 0"),
    "test_window": ("integer", lambda v: v >= 1, "of at least 1"),
    "num_threads": ("integer", lambda v: 0 <= v <= 1024, "from 0 (one per core) to 1024"),
    "replicas": ("integer", lambda v: 1 <= v <= 1024, "from 1 to 1024"),
    "worker_timeout": ("number", lambda v: v > 0, "above 0"),
    "max_cell_state": ("number", lambda v: v >= 0, "of at least 0 (0: no check)"),
    # benchmark.py
    "steps": ("integer", lambda v: v >= 1, "of at least 1"),
    "adapt_words": ("integer", lambda v: v == 0 or v >= 100, "of 0 (none) or at least 100 (lm.py eval's window)"),
    # lm.py
    "num_words": ("integer", lambda v: 1 <= v <= 100000, "from 1 to 100000 (printed as they are drawn)"),
    "temperature": ("number", lambda v: v > 0, "above 0 (1 samples the model as it is)"),
    "top_k": ("integer", lambda v: v >= 1, "of at least 1"),
    # lm.py eval's test-time adaptation (adapt.py); lm.py eval --adapt=tuned checks adapt.json's values here too.
    "cache_size": ("integer", lambda v: v >= 1, "of at least 1 (the positions the cache holds)"),
    # theta x (a dot product of two hidden states, at most hidden_size) must stay far from float64's overflow.
    "cache_theta": ("number", lambda v: 0 <= v <= 1000, "from 0 to 1000 (tune's grid: 0.05 to 1.7)"),
    # At 1, a word the cache does not hold would get probability 0: an infinite perplexity.
    "cache_lambda": ("number", lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
    "dynamic_lr": ("number", lambda v: 0 <= v <= FLOAT32_MAX, "from 0 to 3.4e38"),
    "dynamic_decay": ("number", lambda v: 0 <= v <= 1, "from 0 to 1"),
    "dynamic_window": ("integer", lambda v: v >= 1, "of at least 1"),
    "dynamic_stat_words": ("integer", lambda v: v >= 2, "of at least 2 (a window and the word after it)"),
    "dynamic_stat_batch": ("integer", lambda v: v >= 1, "of at least 1 (the rows read at once)"),
    "dynamic_eps": ("number", lambda v: 0 < v <= FLOAT32_MAX, "above 0 (rms is 0 where no gradient was seen)"),
}


def advice(name):
    """How to give `name` a value in its range: 'give an integer of at least 1', 'give one of lstm, gru, rnn'."""
    kind, _, allowed = RANGES[name]
    if isinstance(kind, tuple):
        return f"give one of {', '.join(kind)}"
    if kind == "bool":
        return "give true or false"
    return f"give {'an integer' if kind == 'integer' else 'a number'} {allowed}"


def in_range(name, value):
    """Whether `value` (of a type its flag parses to) is finite and in name's range; None (not given) is."""
    test = RANGES[name][1]
    return value is None or (value == value and abs(value) != float("inf") and test(value))


def problem(name, value):
    """What is wrong with `value` for `name` (None: nothing), as 'give ...' advice; for values read from a file,
    whose type is checked too."""
    kind, test, _ = RANGES[name]
    if value is None and name == "embedding_size":
        return None
    if isinstance(kind, tuple):
        ok = value in kind
    elif kind == "bool":
        ok = isinstance(value, bool)
    else:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "integer":
            ok = is_number and isinstance(value, int) and test(value)
        else:
            ok = is_number and math.isfinite(value) and test(value)
    return None if ok else advice(name)


def check_config(config):
    """Raises ValueError naming the first field whose value is out of its range."""
    for name in CONFIG_FIELDS:
        value = getattr(config, name, None)
        issue = problem(name, value) if hasattr(config, name) else "missing"
        if issue:
            raise ValueError(f"{name}={value!r}: {issue}")


def config_from_fields(fields):
    """A config from the fields a checkpoint's config.json holds; options it predates stay off."""
    missing = sorted(k for k in vars(configs.SmallConfig) if not k.startswith("_") and k not in fields)
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the config")
    config = configs.Options()
    for key, value in fields.items():
        setattr(config, key, value)
    check_config(config)
    return config
