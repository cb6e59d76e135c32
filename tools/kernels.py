"""The LSTM kernels behind model.PTBModel's rnn_modes block and fast, and the fused GRU.

The model's LSTM layer is BasicLSTMCell's arithmetic (model.PTBModel.lstm_layer writes out its equations).
TensorFlow runs it step by step as about ten ops per step (rnn_mode basic), or as one fused op over the whole
window, BlockLSTM (block). This module holds what the faster modes are built of:

  fused_lstm       one BlockLSTM op over a window, in BasicLSTMCell's gate order and variables.
  fast_block_lstm  fused_lstm's forward with a gradient of our own (rnn_mode fast, the default): only the
                   recurrence steps back one step at a time; the weight and input gradients are one matmul
                   each over the window. The same gradient as BlockLSTMGrad's, faster on CPUs
                   (results/benchmark-{small,medium}-fast.txt).
  split_lstm       the same seven outputs from ops of our own (x @ w_x over the window, only h @ w_h per
                   step): a forward that benchmark.py times (fast_split), level with BlockLSTM's.
  FusedGRUCell     GRUCell's arithmetic as one GRUBlockCell op per step, and that op's gradient.
  matmul           a @ b in a precision (bf16, fp16), the result in fp32.
  resolve_precision  --precision=auto: bf16 where the CPU has bf16 instructions (cpu_flags), else fp32.

tests/test_kernels.py checks each against BasicLSTMCell / GRUCell and against TensorFlow's own gradients.
"""
import functools

from tools.tf1 import tf

PRECISION_DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}  # the matmuls' dtype
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware: there bf16 is faster than fp32


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The instruction-set flags of this machine's CPU (Linux's /proc/cpuinfo); none where it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision, flags=None):
    """`precision` itself; for "auto", bf16 where the CPU has bf16 instructions (`flags`: this CPU's), else fp32."""
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & set(BF16_CPU_FLAGS) else "fp32"


def matmul(a, b, dtype=tf.float32, **transpose):
    """a @ b with the inputs in `dtype`; the result in fp32."""
    if dtype == tf.float32:
        return tf.matmul(a, b, **transpose)
    return tf.cast(tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype), **transpose), tf.float32)


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


def split_lstm(x, cs_prev, h_prev, w_x, w_h, b, window_matmul=tf.matmul):
    """fused_lstm's seven outputs from ops of our own, x [T, B, input] with T known when the graph is built.

    BlockLSTM multiplies [x_t, h_t-1] by the whole kernel at every step. Only h_t-1 @ w_h has to wait for
    the step before: x @ w_x + b is one matmul over all T x B rows (in bf16 under --precision=bf16, which
    BlockLSTM cannot do), and each step reads only w_h, in the dtype it comes in (bf16 halves the bytes).
    """
    x_w = tf.reshape(window_matmul(tf.reshape(x, [-1, w_x.shape[0]]), w_x) + b, [x.shape[0], -1, w_x.shape[1]])
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


def fast_block_lstm(x, cs_prev, h_prev, w, b, precision="fp32", unroll=True, forward="block"):
    """fused_lstm's forward with a faster gradient; returns (cs, h), each [T, B, hidden].

    TensorFlow's BlockLSTMGrad walks back one step at a time and does everything there, the weight
    gradient too: T small [B, input + hidden]^T @ [B, 4 hidden] matmuls. Only the recurrence has to
    be sequential: at each step, the gate gradients (LSTMBlockCellGrad) and dh_prev = dgates @ w_h^T.
    The gradients of x, w and b then take one matmul (or sum) each over all T x B rows.
    precision bf16: the window-wide matmuls take bf16 inputs (their results fp32), and so does the per-step
    d_gates @ w_h^T (half the bytes of w_h to read each step, which is what bounds that small matmul; its
    result in x's dtype). BlockLSTM itself has no bf16 kernel: x, the state and the weights stay fp32.
    unroll: step back in a Python loop if T is known when the graph is built, else (or if False) in a
    tf.while_loop. forward: "block" (fused_lstm) or "split" (split_lstm, T known).
    The whole window is one sequence (seq_len_max = T, as fused_lstm builds it).
    """
    steps = x.shape[0] if unroll else None
    bf16 = precision == "bf16"
    window_matmul = functools.partial(matmul, dtype=tf.bfloat16) if bf16 else tf.matmul
    recurrent_dtype = tf.bfloat16 if bf16 else None

    @tf.custom_gradient
    def lstm(x, cs_prev, h_prev, w, b):
        w_x, w_h = w[:-h_prev.shape[-1]], w[-h_prev.shape[-1]:]  # the rows that multiply x, and h_prev
        step_dtype = recurrent_dtype or x.dtype
        w_h_step = tf.cast(w_h, step_dtype)  # cast once for the window, forward (split) and backward
        if forward == "split":
            i, cs, f, o, ci, co, h = split_lstm(x, cs_prev, h_prev, w_x, w_h_step, b, window_matmul)
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
            d_x = tf.reshape(window_matmul(d_gates_2d, w_x, transpose_b=True), tf.shape(x))
            xh = tf.concat([tf.reshape(x, [-1, w_x.shape[0]]), tf.reshape(h_before, [-1, w_h.shape[0]])], 1)
            d_w = window_matmul(xh, d_gates_2d, transpose_a=True)
            return d_x, carry[0], carry[1], d_w, tf.reduce_sum(d_gates_2d, 0)

        return (cs, h), gradient

    return lstm(x, cs_prev, h_prev, w, b)


