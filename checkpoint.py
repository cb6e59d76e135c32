"""A checkpoint folder that stands alone: the weights, the config they were trained with,
and the vocabulary, one word a line (line n is word id n).

    runs/small/model.ckpt-N.*  TensorFlow checkpoints (tf.train.Saver) after N steps, the last few
    runs/small/checkpoint      which of them is the latest (a name relative to the folder)
    runs/small/config.json    hyperparameters
    runs/small/vocab.txt      the vocabulary
    runs/small/adapt.json     (after lm.py tune) the test-time adaptation chosen for these weights

Only the folder's own files are ever read: the folder can be moved or copied, and a
`checkpoint` index that still names another folder (written by an older version with an
absolute --save_path) is read for the file name only.
"""
import glob
import json
import os
import re

import configs
import monitor
import reader
from tf1 import tf

CKPT, CONFIG, VOCAB, INDEX = "model.ckpt", "config.json", "vocab.txt", "checkpoint"
ADAPT = "adapt.json"  # what lm.py tune chose for the folder's weights (adapt.py), read by lm.py eval --adapt=tuned

# What a training run (and lm.py projector and tune) writes into its folder; anything else is the user's.
RUN_FILES = re.compile(r"(checkpoint|config\.json|vocab\.txt|metrics\.jsonl|perplexity\.png|projector_config\.pbtxt"
                       r"|metadata\.tsv|adapt\.json)(\.tmp.*)?|model\.ckpt-.*|events\.out\.tfevents\..*|\.write-test")


class CheckpointError(reader.DataError):
    """A checkpoint folder that is missing, incomplete or inconsistent."""


def config_fields(config):
    return {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}


def save(session, saver, save_path, config, vocab, global_step=None):
    """Writes the three parts; each file is written whole before it replaces the old one."""
    write_atomically(os.path.join(save_path, CONFIG), json.dumps(config_fields(config), indent=2) + "\n")
    write_atomically(os.path.join(save_path, VOCAB), "\n".join(vocab) + "\n")
    # The Saver, too, writes to temporary files and renames them, and names the latest last.
    try:
        saver.save(session, os.path.join(save_path, CKPT), global_step=global_step)
    except tf.errors.OpError as e:  # a full disk: ResourceExhaustedError
        raise OSError(0, error_summary(e), save_path)


def write_atomically(path, text):
    """The file appears whole or not at all: a failed write leaves the old one as it was."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise


def error_summary(e):
    """The line of a TensorFlow error that says what went wrong (the first, or the one after 'Original error:')."""
    message = e.message.split("Original error:")[-1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line.split(";")[-1].strip() for line in lines  # "PATH; No space left on device": the cause
              if re.search("No space|Permission denied|Read-only|quota|Input/output", line)]
    return (causes or lines or [e.__class__.__name__])[0][:200]


def latest(save_path):
    """The latest checkpoint's prefix inside save_path, or None if it holds no weights.

    Refuses a folder that holds weight files but no index naming one of them: training
    there would start again and overwrite them, lm.py would have nothing to read.
    """
    try:
        state = tf.train.get_checkpoint_state(save_path)
    except ValueError:  # an index without a latest checkpoint
        state = None
    if state and state.model_checkpoint_path:
        prefix = os.path.join(save_path, os.path.basename(state.model_checkpoint_path))
        if os.path.isfile(prefix + ".index"):
            return prefix
    weights = sorted(glob.glob(os.path.join(save_path, CKPT + "-*.index")))
    if weights:
        raise CheckpointError(f"{save_path} holds weights ({os.path.basename(weights[-1])[:-6]}) but no '{INDEX}' "
                              "file naming them: restore that file, or move the weights away to start anew")
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
            return configs.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError) as e:  # JSONDecodeError and a bad field are ValueErrors
        raise CheckpointError(f"{path} is not a config this program wrote ({e}): keep the files of one "
                              "training run together")


def read_vocab(save_path):
    path = os.path.join(save_path, VOCAB)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({e}): keep the files of one training run together")


def restore(session, saver, prefix):
    """Restores the weights after checking that they fit the graph; a damaged file is refused, not a traceback."""
    graph = session.graph
    check_variables(prefix, {v.op.name: v.shape.as_list() for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)})
    try:
        saver.restore(session, prefix)
    except tf.errors.OpError as e:  # a truncated or corrupt .data file
        raise CheckpointError(f"cannot read the weights {prefix} ({error_summary(e)}): the file is damaged; restore "
                              "it, or give another --save_path")


def check_run_folder(save_path, config, vocab):
    """What a training run finds in --save_path: None (start anew) or the checkpoint to resume from.

    Refuses, before anything is written, a folder with files no run wrote, and a run whose
    config (beyond the learning-rate schedule) or vocabulary differs from the command's.
    """
    foreign = sorted(f for f in os.listdir(save_path) if not RUN_FILES.fullmatch(f))
    if foreign:
        raise CheckpointError(f"--save_path={save_path} holds files a training run did not write "
                              f"({', '.join(foreign[:3])}): give an empty or a new folder")
    prefix = latest(save_path)
    have = [f for f in (CONFIG, VOCAB) if os.path.isfile(os.path.join(save_path, f))]
    if prefix and len(have) < 2:
        raise CheckpointError(f"{save_path} holds weights but not their {' and '.join({CONFIG, VOCAB} - set(have))}: "
                              "restore the files, or give another --save_path")
    if CONFIG in have:
        saved = read_config(save_path)
        for name in configs.FIELDS:
            if name not in configs.SCHEDULE and getattr(saved, name) != getattr(config, name):
                raise CheckpointError(f"{save_path} holds a run with {name}={getattr(saved, name)!r}, the command "
                                      f"asks for {getattr(config, name)!r}: rerun that run's command, or give "
                                      "another --save_path")
    if VOCAB in have and read_vocab(save_path) != list(vocab):
        raise CheckpointError(f"{save_path} holds a run trained on another vocabulary: resume with the same "
                              "--data_path and --max_vocab, or give another --save_path")
    try:
        monitor.read_metrics(save_path)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{os.path.join(save_path, monitor.METRICS)} is not one this program wrote ({e}): "
                              "give another --save_path")
    return prefix


def check_variables(prefix, wanted):
    """Refuses weights whose variables or shapes differ from the graph's ({name: shape}) before restoring them."""
    try:
        found = dict(tf.train.list_variables(prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise CheckpointError(f"cannot read the weights {prefix} ({getattr(e, 'message', e)}): restore them, or give "
                              "another --save_path")
    for name, shape in sorted(wanted.items()):
        if found.get(name) != shape:
            raise CheckpointError(f"the weights {prefix} do not fit the {CONFIG} and {VOCAB} beside them ({name}: "
                                  f"{found.get(name)} in the weights, {shape} by the files): keep the files of one "
                                  "training run together")
