"""GloVe vectors in, nearest neighbours and the projector out."""

import numpy as np
import pytest

import in_process
import reader
from tools import checkpoint, embeddings
from tools.tf1 import tf
from conftest import write_corpus
from test_cli import assert_one_line_error, run as run_trainer


def test_load_glove_takes_the_vocabulary_words(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("a 1 2\nzzz 3 4\nc 5.5 -6e-1 \n")
    vectors, found = embeddings.load_glove(str(path), ["a", "b", "c"], 2)
    np.testing.assert_allclose(vectors, [[1, 2], [0, 0], [5.5, -0.6]], rtol=1e-7)
    assert found.tolist() == [True, False, True]


@pytest.mark.parametrize("text, message", [
    ("a 1 2\nb 1 2 3\n", "line 2: 3 numbers where the embedding has 2"),
    ("a 1 x\n", "line 1: not a word followed by 2 finite numbers"),
    ("a 1 nan\n", "line 1: not a word followed by 2 finite numbers"),
    ("b inf 1\n", "line 1: not a word followed by 2 finite numbers"),
    ("", "holds a vector for none of the vocabulary's 2 words"),
    ("zzz 1 2\nyyy 3 4\n", "holds a vector for none of the vocabulary's 2 words"),
])
def test_malformed_glove_files(tmp_path, text, message):
    path = tmp_path / "glove.txt"
    path.write_text(text)
    with pytest.raises(reader.DataError, match=message):
        embeddings.load_glove(str(path), ["a", "b"], 2)
    with pytest.raises(reader.DataError, match="not found"):
        embeddings.load_glove(str(tmp_path / "none.txt"), ["a"], 2)


def test_nearest_words_by_cosine():
    vocab = ["king", "queen", "apple", "pear", "kingdom"]
    matrix = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.2], [2, 0.5, 0]], np.float32)
    result = embeddings.nearest(matrix, vocab, "king", k=3)
    assert [w for w, _ in result] == ["queen", "kingdom", "pear"]  # length does not count, direction does
    assert result[0][1] == pytest.approx(0.9 / np.sqrt(0.82))
    with pytest.raises(reader.DataError, match="'prince' is not in the vocabulary"):
        embeddings.nearest(matrix, vocab, "prince")


def test_training_starts_from_glove_and_lm_shows_the_embedding(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", " the cat sat on the mat\n" * 60)
    glove = tmp_path / "glove.txt"
    glove.write_text("cat 0.25 -0.5\nmat 0.125 0.75\nnot_in_vocab 1 1\n")
    save_path = tmp_path / "run"
    result = run_trainer(f"--data_path={corpus}", "--model=test", f"--embedding_file={glove}", "--learning_rate=0",
                         f"--save_path={save_path}")
    assert result.returncode == 0, result.stderr
    assert "Embedding: 2 of 6 words (33.3%) start from" in result.stdout
    _, vocab, prefix = checkpoint.load(str(save_path))
    matrix = tf.train.load_variable(prefix, embeddings.EMBEDDING)
    np.testing.assert_array_equal(matrix[vocab.index("cat")], [0.25, -0.5])  # learning rate 0: as loaded
    np.testing.assert_array_equal(matrix[vocab.index("mat")], [0.125, 0.75])

    nearest = in_process.run("lm.py", "nearest", f"--save_path={save_path}", "--word=cat", "--top_k=3")
    assert nearest.returncode == 0, nearest.stderr
    assert len(nearest.stdout.splitlines()) == 3
    projector = in_process.run("lm.py", "projector", f"--save_path={save_path}", f"--export_dir={tmp_path}/proj")
    assert projector.returncode == 0, projector.stderr
    assert (tmp_path / "proj" / "metadata.tsv").read_text().splitlines() == vocab
    assert np.loadtxt(tmp_path / "proj" / "vectors.tsv").shape == (6, 2)
    assert 'tensor_name: "Model/embedding"' in (save_path / "projector_config.pbtxt").read_text()


def test_glove_of_the_wrong_size_is_refused(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", " the cat sat on the mat\n" * 60)
    glove = tmp_path / "glove.txt"
    glove.write_text("cat 1 2 3\n")
    assert_one_line_error(run_trainer(f"--data_path={corpus}", "--model=test", f"--embedding_file={glove}"),
                          "^error: .*line 1: 3 numbers where the embedding has 2")
