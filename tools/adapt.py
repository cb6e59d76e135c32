"""Test-time adaptation: a lower perplexity from the same trained weights (`lm.py eval`, `lm.py tune`).

A trained model reads a text with fixed weights and forgets whatever its LSTM state cannot hold. Two
published methods let it use the text it has just read, at no training cost, one module each:

- tools/cache.py, **the neural cache** (Grave, Joulin & Usunier 2017): the hidden states of the last N
  positions vote for the words that followed them, and the vote is mixed into the model's p_vocab;
- tools/dynamic_eval.py, **dynamic evaluation** (Krause, Kahembwe, Murray & Renals 2018): the weights take
  a gradient step on each window just scored, pulled back towards the trained ones; in the RMS form each
  step is scaled by the weight's usual gradient size, gathered on a training text (tools/rms_statistics.py).

Both read a text as `lm.py eval` does: one row, the state carried through the file, every word after the first
predicted once, perplexity = exp(mean of -log p(target)). Combined, the cache is built from the hidden states the
dynamic pass produces. This module is what `lm.py eval` applies: each method's settings, the perplexity they give,
and adapt.json, where tools/tune.py (`lm.py tune`) keeps the settings it chose on a validation text.

Test perplexity, each method's values chosen on valid by `lm.py tune` (README: the commands, values, times):

    config   static   cache   dynamic SGD   dynamic RMS   both
    small    113.90   93.88      100.08        98.95      89.01
    medium    84.13   73.76       77.42        75.41      70.64
"""
import json
import math
import os

import numpy as np

from model import MAX_LOG_FLOAT
from tools import cache, checkpoint

CACHE = ("cache_size", "cache_theta", "cache_lambda")  # lm.py eval's flags, and adapt.json's keys
DYNAMIC = ("dynamic_lr", "dynamic_decay", "dynamic_window")
RMS = ("dynamic_rms", "dynamic_stat_words", "dynamic_stat_batch", "dynamic_eps")  # the RMS form, with DYNAMIC's
# Each method's settings; "both" is the cache on the better dynamic form, with the RMS form's keys when it is that one.
SETTINGS = {"static": (), "cache": CACHE, "dynamic": DYNAMIC, "dynamic_rms": DYNAMIC + RMS,
            "both": CACHE + DYNAMIC + RMS}
EVAL_WINDOW = 100  # lm.py eval's windows: any length scores the same words, longer ones in fewer session runs


def perplexity(log_p):
    """exp(mean -log p); inf where that is beyond a float, or not a number (a diverged pass)."""
    mean = -float(np.mean(log_p, dtype=np.float64))
    return math.exp(mean) if mean <= MAX_LOG_FLOAT else math.inf


def log_probs(evaluation, ids, settings):
    """log p(target) at every position of ids under settings: {} (static), CACHE's keys, DYNAMIC's (with RMS's:
    the RMS form), or both."""
    cached = CACHE[0] in settings
    if DYNAMIC[0] in settings:
        log_p, hidden = evaluation.dynamic_pass(ids, *(settings[k] for k in DYNAMIC), hidden=cached,
                                                eps=settings.get("dynamic_eps"))
    else:
        log_p, hidden = evaluation.static_pass(ids, hidden=cached)
    if cached and hidden is not None:  # None: the dynamic pass diverged, its perplexity is inf anyway
        size, theta, lam = (settings[k] for k in CACHE)
        log_p = cache.mix(log_p, cache.log_probs(hidden, ids[1:], size, [theta])[theta], lam)
    return log_p


def evaluate(evaluation, ids, settings):
    return perplexity(log_probs(evaluation, ids, settings))


def settings_of(record, method):
    """The lm.py eval flags of a method in tune's record; "both" has the RMS form's only when built on that form."""
    names = SETTINGS[method]
    if method == "both" and RMS[0] not in record[method]:  # built on the plain form
        names = CACHE + DYNAMIC
    return {k: record[method][k] for k in names}


# --- adapt.json ------------------------------------------------------------------------------------

def flags_text(settings):
    """The settings as lm.py eval's flags; None is a flag's default (dynamic_stat_words: the whole text)."""
    return " ".join(f"--{k}={v:g}" if isinstance(v, float) else f"--{k}={v}" for k, v in settings.items()
                    if v is not None)


def summary(record):
    """The table tune prints: each method's valid and test perplexity and the flags that give it."""
    lines = [f"{'method':11} {'valid':>9} {'test':>9}  settings (lm.py eval flags)"]
    for method in SETTINGS:
        if method in record:
            r = record[method]
            lines.append(f"{method:11} {r['valid']:9.3f} {r['test']:9.3f}  {flags_text(settings_of(record, method))}")
    return lines


def write_tuned(save_path, record):
    """Writes adapt.json; one there before is kept as adapt.previous.json (returned: its path, else None)."""
    path, kept = os.path.join(save_path, checkpoint.ADAPT), None
    if os.path.isfile(path):
        kept = os.path.join(save_path, checkpoint.ADAPT_PREVIOUS)
        with open(path, "rb") as f, checkpoint.replacing(kept) as tmp, open(tmp, "xb") as copy:
            copy.write(f.read())
    checkpoint.write_atomically(path, json.dumps(record, indent=2) + "\n")
    return kept


def read_tuned(save_path):
    """(method, its settings, the whole record) of the method lm.py tune found best, from the folder's adapt.json."""
    path = os.path.join(save_path, checkpoint.ADAPT)
    if not os.path.isfile(path):
        raise checkpoint.CheckpointError(f"{save_path} holds no {checkpoint.ADAPT}: choose the values first with "
                                         f"python lm.py tune --save_path={save_path} --valid=FILE --input=FILE")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise TypeError(f"a JSON {type(record).__name__}, where tune writes an object of methods")
        for values in record.values():  # written before --dynamic_stat_batch: the statistics were gathered at batch 1
            if isinstance(values, dict) and RMS[0] in values:
                values.setdefault("dynamic_stat_batch", 1)
        method = record["best"]
        return method, settings_of(record, method), record
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{path} is not one lm.py tune wrote ({type(e).__name__}: {e}): rerun "
                                         "lm.py tune")
