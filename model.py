"""The LSTM language model of Zaremba et al. (2014), as a TensorFlow 1.x graph.

    words -> embedding -> dropout -> LSTM x num_layers (dropout after each) -> softmax

One model, several ways to run its LSTM layers (`rnn_mode`), all reading and writing
the same variables, so a checkpoint trained in one mode loads in any other:

  basic  tf.nn.rnn_cell.BasicLSTMCell, statically unrolled: the tutorial's reference.
  block  tf.raw_ops.BlockLSTM, TensorFlow's fused kernel that runs a whole window
         in one op; for the GRU, the fused one-step kernel GRUBlockCell.
  fast   block's forward with a gradient of our own (fast_block_lstm): only the recurrence runs
         step by step, the weight and input gradients are one matmul each over the window
         (issue 11). Numerically the same gradient as block; other cells than the LSTM as in block.
         The default: the fastest to train, measured (results/benchmark-{small,medium}-fast.txt).
  cudnn  cuDNN's LSTM on a GPU: not built yet (no GPU to test it on); refused with a clear error.

Both BasicLSTMCell and BlockLSTM compute the gates as [x, h] @ kernel + bias, split
into (input, candidate, forget, output): the same kernel works for both.

Beyond the paper, each off unless its config field is set (configs.Options): GRU and
tanh-RNN cells (GRUCell and BasicRNNCell; the GRU fused in block mode), tied input and
output embeddings, an embedding size of its own, variational (locked) dropout, dropout of
the recurrent state, and dropout of whole words.
"""
import collections
import contextlib
import itertools
import math

import reader
from configs import CELLS, PRECISIONS, RNN_MODES
from tf1 import tf

FUSED_MODES = ("block", "fast")  # the modes that run the LSTM as BlockLSTM and the GRU as GRUBlockCell
FAST_BACKWARDS = ("unroll", "loop")  # how the fast mode's gradient steps back through time
FAST_FORWARDS = ("block", "split")  # the fast mode's forward when training: BlockLSTM, or split_lstm
STATE_PARTS = {"lstm": 2, "gru": 1, "rnn": 1}  # the LSTM carries (c, h) from window to window, the others h
COMPUTE_DTYPES = dict(zip(PRECISIONS, (tf.float32, tf.bfloat16, tf.float16)))  # the matmuls' dtype
MAX_LOG_FLOAT = math.log(1.7976931348623157e308)  # exp() of more overflows a float64


def gpu_available():
    return bool(tf.config.list_physical_devices("GPU"))


def default_rnn_mode():
    """The fastest mode measured (results/benchmark-*-fast.txt): BlockLSTM's forward with our own gradient."""
    return "fast"


def check_rnn_mode(rnn_mode):
    if rnn_mode not in RNN_MODES:
        raise ValueError(f"unknown rnn_mode {rnn_mode!r}: choose one of {', '.join(RNN_MODES)}")
    if rnn_mode == "cudnn" and not gpu_available():
        raise ValueError("rnn_mode cudnn needs a GPU and TensorFlow sees none: use --rnn_mode=block")
    if rnn_mode == "cudnn":
        raise ValueError("rnn_mode cudnn is not built yet (no GPU to test it on): use --rnn_mode=block, "
                         "which runs on the GPU too")


def check_options(config, rnn_mode):
    """Refuses combinations of options the graph cannot build, saying what to change."""
    if config.cell not in CELLS:
        raise ValueError(f"unknown cell {config.cell!r}: choose one of {', '.join(CELLS)}")
    embedding_size = config.embedding_size or config.hidden_size
    if config.tie_embeddings and embedding_size != config.hidden_size:
        raise ValueError(f"tied embeddings need embedding_size ({embedding_size}) = hidden_size "
                         f"({config.hidden_size}): the softmax weight is the transposed embedding")
    if config.state_keep_prob < 1 and config.cell == "lstm" and rnn_mode in FUSED_MODES:
        raise ValueError("dropout on the recurrent state needs the cell-by-cell graph: use --rnn_mode=basic")


Rows = collections.namedtuple("Rows", "input_data targets initial_state start global_batch_size")
Rows.__doc__ = """What one replica of a data-parallel step (distribute.py) gets of the global batch: its rows'
input_data, targets and initial_state, the index of its first row, and the global batch size."""


def dropout_seed():
    """The run's dropout seed: a variable, so that it is saved and restored with the weights."""
    with tf.variable_scope("Train", reuse=tf.AUTO_REUSE):
        return tf.get_variable("dropout_seed", [], tf.int64, trainable=False, initializer=tf.zeros_initializer())


class FusedGRUCell(tf.nn.rnn_cell.GRUCell):
    """GRUCell's variables and arithmetic, computed by one fused kernel a step instead of about ten ops."""

    def call(self, inputs, state):
        _, _, _, h = tf.raw_ops.GRUBlockCell(x=inputs, h_prev=state, w_ru=self._gate_kernel, w_c=self._candidate_kernel,
                                             b_ru=self._gate_bias, b_c=self._candidate_bias)
        return h, h


@tf.RegisterGradient("GRUBlockCell")
def _gru_block_cell_grad(op, *grads):
    """TensorFlow still ships GRUBlockCell's gradient kernel, but its registration left with tf.contrib.

    Only the h output is used (FusedGRUCell drops r, u, c), so only its gradient flows back.
    """
    x, h_prev, w_ru, w_c, b_ru, b_c = op.inputs
    r, u, c, _ = op.outputs
    d_x, d_h_prev, d_c_bar, d_r_bar_u_bar = tf.raw_ops.GRUBlockCellGrad(
        x=x, h_prev=h_prev, w_ru=w_ru, w_c=w_c, b_ru=b_ru, b_c=b_c, r=r, u=u, c=c, d_h=grads[3])
    d_w_ru = tf.matmul(tf.concat([x, h_prev], 1), d_r_bar_u_bar, transpose_a=True)
    d_w_c = tf.matmul(tf.concat([x, h_prev * r], 1), d_c_bar, transpose_a=True)
    return d_x, d_h_prev, d_w_ru, d_w_c, tf.reduce_sum(d_r_bar_u_bar, 0), tf.reduce_sum(d_c_bar, 0)


def fused_lstm(x, cs_prev, h_prev, w, b):
    """One LSTM layer over a window, time-major x [T, B, input], as one BlockLSTM op.

    BasicLSTMCell's arithmetic: gates [x, h] @ w + b in the order (i, ci, f, o), forget_bias 0, no
    peephole, no clipping. Returns BlockLSTM's seven [T, B, hidden] outputs (i, cs, f, o, ci, co, h):
    the gates after their activations, the cell state, tanh(cell state) and h.
    """
    no_peephole = tf.zeros([b.shape[0] // 4], x.dtype)
    return tf.raw_ops.BlockLSTM(seq_len_max=tf.cast(tf.shape(x)[0], tf.int64), x=x, cs_prev=cs_prev, h_prev=h_prev,
                                w=w, wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=b, forget_bias=0.0,
                                cell_clip=-1.0, use_peephole=False)


def split_lstm(x, cs_prev, h_prev, w_x, w_h, b, matmul=tf.matmul):
    """fused_lstm's seven outputs from ops of our own, x [T, B, input] with T known when the graph is built.

    BlockLSTM multiplies [x_t, h_t-1] by the whole kernel at every step. Only h_t-1 @ w_h has to wait for
    the step before: x @ w_x + b is one matmul over all T x B rows (in bf16 under --precision=bf16, which
    BlockLSTM cannot do), and each step reads only w_h, in the dtype it comes in (bf16 halves the bytes).
    """
    x_w = tf.reshape(matmul(tf.reshape(x, [-1, w_x.shape[0]]), w_x) + b, [x.shape[0], -1, w_x.shape[1]])
    outputs = []
    cs, h = cs_prev, h_prev
    for x_w_t in tf.unstack(x_w):
        gates = x_w_t + tf.cast(tf.matmul(tf.cast(h, w_h.dtype), w_h), x.dtype)
        i, ci, f, o = tf.split(gates, 4, axis=1)
        i, ci, f, o = tf.sigmoid(i), tf.tanh(ci), tf.sigmoid(f), tf.sigmoid(o)
        cs = ci * i + cs * f
        co = tf.tanh(cs)
        h = co * o
        outputs.append((i, cs, f, o, ci, co, h))
    return [tf.stack(t) for t in zip(*outputs)]


def fast_block_lstm(x, cs_prev, h_prev, w, b, unroll=True, matmul=tf.matmul, recurrent_dtype=None, forward="block"):
    """fused_lstm's forward with a faster gradient; returns (cs, h), each [T, B, hidden].

    TensorFlow's BlockLSTMGrad walks back one step at a time and does everything there, the weight
    gradient too: T small [B, input + hidden]^T @ [B, 4 hidden] matmuls. Only the recurrence has to
    be sequential: at each step, the gate gradients (LSTMBlockCellGrad) and dh_prev = dgates @ w_h^T.
    The gradients of x, w and b then take one matmul (or sum) each over all T x B rows.
    unroll: step back in a Python loop if T is known when the graph is built, else (or if False) in a
    tf.while_loop. matmul: how the window-wide matmuls are done (bf16 ones under --precision=bf16).
    recurrent_dtype: the inputs' dtype of the per-step d_gates @ w_h^T (bf16: half the bytes of w_h to read
    each step, which is what bounds that small matmul), its result in x's dtype.
    The whole window is one sequence (seq_len_max = T, as fused_lstm builds it).
    """
    steps = x.shape[0] if unroll else None

    @tf.custom_gradient
    def lstm(x, cs_prev, h_prev, w, b):
        w_x, w_h = w[:-h_prev.shape[-1]], w[-h_prev.shape[-1]:]  # the rows that multiply x, and h_prev
        step_dtype = recurrent_dtype or x.dtype
        w_h_step = tf.cast(w_h, step_dtype)  # cast once for the window, forward (split) and backward
        if forward == "split":
            i, cs, f, o, ci, co, h = split_lstm(x, cs_prev, h_prev, w_x, w_h_step, b, matmul)
        else:
            i, cs, f, o, ci, co, h = fused_lstm(x, cs_prev, h_prev, w, b)

        def gradient(d_cs, d_h):
            """d_cs, d_h [T, B, hidden]: the gradients reaching cs and h from outside (the outputs, final state)."""
            cs_before = tf.concat([cs_prev[None], cs[:-1]], 0)  # the state each step starts from
            h_before = tf.concat([h_prev[None], h[:-1]], 0)
            no_peephole = tf.zeros([b.shape[0] // 4], x.dtype)

            def step_back(x, cs_before, h_before, i, cs, f, o, ci, co, d_cs, d_h):
                """One step's tensors [B, ...] and the total gradients of its cs and h (from outside and from
                the next step) -> (gate gradients [B, 4 hidden], gradients of the state it started from)."""
                d_cs_before, d_gates, _, _, _ = tf.raw_ops.LSTMBlockCellGrad(
                    x=x, cs_prev=cs_before, h_prev=h_before, w=w, wci=no_peephole, wcf=no_peephole, wco=no_peephole,
                    b=b, i=i, cs=cs, f=f, o=o, ci=ci, co=co, cs_grad=d_cs, h_grad=d_h, use_peephole=False)
                d_h_before = tf.matmul(tf.cast(d_gates, step_dtype), w_h_step, transpose_b=True)
                return d_gates, d_cs_before, tf.cast(d_h_before, x.dtype)

            window = (x, cs_before, h_before, i, cs, f, o, ci, co, d_cs, d_h)
            carry = (tf.zeros_like(cs_prev), tf.zeros_like(h_prev))  # d cs, d h from the step after
            if steps is not None:
                per_step = [tf.unstack(t, num=steps) for t in window]
                d_gates = [None] * steps
                for t in reversed(range(steps)):
                    *values, d_cs_t, d_h_t = (v[t] for v in per_step)
                    d_gates[t], *carry = step_back(*values, d_cs_t + carry[0], d_h_t + carry[1])
                d_gates = tf.stack(d_gates)
            else:
                def body(t, d_cs_next, d_h_next, d_gates):
                    *values, d_cs_t, d_h_t = (v[t] for v in window)
                    d_gates_t, d_cs_t, d_h_t = step_back(*values, d_cs_t + d_cs_next, d_h_t + d_h_next)
                    return t - 1, d_cs_t, d_h_t, d_gates.write(t, d_gates_t)

                length = tf.shape(x)[0]
                d_gates = tf.TensorArray(x.dtype, size=length, element_shape=[h.shape[1], w.shape[1]])
                _, *carry, d_gates = tf.while_loop(lambda t, *_: t >= 0, body, (length - 1, *carry, d_gates))
                d_gates = d_gates.stack()

            d_gates_2d = tf.reshape(d_gates, [-1, w.shape[1]])  # [T * B, 4 hidden]
            d_x = tf.reshape(matmul(d_gates_2d, w_x, transpose_b=True), tf.shape(x))
            xh = tf.concat([tf.reshape(x, [-1, w_x.shape[0]]), tf.reshape(h_before, [-1, w_h.shape[0]])], 1)
            d_w = matmul(xh, d_gates_2d, transpose_a=True)
            return d_x, carry[0], carry[1], d_w, tf.reduce_sum(d_gates_2d, 0)

        return (cs, h), gradient

    return lstm(x, cs_prev, h_prev, w, b)


class PTBModel:
    """The graph of one use of the model: training, or evaluation at one batch shape.

    Its input is `input_data` and `targets`, int32 [batch_size, num_steps] placeholders, and
    `initial_state`, float32 [num_layers, 2 (c, h), batch_size, hidden_size] (zeros unless fed;
    1 (h) instead of 2 for the GRU and the tanh RNN).
    `final_state` has the same layout, so feeding it back as the next window's initial_state
    carries the LSTM through the text (truncated backpropagation through time).
    num_steps=None builds a graph that takes windows of any length, batch_size=None one
    that takes any number of rows (the cell-by-cell graph then loops with dynamic_rnn).
    fast_backward: how rnn_mode fast's gradient steps back through the window, "unroll" (a Python loop,
    when num_steps is known) or "loop" (a tf.while_loop, which num_steps=None graphs always use).
    fast_forward: rnn_mode fast's forward in training graphs of a known num_steps, "block" (BlockLSTM) or
    "split" (split_lstm: measured level with BlockLSTM, so only a benchmark mode, README's performance section).
    rows: a Rows, for one replica of a data-parallel training step (distribute.py): the model then reads these
    tensors, its batch_size rows of the global batch, instead of placeholders, and computes its share of what one
    process computes on the whole batch (cost, dropout masks, the gradient summed across the replicas).
    """

    def __init__(self, is_training, config, batch_size, num_steps, rnn_mode="block", precision="fp32",
                 fast_backward="unroll", fast_forward="block", rows=None):
        check_rnn_mode(rnn_mode)
        if fast_backward not in FAST_BACKWARDS:
            raise ValueError(f"unknown fast_backward {fast_backward!r}: choose one of {', '.join(FAST_BACKWARDS)}")
        if fast_forward not in FAST_FORWARDS:
            raise ValueError(f"unknown fast_forward {fast_forward!r}: choose one of {', '.join(FAST_FORWARDS)}")
        self.batch_size, self.num_steps = batch_size, num_steps
        self.rnn_mode, self.config, self.fast_backward, self.rows = rnn_mode, config, fast_backward, rows
        # split_lstm needs the window's length when the graph is built; evaluation runs BlockLSTM's forward.
        self.fast_forward = fast_forward if is_training and num_steps is not None else "block"
        self.compute_dtype = COMPUTE_DTYPES[precision]
        size, layers, vocab_size = config.hidden_size, config.num_layers, config.vocab_size
        embedding_size = config.embedding_size or size
        self.keep_prob = config.keep_prob if is_training else 1.0
        self.state_keep_prob = config.state_keep_prob if is_training else 1.0
        self.word_keep_prob = config.word_keep_prob if is_training else 1.0
        check_options(config, rnn_mode)

        if rows is None:
            self.input_data = tf.placeholder(tf.int32, [batch_size, num_steps], name="input_data")
            self.targets = tf.placeholder(tf.int32, [batch_size, num_steps], name="targets")
        else:
            self.input_data, self.targets = rows.input_data, rows.targets
        shape = tf.shape(self.input_data)  # [batch_size, num_steps], known only at run time when None
        if rows is None:
            parts = STATE_PARTS[config.cell]
            zeros = tf.zeros([layers, parts, shape[0], size], tf.float32)
            self.initial_state = tf.placeholder_with_default(zeros, [layers, parts, batch_size, size],
                                                             name="initial_state")
        else:
            self.initial_state = rows.initial_state

        # The lookup table's gather is a CPU op; keep it with the table (a replica's copy is on its own device).
        with tf.device("/cpu:0") if rows is None else contextlib.nullcontext():
            embedding = tf.get_variable("embedding", [vocab_size, embedding_size], tf.float32)
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
        logits = self.matmul(output, softmax_w) + softmax_b
        self.logits = tf.reshape(logits, tf.concat([shape, [vocab_size]], 0))
        self.log_probs = tf.nn.log_softmax(self.logits)  # log p(next word) at each position, for inference
        # -log p(target word), one value per position: [batch_size, num_steps].
        self.word_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.targets, logits=self.logits)
        # The cost the tutorial reports and trains on: the sum over time of the batch-mean loss. A replica's share
        # of it divides its rows' losses by the global batch size: the replicas' costs sum to the cost.
        self.cost = tf.reduce_sum(self.word_losses) / (tf.cast(shape[0], tf.float32) if rows is None
                                                       else float(rows.global_batch_size))

        if is_training:
            self.build_train_op()

    def matmul(self, a, b, **transpose):
        """a @ b with the inputs in the compute precision; the result, and everything else, in fp32."""
        if self.compute_dtype == tf.float32:
            return tf.matmul(a, b, **transpose)
        return tf.cast(tf.matmul(tf.cast(a, self.compute_dtype), tf.cast(b, self.compute_dtype), **transpose),
                       tf.float32)

    def seed(self, site):
        """Dropout seeds are a function of (run seed, training step, site in the graph).

        Stateless: a run resumed from a checkpoint draws the very masks it would have drawn.
        """
        step = tf.train.get_or_create_global_step()
        return tf.stack([dropout_seed(), step * 16 + site])

    def dropout(self, x, site, time_axis=1):
        """Dropout; variational (locked): one mask a sequence, the same at every time step."""
        if self.keep_prob >= 1.0:
            return x
        noise_shape = None
        if self.config.variational_dropout:
            noise_shape = tf.tensor_scatter_nd_update(tf.shape(x), [[time_axis]], [1])
        if self.rows is not None:
            return x * self.rows_of_global_mask(x, site, time_axis, noise_shape)
        return tf.nn.experimental.stateless_dropout(x, rate=1.0 - self.keep_prob, seed=self.seed(site),
                                                    noise_shape=noise_shape)

    def rows_of_global_mask(self, x, site, time_axis, noise_shape):
        """A replica's rows of the dropout mask one process draws for the whole batch (0 or 1 / keep_prob).

        The mask is drawn at the global batch's shape from the same seed, so it is the one-process mask;
        x * mask is then what stateless_dropout computes: x / keep_prob where kept, 0 where dropped."""
        batch_axis = 1 - time_axis
        shape = tf.shape(x) if noise_shape is None else noise_shape
        global_shape = tf.tensor_scatter_nd_update(shape, [[batch_axis]], [self.rows.global_batch_size])
        mask = tf.nn.experimental.stateless_dropout(tf.ones(global_shape, x.dtype), rate=1.0 - self.keep_prob,
                                                    seed=self.seed(site))
        rows = slice(self.rows.start, self.rows.start + self.batch_size)
        return mask[rows] if batch_axis == 0 else mask[:, rows]

    def word_dropout(self, inputs):
        """Drops whole words (embedding dropout): every use of a dropped word in the batch reads zeros."""
        if self.word_keep_prob >= 1.0:
            return inputs
        keep = tf.nn.experimental.stateless_dropout(tf.ones([self.config.vocab_size, 1]), seed=self.seed(15),
                                                    rate=1.0 - self.word_keep_prob)
        return inputs * tf.nn.embedding_lookup(keep, self.input_data)

    def rnn_layers(self, inputs, initial_state):
        """inputs [batch, time, embedding] -> (outputs [batch, time, hidden], final state)."""
        if self.config.cell == "lstm" and self.rnn_mode in FUSED_MODES:
            return self.block_lstm(inputs, initial_state)
        return self.cell_layers(inputs, initial_state)

    def cell_layers(self, inputs, initial_state):
        """The tutorial's graph: a MultiRNNCell of cells with output dropout, unrolled num_steps times
        (or, for windows of any length, looped over time by dynamic_rnn)."""
        config, lstm = self.config, self.config.cell == "lstm"

        def cell():
            size, reuse = config.hidden_size, tf.get_variable_scope().reuse
            if lstm:
                cell = tf.nn.rnn_cell.BasicLSTMCell(size, forget_bias=0.0, reuse=reuse)
            elif config.cell == "gru":
                gru = FusedGRUCell if self.rnn_mode in FUSED_MODES else tf.nn.rnn_cell.GRUCell
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

    def block_lstm(self, inputs, initial_state):
        """The LSTM layers, each one fused BlockLSTM op over the whole window (fast: fast_block_lstm's gradient)."""
        size = self.config.hidden_size
        # BlockLSTM has fp32 and fp16 kernels, none for bf16: under bf16 the LSTM runs in fp32, and only the
        # softmax, and in fast mode the gradient's window-wide matmuls (self.matmul: bf16 in, fp32 out), are bf16.
        dtype = tf.float16 if self.compute_dtype == tf.float16 else tf.float32
        window_matmul = self.matmul if self.compute_dtype == tf.bfloat16 else tf.matmul
        x = tf.cast(tf.transpose(inputs, [1, 0, 2]), dtype)  # BlockLSTM is time-major
        finals = []
        for l in range(self.config.num_layers):
            input_size = x.shape[-1]
            # The variable names BasicLSTMCell uses, so checkpoints move freely between modes.
            with tf.variable_scope(f"RNN/multi_rnn_cell/cell_{l}/basic_lstm_cell"):
                kernel = tf.get_variable("kernel", [input_size + size, 4 * size], tf.float32)
                bias = tf.get_variable("bias", [4 * size], tf.float32, initializer=tf.zeros_initializer())
            layer_inputs = (x, tf.cast(initial_state[l, 0], dtype), tf.cast(initial_state[l, 1], dtype),
                            tf.cast(kernel, dtype), tf.cast(bias, dtype))
            if self.rnn_mode == "fast":
                cs, x = fast_block_lstm(*layer_inputs, unroll=self.fast_backward == "unroll", matmul=window_matmul,
                                        recurrent_dtype=tf.bfloat16 if self.compute_dtype == tf.bfloat16 else None,
                                        forward=self.fast_forward)
            else:
                _, cs, _, _, _, _, x = fused_lstm(*layer_inputs)
            finals.append(tf.cast(tf.stack([cs[-1], x[-1]]), tf.float32))
            x = self.dropout(x, site=l + 1, time_axis=0)
        return tf.cast(tf.transpose(x, [1, 0, 2]), tf.float32), tf.stack(finals)

    def build_train_op(self):
        """Plain SGD on gradients clipped to a global norm of max_grad_norm.

        A replica (self.rows) holds its share of the cost, so its gradient is its share of the one-process
        gradient: the replicas' gradients are summed (tf.distribute's all-reduce) before the clipping, and
        the update applied once to each copy of the variables (sgd_update_of_every_copy).
        """
        if self.rows is None:
            self.lr = tf.Variable(0.0, trainable=False, name="learning_rate")
        else:  # one variable for all replicas, named as one process names it (tf.Variable would add name scopes)
            self.lr = tf.get_variable("learning_rate", [], tf.float32, tf.zeros_initializer(), trainable=False)
        tvars = tf.trainable_variables()
        grads = tf.gradients(self.cost, tvars)
        if self.rows is not None:
            grads = tf.distribute.get_replica_context().merge_call(sum_across_replicas, args=(grads,))
        self.clipped_grads, self.grad_norm = tf.clip_by_global_norm(grads, self.config.max_grad_norm)
        if self.rows is not None:  # (its learning rate is set from outside the replicas: distribute.py)
            self.train_op = tf.distribute.get_replica_context().merge_call(
                sgd_update_of_every_copy, args=(self.clipped_grads, tvars, self.lr))
            return
        optimizer = tf.train.GradientDescentOptimizer(self.lr)
        self.train_op = optimizer.apply_gradients(zip(self.clipped_grads, tvars),
                                                  global_step=tf.train.get_or_create_global_step())
        self.new_lr = tf.placeholder(tf.float32, [], name="new_learning_rate")
        self.lr_update = tf.assign(self.lr, self.new_lr)

    def assign_lr(self, session, lr_value):
        session.run(self.lr_update, feed_dict={self.new_lr: lr_value})


def sum_across_replicas(strategy, grads):
    """In merge_call: each replica's gradients -> their sum, on every replica (an embedding's IndexedSlices are
    gathered, in replica order: the rows of the one-process gradient, in its order)."""
    return strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, [(g, g) for g in grads])


def sgd_update_of_every_copy(strategy, grads, tvars, lr):
    """In merge_call: GradientDescentOptimizer's update, var -= lr * grad, of each copy of each variable, and
    global_step + 1. Not the optimizer itself: under a strategy its apply_gradients sums the gradients across
    the replicas, and these are summed already."""
    def sgd(var, grad):
        if isinstance(grad, tf.IndexedSlices):  # the embedding's rows, as the optimizer applies them
            return var.scatter_sub(tf.IndexedSlices(grad.values * lr, grad.indices))
        return var.assign_sub(grad * lr)

    updates = [strategy.extended.update(var, sgd, args=(grad,)) for grad, var in zip(grads, tvars)]
    with tf.control_dependencies(updates):
        return tf.train.get_or_create_global_step().assign_add(1)


class Position:
    """How far a pass over a text has got: windows done, their summed cost and length, the LSTM state."""

    def __init__(self, step=0, costs=0.0, iters=0, state=None):
        self.step, self.costs, self.iters, self.state = step, costs, iters, state

    def advance(self, cost, state, num_steps):
        self.step, self.costs, self.iters, self.state = self.step + 1, self.costs + cost, self.iters + num_steps, state

    @property
    def perplexity(self):
        """exp(mean loss a word); inf where that is beyond a float (a diverged model), not an OverflowError."""
        mean_loss = self.costs / self.iters
        return math.inf if mean_loss > MAX_LOG_FLOAT else math.exp(mean_loss)


def run_epoch(session, model, data, train_op=None, window=None, position=None, on_step=None):
    """One pass over `data`; returns its perplexity, exp(total cost / total steps).

    The final LSTM state of each window is fed as the initial state of the next one.
    A model built with num_steps=None is fed windows of `window` words, the last one
    shorter, so that every word is scored exactly once. A pass can start from a saved
    `position`; on_step(position, fetched values, epoch_size) is called after each window.
    """
    num_steps = model.num_steps or window
    batches = reader.ptb_iterator(data, model.batch_size, num_steps, keep_remainder=model.num_steps is None)
    epoch_size = reader.epoch_size(len(data), model.batch_size, num_steps)
    fetches = {"cost": model.cost, "final_state": model.final_state}
    if train_op is not None:
        fetches.update(train_op=train_op, grad_norm=model.grad_norm)

    position = position or Position()
    for x, y in itertools.islice(batches, position.step, None):  # skips the windows done before a resume
        feed = {model.input_data: x, model.targets: y}
        if position.state is not None:  # else initial_state's default: zeros
            feed[model.initial_state] = position.state
        vals = session.run(fetches, feed)
        position.advance(vals["cost"], vals["final_state"], x.shape[1])
        if on_step:
            on_step(position, vals, epoch_size)
    return position.perplexity
