"""A training run's folder (--save_path): owned by one training at a time, and known by what a run wrote.

    runs/small/run.json   written when a run takes the folder, before any of its other files: who wrote it,
                          the config's name, how many training words make an epoch, its precision, and
                          the seeds it abandoned because their LSTM stopped learning (guard.py), if any
    ...                   the checkpoint (checkpoint.py) and what the run is watched by (monitor.py)

Two trainings on one folder would save over each other: the second is refused at its start. The training
writing a folder locks the folder itself (fcntl.flock on the directory), so no change to the files in it can
undo the lock, and removing a file cannot let a second training in. The lock is the operating system's, tied
to an open directory: it ends with the process however that ends (Ctrl-C, kill -9, a reboot), so no lock is
ever left behind to block a resume. (Versions before kept it in a file `.lock`, still taken for a run's.)

A folder is a run's if it holds run.json, or, written before run.json existed, a `checkpoint` index
naming weights beside it with a config and vocabulary that fit the command: that run is adopted and
run.json written. Anything else (a user's own perplexity.png, metrics.jsonl, a note named checkpoint)
is refused, never overwritten.
"""
import contextlib
import fcntl
import json
import os

from tools import cli, kernels, monitor, ranges
from tools.checkpoint import (CONFIG, RUN_FILES, VOCAB, CheckpointError, check_finite, latest, read_config, read_vocab,
                              unreadable, write_atomically)
from tools.tf1 import tf

MARKER, LOCK, PROGRAM = "run.json", ".lock", "ptb_word_lm.py"
PROJECTOR_FILES = {"vectors.tsv", "metadata.tsv"}  # what lm.py projector writes into its --export_dir
# The learning-rate schedule: a resumed run may change it (to train longer, say); no other field of the config.
SCHEDULE = ("learning_rate", "max_epoch", "lr_decay", "max_max_epoch")
_held = {}  # {folder's real path: a descriptor of it, locked}: open, hence locked, until this process ends


def check(save_path, config, vocab, train_words):
    """What a training finds in --save_path: None (start anew) or the checkpoint to resume from.

    It only reads: a folder it refuses is left as it was. A folder another training holds is
    refused first, before the files that training may be writing are read.
    """
    os.close(_lock(save_path))  # free: let it go again, claim() takes it
    return _check(save_path, config, vocab, train_words)[0]


def claim(save_path, config, vocab, train_words, model, precision="fp32"):
    """Makes the folder this process's: locks it, checks it again (a training that held it may have
    changed it), and writes run.json if the folder has no checkpoint yet or predates run.json."""
    _held[os.path.realpath(save_path)] = _lock(save_path)
    prefix, marker = _check(save_path, config, vocab, train_words)
    if not (prefix and marker):
        record = {"written_by": PROGRAM, "model": model, "train_words": train_words, "precision": precision}
        if marker and marker.get("model") == model and marker.get("abandoned_seeds"):
            record["abandoned_seeds"] = marker["abandoned_seeds"]  # a rerun of a run that saved nothing yet
        write_atomically(os.path.join(save_path, MARKER), json.dumps(record, indent=2) + "\n")
    return prefix


def precision(prefix, save_path, requested, given):
    """(The run's matmul precision, how it was chosen: "the run's own", "auto", or "" as the flag says). A resumed
    run's own is what its run.json records (written before the record: fp32, the versions before's default); else
    `requested`, auto resolved for this CPU. `given`: whether the command line names a precision; a resumed run
    refuses another than its own, and takes its own without the flag or with auto."""
    recorded = prefix and (read_marker(save_path) or {}).get("precision")
    if recorded and given and requested not in ("auto", recorded):
        raise CheckpointError(f"{save_path} holds a run trained in {recorded}: resume it with --precision={recorded} "
                              "(or without the flag), or give another --save_path")
    if prefix and (requested == "auto" or not given):
        return recorded or "fp32", "the run's own"
    return kernels.resolve_precision(requested), "auto" if requested == "auto" else ""


def finished(prefix, save_path, max_max_epoch):
    """What to say of a run in save_path that has trained max_max_epoch epochs (or more) and has its test
    perplexity: its numbers, from metrics.jsonl, once its weights (`prefix`) are checked sound. None if it has more
    to do."""
    records = monitor.read_metrics(save_path)
    if not records or records[-1]["epoch"] < max_max_epoch or "test_perplexity" not in records[-1]:
        return None
    check_finite(prefix)
    last = records[-1]
    numbers = ", ".join(f"{name} {last[f'{name}_perplexity']:.3f}" for name in ("train", "valid", "test")
                        if isinstance(last.get(f"{name}_perplexity"), (int, float)))
    return (f"{save_path} holds a finished run of {last['epoch']} epochs (perplexity: {numbers}; "
            f"{monitor.METRICS}): nothing to do; give a larger --max_max_epoch to train it further")


def record_abandoned_seed(save_path, seed):
    """Adds `seed` to run.json's abandoned_seeds: a seed whose LSTM stopped learning, which the run left for
    another (none of its steps is in the folder)."""
    marker = read_marker(save_path)
    marker["abandoned_seeds"] = marker.get("abandoned_seeds", []) + [seed]
    write_atomically(os.path.join(save_path, MARKER), json.dumps(marker, indent=2) + "\n")


def _lock(save_path):
    """An open file descriptor of the folder itself, locked; refuses a folder another training holds."""
    try:
        fd = os.open(save_path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise CheckpointError(f"cannot open --save_path={save_path} ({e.strerror}): choose a writable folder")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A training that saved nothing removes the folder it made as it ends: one opened before that is no one's.
        taken = not os.path.samestat(os.fstat(fd), os.stat(save_path))
    except (BlockingIOError, FileNotFoundError):
        taken = True
    if taken:
        os.close(fd)
        raise CheckpointError(f"--save_path={save_path} is in use by another training run: wait for it to end, or "
                              "give another --save_path")
    return fd


@contextlib.contextmanager
def made(save_path):
    """For the block: the folder save_path (None: nothing), created if missing and checked to be writable before
    hours of training; afterwards the folders it created are removed again if the run saved nothing in them."""
    created = prepare(save_path) if save_path else []
    try:
        yield
    finally:
        remove_unused(created)


def prepare(path):
    """Creates the folder and makes sure it can be written.

    Returns the folders it created, deepest first: a run that saves nothing leaves none of them behind
    (remove_unused)."""
    cli.check_no_file_in_the_way(path, "--save_path")
    created, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")  # its own: two trainings may start together
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"cannot write to --save_path={path} ({e.strerror}): choose a writable folder")
    return created


def release_all():
    """Gives back every folder this process holds, as its end does (for a process that runs programs one after
    another: tests/in_process.py)."""
    while _held:
        os.close(_held.popitem()[1])


def remove_unused(folders):
    """Removes the folders a training created (deepest first) if it saved nothing in them, and its claim on them.

    Only the claim this process holds: a training refused because another took the folder they both found
    missing and created leaves the other's run.json and lock alone.
    """
    for folder in folders:
        key = os.path.realpath(folder)
        ours = [MARKER] if key in _held else []
        try:
            names = set(os.listdir(folder))
            if names <= set(ours):
                for name in ours:
                    if name in names:
                        os.remove(os.path.join(folder, name))
                if key in _held:
                    os.close(_held.pop(key))
                os.rmdir(folder)
        except OSError:  # another process wrote into it, or removed it, meanwhile: not this one's to remove
            pass


def read_marker(save_path):
    """run.json's record, or None if the folder has none; refuses a run.json a training did not write (beside a
    run's weights: damaged, and how to resume all the same)."""
    path = os.path.join(save_path, MARKER)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        marker = None
    if not (isinstance(marker, dict) and marker.get("written_by") == PROGRAM
            and type(marker.get("train_words")) is int):
        if latest(save_path):
            raise CheckpointError(f"{path} is damaged, or not one a training run wrote, beside a run's weights: "
                                  f"remove {MARKER} to resume that run (the same command adopts the folder), or give "
                                  "another --save_path")
        raise CheckpointError(f"{path} is not one a training run wrote: give an empty or a new --save_path")
    return marker


def _projector_export(path):
    """Whether path is a folder lm.py projector wrote (--export_dir inside the run's folder, as docs/lm.md shows)."""
    return os.path.isdir(path) and not os.path.islink(path) and set(os.listdir(path)) <= PROJECTOR_FILES


def _check(save_path, config, vocab, train_words):
    """(the checkpoint to resume from or None, run.json's record or None); refuses what is not this run's."""
    names = sorted(os.listdir(save_path))
    foreign = [f for f in names if not RUN_FILES.fullmatch(f) and not _projector_export(os.path.join(save_path, f))]
    if foreign:
        raise CheckpointError(f"--save_path={save_path} holds files a training run did not write "
                              f"({', '.join(foreign[:3])}): give an empty or a new folder")
    marker = read_marker(save_path)
    prefix = latest(save_path)
    written = [f for f in names if f != LOCK and not f.startswith(".write-test") and ".tmp" not in f]  # nor a kill's
    if marker is None and not prefix and written:
        raise CheckpointError(f"--save_path={save_path} holds {', '.join(written[:3])} but no {MARKER}, which a "
                              "training run writes first: they are not a run's files; give an empty or a new folder")
    have = [f for f in (CONFIG, VOCAB) if os.path.isfile(os.path.join(save_path, f))]
    if prefix and len(have) < 2:
        raise CheckpointError(f"{save_path} holds weights but not their {' and '.join({CONFIG, VOCAB} - set(have))}: "
                              "restore the files, or give another --save_path")
    if CONFIG in have:
        saved = read_config(save_path)
        for name in ranges.CONFIG_FIELDS:
            if name not in SCHEDULE and getattr(saved, name) != getattr(config, name):
                raise CheckpointError(f"{save_path} holds a run with {name}={getattr(saved, name)!r}, the command "
                                      f"asks for {getattr(config, name)!r}: rerun that run's command, or give "
                                      "another --save_path")
    if VOCAB in have and read_vocab(save_path) != list(vocab):
        raise CheckpointError(f"{save_path} holds a run trained on another vocabulary: resume with the same "
                              "--data_path and --max_vocab, or give another --save_path")
    # An epoch is train_words words: resumed with another number, its step would point elsewhere.
    if prefix and marker and marker["train_words"] != train_words:
        raise CheckpointError(f"{save_path} holds a run whose epoch is {marker['train_words']} training words, the "
                              f"command's is {train_words}: resume with that run's --train_words and --data_path, "
                              "or give another --save_path")
    try:
        monitor.read_metrics(save_path)
    except (ValueError, TypeError, KeyError) as e:
        path = os.path.join(save_path, monitor.METRICS)
        repair = ("repair it, or remove it to resume (its epochs' records are lost, the weights kept)" if prefix
                  else "give another --save_path")
        raise CheckpointError(f"{path} is damaged, or not one this program wrote ({e}): {repair}")
    return prefix, marker


SEED_VARIABLE = "Model/Train/dropout_seed"  # model.dropout_seed(): the run's seed, saved with the weights


def seed(prefix, flag_seed, draw):
    """The run's seed: a resumed run's own (its dropout masks go on from it), else --seed or draw().

    A resume given another --seed is refused: the checkpoint's seed would win in silence.
    """
    if not prefix:
        return flag_seed if flag_seed is not None else draw()
    try:
        saved = int(tf.train.load_variable(prefix, SEED_VARIABLE))
    except (tf.errors.OpError, IndexError) as e:  # IndexError: a truncated weights file
        raise unreadable(prefix, e)
    if flag_seed is not None and flag_seed != saved:
        raise CheckpointError(f"{os.path.dirname(prefix)} holds a run with --seed={saved}, the command asks for "
                              f"--seed={flag_seed}: resume with --seed={saved} (or without --seed), or give another "
                              "--save_path")
    return saved
