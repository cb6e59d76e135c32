"""Test-time adaptation (tools/adapt.py, cache.py, dynamic_eval.py, rms_statistics.py, tune.py): the neural cache
and dynamic evaluation against hand computations, and lm.py eval / tune as a user
runs them (a model of the test config trained inside the test, small texts)."""
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import lm
from model import PTBModel
from tools import adapt, cache, checkpoint, cli, tune
from tools.dynamic_eval import DynamicEvaluation, read_text
from tools import runfolder
from conftest import ROOT
from test_bad_input import snapshot
from test_cli import assert_one_line_error
from test_lm import run_lm, trained  # noqa: F401 (trained: the fixture, a checkpoint folder and its corpus)
from tools.tf1 import tf


@pytest.fixture(scope="module")
def model(trained):
    return lm.LanguageModel(trained[0])


@pytest.fixture(scope="module")
def adapter(model):
    return DynamicEvaluation(model)


@pytest.fixture
def folder(trained, tmp_path):
    """A copy of the checkpoint folder, for the commands that write adapt.json."""
    shutil.copytree(trained[0], tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


def weights(adapter):
    return {v.op.name: value for v, value in zip(adapter.variables, adapter.session.run(adapter.variables))}


def perplexity_printed(result):
    assert result.returncode == 0, result.stderr
    return float(re.search(r"Perplexity: ([\d.]+)", result.stdout).group(1))


# --- the cache ---------------------------------------------------------------------------------------

def test_cache_matches_a_hand_computation():
    """Four positions, N = 2, theta = 0.5, lambda = 0.25, every term written out."""
    h = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, -1.0]], np.float32)
    targets = np.array([7, 3, 7, 3])  # the word after each position
    p_vocab = np.array([0.1, 0.2, 0.3, 0.4])  # p_vocab(target) at each position
    theta, lam = 0.5, 0.25
    # t = 0: the cache is empty, p = p_vocab.
    # t = 1: it holds (h_0, 7); the target is 3: p_cache = 0.
    # t = 2: (h_0, 7), (h_1, 3); the target 7: exp(0.5 h_2.h_0) / (exp(0.5 h_2.h_0) + exp(0.5 h_2.h_1)).
    # t = 3: N = 2 drops (h_0, 7): (h_1, 3), (h_2, 7); the target 3: exp(0.5 h_3.h_1) / (... + exp(0.5 h_3.h_2)).
    p_cache_2 = math.exp(0.5 * 0.5) / (math.exp(0.5 * 0.5) + math.exp(0.5 * 0.5))
    p_cache_3 = math.exp(0.5 * -1.0) / (math.exp(0.5 * -1.0) + math.exp(0.5 * 0.0))
    expected = [p_vocab[0], (1 - lam) * p_vocab[1], (1 - lam) * p_vocab[2] + lam * p_cache_2,
                (1 - lam) * p_vocab[3] + lam * p_cache_3]
    for block in (1, 3, 512):
        log_cache = cache.log_probs(h, targets, 2, [theta], block=block)[theta]
        assert np.isnan(log_cache[0]) and log_cache[1] == -np.inf
        np.testing.assert_allclose(np.exp(cache.mix(np.log(p_vocab), log_cache, lam)), expected, rtol=1e-6)
    # With N = 3, t = 3 holds (h_0, 7) too: another result, so the window's edge is where the definition puts it.
    log_cache = cache.log_probs(h, targets, 3, [theta])[theta]
    assert abs(np.exp(log_cache[3]) - p_cache_3) > 0.05


def test_cache_in_blocks_equals_a_loop_over_positions():
    rng = np.random.RandomState(0)
    h = rng.uniform(-1, 1, (50, 3)).astype(np.float32)
    targets = rng.randint(0, 5, 50)
    for block in (4, 7, 512):
        for n, thetas in ((1, [0.8]), (7, [0.0, 0.8]), (60, [2.0, 0.3])):
            found = cache.log_probs(h, targets, n, thetas, block=block)
            for theta, t in itertools.product(thetas, range(1, 50)):
                i = np.arange(max(0, t - n), t)
                scores = theta * (h[i].astype(np.float64) @ h[t])
                p = np.exp(scores) / np.exp(scores).sum()
                with np.errstate(divide="ignore"):  # no pair of the target's: log 0 = -inf
                    expected = np.log(p[targets[i] == targets[t]].sum())
                assert found[theta][t] == pytest.approx(expected, abs=1e-6)  # dot products in float32


def test_mix_is_safe_at_the_ends():
    log_vocab, log_cache = np.log([0.5, 0.5, 0.5]), np.array([np.nan, -np.inf, np.log(0.2)])
    np.testing.assert_array_equal(cache.mix(log_vocab, log_cache, 0.0), log_vocab)
    np.testing.assert_allclose(cache.mix(log_vocab, log_cache, 1.0), [np.log(0.5), -np.inf, np.log(0.2)])
    assert adapt.perplexity(cache.mix(log_vocab, log_cache, 1.0)) == math.inf


# --- static and dynamic passes, in-process ------------------------------------------------------------

def test_lambda_zero_and_no_step_give_the_static_eval(trained, model, adapter):
    path = os.path.join(trained[1], "ptb.test.txt")
    static = lm.evaluate(model, path)
    ids = lm.read_ids(model, path)
    before = weights(adapter)
    cache = dict(cache_size=50, cache_theta=0.5, cache_lambda=0.0)
    no_step = dict(dynamic_lr=0.0, dynamic_decay=0.0, dynamic_window=7)
    for settings in ({}, cache, no_step, {**cache, **no_step}):
        assert adapt.evaluate(adapter, ids, settings) == pytest.approx(static, rel=1e-6), settings
    assert adapt.evaluate(adapter, ids, {**cache, "cache_lambda": 0.3}) != pytest.approx(static, rel=1e-3)
    assert adapt.evaluate(adapter, ids, {**no_step, "dynamic_lr": 0.5}) != pytest.approx(static, rel=1e-3)
    after = weights(adapter)
    assert all(np.array_equal(before[name], after[name]) for name in before)  # every pass ends on the trained weights


def reference_step(config, start, x, y, state):
    """(gradient of the window's mean loss at the weights `start`, log p(target), final state), by tf.gradients in a
    graph of its own: rnn_mode block, whose gradient is TensorFlow's BlockLSTMGrad (the adapter's is fast's)."""
    graph = tf.Graph()
    with graph.as_default(), tf.variable_scope("Model"):
        m = PTBModel(False, config, 1, len(x), rnn_mode="block")
        variables = tf.trainable_variables()
        grads = [tf.convert_to_tensor(g) for g in tf.gradients(tf.reduce_mean(m.word_losses), variables)]
    with tf.Session(graph=graph) as session:
        for v in variables:
            v.load(start[v.op.name], session)
        feed = {m.input_data: [x], m.targets: [y], m.initial_state: state}
        grads, losses, final_state = session.run([grads, m.word_losses, m.final_state], feed)
    return {v.op.name: g for v, g in zip(variables, grads)}, -losses[0], final_state


def test_a_window_takes_one_sgd_step_and_the_decay_pulls_back_from_the_second(model, adapter):
    """theta_1 = theta_0 - lr g_0; theta_2 = theta_1 - lr g_1 + decay (theta_0 - theta_1); g from another graph."""
    lr, decay, n = 0.5, 0.3, 4
    ids = model.encode("<eos> the cat the sat the dog on the".split())  # repeated words: the embedding's rows add up
    windows = [(ids[:n], ids[1:n + 1]), (ids[n:2 * n], ids[n + 1:2 * n + 1])]
    size, layers = model.config.hidden_size, model.config.num_layers
    model_, updates = adapter.stepper(n)

    def run_windows(count):
        """(log p(target) the adapter scored, its weights after) for `count` windows read from the trained weights."""
        adapter.session.run(adapter.back_to_trained)
        log_p, _ = read_text(adapter.session, ids[:count * n + 1], n, lambda length: (model_, updates[True]),
                                feed={adapter.lr: lr, adapter.decay: decay})
        got = weights(adapter)
        adapter.session.run(adapter.back_to_trained)
        return log_p, got

    theta_0 = weights(adapter)
    g_0, log_p_0, state = reference_step(model.config, theta_0, *windows[0],
                                         np.zeros([layers, 2, 1, size], np.float32))
    theta_1 = {k: theta_0[k] - lr * g_0[k] for k in theta_0}
    g_1, log_p_1, _ = reference_step(model.config, theta_1, *windows[1], state)
    theta_2 = {k: theta_1[k] - lr * g_1[k] + decay * (theta_0[k] - theta_1[k]) for k in theta_0}
    assert max(np.abs(lr * g).max() for g in g_0.values()) > 1e-2  # steps far above the tolerance
    assert max(np.abs(decay * (theta_0[k] - theta_1[k])).max() for k in theta_0) > 1e-3
    # Each window is scored with the weights before its step: window 1 with theta_0, window 2 with theta_1.
    scored, _ = run_windows(2)
    np.testing.assert_allclose(scored, np.concatenate([log_p_0, log_p_1]), rtol=1e-5, atol=1e-6)
    assert np.abs(reference_step(model.config, theta_0, *windows[1], state)[1] - log_p_1).max() > 1e-4  # not theta_0
    for (_, got), expected in ((run_windows(1), theta_1), (run_windows(2), theta_2)):
        assert set(got) == set(expected)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_rms_form_normalises_the_step_and_scales_the_decay(model):
    """Krause's RMS form: rms from g^2 over the statistics text's windows (numpy, on another graph's gradients);
    theta_1 = theta_0 - lr g_0 / (rms + eps); theta_2 = theta_1 - lr g_1 / (rms + eps) + min(decay rms / mean_rms, 1)
    (theta_0 - theta_1), mean_rms the mean of the variables' mean rms."""
    lr, decay, eps, n = 0.05, 0.3, 1e-3, 4
    ids = model.encode("<eos> the cat the sat the dog on the".split())
    statistics = model.encode("<eos> the dog sat on the cat <eos> the cat the sat on the dog".split())  # 3 windows
    adapter = DynamicEvaluation(model, statistics)
    windows = [(ids[:n], ids[1:n + 1]), (ids[n:2 * n], ids[n + 1:2 * n + 1])]
    size, layers = model.config.hidden_size, model.config.num_layers
    zero = np.zeros([layers, 2, 1, size], np.float32)
    theta_0 = weights(adapter)
    squares, state = [], zero
    for k in range(3):
        g, _, state = reference_step(model.config, theta_0, statistics[k * n:(k + 1) * n],
                                     statistics[k * n + 1:(k + 1) * n + 1], state)
        squares.append({name: g[name].astype(np.float64) ** 2 for name in g})
    rms = {name: np.sqrt(np.mean([s[name] for s in squares], axis=0)) for name in theta_0}
    mean_rms = np.mean([rms[name].mean() for name in rms])
    assert min(r.min() for r in rms.values()) == 0  # the embedding's rows of words the text lacks: eps alone
    adapter.statistics.gather(n)
    got = dict(zip([v.op.name for v in adapter.variables], adapter.session.run(adapter.statistics.rms)))
    for name in rms:
        np.testing.assert_allclose(got[name], rms[name], rtol=1e-4, atol=1e-7, err_msg=name)
    assert adapter.session.run(adapter.statistics.mean_rms) == pytest.approx(mean_rms, rel=1e-4)

    model_, updates = adapter.stepper(n)

    def run_windows(count):
        adapter.session.run(adapter.back_to_trained)
        log_p, _ = read_text(adapter.session, ids[:count * n + 1], n, lambda length: (model_, updates["rms", True]),
                                feed={adapter.lr: lr, adapter.decay: decay, adapter.statistics.eps: eps})
        got = weights(adapter)
        adapter.session.run(adapter.back_to_trained)
        return log_p, got

    g_0, log_p_0, state = reference_step(model.config, theta_0, *windows[0], zero)
    theta_1 = {k: theta_0[k] - lr * g_0[k] / (rms[k] + eps) for k in theta_0}
    g_1, log_p_1, _ = reference_step(model.config, theta_1, *windows[1], state)
    rate = {k: np.minimum(decay * rms[k] / mean_rms, 1) for k in theta_0}
    theta_2 = {k: theta_1[k] - lr * g_1[k] / (rms[k] + eps) + rate[k] * (theta_0[k] - theta_1[k]) for k in theta_0}
    assert max(np.abs(theta_1[k] - theta_0[k]).max() for k in theta_0) > 1e-2  # steps far above the tolerance
    assert any((r == 1).any() for r in rate.values()) and any((r < 0.1).any() for r in rate.values())  # clipped, not
    scored, _ = run_windows(2)
    np.testing.assert_allclose(scored, np.concatenate([log_p_0, log_p_1]), rtol=1e-5, atol=1e-6)
    for (_, got), expected in ((run_windows(1), theta_1), (run_windows(2), theta_2)):
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # No step and no decay: the static eval, and the weights back as they were.
    static = adapter.static_pass(ids)[0]
    no_step = dict(dynamic_lr=0.0, dynamic_decay=0.0, dynamic_window=n, dynamic_eps=eps)
    np.testing.assert_allclose(adapt.log_probs(adapter, ids, no_step), static, rtol=1e-6, atol=1e-6)
    assert adapt.evaluate(adapter, ids, {**no_step, "dynamic_lr": lr}) != pytest.approx(adapt.perplexity(static),
                                                                                         rel=1e-3)
    assert all(np.array_equal(theta_0[k], v) for k, v in weights(adapter).items())


def test_the_statistics_in_rows_are_the_mean_square_of_a_batch_gradient(model):
    """--dynamic_stat_batch=2 (Krause et al.'s batch 100, small): the text cut into 2 rows, each read with its own
    state; g of a batch is the gradient of the mean loss over both rows' windows, the mean of the rows' gradients."""
    n, batch = 3, 2
    statistics = model.encode("<eos> the dog sat on the cat <eos> the cat the sat on the dog".split())  # 2 rows of 7
    adapter = DynamicEvaluation(model, statistics, stat_batch=batch)
    theta_0 = weights(adapter)
    rows = np.reshape(statistics[:len(statistics) // batch * batch], [batch, -1])
    zero = np.zeros([model.config.num_layers, 2, 1, model.config.hidden_size], np.float32)
    states, squares = [zero] * batch, []
    for k in range((rows.shape[1] - 1) // n):  # 2 windows per row
        g = []
        for b in range(batch):
            g_b, _, states[b] = reference_step(model.config, theta_0, rows[b, k * n:(k + 1) * n],
                                               rows[b, k * n + 1:(k + 1) * n + 1], states[b])
            g.append(g_b)
        squares.append({name: ((g[0][name].astype(np.float64) + g[1][name]) / 2) ** 2 for name in theta_0})
    rms = {name: np.sqrt(np.mean([s[name] for s in squares], axis=0)) for name in theta_0}
    adapter.statistics.gather(n)
    got = dict(zip([v.op.name for v in adapter.variables], adapter.session.run(adapter.statistics.rms)))
    for name in rms:
        np.testing.assert_allclose(got[name], rms[name], rtol=1e-4, atol=1e-7, err_msg=name)
    mean_rms = np.mean([r.mean() for r in rms.values()])
    assert adapter.session.run(adapter.statistics.mean_rms) == pytest.approx(mean_rms, rel=1e-4)
    assert DynamicEvaluation(model, statistics, stat_batch=4).statistics.problem(n) == (
        "the RMS form's statistics text has 2 words to predict in each of 4 rows, fewer than a window of 3")


def test_the_statistics_of_each_window_are_gathered_once(model):
    """A search goes back to a window length it gathered statistics for: the same rms, not a second gathering."""
    text = model.encode("<eos> the dog sat on the cat <eos> the cat the sat on the dog".split())
    adapter = DynamicEvaluation(model, text)
    add_squares, windows = adapter.statistics.add_squares, []
    adapter.statistics.add_squares = lambda window: windows.append(window) or add_squares(window)
    gathered = []
    for window in (4, 3, 4):
        adapter.statistics.gather(window)
        gathered.append(adapter.session.run(adapter.statistics.rms + [adapter.statistics.mean_rms]))
    assert windows == [4, 3]
    assert all(np.array_equal(a, b) for a, b in zip(gathered[0], gathered[2]))
    assert not all(np.array_equal(a, b) for a, b in zip(gathered[0], gathered[1]))


def test_statistics_stored_are_read_back_for_the_same_weights_and_text_only(model, tmp_path):
    """What tune keeps for eval: the rms of one window, taken by a DynamicEvaluation of the same weights and statistics
    text, not gathered again; another text, or another file, and they are gathered as without it."""
    text = model.encode("<eos> the dog sat on the cat <eos> the cat the sat on the dog".split())
    first = DynamicEvaluation(model, text)
    first.statistics.gather(4)
    path = str(tmp_path / checkpoint.ADAPT_RMS)
    first.statistics.save(path, [4])
    stored = first.session.run(first.statistics.rms + [first.statistics.mean_rms])
    again = DynamicEvaluation(model, text)
    add_squares, windows = again.statistics.add_squares, []
    again.statistics.add_squares = lambda window: windows.append(window) or add_squares(window)
    assert again.statistics.load(path) == [4]
    again.statistics.gather(4)
    assert windows == [] and again.statistics.seconds == first.statistics.seconds
    read_back = again.session.run(again.statistics.rms + [again.statistics.mean_rms])
    assert all(np.array_equal(a, b) for a, b in zip(stored, read_back))
    again.statistics.gather(3)  # a window the file does not hold: gathered
    assert windows == [3]
    assert DynamicEvaluation(model, text[:-1]).statistics.load(path) == []  # another text
    for junk in (b"", b"not an npz"):
        with open(path, "wb") as f:
            f.write(junk)
        assert DynamicEvaluation(model, text).statistics.load(path) == []
    assert DynamicEvaluation(model, text).statistics.load(str(tmp_path / "none.npz")) == []


def test_eval_in_the_rms_form_and_its_flags(trained):
    save_path, corpus, _ = trained
    before = snapshot(save_path)
    text = f"--input={corpus}/ptb.test.txt"
    static = perplexity_printed(run_lm("eval", f"--save_path={save_path}", text))
    rms = [f"--dynamic_rms={corpus}/ptb.train.txt", "--dynamic_stat_words=500", "--dynamic_window=9"]
    no_step = run_lm("eval", f"--save_path={save_path}", text, "--dynamic_lr=0", *rms)
    assert perplexity_printed(no_step) == pytest.approx(static, abs=0.0015)
    assert no_step.stdout.strip().endswith(f"with --dynamic_lr=0 --dynamic_decay=0 --dynamic_window=9 "
                                           f"--dynamic_rms={corpus}/ptb.train.txt --dynamic_stat_words=500 "
                                           "--dynamic_stat_batch=1 --dynamic_eps=0.001")
    just_enough = run_lm("eval", f"--save_path={save_path}", text, "--dynamic_lr=0", rms[0], "--dynamic_stat_words=9",
                         "--dynamic_window=9")  # one full window of statistics: accepted
    assert perplexity_printed(just_enough) == pytest.approx(static, abs=0.0015)
    assert perplexity_printed(run_lm("eval", f"--save_path={save_path}", text, "--dynamic_lr=0.01",
                                     "--dynamic_decay=0.01", *rms)) != pytest.approx(static, abs=0.01)
    in_rows = run_lm("eval", f"--save_path={save_path}", text, "--dynamic_lr=0.01", *rms, "--dynamic_stat_batch=5")
    assert math.isfinite(perplexity_printed(in_rows)) and "--dynamic_stat_batch=5 --dynamic_eps" in in_rows.stdout
    assert snapshot(save_path) == before
    for bad, message in ((["--dynamic_eps=0"], "flag --dynamic_eps=0.0: give a number above 0"),
                         (["--dynamic_stat_words=1"], "flag --dynamic_stat_words=1: give an integer of at least 2"),
                         (["--dynamic_eps=1e-3"], "--dynamic_eps are the RMS form's: give --dynamic_rms=FILE too"),
                         ([rms[0]], "--dynamic_rms needs --dynamic_lr and --dynamic_window"),
                         ([rms[0], "--dynamic_stat_words=5", "--dynamic_lr=0.01", "--dynamic_window=9"],
                          "statistics text has 5 words to predict, fewer than a window of 9: give a longer "
                          "--dynamic_rms, a larger --dynamic_stat_words or a shorter --dynamic_window"),
                         ([rms[0], "--dynamic_stat_words=20", "--dynamic_stat_batch=4", "--dynamic_lr=0.01",
                           "--dynamic_window=9"], "statistics text has 4 words to predict in each of 4 rows, fewer than "
                                                  "a window of 9: give a longer --dynamic_rms, a larger "
                                                  "--dynamic_stat_words, fewer --dynamic_stat_batch rows or a shorter "
                                                  "--dynamic_window"),
                         (["--dynamic_stat_batch=0"], "flag --dynamic_stat_batch=0: give an integer of at least 1"),
                         (["--dynamic_stat_batch=2"], "--dynamic_eps are the RMS form's: give --dynamic_rms=FILE too"),
                         (["--adapt=tuned", "--dynamic_eps=1e-3"], "--adapt=tuned takes the values lm.py tune chose: "
                                                                  "leave out --dynamic_eps")):
        assert_one_line_error(run_lm("eval", f"--save_path={save_path}", text, *bad), "^error: .*" + re.escape(message))


# --- lm.py eval and tune, as a user runs them -------------------------------------------------------

def test_eval_flags_and_the_folder_unchanged(trained):
    save_path, corpus, _ = trained
    before = snapshot(save_path)
    text = f"--input={corpus}/ptb.test.txt"
    static = perplexity_printed(run_lm("eval", f"--save_path={save_path}", text))
    cache = ["--cache_size=100", "--cache_theta=0.5"]
    assert perplexity_printed(run_lm("eval", f"--save_path={save_path}", text, *cache, "--cache_lambda=0")) == \
        pytest.approx(static, abs=0.0015)
    assert perplexity_printed(run_lm("eval", f"--save_path={save_path}", text, "--dynamic_lr=0", "--dynamic_window=9",
                                     "--dynamic_decay=0")) == pytest.approx(static, abs=0.0015)
    both = run_lm("eval", f"--save_path={save_path}", text, *cache, "--cache_lambda=0.1", "--dynamic_lr=0.3",
                  "--dynamic_window=9")
    assert perplexity_printed(both) != pytest.approx(static, abs=0.01)
    assert both.stdout.strip().endswith("with --cache_size=100 --cache_theta=0.5 --cache_lambda=0.1 --dynamic_lr=0.3 "
                                        "--dynamic_decay=0 --dynamic_window=9")
    assert snapshot(save_path) == before


def test_tune_writes_what_eval_tuned_applies(trained, folder, model, adapter):
    corpus = trained[1]
    before = snapshot(folder)
    tuned = run_lm("tune", f"--save_path={folder}", f"--valid={corpus}/ptb.valid.txt", f"--input={corpus}/ptb.test.txt")
    assert tuned.returncode == 0, tuned.stderr
    passes = tune.SGD_SEARCH.passes
    assert re.search(rf"^dynamic {passes}/{passes}: ", tuned.stdout, re.M) and "cache, finer: size=" in tuned.stdout
    after = snapshot(folder)
    after.pop(os.path.join(folder, checkpoint.ADAPT))
    with open(os.path.join(folder, checkpoint.ADAPT)) as f:
        record = json.load(f)
    assert after == before  # the weights and every other file as they were
    assert set(record) == {"static", "cache", "dynamic", "both", "best", "checkpoint", "valid", "test"}
    assert record["best"] == min(adapt.SETTINGS, key=lambda method: record[method]["valid"] if method in record else 1e9)
    test = lm.read_ids(model, f"{corpus}/ptb.test.txt")
    for text in ("valid", "test"):  # the folder's weights are the fixture model's
        assert record["static"][text] == pytest.approx(lm.evaluate(model, f"{corpus}/ptb.{text}.txt"), rel=1e-6)
    best = record["best"]
    applied = run_lm("eval", f"--save_path={folder}", f"--input={corpus}/ptb.test.txt", "--adapt=tuned")
    assert perplexity_printed(applied) == pytest.approx(record[best]["test"], abs=0.0015)
    assert applied.stdout.strip().endswith(adapt.flags_text(adapt.settings_of(record, best)))
    # Values of our own in adapt.json: eval --adapt=tuned applies them.
    ours = dict(cache_size=3, cache_theta=0.25, cache_lambda=0.4)
    record.update(best="cache", cache=dict(record["cache"], **ours))
    with open(os.path.join(folder, checkpoint.ADAPT), "w") as f:
        json.dump(record, f)
    applied = run_lm("eval", f"--save_path={folder}", f"--input={corpus}/ptb.test.txt", "--adapt=tuned")
    assert perplexity_printed(applied) == pytest.approx(adapt.evaluate(adapter, test, ours), abs=0.0015)
    assert applied.stdout.strip().endswith("with --cache_size=3 --cache_theta=0.25 --cache_lambda=0.4")
    # A training run resumes on a tuned folder: adapt.json is one of the files runs write.
    config, vocab, prefix = checkpoint.load(folder)
    assert runfolder.check(folder, config, vocab, runfolder.read_marker(folder)["train_words"]) == prefix


def test_tune_searches_the_rms_form_when_given_its_statistics(trained, folder, model):
    corpus = trained[1]
    rms = dict(dynamic_rms=f"{corpus}/ptb.train.txt", dynamic_stat_words=500, dynamic_stat_batch=1, dynamic_eps=0.002)
    before = snapshot(folder)
    tuned = run_lm("tune", f"--save_path={folder}", f"--valid={corpus}/ptb.valid.txt", f"--input={corpus}/ptb.test.txt",
                   *(f"--{k}={v}" for k, v in rms.items()))
    assert tuned.returncode == 0, tuned.stderr
    passes = tune.RMS_SEARCH.passes
    assert re.search(rf"^dynamic_rms {passes}/{passes}: ", tuned.stdout, re.M)
    with open(os.path.join(folder, checkpoint.ADAPT)) as f:
        record = json.load(f)
    assert set(record) == {"static", "cache", "dynamic", "dynamic_rms", "both", "best", "checkpoint", "valid", "test"}
    assert {k: record["dynamic_rms"][k] for k in rms} == rms
    # The combined method is the cache on the better form on valid, with that form's settings.
    form = min(("dynamic", "dynamic_rms"), key=lambda method: record[method]["valid"])
    assert adapt.settings_of(record, "both") == {**{k: record["both"][k] for k in adapt.CACHE},
                                                 **adapt.settings_of(record, form)}
    assert re.search(r"^dynamic_rms +[\d.]+ +[\d.]+  --dynamic_lr=.* --dynamic_eps=0.002$", tuned.stdout, re.M)
    # The chosen window's statistics are kept in the folder (its only new file but adapt.json; no progress file
    # left): eval with that form's settings reads them, and gives the perplexity tune printed.
    window = record["dynamic_rms"]["dynamic_window"]
    after = snapshot(folder)
    for name in (checkpoint.ADAPT, checkpoint.ADAPT_RMS):
        after.pop(os.path.join(folder, name))
    assert after == before
    statistics = lm.read_ids(model, rms["dynamic_rms"])[:501]
    assert DynamicEvaluation(model, statistics).statistics.load(os.path.join(folder, checkpoint.ADAPT_RMS)) == [window]
    applied = run_lm("eval", f"--save_path={folder}", f"--input={corpus}/ptb.test.txt",
                     *adapt.flags_text(adapt.settings_of(record, "dynamic_rms")).split())
    assert perplexity_printed(applied) == pytest.approx(record["dynamic_rms"]["test"], abs=0.0015)
    assert applied.stderr.strip() == (f"note: the RMS form's statistics for windows of {window} words read from "
                                      f"{folder}/{checkpoint.ADAPT_RMS} (lm.py tune gathered them on the same text "
                                      "with the same weights)")
    # eval --adapt=tuned applies the RMS form too, here under "both" with the whole training text's statistics
    # (dynamic_stat_words null), read again from the file adapt.json names.
    ours = dict(cache_size=3, cache_theta=0.25, cache_lambda=0.4, dynamic_lr=0.01, dynamic_decay=0.02,
                dynamic_window=6, **rms, valid=1.0)
    record.update(best="both", both=dict(ours, dynamic_stat_words=None))
    with open(os.path.join(folder, checkpoint.ADAPT), "w") as f:
        json.dump(record, f)
    applied = run_lm("eval", f"--save_path={folder}", f"--input={corpus}/ptb.test.txt", "--adapt=tuned")
    settings = adapt.settings_of(record, "both")
    expected = adapt.evaluate(DynamicEvaluation(model, lm.read_ids(model, rms["dynamic_rms"])),
                              lm.read_ids(model, f"{corpus}/ptb.test.txt"), settings)
    assert perplexity_printed(applied) == pytest.approx(expected, abs=0.0015)
    assert applied.stdout.strip().endswith(adapt.flags_text(settings)) and "stat_words" not in applied.stdout
    assert "statistics" not in applied.stderr  # another text and window: gathered
    # Settings tune chooses itself are refused, as are the RMS form's without its text.
    for bad, message in ((["--cache_size=5", "--dynamic_window=3"], "tune chooses the settings itself: leave out "
                                                                     "--cache_size --dynamic_window"),
                         (["--dynamic_stat_words=500"], "--dynamic_eps are the RMS form's: give --dynamic_rms=FILE"),
                         ([f"--dynamic_rms={corpus}/ptb.train.txt", "--dynamic_stat_words=19"],
                          "statistics text has 19 words to predict, fewer than a window of 20, the longest tune "
                          "tries: give a longer --dynamic_rms or a larger --dynamic_stat_words")):
        assert_one_line_error(run_lm("tune", f"--save_path={folder}", f"--valid={corpus}/ptb.valid.txt",
                                     f"--input={corpus}/ptb.test.txt", *bad), "^error: .*" + re.escape(message))


def test_eval_tuned_refuses_a_bad_adapt_json(trained, folder):
    text = f"--input={trained[1]}/ptb.test.txt"
    path = os.path.join(folder, checkpoint.ADAPT)
    with open(path, "w") as f:
        f.write("{not json")
    assert_one_line_error(run_lm("eval", f"--save_path={folder}", text, "--adapt=tuned"),
                          "^error: .*adapt.json is not one lm.py tune wrote .*: rerun lm.py tune$")
    with open(path, "w") as f:
        json.dump({"best": "dynamic", "dynamic": {"dynamic_lr": -1, "dynamic_decay": 0, "dynamic_window": 5}}, f)
    assert_one_line_error(run_lm("eval", f"--save_path={folder}", text, "--adapt=tuned"),
                          r"^error: .*adapt.json holds dynamic_lr=-1: give a number from 0 to 3.4e38; rerun lm.py tune")
    rms = {"dynamic_lr": 1e-3, "dynamic_decay": 0, "dynamic_window": 5, "dynamic_rms": 3, "dynamic_stat_words": None,
           "dynamic_eps": 1e-3}
    with open(path, "w") as f:
        json.dump({"best": "dynamic_rms", "dynamic_rms": rms}, f)
    assert_one_line_error(run_lm("eval", f"--save_path={folder}", text, "--adapt=tuned"),
                          r"^error: .*adapt.json holds dynamic_rms=3: give the training text's file name; rerun")
    with open(path, "w") as f:  # (without dynamic_stat_batch, as tune wrote before that flag: batch 1)
        json.dump({"best": "dynamic_rms", "dynamic_rms": dict(rms, dynamic_rms="train.txt", dynamic_stat_batch=0)}, f)
    assert_one_line_error(run_lm("eval", f"--save_path={folder}", text, "--adapt=tuned"),
                          r"^error: .*adapt.json holds dynamic_stat_batch=0: give an integer of at least 1 .*; rerun")


@pytest.mark.parametrize("record", [[], None, "dynamic", 3, {"best": 3}, {"best": []}, {"best": "cache", "cache": []},
                                    {"best": "cache", "cache": {"cache_size": 100}}])
def test_adapt_json_of_another_shape_is_refused(tmp_path, record):
    """Valid JSON that tune did not write (a list, null, a string, a method without its settings): the message
    eval --adapt=tuned prints in one line, as for a file that is not JSON (the test above)."""
    (tmp_path / checkpoint.ADAPT).write_text(json.dumps(record))
    with pytest.raises(checkpoint.CheckpointError, match=r"adapt.json is not one lm.py tune wrote \(.*\): rerun lm.py "
                                                         "tune$"):
        adapt.read_tuned(str(tmp_path))


def test_ctrl_c_in_tune_ends_with_one_line_and_keeps_its_progress_whole(trained, folder, tmp_path):
    corpus = trained[1]
    # A valid text 100 times the fixture's: what follows the first dynamic pass then takes tens of seconds, not
    # the 1.4 s in which a parent delayed by a loaded machine once saw the whole tune end before its Ctrl-C.
    with open(f"{corpus}/ptb.valid.txt") as f:
        (tmp_path / "valid.txt").write_text(f.read() * 100)
    before = snapshot(folder)
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "lm.py"), "tune", f"--save_path={folder}",
                                f"--valid={tmp_path}/valid.txt", f"--input={corpus}/ptb.test.txt"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = []
    for line in process.stdout:  # the grid is under way: 12 more dynamic passes and their test pass to go
        seen.append(line)
        if line.startswith("dynamic 1/"):
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=300)
    assert seen[-1].startswith("dynamic 1/"), seen
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert re.fullmatch(r"error: stopped by signal 2.*: rerun the same command to resume", stderr.strip())
    after = snapshot(folder)
    after.pop(os.path.join(folder, checkpoint.ADAPT_PROGRESS))  # what a rerun resumes from
    assert after == before  # no adapt.json, no temporary file
    with open(os.path.join(folder, checkpoint.ADAPT_PROGRESS)) as f:
        assert len(json.load(f)["done"]["dynamic"]) >= 1  # whole: it parses


def test_a_signal_inside_tensorflow_ends_a_dynamic_pass_without_waiting_for_its_lock(model, monkeypatch):
    """A Ctrl-C that lands while TensorFlow builds an op leaves the graph's lock held (the op's code never gets to
    release it), and a session.run after it waits for ever: a tune once hung so. The pass ends without one; another
    error still puts the trained weights back."""
    adapter = DynamicEvaluation(model)
    trained_weights = weights(adapter)
    ids = model.encode("<eos> the cat sat on the mat".split())

    def interrupted_inside_tensorflow(*args, **kwargs):
        adapter.session.graph._mutation_lock().__enter__()  # what TensorFlow holds while it builds an op
        raise cli.Interrupted(signal.SIGINT)

    monkeypatch.setattr("tools.dynamic_eval.read_text", interrupted_inside_tensorflow)
    ended = []
    thread = threading.Thread(target=lambda: ended.append(pytest.raises(cli.Interrupted, adapter.dynamic_pass, ids,
                                                                        0.1, 0, 3)), daemon=True)
    thread.start()
    thread.join(120)  # far more than the pass takes; a session.run after the signal would never end
    assert ended, "the pass waited for the lock the signal left held"
    adapter.session.graph._mutation_lock().__exit__(None, None, None)

    def moved_then_failed(session, *args, **kwargs):
        session.run([v.assign(v + 1.0) for v in adapter.variables])
        raise ValueError("a failure of another kind")

    monkeypatch.setattr("tools.dynamic_eval.read_text", moved_then_failed)
    with pytest.raises(ValueError):
        adapter.dynamic_pass(ids, 0.1, 0, 3)
    after = weights(adapter)
    assert all(np.array_equal(after[name], value) for name, value in trained_weights.items())


def test_a_stopped_tune_resumes_where_it_was_and_chooses_the_same(trained, model, tmp_path, monkeypatch):
    """Stopped (a Ctrl-C: KeyboardInterrupt here) in the RMS form's search, at its end, or after its test pass, then
    rerun: what was measured is read back, not measured again, and the record is the unbroken tune's."""
    # Smaller searches of the same shape (6 passes each instead of 13 and 11), and statistics of 200 words: a tune is
    # run seven times here.
    monkeypatch.setattr(tune, "SGD_SEARCH", tune.Search("dynamic", (0.003, 0.03), 20, (10,), (0.006,)))
    monkeypatch.setattr(tune, "RMS_SEARCH", tune.Search("dynamic_rms", (3e-4, 1e-3), 10, (5,), (0.01,)))
    corpus = trained[1]
    valid, test = (lm.read_ids(model, f"{corpus}/ptb.{name}.txt") for name in ("valid", "test"))
    rms = dict(dynamic_rms="train", dynamic_stat_words=200, dynamic_stat_batch=1, dynamic_eps=0.002)
    statistics = lm.read_ids(model, f"{corpus}/ptb.train.txt")[:201]
    whole = tune.tune(DynamicEvaluation(model, statistics), valid, test, say=lambda line: None, rms=rms)
    identity = {"sha256": "the same", **rms}

    def stop_at(prefix, seen):
        def say(line):
            seen.append(line)
            if line.startswith(prefix):
                raise KeyboardInterrupt
        return say

    # Where it stops; the windows whose statistics it kept; the dynamic passes the rerun makes (each method's test pass
    # follows its search: before the RMS form's, the plain form's is done); whether it runs again the pass both is
    # built on (None: whether that pass came before the stop depends on the fixture).
    sgd, rms_passes, windows = tune.SGD_SEARCH.passes, tune.RMS_SEARCH.passes, tune.RMS_SEARCH.windows
    every = sorted((tune.RMS_SEARCH.window,) + windows)
    for stop, kept, passes_again, rerun in (("dynamic_rms 2/", [tune.RMS_SEARCH.window], rms_passes - 2 + 2, None),
                                            ("dynamic_rms: chosen", every, 2, True),
                                            ("dynamic_rms: test", every, 1, True)):
        folder, first, second, calls = str(tmp_path / stop.replace(" ", "_")), [], [], []
        os.makedirs(folder)
        with pytest.raises(KeyboardInterrupt):
            tune.tune(DynamicEvaluation(model, statistics), valid, test, stop_at(stop, first), rms,
                      tune.TuneProgress(folder, identity))
        again = DynamicEvaluation(model, statistics)
        assert again.statistics.load(os.path.join(folder, checkpoint.ADAPT_RMS)) == kept
        dynamic_pass = again.dynamic_pass
        again.dynamic_pass = lambda *args, **kwargs: calls.append(args[1:]) or dynamic_pass(*args, **kwargs)
        resumed = tune.tune(again, valid, test, second.append, rms, tune.TuneProgress(folder, identity))
        before_stop = [line.split(" (")[0] for line in first if line.startswith("dynamic")]
        assert [line.split(" (")[0] for line in second if line.startswith("dynamic")][:len(before_stop)] == before_stop
        reran = any(line.startswith("both: the pass of") for line in second)
        assert reran == rerun if rerun is not None else True, stop
        assert len(calls) == passes_again + reran, (stop, calls)
        assert sum("measured before a stop" in line for line in second) >= 1 + sgd + 2, stop
        assert resumed["best"] == whole["best"]
        for method in set(whole) - {"best"}:
            for k, v in whole[method].items():
                if k not in ("seconds", "statistics_seconds"):
                    assert resumed[method][k] == (pytest.approx(v, rel=1e-5) if isinstance(v, float) else v), \
                        (stop, method, k)
    # Another identity (weights, texts, settings or grids): nothing is read back, and the file is said to be another's.
    assert tune.TuneProgress(folder, identity).done
    other = tune.TuneProgress(folder, {**identity, "dynamic_eps": 0.001})
    assert other.done == {} and other.foreign


def test_a_stop_during_the_first_pass_at_a_window_keeps_its_statistics(trained, model, tmp_path):
    """The RMS form's statistics of a window are on disk before the first pass that needs them: a stop during that
    pass (on medium, 10-30 minutes of gathering) does not lose them."""
    valid = lm.read_ids(model, f"{trained[1]}/ptb.valid.txt")
    statistics = lm.read_ids(model, f"{trained[1]}/ptb.train.txt")[:501]
    adapter = DynamicEvaluation(model, statistics)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C during the pass

    adapter.dynamic_pass = stopped
    with pytest.raises(KeyboardInterrupt):
        tune.search_dynamic(adapter, valid, None, tune.RMS_SEARCH, lambda line: None, eps=0.002,
                            progress=tune.TuneProgress(str(tmp_path), {"sha256": "the same"}))
    path = os.path.join(tmp_path, checkpoint.ADAPT_RMS)
    assert DynamicEvaluation(model, statistics).statistics.load(path) == [tune.RMS_SEARCH.window]


def test_tune_rerun_reads_back_its_progress_file(trained, folder, model):
    """As a user resumes it: a progress file of this tune (planted: its first grid point a perplexity no pass gives)
    is read back and steers the choice, and goes once adapt.json is written; another tune's is replaced, with a note."""
    corpus = trained[1]
    valid, test = (lm.read_ids(model, f"{corpus}/ptb.{name}.txt") for name in ("valid", "test"))
    identity = {"sha256": DynamicEvaluation(model).digest(valid, test, []), "grids": tune.GRIDS}
    first = adapt.flags_text(dict(dynamic_lr=tune.SGD_SEARCH.lrs[0], dynamic_decay=0.0,
                                  dynamic_window=tune.SGD_SEARCH.window))
    path = os.path.join(folder, checkpoint.ADAPT_PROGRESS)
    command = ("tune", f"--save_path={folder}", f"--valid={corpus}/ptb.valid.txt", f"--input={corpus}/ptb.test.txt")
    for planted, resumed in ((identity, True), ({**identity, "sha256": "other weights"}, False)):
        with open(path, "w") as f:
            json.dump({"identity": planted, "done": {"dynamic": {first: {"valid": 1.0, "stopped": False,
                                                                         "seconds": 1.0}}}}, f)
        tuned = run_lm(*command)
        assert tuned.returncode == 0, tuned.stderr
        assert ("Resuming: " in tuned.stdout) == resumed
        assert ("holds another tune's progress" in tuned.stderr) == (not resumed)
        assert (f"dynamic 1/{tune.SGD_SEARCH.passes}: {first}: valid 1.000 (measured before a stop)"
                in tuned.stdout) == resumed
        with open(os.path.join(folder, checkpoint.ADAPT)) as f:
            record = json.load(f)
        assert (record["dynamic"]["valid"] == 1.0) == resumed
        assert not os.path.exists(path)
