import math

import numpy as np
import pytest

import configs
from model import PTBModel, run_epoch
import reader
from tools import checkpoint
from tools.tf1 import tf


class TinyConfig(configs.SmallConfig):
    num_layers, hidden_size, num_steps, batch_size, vocab_size = 2, 8, 5, 4, 50


def build(config, *shapes, rnn_modes=("block",), seed=0, is_training=True):
    """A graph with one model per (batch_size, num_steps, rnn_mode), all sharing one set of variables."""
    graph = tf.Graph()
    models = []
    with graph.as_default():
        tf.set_random_seed(seed)
        initializer = tf.random_uniform_initializer(-config.init_scale, config.init_scale)
        for i, ((batch_size, num_steps), mode) in enumerate(zip(shapes, rnn_modes)):
            with tf.variable_scope("Model", reuse=i > 0, initializer=initializer):
                models.append(PTBModel(is_training and i == 0, config, batch_size, num_steps, mode))
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    return session, models


def random_batch(config, batch_size, num_steps, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, config.vocab_size, (batch_size, num_steps)) for _ in range(2)]


def feed(model, x, y, state=None):
    d = {model.input_data: x, model.targets: y}
    if state is not None:
        d[model.initial_state] = state
    return d


def test_initial_loss_is_close_to_log_vocab():
    config = configs.get_config("test")
    session, (m,) = build(config, (config.batch_size, config.num_steps))
    x, y = random_batch(config, config.batch_size, config.num_steps)
    cost = session.run(m.cost, feed(m, x, y))
    assert cost / config.num_steps == pytest.approx(math.log(config.vocab_size), abs=0.05)


@pytest.mark.parametrize("rnn_mode", ["block", "fast"])
def test_sgd_on_one_batch_lowers_the_loss(rnn_mode):
    config = TinyConfig()
    session, (m,) = build(config, (4, 5), rnn_modes=(rnn_mode,))
    m.assign_lr(session, 1.0)
    x, y = random_batch(config, 4, 5)
    first = session.run(m.cost, feed(m, x, y))
    for _ in range(30):
        session.run(m.train_op, feed(m, x, y))
    assert session.run(m.cost, feed(m, x, y)) < 0.7 * first


@pytest.mark.parametrize("rnn_mode", ["basic", "block"])
def test_final_state_carries_into_the_next_window(rnn_mode):
    """Two windows of 3 with the state carried = one window of 6: the cost and the final state."""
    config = TinyConfig()
    session, (whole, half) = build(config, (2, 6), (2, 3), rnn_modes=(rnn_mode, rnn_mode), is_training=False)
    x, y = random_batch(config, 2, 6)
    cost, state = session.run([whole.cost, whole.final_state], feed(whole, x, y))
    cost1, state1 = session.run([half.cost, half.final_state], feed(half, x[:, :3], y[:, :3]))
    cost2, state2 = session.run([half.cost, half.final_state], feed(half, x[:, 3:], y[:, 3:], state1))
    assert state.shape == (2, 2, 2, 8)
    np.testing.assert_allclose(state2, state, rtol=1e-5, atol=1e-6)
    assert cost1 + cost2 == pytest.approx(cost, rel=1e-5)


@pytest.mark.parametrize("cell, state_parts, variables_per_layer", [("lstm", 2, 2), ("gru", 1, 4)])
def test_basic_and_block_modes_compute_the_same_loss_and_gradients(cell, state_parts, variables_per_layer):
    """BlockLSTM against BasicLSTMCell, GRUBlockCell against GRUCell: same variables, same numbers."""
    config = TinyConfig()
    config.cell = cell
    session, (basic, block) = build(config, (4, 5), (4, 5), rnn_modes=("basic", "block"), is_training=False)
    with session.graph.as_default():
        gradients = [[tf.convert_to_tensor(g) for g in tf.gradients(m.cost, tf.trainable_variables())]
                     for m in (basic, block)]
    x, y = random_batch(config, 4, 5)
    state = np.random.RandomState(1).uniform(-1, 1, (2, state_parts, 4, 8)).astype(np.float32)
    got_basic, got_block = (session.run([m.cost, m.final_state, g], feed(m, x, y, state))
                            for m, g in zip((basic, block), gradients))
    assert got_basic[0] == pytest.approx(got_block[0], rel=1e-6)
    np.testing.assert_allclose(got_basic[1], got_block[1], rtol=1e-5, atol=1e-6)
    assert len(got_basic[2]) == 3 + variables_per_layer * config.num_layers  # + embedding, softmax w and b
    for g_basic, g_block in zip(got_basic[2], got_block[2]):
        np.testing.assert_allclose(g_basic, g_block, rtol=1e-4, atol=1e-6)


def test_clipping_bounds_the_global_gradient_norm():
    config = TinyConfig()
    config.max_grad_norm = 0.01
    session, (m,) = build(config, (4, 5))
    x, y = random_batch(config, 4, 5)
    norm, clipped = session.run([m.grad_norm, m.clipped_grads], feed(m, x, y))
    dense = [g.values if hasattr(g, "values") else g for g in clipped]
    clipped_norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in dense))
    assert norm > 0.01
    assert clipped_norm == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("name, expected", [
    ("small", {0: 1.0, 3: 1.0, 4: 0.5, 5: 0.25, 12: 0.5 ** 9}),
    ("medium", {0: 1.0, 5: 1.0, 6: 0.8, 38: 0.8 ** 33}),
    ("large", {0: 1.0, 13: 1.0, 14: 1 / 1.15, 54: 1.15 ** -41}),
    ("test", {0: 1.0}),
    ("small_tied", {9: 1.0, 10: 0.65, 23: 0.65 ** 14}),
])
def test_learning_rate_schedule(name, expected):
    config = configs.get_config(name)
    for epoch, lr in expected.items():
        assert configs.learning_rate(config, epoch) == pytest.approx(lr, rel=1e-12)


def test_windowed_test_pass_equals_one_word_at_a_time():
    config = TinyConfig()
    session, (_, one, any_length) = build(config, (4, 5), (1, 1), (1, None), rnn_modes=("block",) * 3)
    data = list(np.random.RandomState(2).randint(0, 50, 203))
    step_by_step = run_epoch(session, one, data)
    assert run_epoch(session, any_length, data, window=20) == pytest.approx(step_by_step, rel=1e-5)
    assert run_epoch(session, any_length, data, window=7) == pytest.approx(step_by_step, rel=1e-5)
    # A window longer than the text (--test_window beyond the test text) is the whole text: one window of 202 words.
    assert run_epoch(session, any_length, data, window=10 ** 6) == pytest.approx(step_by_step, rel=1e-5)


def test_checkpoint_round_trip_gives_the_same_valid_perplexity(tmp_path):
    config = TinyConfig()
    data = reader.PTBData(*[list(np.random.RandomState(s).randint(0, 50, 400)) for s in (3, 4, 5)],
                          vocab=[f"w{i}" for i in range(50)])
    session, (m, valid) = build(config, (4, 5), (4, 5), rnn_modes=("block", "block"))
    m.assign_lr(session, 1.0)
    run_epoch(session, m, data.train, m.train_op)
    before = run_epoch(session, valid, data.valid)
    with session.graph.as_default():
        checkpoint.save(session, tf.train.Saver(), str(tmp_path), config, data.vocab)
    assert (tmp_path / "vocab.txt").read_text().split("\n")[:2] == ["w0", "w1"]

    session2, (fresh,) = build(config, (4, 5), is_training=False, seed=7)
    assert run_epoch(session2, fresh, data.valid) != pytest.approx(before, rel=1e-3)
    with session2.graph.as_default():
        tf.train.Saver().restore(session2, str(tmp_path / "model.ckpt"))
    assert run_epoch(session2, fresh, data.valid) == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("precision, tolerance", [("bf16", 2e-2), ("fp16", 2e-3)])
def test_reduced_precision_stays_close_to_fp32(precision, tolerance):
    config = TinyConfig()
    graph = tf.Graph()
    with graph.as_default(), tf.variable_scope("Model", initializer=tf.random_uniform_initializer(-0.5, 0.5)):
        full = PTBModel(False, config, 4, 5, "block", "fp32")
        tf.get_variable_scope().reuse_variables()
        reduced = PTBModel(False, config, 4, 5, "block", precision)
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    x, y = random_batch(config, 4, 5)
    cost_full, cost_reduced = session.run([full.cost, reduced.cost], {**feed(full, x, y), **feed(reduced, x, y)})
    assert cost_reduced == pytest.approx(cost_full, rel=tolerance)
    # The reduced precision really is in the graph (asserted on the graph: whether the two costs differ in
    # their last bit depends on the CPU's rounding).
    dtype = {"bf16": tf.bfloat16, "fp16": tf.float16}[precision]
    assert any(op.type == "MatMul" and op.get_attr("T") == dtype for op in graph.get_operations())


def test_matmul_flops_per_word():
    # small: 2 layers x [400 x 800] + [200 x 10000], two FLOPs a multiply-add
    config = configs.get_config("small")
    assert configs.matmul_flops_per_word(config) == 2 * (2 * 400 * 800 + 200 * 10000)
    config.cell = "gru"  # [x, h] @ [400 x 600] (gates r, u + candidate)
    assert configs.matmul_flops_per_word(config) == 2 * (2 * 400 * 600 + 200 * 10000)
