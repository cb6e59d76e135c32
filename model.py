"""The LSTM language model of Zaremba et al. (2014), as a TensorFlow 1.x graph, and the loop that runs it.

    words -> embedding -> dropout -> LSTM x num_layers (dropout after each) -> softmax -> loss
    training: loss -> gradients -> clipped to a global norm -> plain SGD step

PTBModel builds that graph for one use: training, or evaluation at one batch shape. run_epoch runs it
over a text in windows, carrying the LSTM state from each window to the next (truncated
backpropagation through time).

How the LSTM layers run (`rnn_mode`); every mode reads and writes the same variables, so a checkpoint
trained in one mode loads in any other:

  basic  tf.nn.rnn_cell.BasicLSTMCell, statically unrolled: the tutorial's graph, the reference.
  block  TensorFlow's fused BlockLSTM kernel, one op per layer for a whole window.
  fast   block's forward with a faster gradient of our own (tools/kernels.py); the default of the programs.

Beyond the paper, each off unless its config field is set (configs.Options): GRU and tanh-RNN cells,
tied input and output embeddings, an embedding size of its own, variational (locked) dropout, dropout
of the recurrent state, and dropout of whole words.
"""
import itertools
import math

import reader
from configs import CELLS, RNN_MODES
from tools import kernels
from tools.tf1 import tf

STATE_PARTS = {"lstm": 2, "gru": 1, "rnn": 1}  # the LSTM carries (c, h) from window to window, the others h
MAX_LOG_FLOAT = math.log(1.7976931348623157e308)  # exp() of more overflows a float64


class PTBModel:
    """The graph of one use of the model: training (is_training), or evaluation at one batch shape.

    Its input is `input_data` and `targets`, int32 [batch_size, num_steps] placeholders, and
    `initial_state`, float32 [num_layers, 2 (c, h), batch_size, hidden_size] (zeros unless fed;
    1 (h) instead of 2 for the GRU and the tanh RNN).
    `final_state` has the same layout, so feeding it back as the next window's initial_state
    carries the LSTM through the text (truncated backpropagation through time).
    num_steps=None builds a graph that takes windows of any length, batch_size=None one
    that takes any number of rows.
    `inputs`, tensors (input_data, targets, initial_state) to read instead of placeholders: how
    tools/distribute.py gives each replica its rows of the batch.
    precision: the dtype of the matmuls (fp32; bf16: the softmax and fast mode's gradient; fp16: the
    softmax and the LSTM); variables, loss and gradient clipping stay fp32.
    """

    def __init__(self, is_training, config, batch_size, num_steps, rnn_mode="block", precision="fp32", inputs=None):
        check_options(config, rnn_mode)
        self.is_training, self.config, self.rnn_mode, self.precision = is_training, config, rnn_mode, precision
        self.batch_size, self.num_steps = batch_size, num_steps
        self.compute_dtype = kernels.PRECISION_DTYPES[precision]
        self.keep_prob = config.keep_prob if is_training else 1.0
        self.state_keep_prob = config.state_keep_prob if is_training else 1.0
        self.word_keep_prob = config.word_keep_prob if is_training else 1.0
        size, layers, vocab_size = config.hidden_size, config.num_layers, config.vocab_size

        if inputs is None:
            self.input_data = tf.placeholder(tf.int32, [batch_size, num_steps], name="input_data")
            self.targets = tf.placeholder(tf.int32, [batch_size, num_steps], name="targets")
        else:
            self.input_data, self.targets, self.initial_state = inputs
        shape = tf.shape(self.input_data)  # [batch_size, num_steps], known only at run time when None
        if inputs is None:
            parts = STATE_PARTS[config.cell]
            zeros = tf.zeros([layers, parts, shape[0], size], tf.float32)
            self.initial_state = tf.placeholder_with_default(zeros, [layers, parts, batch_size, size],
                                                             name="initial_state")

        # Each word id picks its row of the embedding: the word's vector, learned with the rest.
        with self.embedding_device():
            embedding = tf.get_variable("embedding", [vocab_size, config.embedding_size or size], tf.float32)
            inputs = tf.nn.embedding_lookup(embedding, self.input_data)
        inputs = self.dropout(self.word_dropout(inputs), site=0)

        self.outputs, final_state = self.rnn_layers(inputs, self.initial_state)  # [batch, time, hidden]
        self.final_state = tf.identity(final_state, name="final_state")

        # The softmax over the vocabulary, computed for all batch_size x num_steps positions at once.
        output = tf.reshape(self.outputs, [-1, size])
        if config.tie_embeddings:  # Press & Wolf (2017): the output embedding is the input one
            softmax_w = tf.transpose(embedding)
        else:
            softmax_w = tf.get_variable("softmax_w", [size, vocab_size], tf.float32)
        softmax_b = tf.get_variable("softmax_b", [vocab_size], tf.float32)
        logits = kernels.matmul(output, softmax_w, self.compute_dtype) + softmax_b
        self.logits = tf.reshape(logits, tf.concat([shape, [vocab_size]], 0))
        self.log_probs = tf.nn.log_softmax(self.logits)  # log p(next word) at each position, for inference
        # -log p(target word), one value per position: [batch_size, num_steps].
        self.word_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.targets, logits=self.logits)
        # The cost the tutorial reports and trains on: the sum over time of the batch-mean loss.
        self.cost = self.batch_mean(tf.reduce_sum(self.word_losses), shape)

        if is_training:
            self.build_train_op()

    def rnn_layers(self, inputs, initial_state):
        """inputs [batch, time, embedding] -> (outputs [batch, time, hidden], final state)."""
        if self.config.cell == "lstm" and self.rnn_mode != "basic":
            return self.lstm_layers(inputs, initial_state)
        return self.cell_layers(inputs, initial_state)

    def lstm_layers(self, inputs, initial_state):
        """The stacked LSTM, each layer one fused op over the whole window, dropout on each layer's output."""
        size = self.config.hidden_size
        # BlockLSTM has fp32 and fp16 kernels, none for bf16: under bf16 the LSTM's forward runs in fp32.
        dtype = tf.float16 if self.compute_dtype == tf.float16 else tf.float32
        x = tf.cast(tf.transpose(inputs, [1, 0, 2]), dtype)  # BlockLSTM is time-major
        finals = []
        for l in range(self.config.num_layers):
            input_size = x.shape[-1]
            # The variable names BasicLSTMCell uses, so checkpoints move freely between modes.
            with tf.variable_scope(f"RNN/multi_rnn_cell/cell_{l}/basic_lstm_cell"):
                kernel = tf.get_variable("kernel", [input_size + size, 4 * size], tf.float32)
                bias = tf.get_variable("bias", [4 * size], tf.float32, initializer=tf.zeros_initializer())
            cs, x = self.lstm_layer(x, tf.cast(initial_state[l, 0], dtype), tf.cast(initial_state[l, 1], dtype),
                                    tf.cast(kernel, dtype), tf.cast(bias, dtype))
            finals.append(tf.cast(tf.stack([cs[-1], x[-1]]), tf.float32))
            x = self.dropout(x, site=l + 1, time_axis=0)
        return tf.cast(tf.transpose(x, [1, 0, 2]), tf.float32), tf.stack(finals)

    def lstm_layer(self, x, c, h, kernel, bias):
        """One LSTM layer over a window: x [time, batch, input], the state (c, h) it starts from [batch, hidden]
        -> its cell states and outputs at every step, each [time, batch, hidden]. At each step t:

            i, g, f, o = split([x_t, h_t-1] @ kernel + bias, 4)     the input, candidate, forget and output gates
            c_t = sigmoid(f) * c_t-1 + sigmoid(i) * tanh(g)         forget some of the cell, write some of g
            h_t = sigmoid(o) * tanh(c_t)                            what the layer outputs and carries

        BasicLSTMCell's arithmetic (its gate order, forget_bias 0, no peepholes, no clipping), run as one
        BlockLSTM op (tools/kernels.py): fast mode with the faster gradient, block mode with TensorFlow's.
        """
        if self.rnn_mode == "fast":
            return kernels.fast_block_lstm(x, c, h, kernel, bias, self.precision)
        _, cs, _, _, _, _, hs = kernels.fused_lstm(x, c, h, kernel, bias)
        return cs, hs

    def cell_layers(self, inputs, initial_state):
        """The tutorial's graph: a MultiRNNCell of cells with output dropout, unrolled num_steps times
        (or, for windows of any length, looped over time by dynamic_rnn). The GRU and tanh RNN run here too."""
        config, lstm = self.config, self.config.cell == "lstm"

        def cell():
            size, reuse = config.hidden_size, tf.get_variable_scope().reuse
            if lstm:
                cell = tf.nn.rnn_cell.BasicLSTMCell(size, forget_bias=0.0, reuse=reuse)
            elif config.cell == "gru":
                gru = tf.nn.rnn_cell.GRUCell if self.rnn_mode == "basic" else kernels.FusedGRUCell
                cell = gru(size, reuse=reuse, name="gru_cell")  # one variable name for both
            else:
                cell = tf.nn.rnn_cell.BasicRNNCell(size, reuse=reuse)
            if self.keep_prob < 1 or self.state_keep_prob < 1:
                cell = tf.nn.rnn_cell.DropoutWrapper(
                    cell, output_keep_prob=self.keep_prob, state_keep_prob=self.state_keep_prob,
                    variational_recurrent=config.variational_dropout, dtype=tf.float32)
            return cell

        cells = tf.nn.rnn_cell.MultiRNNCell([cell() for _ in range(config.num_layers)])
        layers = tf.unstack(initial_state)
        state = tuple(tf.nn.rnn_cell.LSTMStateTuple(s[0], s[1]) if lstm else s[0] for s in layers)
        if self.num_steps is None:
            outputs, finals = tf.nn.dynamic_rnn(cells, inputs, initial_state=state, scope="RNN")
        else:
            outputs, finals = tf.nn.static_rnn(cells, tf.unstack(inputs, num=self.num_steps, axis=1),
                                               initial_state=state, scope="RNN")
            outputs = tf.stack(outputs, axis=1)
        return outputs, tf.stack([tf.stack([s.c, s.h]) if lstm else s[None] for s in finals])

    def dropout(self, x, site, time_axis=1):
        """Zeroes each value with probability 1 - keep_prob and scales the rest by 1 / keep_prob (training only).

        Variational (locked) dropout: one mask per sequence, the same at every time step."""
        if self.keep_prob >= 1.0:
            return x
        noise_shape = self.noise_shape(x, time_axis)
        return tf.nn.experimental.stateless_dropout(x, rate=1.0 - self.keep_prob, seed=self.seed(site),
                                                    noise_shape=noise_shape)

    def noise_shape(self, x, time_axis):
        """The dropout mask's shape: x's (None), or x's with 1 on the time axis for variational dropout."""
        if not self.config.variational_dropout:
            return None
        return tf.tensor_scatter_nd_update(tf.shape(x), [[time_axis]], [1])

    def word_dropout(self, inputs):
        """Drops whole words (embedding dropout): every use of a dropped word in the batch reads zeros."""
        if self.word_keep_prob >= 1.0:
            return inputs
        keep = tf.nn.experimental.stateless_dropout(tf.ones([self.config.vocab_size, 1]), seed=self.seed(15),
                                                    rate=1.0 - self.word_keep_prob)
        return inputs * tf.nn.embedding_lookup(keep, self.input_data)

    def seed(self, site):
        """Dropout seeds are a function of (run seed, training step, site in the graph).

        Stateless: a run resumed from a checkpoint draws the very masks it would have drawn.
        """
        step = tf.train.get_or_create_global_step()
        return tf.stack([dropout_seed(), step * 16 + site])

    def embedding_device(self):
        """Where the embedding and its lookup are placed: the lookup's gather is a CPU op, kept with its table."""
        return tf.device("/cpu:0")

    def batch_mean(self, total, shape):
        """A sum over the batch's rows -> their mean."""
        return total / tf.cast(shape[0], tf.float32)

    def build_train_op(self):
        """Plain SGD on gradients clipped to a global norm of max_grad_norm."""
        self.lr = tf.Variable(0.0, trainable=False, name="learning_rate")
        tvars = tf.trainable_variables()
        grads = tf.gradients(self.cost, tvars)
        self.clipped_grads, self.grad_norm = tf.clip_by_global_norm(grads, self.config.max_grad_norm)
        optimizer = tf.train.GradientDescentOptimizer(self.lr)
        self.train_op = optimizer.apply_gradients(zip(self.clipped_grads, tvars),
                                                  global_step=tf.train.get_or_create_global_step())
        self.new_lr = tf.placeholder(tf.float32, [], name="new_learning_rate")
        self.lr_update = tf.assign(self.lr, self.new_lr)

    def assign_lr(self, session, lr_value):
        session.run(self.lr_update, feed_dict={self.new_lr: lr_value})


def check_options(config, rnn_mode):
    """Refuses combinations of options the graph cannot build, saying what to change."""
    if rnn_mode not in RNN_MODES:
        raise ValueError(f"unknown rnn_mode {rnn_mode!r}: choose one of {', '.join(RNN_MODES)}")
    if config.cell not in CELLS:
        raise ValueError(f"unknown cell {config.cell!r}: choose one of {', '.join(CELLS)}")
    embedding_size = config.embedding_size or config.hidden_size
    if config.tie_embeddings and embedding_size != config.hidden_size:
        raise ValueError(f"tied embeddings need embedding_size ({embedding_size}) = hidden_size "
                         f"({config.hidden_size}): the softmax weight is the transposed embedding")
    if config.state_keep_prob < 1 and config.cell == "lstm" and rnn_mode != "basic":
        raise ValueError("dropout on the recurrent state needs the cell-by-cell graph: use --rnn_mode=basic")


def dropout_seed():
    """The run's dropout seed: a variable, so that it is saved and restored with the weights."""
    with tf.variable_scope("Train", reuse=tf.AUTO_REUSE):
        return tf.get_variable("dropout_seed", [], tf.int64, trainable=False, initializer=tf.zeros_initializer())


class Position:
    """How far a pass over a text has got: windows done, their summed cost and length, the LSTM state."""

    def __init__(self, step=0, costs=0.0, iters=0, state=None):
        self.step, self.costs, self.iters, self.state = step, costs, iters, state

    def advance(self, cost, state, num_steps):
        self.step, self.costs, self.iters, self.state = self.step + 1, self.costs + cost, self.iters + num_steps, state

    @property
    def perplexity(self):
        """exp(mean loss per word); inf where that is beyond a float (a diverged model), not an OverflowError."""
        mean_loss = self.costs / self.iters
        return math.inf if mean_loss > MAX_LOG_FLOAT else math.exp(mean_loss)


def run_epoch(session, model, data, train_op=None, window=None, position=None, on_step=None):
    """One pass over `data`; returns its perplexity, exp(total cost / total steps).

    The final LSTM state of each window is fed as the initial state of the next one (carry_state).
    A model built with num_steps=None is fed windows of `window` words (at most the whole text),
    the last one shorter, so that every word is scored exactly once. A pass can start from a saved
    `position`; on_step(position, fetched values, epoch_size) is called after each window.
    """
    num_steps = model.num_steps or min(window, len(data) - 1)
    windows = reader.ptb_iterator(data, model.batch_size, num_steps, keep_remainder=model.num_steps is None)
    epoch_size = reader.epoch_size(len(data), model.batch_size, num_steps)
    fetches = {"cost": model.cost}
    if train_op is not None:
        fetches.update(train_op=train_op, grad_norm=model.grad_norm)

    position = position or Position()
    windows = itertools.islice(windows, position.step, None)  # skips the windows done before a resume
    for x, vals in carry_state(session, windows, lambda length: (model, fetches), state=position.state):
        position.advance(vals["cost"], vals["final_state"], x.shape[1])
        if on_step:
            on_step(position, vals, epoch_size)
    return position.perplexity


def carry_state(session, windows, graph_for, feed=None, state=None):
    """Truncated backpropagation through time: runs each (x, y) window of `windows` through the graph
    graph_for(its length) gives, (a PTBModel, {name: what else to fetch}), feeding each window's final LSTM
    state as the next one's initial state; the first starts from `state` (zeros if None).

    Yields (x, the fetched values and "final_state") for each window; `feed`: more to feed every window."""
    for x, y in windows:
        model, fetches = graph_for(x.shape[1])
        feed_dict = {model.input_data: x, model.targets: y, **(feed or {})}
        if state is not None:  # else initial_state's default: zeros
            feed_dict[model.initial_state] = state
        vals = session.run({**fetches, "final_state": model.final_state}, feed_dict)
        state = vals["final_state"]
        yield x, vals
