"""tools/kernels.py: rnn_mode fast (BlockLSTM's forward with a gradient of our own, kernels.fast_block_lstm) and
split_lstm's forward, against basic and block.

Every comparison loads one set of weights into models of two modes (variables shared in one graph), feeds them a
nonzero initial state, and differentiates cost + a random projection of the final state: the final state's part
sends a gradient into each layer's last c and h from outside, a path the cost alone (training) leaves at zero.
"""
import numpy as np
import pytest

from model import PTBModel, check_options
from tools.fast_variants import FastVariant
from tools.tf1 import tf
from test_model import TinyConfig, feed, random_batch


def tiny(**options):
    config = TinyConfig()
    config.init_scale = 0.5  # weights big enough that the gates saturate unevenly and every gradient term counts
    for key, value in options.items():
        setattr(config, key, value)
    return config


def build_models(config, *specs, is_training=False, batch_size=4):
    """One graph with a model per (rnn_mode, num_steps[, backward[, forward]]), all sharing one set of variables.

    Returns the session, the models, and per model what to fetch: cost, final state, the gradients of the
    objective for every trainable variable, and for the initial state.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(0)
        initializer = tf.random_uniform_initializer(-config.init_scale, config.init_scale)
        models = []
        for i, (mode, num_steps, *fast) in enumerate(specs):
            with tf.variable_scope("Model", reuse=i > 0, initializer=initializer):
                if mode == "fast" and fast:  # backward "unroll" or "loop", forward "block" or "split"
                    options = dict(unroll=fast[0] == "unroll", **dict(zip(("forward",), fast[1:])))
                    models.append(FastVariant(is_training, config, batch_size, num_steps, mode, options=options))
                else:
                    models.append(PTBModel(is_training, config, batch_size, num_steps, mode))
        state_shape = [config.num_layers, 2, 4, config.hidden_size]
        probe = tf.constant(np.random.RandomState(3).normal(size=state_shape).astype(np.float32))
        fetches = []
        for m in models:
            objective = m.cost + tf.reduce_sum(m.final_state * probe)
            grads = tf.gradients(objective, tf.trainable_variables() + [m.initial_state])
            grads = [tf.convert_to_tensor(g) for g in grads]  # the embedding's IndexedSlices, dense
            fetches.append({"cost": m.cost, "final_state": m.final_state, "grads": grads[:-1], "state_grad": grads[-1]})
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    return session, models, fetches


def run_all(session, models, fetches, config, num_steps=5):
    x, y = random_batch(config, 4, num_steps)
    state = np.random.RandomState(1).uniform(-1, 1, (config.num_layers, 2, 4, config.hidden_size)).astype(np.float32)
    return [session.run(f, feed(m, x, y, state)) for m, f in zip(models, fetches)]


def assert_same(got, expected, rtol, atol):
    assert got["cost"] == pytest.approx(expected["cost"], rel=1e-6)
    np.testing.assert_allclose(got["final_state"], expected["final_state"], rtol=1e-5, atol=1e-6)
    assert len(got["grads"]) == len(expected["grads"])
    for g, e in zip(got["grads"], expected["grads"]):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got["state_grad"], expected["state_grad"], rtol=rtol, atol=atol)


@pytest.mark.parametrize("embedding_size", [None, 6])
@pytest.mark.parametrize("num_steps, backward", [(5, "unroll"), (5, "loop"), (None, "unroll")])
def test_fast_matches_basic(num_steps, backward, embedding_size):
    """Loss, final state and every gradient, as BasicLSTMCell computes them.

    num_steps=None: windows of any length, where the gradient has to loop (tf.while_loop) whatever was asked,
    against basic's dynamic_rnn; embedding_size 6: the first layer's input is narrower than its state.
    """
    config = tiny(embedding_size=embedding_size)
    session, models, fetches = build_models(config, ("basic", num_steps, "unroll"), ("fast", num_steps, backward))
    basic, fast = run_all(session, models, fetches, config)
    assert len(fast["grads"]) == 3 + 2 * config.num_layers  # embedding, softmax w and b; a kernel and bias per layer
    assert_same(fast, basic, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backward", ["unroll", "loop"])
def test_initial_state_gradient_matches_basic(backward):
    """The gradient reaching each layer's initial c and h: what the previous window would get in full BPTT."""
    config = tiny()
    session, models, fetches = build_models(config, ("basic", 5, "unroll"), ("fast", 5, backward))
    basic, fast = run_all(session, models, fetches, config)
    for layer in range(config.num_layers):
        for part in (0, 1):  # c, h
            assert np.abs(basic["state_grad"][layer, part]).min() > 0  # not vacuous: every entry gets a gradient
            np.testing.assert_allclose(fast["state_grad"][layer, part], basic["state_grad"][layer, part],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backward", ["unroll", "loop"])
@pytest.mark.parametrize("embedding_size", [None, 6])
def test_fast_matches_tensorflows_block_lstm_grad_tightly(backward, embedding_size):
    """The same forward op as block, so only the summation order of the gradient may differ from BlockLSTMGrad's."""
    config = tiny(embedding_size=embedding_size)
    session, models, fetches = build_models(config, ("block", 5, "unroll"), ("fast", 5, backward))
    block, fast = run_all(session, models, fetches, config)
    assert fast["cost"] == block["cost"]  # the very same ops forward
    np.testing.assert_array_equal(fast["final_state"], block["final_state"])
    for g, e in zip(fast["grads"] + [fast["state_grad"]], block["grads"] + [block["state_grad"]]):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variational", [False, True])
def test_dropout_masks_and_gradients_match_block(variational):
    """Training graphs with dropout: fast and block draw the same stateless masks (a function of the shared global
    step), so they agree step after step. (basic mode's DropoutWrapper draws masks of its own on every run:
    it cannot be compared under dropout.)"""
    config = tiny(keep_prob=0.5, variational_dropout=variational, embedding_size=6)
    session, models, fetches = build_models(config, ("block", 5, "unroll"), ("fast", 5, "unroll"), is_training=True)
    with session.graph.as_default():
        next_step = tf.assign_add(tf.train.get_global_step(), 1)
        outputs = [m.outputs for m in models]
    costs = []
    for _ in range(2):
        block, fast = run_all(session, models, fetches, config)
        x, y = random_batch(config, 4, 5)
        assert (session.run(outputs[1], feed(models[1], x, y)) == 0).any()  # dropout is on
        assert fast["cost"] == block["cost"]
        for g, e in zip(fast["grads"] + [fast["state_grad"]], block["grads"] + [block["state_grad"]]):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
        costs.append(fast["cost"])
        session.run(next_step)
    assert costs[0] != costs[1]  # the next step drew new masks, in both models alike


@pytest.mark.parametrize("embedding_size", [None, 6])
def test_split_forward_matches_basic(embedding_size):
    """forward="split" (training graphs): the forward of our own ops, x @ w_x over the window and only
    h @ w_h step by step, gives BasicLSTMCell's loss, state and gradients, and runs no BlockLSTM."""
    config = tiny(embedding_size=embedding_size)
    session, models, fetches = build_models(config, ("basic", 5, "unroll"), ("fast", 5, "unroll", "split"),
                                            is_training=True)
    basic, split = run_all(session, models, fetches, config)
    assert_same(split, basic, rtol=1e-5, atol=1e-6)
    assert models[1].options["forward"] == "split"
    assert "BlockLSTM" not in {op.type for op in session.graph.get_operations()}


def test_split_forward_under_dropout_matches_block():
    config = tiny(keep_prob=0.5, embedding_size=6)
    session, models, fetches = build_models(config, ("block", 5, "unroll"), ("fast", 5, "unroll", "split"),
                                            is_training=True)
    block, split = run_all(session, models, fetches, config)
    assert_same(split, block, rtol=1e-5, atol=1e-6)


def test_split_forward_only_where_the_window_is_known():
    """Evaluation graphs, and training graphs of any window length, keep BlockLSTM's forward."""
    for is_training, num_steps in ((False, 5), (True, None)):
        with tf.Graph().as_default():
            FastVariant(is_training, tiny(), 4, num_steps, "fast", options=dict(forward="split"))
            assert "BlockLSTM" in {op.type for op in tf.get_default_graph().get_operations()}


def test_fast_mode_trains_without_block_lstm_grad():
    """Its training graph uses our gradient, not TensorFlow's (that it learns: test_model's SGD test)."""
    session, _, _ = build_models(tiny(init_scale=0.1), ("fast", 5, "unroll"), is_training=True)
    op_types = {op.type for op in session.graph.get_operations()}
    assert "LSTMBlockCellGrad" in op_types and "BlockLSTMGrad" not in op_types


def test_fast_mode_reads_block_modes_variables():
    """The same variable names and shapes as block (and basic): checkpoints move between the modes."""
    shapes = []
    for mode in ("block", "fast"):
        with tf.Graph().as_default(), tf.variable_scope("Model"):
            PTBModel(True, tiny(embedding_size=6), 4, 5, mode)
            shapes.append({v.op.name: v.shape.as_list() for v in tf.global_variables()})
    assert shapes[0] == shapes[1]


def test_fast_mode_carries_its_state_and_evaluates_any_length():
    """Two windows of 3 with the state carried = one window of 6 = the any-length graph on 6."""
    config = tiny()
    session, (whole, half, any_length), _ = build_models(config, ("fast", 6, "unroll"), ("fast", 3, "unroll"),
                                                         ("fast", None, "unroll"))
    x, y = random_batch(config, 4, 6)
    cost, state = session.run([whole.cost, whole.final_state], feed(whole, x, y))
    cost1, state1 = session.run([half.cost, half.final_state], feed(half, x[:, :3], y[:, :3]))
    cost2, state2 = session.run([half.cost, half.final_state], feed(half, x[:, 3:], y[:, 3:], state1))
    np.testing.assert_allclose(state2, state, rtol=1e-5, atol=1e-6)
    assert cost1 + cost2 == pytest.approx(cost, rel=1e-5)
    assert session.run(any_length.cost, feed(any_length, x, y)) == pytest.approx(cost, rel=1e-6)


def test_fast_mode_with_any_batch_size():
    config = tiny()
    session, models, fetches = build_models(config, ("block", 5, "unroll"), ("fast", 5, "unroll"), batch_size=None)
    block, fast = run_all(session, models, fetches, config)
    for g, e in zip(fast["grads"] + [fast["state_grad"]], block["grads"] + [block["state_grad"]]):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


def evaluation_models(config, *variants):
    """A graph with a PTBModel(False, config, 4, 5, rnn_mode, precision) per (rnn_mode, precision) variant, sharing
    one set of variables (built in the graph before the caller adds to it)."""
    graph = tf.Graph()
    with graph.as_default():
        models = []
        for i, (mode, precision) in enumerate(variants):
            with tf.variable_scope("Model", reuse=i > 0, initializer=tf.random_uniform_initializer(-0.5, 0.5)):
                models.append(PTBModel(False, config, 4, 5, mode, precision))
    return graph, models


def test_fast_mode_in_fp16():
    """BlockLSTM and LSTMBlockCellGrad in half precision: the gradient stays close to block's in fp16."""
    config = tiny()
    graph, models = evaluation_models(config, ("block", "fp16"), ("fast", "fp16"))
    with graph.as_default():
        grads = [[tf.convert_to_tensor(g) for g in tf.gradients(m.cost, tf.trainable_variables())] for m in models]
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    x, y = random_batch(config, 4, 5)
    block, fast = (session.run(g, feed(m, x, y)) for m, g in zip(models, grads))
    for g, e in zip(fast, block):
        # fp16 rounds each of the two graphs' sums its own way (and differently on AVX2 and AVX-512): a
        # tolerance of 1% of the largest entry, far below what a wrong gradient would give.
        np.testing.assert_allclose(g, e, rtol=2e-2, atol=1e-2 * np.abs(e).max())


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_in_fast_mode_are_block_mode(cell):
    config = tiny(cell=cell)
    graph, models = evaluation_models(config, ("block", "fp32"), ("fast", "fp32"))
    with graph.as_default():
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    x, y = random_batch(config, 4, 5)
    block, fast = (session.run(m.cost, feed(m, x, y)) for m in models)
    assert fast == block


def test_fast_mode_refuses_what_block_mode_refuses():
    with pytest.raises(ValueError, match="recurrent state needs the cell-by-cell graph"):
        check_options(tiny(state_keep_prob=0.5), "fast")
    with pytest.raises(ValueError, match="unknown rnn_mode 'cudnn'"):
        check_options(tiny(), "cudnn")


def test_bf16_fast_gradient_stays_close_to_fp32():
    """Under bf16 the backward's matmuls (dx, d kernel, the per-step recurrent one) take bf16 inputs: close to
    fp32, not equal."""
    config = tiny()
    graph, models = evaluation_models(config, ("fast", "fp32"), ("fast", "bf16"))
    with graph.as_default():
        lstm_variables = [v for v in tf.trainable_variables() if "/RNN/" in v.op.name]
        grads = [tf.gradients(m.cost, lstm_variables + [m.initial_state]) for m in models]
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
        bf16_gradient_matmuls = [op for op in graph.get_operations() if op.type == "MatMul"
                                 and op.name.startswith("gradients") and op.get_attr("T") == tf.bfloat16]
    # The softmax's 2, each layer's d_x and d_kernel, and each layer's per-step recurrent d_gates @ w_h^T.
    assert len(bf16_gradient_matmuls) == 2 + 2 * config.num_layers + 5 * config.num_layers
    x, y = random_batch(config, 4, 5)
    full, reduced = (session.run(g, feed(m, x, y)) for m, g in zip(models, grads))
    for g, e in zip(reduced, full):
        np.testing.assert_allclose(g, e, atol=2e-2 * np.abs(e).max())
        assert not np.array_equal(g, e)
