"""A checkpoint folder that stands alone: the weights, the config they were trained with,
and the vocabulary, one word per line (line n is word id n).

    runs/small/model.ckpt-N.*  TensorFlow checkpoints (tf.train.Saver) after N steps, the last few
    runs/small/checkpoint      which of them is the latest (a name relative to the folder)
    runs/small/config.json    hyperparameters
    runs/small/vocab.txt      the vocabulary
    runs/small/adapt.json     (after lm.py tune) the test-time adaptation chosen for these weights
    runs/small/adapt_rms.npz  (after lm.py tune --dynamic_rms) the statistics of its RMS form
    runs/small/adapt_progress.json  (while lm.py tune has not ended) what it measured so far

Only the folder's own files are ever read: the folder can be moved or copied, and a
`checkpoint` index that still names another folder (written by an older version with an
absolute --save_path) is read for the file name only. A training may be writing the folder
while lm.py reads it: read_latest() then reads the newer checkpoint the index names.
"""
import contextlib
import glob
import json
import os
import re
import secrets
import shutil

import numpy as np

from tools import ranges, tf1
from tools.tf1 import tf

CKPT, CONFIG, VOCAB, INDEX = "model.ckpt", "config.json", "vocab.txt", "checkpoint"
ADAPT = "adapt.json"  # what lm.py tune chose for the folder's weights (tune.py), read by lm.py eval --adapt=tuned
ADAPT_RMS = "adapt_rms.npz"  # and the gradient statistics of its RMS form, which lm.py eval would gather again
ADAPT_PROGRESS = "adapt_progress.json"  # what an unfinished lm.py tune measured: the same command resumes it
ADAPT_PREVIOUS = "adapt.previous.json"  # the adapt.json a later tune replaced, kept

# What a training run (and lm.py projector and tune) writes into its folder, with the temporary names of
# write_atomically; anything else is the user's. runfolder.py says which of these folders a run wrote.
RUN_FILES = re.compile(r"(checkpoint|config\.json|vocab\.txt|metrics\.jsonl|perplexity\.png|projector_config\.pbtxt"
                       r"|metadata\.tsv|run\.json|adapt\.json|adapt\.previous\.json|adapt_rms\.npz"
                       r"|adapt_progress\.json)(\.tmp.*)?"
                       r"|model\.ckpt-.*|events\.out\.tfevents\..*|\.write-test(-\d+)?|\.lock")
MODEL_WEIGHTS = ("Model/embedding", "Model/RNN/", "Model/softmax_")  # the trained weights' names in a checkpoint
READ_TRIES = 10  # read_latest: how many newer checkpoints to try while a training replaces them


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or inconsistent; the message says what to do."""


def config_fields(config):
    return {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}


def save(session, saver, save_path, config, vocab, global_step=None):
    """Writes the three parts; each file is written whole before it replaces the old one.

    Then the folder keeps the Saver's max_to_keep newest checkpoints, also across resumes (the Saver
    of a resumed run knows only its own): the one a run resumed from goes once newer ones are written.
    """
    write_atomically(os.path.join(save_path, CONFIG), json.dumps(config_fields(config), indent=2) + "\n")
    write_atomically(os.path.join(save_path, VOCAB), "\n".join(vocab) + "\n")
    # The Saver, too, writes to temporary files and renames them, and names the latest last.
    try:
        saver.save(session, os.path.join(save_path, CKPT), global_step=global_step)
    except tf.errors.OpError as e:  # a full disk: ResourceExhaustedError
        # The Saver's temporary files (model.ckpt-N.meta.tmp..., model.ckpt-N_temp/) are no checkpoint: not left.
        for path in glob.glob(os.path.join(save_path, f"{CKPT}-*tmp*")) + glob.glob(os.path.join(save_path,
                                                                                            f"{CKPT}-*_temp*")):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
        raise OSError(0, tf1.error_summary(e), save_path)
    remove_older(save_path, saver.saver_def.max_to_keep)


def steps(save_path):
    """The global steps of the checkpoints in save_path, oldest first."""
    return sorted(int(m.group(1)) for m in (re.fullmatch(re.escape(CKPT) + r"-(\d+)\.index", f)
                                            for f in os.listdir(save_path)) if m)


def remove_older(save_path, keep):
    """Removes all but the `keep` newest checkpoints (0: none, as for the Saver): their .index last, so that a
    removal cut short is redone."""
    for step in steps(save_path)[:-keep] if keep else []:
        for path in sorted(glob.glob(os.path.join(save_path, f"{CKPT}-{step}.*")), key=lambda p: p.endswith(".index")):
            os.remove(path)


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary name beside `path` that replaces `path` if the block ends without an error.

    The name is this write's own (two processes never share one), and a failed write removes it
    and leaves `path` as it was; its error names `path`, the file the user knows.
    """
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename not in (None, tmp):
            raise
        raise OSError(e.errno, e.strerror, path) from e
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_atomically(path, text):
    """The file appears whole or not at all: a failed write leaves the old one as it was."""
    with replacing(path) as tmp, open(tmp, "x", encoding="utf-8") as f:
        f.write(text)


def indexed(save_path):
    """The prefix inside save_path of the checkpoint its index names as the latest, or None."""
    try:
        state = tf.train.get_checkpoint_state(save_path)
    except ValueError:  # an index without a latest checkpoint, or not text
        state = None
    if state and state.model_checkpoint_path:
        return os.path.join(save_path, os.path.basename(state.model_checkpoint_path))
    return None


def latest(save_path):
    """The latest checkpoint's prefix inside save_path, or None if it holds no weights.

    Refuses a folder that holds weight files but no index naming one of them: training
    there would start again and overwrite them, lm.py would have nothing to read.
    """
    prefix, named = indexed(save_path), None
    while prefix != named:  # a training may replace the checkpoint named: then the index names a newer one
        if prefix and os.path.isfile(prefix + ".index"):
            return prefix
        prefix, named = indexed(save_path), prefix
    weights = sorted(glob.glob(os.path.join(save_path, CKPT + "-*.index")))
    if weights:
        if not os.path.exists(os.path.join(save_path, INDEX)):
            index = f"no '{INDEX}' file naming them"
        elif named:
            index = f"a '{INDEX}' file that names {os.path.basename(named)}, which is not there"
        else:
            index = f"a '{INDEX}' file that is damaged (not the index a training writes)"
        raise CheckpointError(f"{save_path} holds weights ({os.path.basename(weights[-1])[:-6]}) but {index}: restore "
                              "that file, or move the weights away to start anew")
    return None


def load(save_path):
    """(config, vocab, checkpoint prefix) of a folder written by save(); restore() checks the weights fit."""
    if not os.path.isdir(save_path):
        raise CheckpointError(f"no checkpoint folder {save_path}: train one with "
                              f"python ptb_word_lm.py --save_path={save_path}")
    prefix = latest(save_path)
    missing = [f for f in (CONFIG, VOCAB) if not os.path.isfile(os.path.join(save_path, f))]
    if not prefix:
        missing.append("the weights, " + CKPT + "-N.*")
    if missing:
        raise CheckpointError(f"{save_path} is not a complete checkpoint (missing {', '.join(missing)}): "
                              "point --save_path at a folder written by ptb_word_lm.py --save_path")
    config, vocab = read_config(save_path), read_vocab(save_path)
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{VOCAB} holds {len(vocab)} words, {CONFIG} says vocab_size={config.vocab_size}, "
                              f"in {save_path}: keep the files of one training run together")
    return config, vocab, prefix


def read_config(save_path):
    path = os.path.join(save_path, CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            return ranges.config_from_fields(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError) as e:  # JSONDecodeError and a bad field are ValueErrors
        raise CheckpointError(f"{path} is not a config this program wrote ({e}): keep the files of one "
                              "training run together")


def read_vocab(save_path):
    path = os.path.join(save_path, VOCAB)
    try:
        with open(path, encoding="utf-8") as f:
            words = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({e}): keep the files of one training run together")
    words = words[:-1] if words[-1] == "" else words  # the last line's end, if it has one
    if len(set(words)) < len(words):  # two rows of the embedding for one word: not a vocabulary a training wrote
        first = {}
        twice = next(i for i, w in enumerate(words) if first.setdefault(w, i) != i)
        raise CheckpointError(f"{path} holds the word {words[twice]!r} twice (lines {first[words[twice]] + 1} and "
                              f"{twice + 1}): keep the files of one training run together")
    return words


def restore(session, saver, prefix):
    """Restores the weights after checking that they fit the graph; a damaged file is refused, and so are
    weights that are not finite (checked once restored, in memory: the file, 260 MB for large, is read once)."""
    variables = session.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
    check_variables(prefix, {v.op.name: v.shape.as_list() for v in variables})
    try:
        saver.restore(session, prefix)
    except tf.errors.OpError as e:  # a truncated or corrupt .data file
        raise unreadable(prefix, e)
    for variable, value in zip(variables, session.run(variables)):
        _refuse_non_finite(prefix, variable.op.name, value)


def read_latest(save_path, read):
    """read(prefix) of the folder's latest checkpoint, even while a training writes the folder.

    The training keeps its last few checkpoints, so the one the index named may be gone by the
    time it is read: then the index names a newer one, which is read instead. A checkpoint is
    called damaged only if it cannot be read while the index still names it.
    """
    prefix = latest(save_path)
    for _ in range(READ_TRIES):
        try:
            return read(prefix)
        except CheckpointError:
            newer = latest(save_path)
            if newer == prefix:
                raise
            prefix = newer
    raise CheckpointError(f"the checkpoints in {save_path} were replaced {READ_TRIES} times while being read: "
                          "try again, or copy the folder and read the copy")


def unreadable(prefix, e):
    """The error for weights that cannot be read: damaged, missing or forbidden, as TensorFlow found them."""
    if isinstance(e, tf.errors.NotFoundError):
        what = "a file of them is missing; restore it"
    elif isinstance(e, tf.errors.PermissionDeniedError):
        what = "they may not be read; change their permissions"
    else:
        what = "the file is damaged; restore it"
    return CheckpointError(f"cannot read the weights {prefix} ({tf1.error_summary(e)}): {what}, or give another "
                           "--save_path")


def check_variables(prefix, wanted):
    """Refuses weights whose variables or shapes differ from the graph's ({name: shape}) before restoring them."""
    try:
        found = dict(tf.train.list_variables(prefix))
    except tf.errors.OpError as e:
        raise unreadable(prefix, e)
    except ValueError as e:
        raise CheckpointError(f"cannot read the weights {prefix} ({e}): restore them, or give another --save_path")
    for name, shape in sorted(wanted.items()):
        if found.get(name) != shape:
            raise CheckpointError(f"the weights {prefix} do not fit the {CONFIG} and {VOCAB} beside them ({name}: "
                                  f"{found.get(name)} in the weights, {shape} by the files): keep the files of one "
                                  "training run together")
    # A trained weight the graph has no place for (softmax_w, with tie_embeddings set in a config.json that did
    # not have it) would be dropped in silence.
    unused = [name for name in sorted(found) if name.startswith(MODEL_WEIGHTS) and name not in wanted]
    if unused:
        raise CheckpointError(f"the weights {prefix} hold {unused[0]}, which the {CONFIG} beside them has no place "
                              "for (tie_embeddings?): keep the files of one training run together")


def check_finite(prefix):
    """Refuses weights that hold nan or inf: the trainer never saves such, but a copy gone wrong or another tool may."""
    try:
        weights = tf.train.load_checkpoint(prefix)
        for name in sorted(weights.get_variable_to_shape_map()):
            _refuse_non_finite(prefix, name, weights.get_tensor(name))
    except (tf.errors.OpError, IndexError) as e:  # the reader raises IndexError for a truncated file
        raise unreadable(prefix, e)


def _refuse_non_finite(prefix, name, value):
    value = np.asarray(value)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise CheckpointError(f"the weights {prefix} are not finite ({name} holds nan or inf): they cannot be "
                              "used; give the folder of a sound training run")
