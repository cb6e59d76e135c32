import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

import reader
from conftest import write_corpus


def test_words_and_vocabulary_order(tmp_path):
    path = write_corpus(tmp_path, " a b c\n b c\n c\n", valid=" c a\n")
    data = reader.load_ptb(path)
    # counts: <eos> 3, c 3, b 2, a 1; ties by word, and "<" sorts before letters.
    assert data.vocab == ["<eos>", "c", "b", "a"]
    assert data.train == [3, 2, 1, 0, 2, 1, 0, 1, 0]
    assert data.valid == [1, 3, 0]
    assert reader.ptb_raw_data(path) == (data.train, data.valid, data.test, 4)


def test_unseen_words_become_unk_which_is_created_if_missing(tmp_path):
    data = reader.load_ptb(write_corpus(tmp_path / "unk", " a <unk>\n", valid=" a zebra\n"))
    assert [data.vocab[i] for i in data.valid] == ["a", "<unk>", "<eos>"]
    assert data.unknown == {"train": 0, "valid": 1, "test": 0}
    data = reader.load_ptb(write_corpus(tmp_path / "nounk", " a b\n", valid=" a zebra\n", test=" yak yak\n"))
    assert data.vocab == ["<eos>", "a", "b", "<unk>"]  # added last, so the training ids stay as they were
    assert [data.vocab[i] for i in data.test] == ["<unk>", "<unk>", "<eos>"]
    assert data.unknown == {"train": 0, "valid": 1, "test": 2}


def test_max_vocab_keeps_the_most_frequent_words(tmp_path):
    data = reader.load_ptb(write_corpus(tmp_path, " a a a b b c d\n"), max_vocab=3)
    # <eos> is always kept, then a (3); b, c, d are cut: <unk> stands for their 4 words and sorts first.
    assert data.vocab == ["<unk>", "a", "<eos>"]
    assert [data.vocab[i] for i in data.train] == "a a a <unk> <unk> <unk> <unk> <eos>".split()
    assert data.unknown["train"] == 4
    # --train_words: the first 5 words train, with the same vocabulary; the note counts the <unk> among them.
    first = reader.load_ptb(write_corpus(tmp_path, " a a a b b c d\n"), max_vocab=3, train_words=5)
    assert first.vocab == data.vocab and first.train == data.train[:5] and first.unknown["train"] == 2


@pytest.mark.parametrize("names", ["{}.txt", "wiki.{}.tokens"])
def test_other_corpus_file_names(tmp_path, names):
    for split, text in (("train", " = Title = \n\n a b a\n"), ("valid", " a\n"), ("test", " b\n")):
        (tmp_path / names.format(split)).write_text(text)
    data = reader.load_ptb(str(tmp_path))
    assert [data.vocab[i] for i in data.train] == "= Title = <eos> <eos> a b a <eos>".split()
    (tmp_path / names.format("train")).unlink()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(reader.DataError, match="train.txt not found" if names == "{}.txt" else "wiki.train.tokens"):
        reader.load_ptb(str(tmp_path))


def test_folder_without_a_corpus(tmp_path):
    (tmp_path / "readme.md").write_text("nothing here")
    with pytest.raises(reader.DataError, match="holds none of ptb.train.txt, train.txt, wiki.train.tokens"):
        reader.load_ptb(str(tmp_path))


def test_iterator_rows_are_contiguous_and_targets_shifted():
    batches = list(reader.ptb_iterator(list(range(25)), batch_size=2, num_steps=3))
    # batch_len = 12: row 0 holds 0..11, row 1 holds 12..23; (12 - 1) // 3 = 3 windows.
    assert len(batches) == reader.epoch_size(25, 2, 3) == 3
    x0, y0 = batches[0]
    np.testing.assert_array_equal(x0, [[0, 1, 2], [12, 13, 14]])
    np.testing.assert_array_equal(y0, [[1, 2, 3], [13, 14, 15]])
    np.testing.assert_array_equal(batches[2][0], [[6, 7, 8], [18, 19, 20]])
    for x, y in batches:
        assert x.shape == y.shape == (2, 3) and x.dtype == np.int32
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_iterator_remainder_covers_every_word_once():
    batches = list(reader.ptb_iterator(list(range(10)), 1, 4, keep_remainder=True))
    assert [x.tolist() for x, _ in batches] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8]]]
    assert np.concatenate([y[0] for _, y in batches]).tolist() == list(range(1, 10))


def test_epoch_size_formula_and_too_short_error():
    assert reader.epoch_size(929589, 20, 20) == ((929589 // 20) - 1) // 20 == 2323
    with pytest.raises(ValueError, match=r"batch_size=20 x num_steps=35"):
        reader.epoch_size(500, 20, 35)
    with pytest.raises(ValueError, match="too few"):
        reader.ptb_iterator(list(range(30)), 10, 3)  # raised at the call, before any batch


def test_producer_gives_the_iterator_batches_epoch_after_epoch():
    from tools.tf1 import tf

    data = list(range(100))
    expected = list(reader.ptb_iterator(data, 3, 4))
    with tf.Graph().as_default():
        x, y = reader.ptb_producer(data, 3, 4)
        assert x.shape.as_list() == y.shape.as_list() == [3, 4]
        with tf.Session() as session:
            for _ in range(2):
                for ex, ey in expected:
                    gx, gy = session.run([x, y])
                    np.testing.assert_array_equal(gx, ex)
                    np.testing.assert_array_equal(gy, ey)


def test_bad_corpus_errors(tmp_path):
    with pytest.raises(reader.DataError, match="missing does not exist"):
        reader.load_ptb(str(tmp_path / "missing"))
    folder = write_corpus(tmp_path, " a b\n", test="\n \n")
    with pytest.raises(reader.DataError, match="ptb.test.txt is empty"):
        reader.load_ptb(folder)
    (tmp_path / "ptb.train.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(reader.DataError, match="ptb.train.txt is not UTF-8"):
        reader.load_ptb(folder)
    write_corpus(tmp_path, " a b\n")
    os.remove(tmp_path / "ptb.valid.txt")
    with pytest.raises(reader.DataError, match="ptb.valid.txt not found"):
        reader.load_ptb(folder)


def test_real_corpus_counts(ptb_path):
    data = reader.load_ptb(ptb_path)
    assert len(data.vocab) == 10000
    assert (len(data.train), len(data.valid), len(data.test)) == (929589, 73760, 82430)
    assert data.vocab[:4] == ["the", "<unk>", "<eos>", "N"]


# --- download: a local HTTP server serves a tarball the test builds --------------------------------

def make_tarball(ptb_path, corrupt=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in reader.PTB_MD5:
            with open(os.path.join(ptb_path, name), "rb") as f:
                content = f.read()
            if corrupt and name == "ptb.test.txt":
                content = content.replace(b" the ", b" teh ", 1)
            info = tarfile.TarInfo(f"./simple-examples/data/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.fixture
def serve(tmp_path):
    """serve(bytes) -> the URL of those bytes on a server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def url_of(content):
        (root / "simple-examples.tgz").write_bytes(content)
        return f"http://127.0.0.1:{server.server_address[1]}/simple-examples.tgz"

    yield url_of
    server.shutdown()


def test_download_unpacks_and_verifies(ptb_path, tmp_path, serve):
    url = serve(make_tarball(ptb_path))
    data_dir = tmp_path / "data"
    assert reader.maybe_download(str(data_dir), url) == str(data_dir)
    assert sorted(os.listdir(data_dir)) == sorted(reader.PTB_MD5)
    for name, md5 in reader.PTB_MD5.items():
        assert hashlib.md5((data_dir / name).read_bytes()).hexdigest() == md5
    assert reader.maybe_download(str(data_dir), "http://127.0.0.1:1/never-fetched") == str(data_dir)


@pytest.mark.parametrize("content, message", [(None, "corrupt"), (b"not a tarball", "not a valid tarball")])
def test_bad_download_leaves_nothing_behind(ptb_path, tmp_path, serve, content, message):
    url = serve(content if content is not None else make_tarball(ptb_path, corrupt=True))
    data_dir = tmp_path / "data"
    with pytest.raises(reader.DataError, match=message):
        reader.maybe_download(str(data_dir), url)
    assert os.listdir(data_dir) == []


def test_offline_download_error(tmp_path, serve):
    url = serve(b"")
    with pytest.raises(reader.DataError, match="could not download .*by hand"):
        reader.maybe_download(str(tmp_path / "data"), url.replace("simple-examples.tgz", "missing.tgz"))


def test_a_corpus_folder_that_is_not_there_skips_the_tests_that_need_it(tmp_path):
    """PTB_DATA naming a missing folder (a typo, another machine's path): those tests skip with a note, not fail."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-n", "0", "-p", "no:cacheprovider",
                             f"{os.path.abspath(__file__)}::test_real_corpus_counts"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=dict(os.environ, PTB_DATA=str(tmp_path / "none")))
    assert result.returncode == 0, result.stdout
    assert f"PTB_DATA={tmp_path}/none holds no ptb.train.txt: point it at the corpus folder" in result.stdout
    assert "1 skipped" in result.stdout
