"""Penn Treebank text -> integer word ids -> (batch_size, num_steps) training windows.

    data = reader.load_ptb("data")            # ids of train/valid/test, and the vocabulary
    for x, y in reader.ptb_iterator(data.train, batch_size=20, num_steps=20):
        ...                                   # x, y: int32 [20, 20]; y is x shifted by one word

The corpus is `data/` of Tomas Mikolov's simple-examples.tgz: ptb.{train,valid,test}.txt,
one sentence per line, already lower-cased, numbers replaced by N and rare words by <unk>.
"""
import collections
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request

import numpy as np

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
EOS = "<eos>"
UNK = "<unk>"

# The names of a corpus's three files, tried in this order: PTB's, plain, WikiText's.
SPLIT_NAMES = ("ptb.{}.txt", "{}.txt", "wiki.{}.tokens")

PTBData = collections.namedtuple("PTBData", "train valid test vocab unknown", defaults=(None,))
PTBData.__doc__ = """Word ids of the three splits (lists of int), the vocabulary (id -> word), and
how many words of each split were outside the vocabulary and became <unk> ({split: count})."""


class DataError(ValueError):
    """A problem with the corpus that the user can fix; its message says how."""


def check_readable(path, flag, what):
    """Refuses, before it is opened, a path that is not a regular file (a folder; a FIFO, which would hang)."""
    if not os.path.exists(path):
        raise DataError(f"{flag}={path} not found: give {what}")
    if not os.path.isfile(path):
        raise DataError(f"{flag}={path} is not a regular file: give {what}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{flag}={path} cannot be read (permissions): give {what}")


def read_words(path, flag="--data_path"):
    """The words of a text file, with every line ending turned into <eos>."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise DataError(f"{path} is not a regular file: give a text file, one sentence per line")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if flag != "--data_path":
            raise DataError(f"{flag}={path} not found: give a text file, one sentence per line")
        raise DataError(f"{path} not found: pass --data_path=DIR with DIR holding ptb.train.txt, "
                        "ptb.valid.txt and ptb.test.txt (the data/ folder of simple-examples.tgz)")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}): give {flag} text files in UTF-8")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}")
    if not text.split():
        raise DataError(f"{path} is empty: it should hold one sentence per line")
    return text.replace("\n", f" {EOS} ").split()


def build_vocab(words, max_vocab=None):
    """id -> word, most frequent first, ties broken alphabetically so the ids are reproducible.

    With max_vocab, only <eos> (a language model starts and ends sentences with it) and the
    max_vocab - 2 most frequent other words are kept, and <unk> stands for the rest.
    """
    counts = collections.Counter(words)
    if max_vocab and len(counts) > max_vocab:
        eos = [EOS] if EOS in counts else []
        others = sorted((w for w in counts if w not in (UNK, EOS)), key=lambda w: (-counts[w], w))
        kept = eos + others[:max_vocab - 1 - len(eos)]
        unknown = sum(counts.values()) - sum(counts[w] for w in kept)
        counts = collections.Counter({w: counts[w] for w in kept}, **{UNK: unknown})
    return sorted(counts, key=lambda w: (-counts[w], w))


def split_paths(data_path):
    """The train, valid and test files of a corpus folder, under the first naming it uses."""
    if not os.path.isdir(data_path):
        what = "is a file, not a folder" if os.path.exists(data_path) else "does not exist"
        raise DataError(f"data folder {data_path} {what}: pass --data_path=DIR with DIR holding "
                        "ptb.train.txt, ptb.valid.txt and ptb.test.txt")
    for pattern in SPLIT_NAMES:
        paths = [os.path.join(data_path, pattern.format(split)) for split in ("train", "valid", "test")]
        if any(os.path.exists(p) for p in paths):
            return paths
    raise DataError(f"{data_path} holds none of ptb.train.txt, train.txt, wiki.train.tokens: pass --data_path=DIR "
                    "with a corpus's train, valid and test files")


def load_ptb(data_path, max_vocab=None, train_words=None):
    """Reads a corpus (PTB's files, or train/valid/test.txt, or WikiText's) into a PTBData.

    The vocabulary comes from the training file; other words become <unk>, which is added
    to the vocabulary if the corpus has none. With train_words, the training text is its first
    train_words words (the vocabulary still the whole file's).
    """
    splits = [read_words(p) for p in split_paths(data_path)]
    vocab = build_vocab(splits[0], max_vocab)
    splits[0] = splits[0][:train_words]  # (None: all)
    known = set(vocab)
    unknown = {name: sum(w not in known for w in words) for name, words in zip(("train", "valid", "test"), splits)}
    if any(unknown.values()) and UNK not in known:
        vocab.append(UNK)
    word_to_id = {w: i for i, w in enumerate(vocab)}
    unk = word_to_id.get(UNK)
    train, valid, test = ([word_to_id.get(w, unk) for w in words] for words in splits)
    return PTBData(train, valid, test, vocab, unknown)


def ptb_raw_data(data_path):
    """The tutorial's interface: (train_ids, valid_ids, test_ids, vocab_size)."""
    data = load_ptb(data_path)
    return data.train, data.valid, data.test, len(data.vocab)


def epoch_size(data_len, batch_size, num_steps, source=None):
    """How many windows of num_steps one pass over `batch_size` parallel rows of the data makes.

    `source` names the text in the error, for a text too short to make one window."""
    n = ((data_len // batch_size) - 1) // num_steps
    if n <= 0:
        raise DataError(f"{data_len} words{f' of {source}' if source else ''} are too few for batch_size={batch_size} "
                        f"x num_steps={num_steps}: use a longer text or a smaller batch_size or num_steps")
    return n


def batch_rows(raw_data, batch_size):
    """The data as `batch_size` contiguous rows: row b continues where row b-1's text ends."""
    data = np.asarray(raw_data, dtype=np.int32)
    batch_len = len(data) // batch_size
    return data[: batch_size * batch_len].reshape(batch_size, batch_len)


def ptb_iterator(raw_data, batch_size, num_steps, keep_remainder=False):
    """Yields (x, y) int32 [batch_size, num_steps] windows; y is x shifted one word ahead.

    Consecutive windows continue each row's text, so a model can carry its state from
    one window to the next. With keep_remainder, a last, shorter window covers the words
    left over, so that every word after the first of each row is predicted exactly once.
    """
    n = epoch_size(len(raw_data), batch_size, num_steps)  # raises here, not at the first next()
    rows = batch_rows(raw_data, batch_size)

    def windows():
        for i in range(n):
            yield rows[:, i * num_steps:(i + 1) * num_steps], rows[:, i * num_steps + 1:(i + 1) * num_steps + 1]
        if keep_remainder and n * num_steps + 1 < rows.shape[1]:
            yield rows[:, n * num_steps:-1], rows[:, n * num_steps + 1:]

    return windows()


def ptb_producer(raw_data, batch_size, num_steps, name=None):
    """The windows of ptb_iterator as graph tensors (x, y), cycling through the epochs."""
    from tools.tf1 import tf  # only this function needs TensorFlow; the rest of the reader stays light

    n = epoch_size(len(raw_data), batch_size, num_steps)
    with tf.name_scope(name, "PTBProducer"):
        rows = tf.constant(batch_rows(raw_data, batch_size))

        def window(i):
            x = rows[:, i * num_steps:(i + 1) * num_steps]
            y = rows[:, i * num_steps + 1:(i + 1) * num_steps + 1]
            return tf.ensure_shape(x, [batch_size, num_steps]), tf.ensure_shape(y, [batch_size, num_steps])

        dataset = tf.data.Dataset.range(n).repeat().map(window).prefetch(2)
        return tf.data.make_one_shot_iterator(dataset).get_next()


def file_md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def maybe_download(data_dir, url=PTB_URL):
    """Makes sure `data_dir` holds the three PTB files, downloading simple-examples.tgz if not.

    The files are unpacked into a temporary folder and checked against their md5 sums; only
    then are they moved into `data_dir`, so a failed or corrupt download leaves nothing behind.
    """
    if all(os.path.isfile(os.path.join(data_dir, f)) for f in PTB_MD5):
        return data_dir
    os.makedirs(data_dir, exist_ok=True)
    hint = f"download {url} by hand and pass --data_path=DIR/simple-examples/data"
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        tarball = os.path.join(tmp, "simple-examples.tgz")
        print(f"Downloading the Penn Treebank from {url} ...", flush=True)
        try:
            urllib.request.urlretrieve(url, tarball)
        except (OSError, ValueError) as e:
            raise DataError(f"could not download {url} ({e}): {hint}")
        try:
            with tarfile.open(tarball) as tar:
                for member in tar.getmembers():
                    name = os.path.basename(member.name)
                    if name in PTB_MD5 and os.path.basename(os.path.dirname(member.name)) == "data":
                        with tar.extractfile(member) as src, open(os.path.join(tmp, name), "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"the download from {url} is not a valid tarball ({e}): {hint}")
        for name, md5 in PTB_MD5.items():
            path = os.path.join(tmp, name)
            if not os.path.isfile(path) or file_md5(path) != md5:
                raise DataError(f"{name} from {url} is missing or corrupt (md5 mismatch): {hint}")
        for name in PTB_MD5:
            os.replace(os.path.join(tmp, name), os.path.join(data_dir, name))
    return data_dir
