"""A checkpoint folder that stands alone: the weights, the config they were trained with,
and the vocabulary, one word a line (line n is word id n).

    runs/small/model.ckpt-N.*  TensorFlow checkpoints (tf.train.Saver) after N steps, the last few
    runs/small/checkpoint      which of them is the latest
    runs/small/config.json    hyperparameters
    runs/small/vocab.txt      the vocabulary
"""
import json
import os

import configs
import reader
from tf1 import tf

CKPT, CONFIG, VOCAB = "model.ckpt", "config.json", "vocab.txt"


class CheckpointError(reader.DataError):
    """A checkpoint folder that is missing, incomplete or inconsistent."""


def config_fields(config):
    return {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}


def save(session, saver, save_path, config, vocab, global_step=None):
    """Writes the three parts; each file is written whole before it replaces the old one."""
    write_atomically(os.path.join(save_path, CONFIG), json.dumps(config_fields(config), indent=2) + "\n")
    write_atomically(os.path.join(save_path, VOCAB), "\n".join(vocab) + "\n")
    # The Saver, too, writes to temporary files and renames them, and names the latest last.
    saver.save(session, os.path.join(save_path, CKPT), global_step=global_step)


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load(save_path):
    """(config, vocab, checkpoint prefix) of a folder written by save(), checked against each other."""
    if not os.path.isdir(save_path):
        raise CheckpointError(f"no checkpoint folder {save_path}: train one with "
                              f"python ptb_word_lm.py --save_path={save_path}")
    prefix = tf.train.latest_checkpoint(save_path)
    missing = [f for f in (CONFIG, VOCAB) if not os.path.isfile(os.path.join(save_path, f))]
    if not prefix or not os.path.isfile(prefix + ".index"):
        missing.append("the weights, " + CKPT + "*")
    if missing:
        raise CheckpointError(f"{save_path} is not a complete checkpoint (missing {', '.join(missing)}): "
                              "point --save_path at a folder written by ptb_word_lm.py --save_path")
    try:
        with open(os.path.join(save_path, CONFIG), encoding="utf-8") as f:
            config = configs.from_dict(json.load(f))
        with open(os.path.join(save_path, VOCAB), encoding="utf-8") as f:
            vocab = f.read().split("\n")[:-1]
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{save_path}: unreadable {CONFIG} or {VOCAB} ({e}): retrain or restore the file")
    check_shapes(prefix, config, vocab)
    return config, vocab, prefix


def check_shapes(prefix, config, vocab):
    """Refuses a config or vocabulary that does not fit the weights."""
    try:
        shapes = dict(tf.train.list_variables(prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise CheckpointError(f"cannot read the weights {prefix} ({e.__class__.__name__}): retrain or restore them")
    size, layers = config.hidden_size, config.num_layers
    embedding = [len(vocab), config.embedding_size or size]
    layer_names = {name.split("/")[3] for name in shapes if name.startswith("Model/RNN/multi_rnn_cell/")}
    found = {"embedding": shapes.get("Model/embedding"), "layers": len(layer_names),
             "hidden size": (shapes.get("Model/softmax_w") or [None])[0] if not config.tie_embeddings else size}
    wanted = {"embedding": embedding, "layers": layers, "hidden size": size}
    for what in wanted:
        if found[what] != wanted[what]:
            raise CheckpointError(f"{CONFIG} and {VOCAB} do not match the weights in {prefix} ({what}: "
                                  f"{wanted[what]} in the files, {found[what]} in the weights): keep the files "
                                  "of one training run together")
