"""Beyond the tutorial: GRU and tanh cells, tied embeddings, embedding size, variational and word dropout."""
import numpy as np
import pytest

from model import PTBModel, check_options
from tools.tf1 import tf
from test_model import TinyConfig, build, feed, random_batch


def tiny(**options):
    config = TinyConfig()
    for key, value in options.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_learn_and_carry_their_state(cell):
    config = tiny(cell=cell)
    session, (m, whole, half, any_length) = build(config, (4, 5), (2, 6), (2, 3), (2, None), rnn_modes=("block",) * 4)
    assert m.initial_state.shape.as_list() == [2, 1, 4, 8]  # h only, a layer
    x, y = random_batch(config, 4, 5)
    m.assign_lr(session, 1.0)
    first = session.run(m.cost, feed(m, x, y))
    for _ in range(30):
        session.run(m.train_op, feed(m, x, y))
    assert session.run(m.cost, feed(m, x, y)) < 0.8 * first
    x, y = random_batch(config, 2, 6, seed=1)
    cost, state = session.run([whole.cost, whole.final_state], feed(whole, x, y))
    cost1, state1 = session.run([half.cost, half.final_state], feed(half, x[:, :3], y[:, :3]))
    cost2, state2 = session.run([half.cost, half.final_state], feed(half, x[:, 3:], y[:, 3:], state1))
    np.testing.assert_allclose(state2, state, rtol=1e-5, atol=1e-6)
    assert cost1 + cost2 == pytest.approx(cost, rel=1e-5)
    assert session.run(any_length.cost, feed(any_length, x, y)) == pytest.approx(cost, rel=1e-5)  # dynamic_rnn


def test_tied_embeddings_share_one_matrix():
    config = tiny(tie_embeddings=True)
    session, (m,) = build(config, (4, 5))
    with session.graph.as_default():
        names = [v.op.name for v in tf.trainable_variables()]
        embedding = [v for v in tf.trainable_variables() if v.op.name == "Model/embedding"][0]
        softmax_b = [v for v in tf.trainable_variables() if v.op.name == "Model/softmax_b"][0]
    assert "Model/softmax_w" not in names
    x, y = random_batch(config, 4, 5)
    logits, out, emb, b = session.run([m.logits, m.outputs, embedding, softmax_b], feed(m, x, y))
    np.testing.assert_allclose(logits, out @ emb.T + b, rtol=1e-4, atol=1e-5)


def test_embedding_size_and_tying_errors():
    config = tiny(embedding_size=6)
    session, (m,) = build(config, (4, 5))
    with session.graph.as_default():
        shapes = {v.op.name: v.shape.as_list() for v in tf.trainable_variables()}
    assert shapes["Model/embedding"] == [50, 6]
    assert shapes["Model/RNN/multi_rnn_cell/cell_0/basic_lstm_cell/kernel"] == [6 + 8, 32]
    assert shapes["Model/RNN/multi_rnn_cell/cell_1/basic_lstm_cell/kernel"] == [8 + 8, 32]
    with pytest.raises(ValueError, match=r"embedding_size \(6\) = hidden_size \(8\)"):
        check_options(tiny(embedding_size=6, tie_embeddings=True), "block")
    with pytest.raises(ValueError, match="recurrent state needs the cell-by-cell graph"):
        check_options(tiny(state_keep_prob=0.5), "block")
    with pytest.raises(ValueError, match="unknown cell 'tree'"):
        check_options(tiny(cell="tree"), "block")


def masks(variational, word_keep_prob=1.0):
    """Dropout masks of a training model on ones: (layer mask [4, 5, 8], word mask, ids, the global step op)."""
    config = tiny(keep_prob=0.5, variational_dropout=variational, word_keep_prob=word_keep_prob)
    graph = tf.Graph()
    with graph.as_default(), tf.variable_scope("Model"):
        m = PTBModel(True, config, 4, 5, "block")
        layer = m.dropout(tf.ones([4, 5, 8]), site=3)
        words = m.word_dropout(tf.ones([4, 5, 8]))
        step = tf.assign_add(tf.train.get_global_step(), 1)
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    ids = np.tile(np.arange(5), (4, 1))  # every row the same five words
    return session, layer, words, step, {m.input_data: ids}


def test_variational_masks_are_constant_across_time():
    session, layer, _, step, fed = masks(variational=True)
    mask = session.run(layer, fed)
    assert set(np.unique(mask)) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / keep_prob
    assert (mask == mask[:, :1, :]).all()  # the same at every time step
    assert not (mask == mask[:1, :, :]).all()  # but its own for each sequence
    np.testing.assert_array_equal(session.run(layer, fed), mask)  # a function of the step: drawn again, the same
    session.run(step)
    assert not (session.run(layer, fed) == mask).all()  # the next step draws new masks


def test_plain_dropout_masks_change_across_time():
    session, layer, _, _, fed = masks(variational=False)
    mask = session.run(layer, fed)
    assert not (mask == mask[:, :1, :]).all()


def test_word_dropout_drops_every_use_of_a_word():
    session, _, words, _, fed = masks(variational=True, word_keep_prob=0.5)
    mask = session.run(words, fed)
    assert set(np.unique(mask)) <= {0.0, 2.0}
    assert (mask == mask[:1]).all()  # word i of every row is the same word: dropped or kept together
    assert (mask == mask[:, :, :1]).all()  # a whole vector at a time
