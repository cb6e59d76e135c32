"""How fast the model trains and evaluates here, against what this machine's matmuls can do.

    python benchmark.py --model=medium                       # every rnn_mode and precision
    python benchmark.py --model=medium --modes=block,fast,fast_loop --precisions=fp32  # the fast gradient's loop
    python benchmark.py --model=small --modes=block --precisions=fp32 --steps=50
    python benchmark.py --model=small --cell=gru --precisions=fp32  # GRUCell vs GRUBlockCell
    python benchmark.py --model=medium --modes=fast --precisions=fp32 --profile  # where a step's time goes
    python benchmark.py --model=medium --modes=fast --precisions=fp32 --adapt_words=5000  # lm.py eval's adaptation
    python benchmark.py --model=large --modes=fast --pytorch      # beside PyTorch's nn.LSTM, fp32 and bf16

On random word ids of the config's real shapes it times `--steps` training steps, as many
validation-shaped evaluation steps, and the batch-1 test pass, after a warm-up. It first
measures the machine's peak: one large matmul in each precision. A benchmark, not a test:
nothing in the test suite depends on speed. `fast_loop` is rnn_mode fast with its gradient
stepping back in a tf.while_loop instead of the default Python unroll; `fast_split` is rnn_mode fast
with split_lstm's forward instead of BlockLSTM's (tools/kernels.py, tools/fast_variants.py).
With --adapt_words, it also times `lm.py eval`'s passes with test-time adaptation (tools/adapt.py) on that many
random words of the config's shapes: static, the cache, dynamic evaluation's two forms, each set against
the time of a training epoch (the aims: the cache within 2x static, dynamic evaluation within 2x an epoch).
"""
from tools import cli  # first: from here on a signal ends the program with one line, even during TensorFlow's import
import collections  # noqa: E402 (every import after cli's)
import time  # noqa: E402
import types  # noqa: E402

from absl import flags  # noqa: E402

import configs
from configs import CELLS, PRECISIONS, RNN_MODES

flags.DEFINE_enum("model", "small", list(configs.CONFIGS), "Model config.")
flags.DEFINE_enum("cell", "lstm", list(CELLS), "The recurrent cell.")
flags.DEFINE_list("modes", ["basic", "block", "fast", "fast_loop"], "rnn_modes to time, and fast_loop.")
flags.DEFINE_list("precisions", ["fp32", "bf16"], "Precisions to time.")
flags.DEFINE_integer("steps", 30, "Timed steps of each kind.")
flags.DEFINE_integer("num_threads", 0, "Threads for TensorFlow's ops (0: one per core).")
flags.DEFINE_bool("profile", False, "Also trace training steps one op at a time (one inter-op thread, so each "
                  "op's time is its own) and list the op types that take the most.")
flags.DEFINE_bool("pytorch", False, "Also time the same model's training step in PyTorch (nn.LSTM, the same "
                  "clipped SGD; bf16 by torch.autocast) in each of --precisions but fp16, where torch is installed.")
flags.DEFINE_integer("adapt_words", 0, "Also time lm.py eval's passes with the cache and dynamic evaluation on this "
                     "many random words (0: not).")
FLAGS = flags.FLAGS
# modes beyond RNN_MODES: rnn_mode fast, with kernels.fast_block_lstm's other ways (unroll, forward)
FAST_VARIANTS = {"fast_loop": dict(unroll=False), "fast_split": dict(forward="split")}


def _some_of(known):
    """A validator of a list flag: one or more of `known`, checked when the command line is parsed."""
    def check(values):
        unknown = [v for v in values if v not in known]
        if unknown or not values:
            raise flags.ValidationError(f"{', '.join(unknown) or 'nothing'} is not one of {', '.join(known)}: "
                                        "give one or more of them, separated by commas")
        return True
    return check


flags.register_validator("modes", _some_of(list(RNN_MODES) + list(FAST_VARIANTS)))
flags.register_validator("precisions", _some_of(list(PRECISIONS)))
if __name__ == "__main__":  # the flags are checked here, before TensorFlow's import: a typo costs no wait
    cli.parse_first()

# Only now what is slow to import: TensorFlow (through tf1, which most modules below import) and numpy.
import numpy as np  # noqa: E402

from model import PTBModel  # noqa: E402
from tools import adapt, kernels  # noqa: E402
from tools.dynamic_eval import DynamicEvaluation  # noqa: E402
from tools.fast_variants import FastVariant  # noqa: E402
from tools.tf1 import session_config, tf  # noqa: E402


def time_runs(session, fetch, feed=None, steps=10, warmup=3):
    for _ in range(warmup):
        session.run(fetch, feed)
    start = time.perf_counter()
    for _ in range(steps):
        session.run(fetch, feed)
    return (time.perf_counter() - start) / steps


def profile(session, fetch, feed, steps=5, top=12):
    """Prints the op types that take the most of a step: ms per step and share, from TensorFlow's step stats."""
    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE, inter_op_thread_pool=1)
    totals = collections.Counter()
    for _ in range(steps):
        metadata = tf.RunMetadata()
        session.run(fetch, feed, options=options, run_metadata=metadata)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                op_type = node.timeline_label.split("(")[0].split(" = ")[-1] or node.node_name
                totals[op_type] += node.all_end_rel_micros / 1000 / steps
    whole = sum(totals.values())
    print(f"  profile: {whole:.1f} ms of ops per step; " + ", ".join(f"{op} {ms:.1f} ms ({ms / whole:.0%})"
                                                              for op, ms in totals.most_common(top)), flush=True)


def matmul_peak(precision, n=2048):
    """GFLOP/s of an n x n x n matmul with its operands already in `precision`."""
    with tf.Graph().as_default():
        dtype = kernels.PRECISION_DTYPES[precision]
        a = tf.Variable(tf.cast(tf.random.normal([n, n]), dtype))
        b = tf.Variable(tf.cast(tf.random.normal([n, n]), dtype))
        product = tf.matmul(a, b).op
        with tf.Session(config=session_config(FLAGS.num_threads)) as session:
            session.run(tf.global_variables_initializer())
            return 2 * n ** 3 / time_runs(session, product, steps=20) / 1e9


def words_per_second(config, mode, precision):
    """(train, valid-shaped eval, batch-1 test pass) words per second on random ids."""
    rnn_mode = "fast" if mode in FAST_VARIANTS else mode
    batch, steps = config.batch_size, config.num_steps
    test_window = 1 if rnn_mode == "basic" else 100
    with tf.Graph().as_default():
        with tf.variable_scope("Model", initializer=tf.random_uniform_initializer(-0.05, 0.05)):
            if mode in FAST_VARIANTS:
                train = FastVariant(True, config, batch, steps, rnn_mode, precision, options=FAST_VARIANTS[mode])
            else:
                train = PTBModel(True, config, batch, steps, rnn_mode, precision)
        with tf.variable_scope("Model", reuse=True):
            valid = PTBModel(False, config, batch, steps, rnn_mode, precision)
            test = PTBModel(False, config, 1, test_window if rnn_mode == "basic" else None, rnn_mode, precision)
        rng = np.random.RandomState(0)

        def feed(m, rows, cols):
            return {m.input_data: rng.randint(0, config.vocab_size, (rows, cols)),
                    m.targets: rng.randint(0, config.vocab_size, (rows, cols))}

        config_proto = session_config(FLAGS.num_threads)
        if FLAGS.profile:  # pool 0 as without --profile, pool 1 a single thread for the traced steps
            config_proto.session_inter_op_thread_pool.add(num_threads=FLAGS.num_threads)
            config_proto.session_inter_op_thread_pool.add(num_threads=1)
        with tf.Session(config=config_proto) as session:
            session.run(tf.global_variables_initializer())
            train.assign_lr(session, 0.01)
            train_s = time_runs(session, [train.cost, train.final_state, train.train_op], feed(train, batch, steps),
                                FLAGS.steps)
            if FLAGS.profile:
                profile(session, [train.cost, train.final_state, train.train_op], feed(train, batch, steps))
            valid_s = time_runs(session, [valid.cost, valid.final_state], feed(valid, batch, steps), FLAGS.steps)
            test_s = time_runs(session, [test.cost, test.final_state], feed(test, 1, test_window), FLAGS.steps)
    return batch * steps / train_s, batch * steps / valid_s, test_window / test_s


def pytorch_words_per_second(config, precision):
    """Training words per second of the same model in PyTorch, the framework users would pick instead, on random
    ids: nn.Embedding, dropout, nn.LSTM (its fused kernel), dropout, nn.Linear, the loss summed over time and
    averaged over the batch, SGD on gradients clipped to max_grad_norm, the state carried (detached) from step to
    step; bf16 by torch.autocast, as PyTorch users run it."""
    import torch  # optional: only --pytorch needs it

    torch.manual_seed(0)
    if FLAGS.num_threads:
        torch.set_num_threads(FLAGS.num_threads)
    size, layers, vocab, batch, steps = (config.hidden_size, config.num_layers, config.vocab_size,
                                         config.batch_size, config.num_steps)
    embedding, lstm = torch.nn.Embedding(vocab, size), torch.nn.LSTM(size, size, layers)
    softmax, dropout = torch.nn.Linear(size, vocab), torch.nn.Dropout(1 - config.keep_prob)
    parameters = [*embedding.parameters(), *lstm.parameters(), *softmax.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.01)
    rng = np.random.RandomState(0)
    x, y = (torch.from_numpy(rng.randint(0, vocab, (steps, batch))) for _ in range(2))  # time-major, as nn.LSTM
    state = (torch.zeros(layers, batch, size), torch.zeros(layers, batch, size))

    def step(state):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs, state = lstm(dropout(embedding(x)), tuple(s.detach() for s in state))
            logits = softmax(dropout(outputs)).float()
        loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), y.view(-1), reduction="sum") / batch
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        return state

    for _ in range(3):  # warm-up
        state = step(state)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        state = step(state)
    return batch * steps * FLAGS.steps / (time.perf_counter() - start)


def print_pytorch(config, measured):
    """A line per precision: PyTorch's training words per second, and this project's fast mode's against it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("pytorch: not installed (pip install torch): not timed", flush=True)
        return
    for precision in FLAGS.precisions:
        if precision == "fp16":
            continue
        wps = pytorch_words_per_second(config, precision)
        ours = measured.get(("fast", precision))
        against = f"   this project's fast mode: {ours / wps:.2f} x" if ours else ""
        print(f"{'pytorch':9} {precision:9} {wps:10.0f}{against}", flush=True)


PTB_WORDS = {"train": 929589, "test": 82430}  # ptb.train.txt and ptb.test.txt, with an <eos> a line
STAT_WORDS = 200000  # the RMS form's statistics as tune ran on small (--dynamic_stat_words, README)
# lm.py eval's settings timed with --adapt_words: the cache at tune's largest size (only N changes its time), the
# windows tune tries; rates and decays do not change a pass's time, only whether it decays at all.
ADAPTATIONS = {
    "static": {},
    "cache N=2000": dict(cache_size=2000, cache_theta=0.5, cache_lambda=0.1),
    **{f"dynamic SGD n={n}{' decayed' * d}": dict(dynamic_lr=0.3, dynamic_decay=0.01 * d, dynamic_window=n)
       for n in (10, 20) for d in (0, 1)},
    **{f"dynamic RMS n={n}{' decayed' * d}": dict(dynamic_lr=5e-4, dynamic_decay=0.01 * d, dynamic_window=n,
                                                  dynamic_eps=1e-3) for n in (5, 10) for d in (0, 1)},
}


def adaptation_seconds(config, words):
    """({name: seconds} of lm.py eval's pass over `words` random ids for each of ADAPTATIONS, batch 1, fp32,
    {window: seconds} of gathering the RMS form's statistics on the same words).

    A pass's time does not depend on the weights or the ids, so the model is lm.py's with random weights.
    Before each timed pass, an untimed one over two windows and a shorter one builds its graphs (and gathers
    the RMS form's statistics for its window, which RMSStatistics times on its own, with the first run's setup of
    their graph, as lm.py eval pays it).
    """
    graph = tf.Graph()
    with graph.as_default(), tf.variable_scope("Model", initializer=tf.random_uniform_initializer(-0.05, 0.05)):
        model = PTBModel(False, config, 1, None, rnn_mode="block")
    ids = np.random.RandomState(0).randint(0, config.vocab_size, words + 1)
    seconds = {}
    with tf.Session(graph=graph, config=session_config(FLAGS.num_threads)) as session:
        with graph.as_default():
            session.run(tf.global_variables_initializer())
        # What a DynamicEvaluation reads of an lm.LanguageModel.
        lm = types.SimpleNamespace(graph=graph, session=session, config=config, model=model)
        adapter = DynamicEvaluation(lm, statistics=ids)
        for name, settings in ADAPTATIONS.items():
            window = settings.get("dynamic_window", adapt.EVAL_WINDOW)
            if "dynamic_window" in settings:
                adapter.statistics.gatherer(window)  # built before the statistics' clock starts
            adapt.log_probs(adapter, ids[:2 * window + 2], settings)
            start = time.perf_counter()
            log_p = adapt.log_probs(adapter, ids, settings)
            seconds[name] = time.perf_counter() - start
            if not np.isfinite(log_p).all():  # the pass stopped early: its time is not a whole pass's
                raise ValueError(f"the {name} pass diverged on random weights: rerun with another --adapt_words")
    return seconds, adapter.statistics.seconds


def print_adaptation(config, train_wps):
    """A line for each of ADAPTATIONS, and each window's statistics: words/s, and the time of the PTB test text
    (of STAT_WORDS training words) against a training epoch's, estimated from the training steps timed."""
    epoch = PTB_WORDS["train"] / train_wps
    words = FLAGS.adapt_words
    print(f"\nlm.py eval on {words} random words, batch 1, fp32; the PTB test text ({PTB_WORDS['test']} words) "
          f"against a training epoch ({PTB_WORDS['train']} words: {epoch:.0f} s at {train_wps:.0f} w/s, fast fp32):")
    seconds, gathering = adaptation_seconds(config, words)
    for name, s in seconds.items():
        test = PTB_WORDS["test"] * s / words
        print(f"  {name:25} {words / s:6.0f} w/s   test text {test:5.0f} s = {s / seconds['static']:5.1f} x "
              f"static = {test / epoch:5.2f} x an epoch", flush=True)
    for window, s in sorted(gathering.items()):
        wps = words // window * window / s  # the statistics' full windows only
        stats = STAT_WORDS / wps
        print(f"  {f'RMS statistics n={window}':25} {wps:6.0f} w/s   {STAT_WORDS} words {stats:5.0f} s "
              f"= {stats / epoch:5.2f} x an epoch, paid once per run of lm.py eval", flush=True)


def main(argv):
    del argv
    config = configs.get_config(FLAGS.model)
    config.cell = FLAGS.cell
    flops = configs.matmul_flops_per_word(config)
    peaks = {p: matmul_peak(p) for p in FLAGS.precisions}
    peak_text = ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
    print(f"config {FLAGS.model}, cell {FLAGS.cell}: {3 * flops / 1e6:.1f} MFLOP per word to train, "
          f"{flops / 1e6:.1f} to evaluate; matmul peak {peak_text}", flush=True)
    measured = {}
    print(f"{'mode':9} {'precision':9} {'train w/s':>10} {'of peak':>8} {'valid w/s':>10} {'test w/s':>9}")
    for mode in FLAGS.modes:
        for precision in FLAGS.precisions:
            train_wps, valid_wps, test_wps = words_per_second(config, mode, precision)
            fraction = train_wps * 3 * flops / (peaks[precision] * 1e9)
            print(f"{mode:9} {precision:9} {train_wps:10.0f} {fraction:8.0%} {valid_wps:10.0f} {test_wps:9.0f}",
                  flush=True)
            measured[mode, precision] = train_wps
    if FLAGS.pytorch:
        print_pytorch(config, measured)
    if FLAGS.adapt_words:
        print_adaptation(config, measured.get(("fast", "fp32")) or words_per_second(config, "fast", "fp32")[0])


if __name__ == "__main__":
    cli.run(main)
