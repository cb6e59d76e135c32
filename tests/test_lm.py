"""lm.py on a model trained inside the test: generate, predict, score, eval, export, bad input."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import in_process
import lm
from conftest import ROOT, write_corpus
from test_cli import assert_one_line_error, run as run_trainer

WORDS = "the cat dog sat ran on under a mat rug <unk>".split()


def sentences(seed, n):
    rng = np.random.RandomState(seed)
    return "".join(" the {} {} {} the {}\n".format(*rng.choice(WORDS[1:], 4)) for _ in range(n))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint folder, corpus folder, the test perplexity the trainer printed)."""
    root = tmp_path_factory.mktemp("lm")
    corpus = write_corpus(root / "corpus", sentences(0, 300), sentences(1, 30), sentences(2, 30))
    result = run_trainer(f"--data_path={corpus}", "--model=test", f"--save_path={root}/ckpt", "--seed=1")
    assert result.returncode == 0, result.stderr
    test_ppl = float(re.search(r"Test Perplexity: ([\d.]+)", result.stdout).group(1))
    return str(root / "ckpt"), corpus, test_ppl


@pytest.fixture(scope="module")
def model(trained):
    return lm.LanguageModel(trained[0])


def run_lm(*args, stdin=None):
    """`python lm.py ARGS` as a user runs it, in one process that runs one command line after another
    (tests/in_process.py): its exit code, stdout and stderr."""
    return in_process.run("lm.py", *args, stdin=stdin or "")


def test_same_seed_same_text(model):
    first = lm.generate(model, ["the"], 30, temperature=0.8, top_k=5, seed=3)
    assert len(first) == 30 and set(first) <= set(model.vocab)
    assert lm.generate(model, ["the"], 30, temperature=0.8, top_k=5, seed=3) == first
    assert lm.generate(model, ["the"], 30, temperature=0.8, top_k=5, seed=4) != first


def test_sampling_respects_top_k():
    log_probs = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.RandomState(0)
    assert {lm.sample(log_probs, 1.0, 2, rng) for _ in range(200)} == {0, 1}
    assert {lm.sample(log_probs, 1.0, 1, rng) for _ in range(20)} == {0}


def test_predicted_probabilities_sum_to_one(model):
    every_word = lm.predict(model, ["the", "cat"], len(model.vocab))
    assert sum(p for _, p in every_word) == pytest.approx(1.0, abs=1e-5)
    probabilities = [p for _, p in every_word]
    assert probabilities == sorted(probabilities, reverse=True)


def test_score_is_the_sum_of_predicted_log_probabilities(model):
    sentence = "the dog sat under the mat".split()
    log_prob, n = model.sentence_log_prob(sentence)
    assert n == len(sentence) + 1  # the words and the sentence's end
    by_prediction = 0.0
    for i, word in enumerate(sentence + ["<eos>"]):
        p = dict(lm.predict(model, sentence[:i], len(model.vocab)))
        by_prediction += np.log(p[word])
    assert log_prob == pytest.approx(by_prediction, abs=1e-4)


def test_eval_equals_the_trainers_test_perplexity(trained):
    save_path, corpus, test_ppl = trained
    result = run_lm("eval", f"--save_path={save_path}", f"--input={corpus}/ptb.test.txt")
    assert result.returncode == 0, result.stderr
    assert float(re.search(r"Perplexity: ([\d.]+)", result.stdout).group(1)) == pytest.approx(test_ppl, abs=0.01)


def test_eval_of_a_short_text(trained, model, tmp_path):
    """Any text of two words or more has a perplexity: exp of the mean -log p of every word after the first."""
    (tmp_path / "short.txt").write_text("the cat sat\n")
    result = run_lm("eval", f"--save_path={trained[0]}", f"--input={tmp_path}/short.txt")
    assert result.returncode == 0, result.stderr
    ids = [model.word_to_id[w] for w in "the cat sat <eos>".split()]
    log_probs, _ = model.log_probs(ids[:-1])
    expected = np.exp(-np.mean([log_probs[t, ids[t + 1]] for t in range(3)]))
    assert float(re.search(r"Perplexity: ([\d.]+)", result.stdout).group(1)) == pytest.approx(expected, abs=1e-3)


def test_score_command_plain_and_json(trained, model):
    lines = "the cat sat on the mat\nthe dog ran\n"
    result = run_lm("score", f"--save_path={trained[0]}", "--json", stdin=lines)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["words"] for r in rows] == [7, 4, 11]
    assert rows[0]["log_prob"] == pytest.approx(model.sentence_log_prob(lines.split("\n")[0].split())[0], abs=1e-4)
    assert rows[2]["total_log_prob"] == pytest.approx(rows[0]["log_prob"] + rows[1]["log_prob"], abs=1e-4)
    assert rows[0]["log2_prob"] == pytest.approx(rows[0]["log_prob"] / np.log(2))
    plain = run_lm("score", f"--save_path={trained[0]}", stdin=lines)
    assert plain.stdout.splitlines()[-1].startswith("total: log_prob")


def test_generate_and_predict_commands(trained):
    generated = run_lm("generate", f"--save_path={trained[0]}", "--prompt=the zebra", "--num_words=5", "--seed=2")
    assert generated.returncode == 0, generated.stderr
    assert "zebra" in generated.stderr and "<unk>" in generated.stderr  # the user is told
    again = run_lm("generate", f"--save_path={trained[0]}", "--prompt=the zebra", "--num_words=5", "--seed=2")
    assert again.stdout == generated.stdout
    predicted = run_lm("predict", f"--save_path={trained[0]}", "--top_k=3", stdin="the cat\nthe\n")
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split(" -> ")[0] for line in predicted.stdout.splitlines()] == ["the cat", "the"]
    assert all(len(line.split(" -> ")[1].split(", ")) == 3 for line in predicted.stdout.splitlines())


def test_saved_model_runs_without_the_project(trained, model, tmp_path):
    export_dir = lm.export(trained[0], str(tmp_path / "exported"))
    ids = [model.word_to_id[w] for w in "<eos> the cat sat".split()]
    expected, _ = model.log_probs(ids)
    size, layers = model.config.hidden_size, model.config.num_layers
    script = (f"import json, tensorflow as tf\n"
              f"serve = tf.saved_model.load({export_dir!r}).signatures['serving_default']\n"
              f"out = serve(ids=tf.constant([{ids}]), state=tf.zeros([{layers}, 2, 1, {size}]))\n"
              f"print(json.dumps(out['log_probs'].numpy().tolist()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.array(json.loads(result.stdout))[0], expected, rtol=1e-5, atol=1e-5)


def test_bad_checkpoints(trained, tmp_path):
    assert_one_line_error(run_lm("generate", f"--save_path={tmp_path}/none"), "^error: no checkpoint folder")
    partial = tmp_path / "partial"
    shutil.copytree(trained[0], partial)
    os.remove(partial / "vocab.txt")
    assert_one_line_error(run_lm("generate", f"--save_path={partial}"), r"not a complete checkpoint \(missing vocab.txt\)")
    (partial / "vocab.txt").write_text("\n".join(lm.checkpoint.load(trained[0])[1][:-1]) + "\n")
    assert_one_line_error(run_lm("generate", f"--save_path={partial}"), "vocab.txt holds 11 words, .*vocab_size=12")
    shutil.copy(os.path.join(trained[0], "vocab.txt"), partial)
    config = json.loads((partial / "config.json").read_text())
    (partial / "config.json").write_text(json.dumps(dict(config, hidden_size=3)))
    assert_one_line_error(run_lm("generate", f"--save_path={partial}"), "do not fit the config.json and vocab.txt")


def test_a_temperature_near_0_picks_the_likeliest_word(trained, model):
    log_probs = np.log(np.array([0.2, 0.5, 0.3]))
    rng = np.random.RandomState(0)
    assert {lm.sample(log_probs, t, None, rng) for t in (1e-320, 1e-300, 1e-8) for _ in range(20)} == {1}
    log_probs, state = model.log_probs([model.eos, model.word_to_id["the"]])
    greedy = []
    for _ in range(8):
        greedy.append(int(np.argmax(log_probs[-1])))
        log_probs, state = model.log_probs(greedy[-1:], state)
    generated = run_lm("generate", f"--save_path={trained[0]}", "--prompt=the", "--num_words=8", "--temperature=1e-300")
    assert (generated.returncode, generated.stderr) == (0, "")  # no numpy warnings, no NaN
    assert generated.stdout.split() == ["the"] + [model.vocab[i] for i in greedy if model.vocab[i] != "<eos>"]


def test_generate_prints_each_word_as_it_is_drawn_and_a_ctrl_c_keeps_them(trained, model):
    """The words stream: the first lines are on stdout while the model still samples, and a Ctrl-C then ends the
    program with its one line, every word printed before it kept; <eos> is a line break, never printed."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "lm.py"), "generate", f"--save_path={trained[0]}",
                                "--num_words=100000", "--seed=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    first = [process.stdout.readline() for _ in range(3)]  # three whole sentences, long before 100,000 words
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=300)
    assert (process.returncode, stderr) == (130, "error: stopped by signal 2 (SIGINT)\n")
    printed = "".join(first) + rest
    lines = [[]]  # the sentences of the same draws, the words between two <eos>
    for word in lm.generate(model, [], len(printed.split()) + printed.count("\n"), seed=1):
        lines.append([]) if word == "<eos>" else lines[-1].append(word)
    assert printed.splitlines()[:3] == [" ".join(line) for line in lines[:3]]
    assert "<eos>" not in printed and "  " not in printed


def test_a_vocabulary_file_without_its_last_line_end_keeps_its_last_word(tmp_path):
    (tmp_path / "vocab.txt").write_text("the\n<unk>\ncat")
    assert lm.checkpoint.read_vocab(str(tmp_path)) == ["the", "<unk>", "cat"]
    (tmp_path / "vocab.txt").write_text("the\n<unk>\ncat\n")
    assert lm.checkpoint.read_vocab(str(tmp_path)) == ["the", "<unk>", "cat"]


def test_a_full_disk_in_export_names_the_export_folder(trained, tmp_path, monkeypatch):
    """shutil names the file it copied from; the one that had no space is in the export, which is not left behind."""
    def no_space(src, dst):
        raise OSError(28, "No space left on device", src, dst)

    monkeypatch.setattr(lm.shutil, "copy", no_space)
    with pytest.raises(OSError) as failed:
        lm.export(trained[0], str(tmp_path / "exported"))
    assert (failed.value.errno, failed.value.filename) == (28, str(tmp_path / "exported"))
    assert os.listdir(tmp_path) == []
