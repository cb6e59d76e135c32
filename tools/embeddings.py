"""Word vectors in and out of the model: GloVe to start from, nearest neighbours and
TensorBoard's projector to look at what was learned.

GloVe's text format: a word per line, then its numbers, separated by spaces:

    the 0.418 0.24968 -0.41242 ...
"""
import os

import numpy as np

import reader
from tools import checkpoint

EMBEDDING = "Model/embedding"


def load_glove(path, vocab, dim):
    """(vectors [len(vocab), dim], found: bool [len(vocab)]) of the vocabulary's words in a GloVe file."""
    word_to_id = {w: i for i, w in enumerate(vocab)}
    vectors = np.zeros([len(vocab), dim], np.float32)
    found = np.zeros(len(vocab), bool)
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip().split(" ")
                if len(parts) != dim + 1:
                    raise reader.DataError(f"{path}, line {n}: {len(parts) - 1} numbers where the embedding has "
                                           f"{dim}: give vectors of embedding_size {dim} in GloVe's text format")
                i = word_to_id.get(parts[0])
                if i is not None:
                    try:
                        vectors[i] = [float(x) for x in parts[1:]]
                    except ValueError:
                        vectors[i] = np.nan
                    if not np.isfinite(vectors[i]).all():  # nan or inf would poison training from step 1
                        raise reader.DataError(f"{path}, line {n}: not a word followed by {dim} finite numbers: "
                                               "give a file in GloVe's text format")
                    found[i] = True
    except FileNotFoundError:
        raise reader.DataError(f"--embedding_file={path} not found: give a GloVe text file (e.g. glove.6B.200d.txt)")
    except UnicodeDecodeError:
        raise reader.DataError(f"--embedding_file={path} is not UTF-8 text: give a GloVe text file")
    except OSError as e:  # a folder, no permission
        raise reader.DataError(f"cannot read --embedding_file={path} ({e.strerror}): give a GloVe text file")
    if not found.any():  # an empty file, or another language's: it would start nothing
        raise reader.DataError(f"--embedding_file={path} holds a vector for none of the vocabulary's {len(vocab)} "
                               "words: give a GloVe text file of the corpus's language")
    return vectors, found


def nearest(matrix, vocab, word, k=10):
    """[(word, cosine similarity)] of the k words nearest to `word`, itself left out."""
    if word not in vocab:
        raise reader.DataError(f"{word!r} is not in the vocabulary: try a word of the training text")
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    i = vocab.index(word)
    similarity = unit @ unit[i]
    similarity[i] = -np.inf
    best = np.argsort(-similarity)[:k]
    return [(vocab[j], float(similarity[j])) for j in best]


def write_projector(matrix, vocab, save_path, export_dir):
    """TensorBoard's projector for the checkpoints in save_path, and vectors.tsv + metadata.tsv in
    export_dir for the stand-alone projector (projector.tensorflow.org, "Load")."""
    from tensorboard.plugins import projector

    os.makedirs(export_dir, exist_ok=True)
    metadata = "".join(w + "\n" for w in vocab)  # one column: no header line
    for folder in (export_dir, save_path):  # into save_path last, and whole: it holds the user's checkpoints
        checkpoint.write_atomically(os.path.join(folder, "metadata.tsv"), metadata)
    np.savetxt(os.path.join(export_dir, "vectors.tsv"), matrix, delimiter="\t", fmt="%.6g")
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name, embedding.metadata_path = EMBEDDING, "metadata.tsv"
    projector.visualize_embeddings(save_path, config)
