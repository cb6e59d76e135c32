"""Uses a model trained by `ptb_word_lm.py --save_path=DIR`: a language model gives every
possible next word a probability, and that is all these commands read off it.

    python lm.py generate --save_path=DIR --prompt="the company said" --num_words=30 --seed=1
    python lm.py predict  --save_path=DIR --context="the stock market" --top_k=5
    python lm.py predict  --save_path=DIR < contexts.txt     # a context per line; asks when run at a terminal
    python lm.py score    --save_path=DIR --input=sentences.txt [--json]
    python lm.py eval     --save_path=DIR --input=ptb.test.txt
    python lm.py eval     --save_path=DIR --input=ptb.test.txt --cache_size=2000 --cache_theta=0.3 --cache_lambda=0.1
    python lm.py eval     --save_path=DIR --input=ptb.test.txt --dynamic_lr=0.03 --dynamic_window=20 --dynamic_decay=0
    python lm.py eval     --save_path=DIR --input=ptb.test.txt --dynamic_lr=5e-4 --dynamic_window=5 \
                          --dynamic_rms=ptb.train.txt --dynamic_stat_words=200000   # Krause et al.'s RMS form
    python lm.py tune     --save_path=DIR --valid=ptb.valid.txt --input=ptb.test.txt   # writes DIR/adapt.json
    python lm.py tune     --save_path=DIR --valid=ptb.valid.txt --input=ptb.test.txt \
                          --dynamic_rms=ptb.train.txt --dynamic_stat_words=200000    # + the RMS form, adapt_rms.npz
    python lm.py eval     --save_path=DIR --input=ptb.test.txt --adapt=tuned          # the values tune chose
    python lm.py export   --save_path=DIR --export_dir=DIR/saved_model
    python lm.py nearest  --save_path=DIR --word=market --top_k=10    # cosine, in the learned embedding
    python lm.py projector --save_path=DIR --export_dir=DIR/projector # then: tensorboard --logdir=DIR

Text is PTB-tokenised: words separated by spaces, a line is a sentence; words outside
the vocabulary become <unk> (a note on stderr says which).
"""
from tools import cli  # first: from here on a signal ends the program with one line, even during TensorFlow's import
import itertools  # noqa: E402 (every import after cli's)
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from absl import flags  # noqa: E402

# The flags each command reads, --save_path aside (every command's): any other flag given is refused, not ignored.
RMS_FLAGS = ("dynamic_rms", "dynamic_stat_words", "dynamic_stat_batch", "dynamic_eps")
COMMAND_FLAGS = {
    "generate": ("prompt", "num_words", "temperature", "top_k", "seed"),
    "predict": ("context", "input", "top_k", "json"),
    "score": ("input", "json"),
    "eval": ("input", "cache_size", "cache_theta", "cache_lambda", "dynamic_lr", "dynamic_decay", "dynamic_window",
             *RMS_FLAGS, "adapt"),
    "tune": ("input", "valid", *RMS_FLAGS),
    "export": ("export_dir",),
    "nearest": ("word", "top_k"),
    "projector": ("export_dir",),
}
COMMANDS = tuple(COMMAND_FLAGS)
# The settings tune chooses: given to it, they are refused with a message of their own (adaptation()).
TUNE_CHOOSES = ("cache_size", "cache_theta", "cache_lambda", "dynamic_lr", "dynamic_decay", "dynamic_window")

flags.DEFINE_string("save_path", None, "Checkpoint folder written by ptb_word_lm.py --save_path.")
flags.DEFINE_string("prompt", "", "generate: the words to continue (default: start a new sentence).")
flags.DEFINE_integer("num_words", 50, "generate: how many words to sample.")
flags.DEFINE_float("temperature", 1.0, "generate: >0; below 1 sharper, above 1 flatter than the model.")
flags.DEFINE_integer("top_k", None, "generate: sample among the k likeliest words (default: all); "
                     "predict: how many words to list (default 10).")
flags.DEFINE_integer("seed", None, "generate: random seed; the same seed gives the same text.")
flags.DEFINE_string("context", None, "predict: the words before the one to predict.")
flags.DEFINE_string("input", "-", "predict, score, eval: a text file, or - for standard input; tune: the text to "
                    "report the chosen settings on (ptb.test.txt).")
flags.DEFINE_bool("json", False, "predict, score: JSON lines instead of plain text.")
flags.DEFINE_string("export_dir", None, "export: the SavedModel folder to write (must not exist); projector: "
                    "the folder for vectors.tsv and metadata.tsv.")
flags.DEFINE_string("word", None, "nearest: the word whose neighbours to list.")
# Test-time adaptation (tools/adapt.py): eval applies the cache when its three flags are given, dynamic evaluation
# when --dynamic_lr and --dynamic_window are, both when all are; tune chooses them on --valid.
flags.DEFINE_integer("cache_size", None, "eval: the neural cache holds the last N positions' (h, next word).")
flags.DEFINE_float("cache_theta", None, "eval: the cache's sharpness: position i votes exp(theta h_t . h_i).")
flags.DEFINE_float("cache_lambda", None, "eval: the cache's share: p = (1 - lambda) p_model + lambda p_cache.")
flags.DEFINE_float("dynamic_lr", None, "eval: dynamic evaluation's step on each window's mean loss (SGD).")
flags.DEFINE_float("dynamic_decay", None, "eval: dynamic evaluation pulls the weights back by decay x (trained - "
                   "current) a window (default 0).")
flags.DEFINE_integer("dynamic_window", None, "eval: dynamic evaluation steps after every window of this many words.")
flags.DEFINE_string("dynamic_rms", None, "eval: dynamic evaluation in Krause et al.'s RMS form, its gradient "
                    "statistics gathered on this training text (ptb.train.txt); tune: search that form too.")
flags.DEFINE_integer("dynamic_stat_words", None, "eval, tune: with --dynamic_rms, gather the statistics on its first "
                     "N words only (default: all).")
flags.DEFINE_integer("dynamic_stat_batch", 1, "eval, tune: with --dynamic_rms, gather the statistics on this many "
                     "rows of it at once, g the gradient of a batch of windows (Krause et al.: 100; default 1, as "
                     "eval reads).")
flags.DEFINE_float("dynamic_eps", 1e-3, "eval, tune: with --dynamic_rms, the step is lr g / (rms + eps) (the value "
                   "measured on small; Krause's 2e-5 steps far on rows the statistics never saw).")
flags.DEFINE_enum("adapt", None, ["tuned"], "eval: apply what lm.py tune chose and wrote to --save_path/adapt.json.")
flags.DEFINE_string("valid", None, "tune: the text to choose the adaptation's settings on (ptb.valid.txt).")
FLAGS = flags.FLAGS


def check_command(argv):
    """What the command line alone can tell: one command, and the checkpoint folder it reads."""
    if len(argv) != 2 or argv[1] not in COMMANDS:
        cli.fail(f"give one command, one of {', '.join(COMMANDS)}: python lm.py COMMAND --save_path=DIR ...")
    if not FLAGS.save_path:
        cli.fail("--save_path=DIR is needed: the folder ptb_word_lm.py --save_path wrote")
    command = argv[1]
    for name in dict.fromkeys(name for names in COMMAND_FLAGS.values() for name in names):
        if FLAGS[name].present and name not in COMMAND_FLAGS[command] + (TUNE_CHOOSES if command == "tune" else ()):
            users = [c for c, names in COMMAND_FLAGS.items() if name in names]
            cli.fail(f"--{name} is not used by {command} (only by {', '.join(users)}): leave it out")


if __name__ == "__main__":  # the command line is checked here, before TensorFlow's import: a typo costs no wait
    check_command(cli.parse_first(arguments=1))

# Only now what is slow to import: TensorFlow (through tf1, which most modules below import) and numpy.
import numpy as np  # noqa: E402

from tools import adapt, checkpoint, embeddings, guard, ranges, tf1, tune  # noqa: E402
from tools.dynamic_eval import DynamicEvaluation  # noqa: E402
import reader  # noqa: E402
from model import PTBModel, run_epoch  # noqa: E402
from tools.tf1 import tf  # noqa: E402


class UsageError(ValueError):
    """Bad input from the user; its message says what to do."""


class LanguageModel:
    """A trained model restored from its checkpoint folder, reading one text (batch of 1) at a time."""

    def __init__(self, save_path, batch_size=1):
        self.config, self.vocab, _ = checkpoint.load(save_path)
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.graph = tf.Graph()
        with self.graph.as_default(), tf.variable_scope("Model"):
            self.model = PTBModel(False, self.config, batch_size, None, rnn_mode="block")
        self.session = tf.Session(graph=self.graph)
        with self.graph.as_default():
            saver = tf.train.Saver(self.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES))

        def restore(prefix):
            checkpoint.restore(self.session, saver, prefix)
            return prefix

        self.prefix = checkpoint.read_latest(save_path, restore)  # the weights read (lm.py tune names them)

    @property
    def eos(self):
        """<eos>'s id: every sentence starts after one, as in training."""
        if reader.EOS not in self.word_to_id:
            raise UsageError(f"the vocabulary has no {reader.EOS}, which starts and ends every sentence: retrain "
                             "with a corpus of one sentence per line")
        return self.word_to_id[reader.EOS]

    def encode(self, words):
        """Word ids, with unknown words as <unk>; notes on stderr which words those were."""
        unknown = [w for w in words if w not in self.word_to_id]
        if unknown:
            if reader.UNK not in self.word_to_id:
                raise UsageError(f"words outside the vocabulary ({', '.join(unknown[:5])}) and no <unk> in it")
            print(f"note: not in the vocabulary, read as <unk>: {' '.join(unknown[:10])}"
                  f"{' ...' if len(unknown) > 10 else ''}", file=sys.stderr)
        unk = self.word_to_id.get(reader.UNK)
        return [self.word_to_id.get(w, unk) for w in words]

    def log_probs(self, ids, state=None):
        """log p(next word) after each of `ids`: ([len(ids), vocab], the state after the last one)."""
        m = self.model
        feed = {m.input_data: [ids]}
        if state is not None:
            feed[m.initial_state] = state
        log_probs, state = self.session.run([m.log_probs, m.final_state], feed)
        return log_probs[0], state

    def sentence_log_prob(self, words):
        """Natural-log probability of a sentence and its end, read from a fresh start (<eos>)."""
        ids = [self.eos] + self.encode(words) + [self.eos]
        log_probs, _ = self.log_probs(ids[:-1])
        return float(sum(log_probs[t, ids[t + 1]] for t in range(len(ids) - 1))), len(ids) - 1


def sample(log_probs, temperature, top_k, rng):
    """A word id drawn from softmax(log_probs / temperature), among the top_k likeliest only.

    The likeliest word's log-probability is subtracted before dividing, so that the largest logit
    is 0 at any temperature: a temperature near 0 picks the likeliest word, never NaN."""
    with np.errstate(over="ignore"):  # far below the likeliest, exp() of it is 0 anyway
        logits = (log_probs.astype(np.float64) - log_probs.max()) / temperature
    if top_k is not None and top_k < len(logits):
        logits[np.argsort(logits)[:-top_k]] = -np.inf
    p = np.exp(logits)
    return int(rng.choice(len(p), p=p / p.sum()))


def sampled_words(lm, prompt, num_words, temperature=1.0, top_k=None, seed=None):
    """Yields num_words words sampled after the prompt's, each as soon as it is drawn."""
    rng = np.random.RandomState(seed)
    log_probs, state = lm.log_probs([lm.eos] + lm.encode(prompt))
    for _ in range(num_words):
        word = sample(log_probs[-1], temperature, top_k, rng)
        yield lm.vocab[word]
        log_probs, state = lm.log_probs([word], state)


def generate(lm, prompt, num_words, temperature=1.0, top_k=None, seed=None):
    """The num_words words sampled after the prompt's, as a list."""
    return list(sampled_words(lm, prompt, num_words, temperature, top_k, seed))


def print_streamed(words):
    """Prints words as they come, a space between two, <eos> as a line break: a Ctrl-C keeps what is printed."""
    line_start = True
    for word in words:
        if word == reader.EOS:
            print(flush=True)
        else:
            print(word if line_start else " " + word, end="", flush=True)
        line_start = word == reader.EOS
    if not line_start:
        print(flush=True)


def predict(lm, context, top_k):
    """[(word, probability)] of the top_k likeliest words after `context`."""
    log_probs, _ = lm.log_probs([lm.eos] + lm.encode(context))
    best = np.argsort(-log_probs[-1])[:top_k]
    return [(lm.vocab[i], float(np.exp(log_probs[-1, i]))) for i in best]


def read_ids(lm, path, flag="--input"):
    """The word ids of a text file; every word after the first is predicted once, so it needs two or more."""
    reader.check_readable(path, flag, "a text file, one sentence per line")
    ids = lm.encode(reader.read_words(path, flag=flag))
    if len(ids) < 2:
        raise UsageError(f"{flag}={path} holds one word: a perplexity needs two or more")
    return ids


def evaluate(lm, path, window=adapt.EVAL_WINDOW):
    """Perplexity of a text file, read like the training's test pass: one row, state carried."""
    ids = read_ids(lm, path)
    return run_epoch(lm.session, lm.model, ids, window=window)


def export(save_path, export_dir):
    """A SavedModel with one signature: (ids [batch, time], state) -> (log_probs, state); written whole or not at all."""
    if os.path.lexists(export_dir):  # refused before the model is loaded
        raise UsageError(f"--export_dir={export_dir} exists already: choose a new folder")
    lm = LanguageModel(save_path, batch_size=None)
    m = lm.model
    with cli.new_folder(export_dir, "--export_dir") as folder, lm.graph.as_default():
        builder = tf.saved_model.Builder(folder)
        signature = tf.saved_model.signature_def_utils.predict_signature_def(
            inputs={"ids": m.input_data, "state": m.initial_state},
            outputs={"log_probs": m.log_probs, "state": m.final_state})
        try:
            builder.add_meta_graph_and_variables(lm.session, [tf.saved_model.tag_constants.SERVING],
                                                 signature_def_map={"serving_default": signature})
            builder.save()
        except tf.errors.OpError as e:  # a full disk
            raise OSError(0, tf1.error_summary(e), export_dir)
        for name in (checkpoint.VOCAB, checkpoint.CONFIG):
            try:
                shutil.copy(os.path.join(save_path, name), folder)
            except OSError as e:  # shutil names the file copied from; the one that could not be written is ours
                raise OSError(e.errno, e.strerror, export_dir) from e
    return export_dir


# --- the commands ------------------------------------------------------------------------------

def input_lines():
    """Non-empty lines of --input (a file, or standard input), either read as UTF-8."""
    source = "standard input" if FLAGS.input == "-" else f"--input={FLAGS.input}"
    try:
        if FLAGS.input == "-":
            data = sys.stdin.buffer.read()
        else:
            reader.check_readable(FLAGS.input, "--input", "a text file, one sentence per line")
            with open(FLAGS.input, "rb") as f:
                data = f.read()
        text = data.decode("utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {source} ({e.strerror or e}): give a UTF-8 text file")
    except UnicodeDecodeError as e:
        raise UsageError(f"{source} is not UTF-8 text (byte {e.start}): give UTF-8 text, one sentence per line")
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"--input={FLAGS.input} holds no text: give one sentence per line")
    return lines


def check_top_k(limit, what="the vocabulary size"):
    """--top_k's upper bound, the vocabulary's size, is known once the model is loaded (its lower: tools/ranges.py)."""
    if FLAGS.top_k is not None and not 1 <= FLAGS.top_k <= limit:
        raise UsageError(f"--top_k={FLAGS.top_k}: give a number from 1 to {what}, {limit}")


def show_predictions(lm, context, top_k):
    best = predict(lm, context, top_k)
    if FLAGS.json:
        print(json.dumps({"context": " ".join(context), "next": [{"word": w, "p": p} for w, p in best]}))
    else:
        print(" ".join(context) + " -> " + ", ".join(f"{w} {p:.4f}" for w, p in best), flush=True)


def run_predict(lm):
    top_k = FLAGS.top_k or 10
    if FLAGS.context is not None:
        show_predictions(lm, FLAGS.context.split(), top_k)
    elif FLAGS.input == "-" and sys.stdin.isatty():
        print("Type a context, get the likeliest next words; an empty line (or Ctrl-D) ends.")
        try:
            for line in iter(lambda: input("context> "), ""):
                show_predictions(lm, line.split(), top_k)
        except EOFError:
            print()
    else:
        for words in input_lines():
            show_predictions(lm, words, top_k)


def run_score(lm):
    total_log_prob, total_words = 0.0, 0
    for words in input_lines():
        log_prob, n = lm.sentence_log_prob(words)
        total_log_prob, total_words = total_log_prob + log_prob, total_words + n
        row = {"sentence": " ".join(words), "log_prob": log_prob, "log2_prob": log_prob / math.log(2),
               "words": n, "perplexity": math.exp(-log_prob / n)}
        print(json.dumps(row) if FLAGS.json else
              f"{log_prob:10.3f} {row['log2_prob']:10.3f} {n:4d} {row['perplexity']:10.2f}  {row['sentence']}")
    total = {"total_log_prob": total_log_prob, "total_log2_prob": total_log_prob / math.log(2),
             "words": total_words, "perplexity": math.exp(-total_log_prob / total_words)}
    print(json.dumps(total) if FLAGS.json else
          f"total: log_prob {total_log_prob:.3f} (log2 {total['total_log2_prob']:.3f}), {total_words} words "
          f"(each sentence's end counted), perplexity {total['perplexity']:.2f}")


def adaptation(command):
    """What eval applies, from the flags: {} (nothing), or the settings of the cache, dynamic evaluation or both
    (adapt.CACHE, adapt.DYNAMIC, adapt.RMS); with --adapt=tuned, None (tuned_adaptation reads them once the model
    is loaded). For tune: the RMS form's fixed settings, which make it search that form too, or {}."""
    given = {name: FLAGS[name].value for name in adapt.CACHE + adapt.DYNAMIC + adapt.RMS[:2]
             if FLAGS[name].value is not None}
    for name in ("dynamic_stat_batch", "dynamic_eps"):  # they have defaults: given only when typed
        if FLAGS[name].present:
            given[name] = FLAGS[name].value
    if command == "tune":
        chosen = [name for name in adapt.CACHE + adapt.DYNAMIC if name in given] + (["adapt"] if FLAGS.adapt else [])
        if chosen:
            raise UsageError(f"tune chooses the settings itself: leave out --{' --'.join(chosen)}")
    elif FLAGS.adapt == "tuned":
        if given:
            raise UsageError(f"--adapt=tuned takes the values lm.py tune chose: leave out --{' --'.join(given)}")
        return None
    if any(name in given for name in adapt.CACHE) and not all(name in given for name in adapt.CACHE):
        raise UsageError("the cache needs --cache_size, --cache_theta and --cache_lambda (lm.py tune chooses them)")
    if any(name in given for name in adapt.DYNAMIC) and not ("dynamic_lr" in given and "dynamic_window" in given):
        raise UsageError("dynamic evaluation needs --dynamic_lr and --dynamic_window, --dynamic_decay is 0 unless "
                         "given (lm.py tune chooses them)")
    if "dynamic_lr" in given and "dynamic_decay" not in given:
        given["dynamic_decay"] = 0.0
    if "dynamic_rms" not in given and any(name in given for name in adapt.RMS[1:]):
        raise UsageError("--dynamic_stat_words, --dynamic_stat_batch and --dynamic_eps are the RMS form's: give "
                         "--dynamic_rms=FILE too")
    if "dynamic_rms" in given:
        if command == "eval" and "dynamic_lr" not in given:
            raise UsageError("--dynamic_rms needs --dynamic_lr and --dynamic_window (its steps' rate and windows)")
        given["dynamic_eps"], given["dynamic_stat_batch"] = FLAGS.dynamic_eps, FLAGS.dynamic_stat_batch
        given.setdefault("dynamic_stat_words", None)  # the whole text
    return {name: given[name] for name in adapt.CACHE + adapt.DYNAMIC + adapt.RMS if name in given}  # adapt.json order


def dynamic_evaluation(lm, settings, flag="--dynamic_rms"):
    """The DynamicEvaluation for settings: with the RMS form's, the ids of its statistics text (named by `flag`),
    and the statistics lm.py tune stored in the folder if they are of these weights and that text."""
    if "dynamic_rms" not in settings:
        return DynamicEvaluation(lm)
    statistics = read_ids(lm, settings["dynamic_rms"], flag)
    if settings.get("dynamic_stat_words") is not None:
        statistics = statistics[:settings["dynamic_stat_words"] + 1]
    evaluation = DynamicEvaluation(lm, statistics, settings["dynamic_stat_batch"])
    path = os.path.join(FLAGS.save_path, checkpoint.ADAPT_RMS)
    used = evaluation.statistics.load(path, [settings["dynamic_window"]] if "dynamic_window" in settings else None)
    if used:  # eval: its window's; tune: every window an interrupted tune gathered
        print(f"note: the RMS form's statistics for windows of {', '.join(map(str, used))} words read from {path} "
              "(lm.py tune gathered them on the same text with the same weights)", file=sys.stderr)
    return evaluation


def tuned_adaptation(lm):
    """The settings lm.py tune found best for the folder (adapt.json), checked as the flags are."""
    _, settings, record = adapt.read_tuned(FLAGS.save_path)
    for name, value in settings.items():
        if name == "dynamic_rms":  # a file name, read as --dynamic_rms is
            problem = None if isinstance(value, str) and value else "give the training text's file name"
        else:  # dynamic_stat_words None: the whole text
            problem = None if name == "dynamic_stat_words" and value is None else ranges.problem(name, value)
        if problem:
            raise UsageError(f"{os.path.join(FLAGS.save_path, checkpoint.ADAPT)} holds {name}={value!r}: {problem}; "
                             "rerun lm.py tune")
    if record.get("checkpoint") != os.path.basename(lm.prefix):
        print(f"note: {checkpoint.ADAPT} was tuned for {record.get('checkpoint')}, the folder's latest weights are "
              f"{os.path.basename(lm.prefix)}: rerun lm.py tune to tune them", file=sys.stderr)
    return settings


def learned_embedding(save_path):
    _, vocab, _ = checkpoint.load(save_path)

    def read(prefix):
        checkpoint.check_finite(prefix)
        try:
            return tf.train.load_variable(prefix, embeddings.EMBEDDING)
        except tf.errors.OpError as e:
            raise checkpoint.unreadable(prefix, e)

    return checkpoint.read_latest(save_path, read), vocab


def run(command):
    if command == "nearest":
        if not FLAGS.word:
            raise UsageError("nearest needs --word=WORD")
        matrix, vocab = learned_embedding(FLAGS.save_path)
        check_top_k(len(vocab) - 1, "the number of other words in the vocabulary")
        for word, similarity in embeddings.nearest(matrix, vocab, FLAGS.word, FLAGS.top_k or 10):
            print(f"{similarity:.4f}  {word}")
        return
    if command == "projector":
        if not FLAGS.export_dir:
            raise UsageError("projector needs --export_dir=FOLDER")
        matrix, vocab = learned_embedding(FLAGS.save_path)
        with cli.new_folder(FLAGS.export_dir, "--export_dir") as folder:
            embeddings.write_projector(matrix, vocab, FLAGS.save_path, folder)
        print(f"Projector: tensorboard --logdir={FLAGS.save_path} (Projector tab), or load "
              f"{FLAGS.export_dir}/vectors.tsv and metadata.tsv at projector.tensorflow.org")
        return
    if command == "export":
        if not FLAGS.export_dir:
            raise UsageError("export needs --export_dir=FOLDER")
        print(f"SavedModel written to {export(FLAGS.save_path, FLAGS.export_dir)}")
        return
    if command in ("eval", "tune") and FLAGS.input == "-":
        raise UsageError(f"{command} needs --input=FILE, a text in PTB format")
    if command == "tune" and not FLAGS.valid:
        raise UsageError("tune needs --valid=FILE, the text to choose the settings on (ptb.valid.txt)")
    settings = adaptation(command) if command in ("eval", "tune") else {}
    lm = LanguageModel(FLAGS.save_path)
    if settings is None:
        settings = tuned_adaptation(lm)
    if command == "generate":
        check_top_k(len(lm.vocab))
        prompt = FLAGS.prompt.split()
        print_streamed(itertools.chain(prompt, sampled_words(lm, prompt, FLAGS.num_words, FLAGS.temperature,
                                                             FLAGS.top_k, FLAGS.seed)))
    elif command == "predict":
        check_top_k(len(lm.vocab))
        run_predict(lm)
    elif command == "score":
        run_score(lm)
    elif command == "eval" and not settings:
        print(f"Perplexity: {evaluate(lm, FLAGS.input):.3f}")
    elif command == "eval":
        flag = f"{checkpoint.ADAPT}'s dynamic_rms" if FLAGS.adapt else "--dynamic_rms"
        perplexity = adapt.evaluate(dynamic_evaluation(lm, settings, flag), read_ids(lm, FLAGS.input), settings)
        if not math.isfinite(perplexity):  # with lambda < 1 the cache's mix is finite: dynamic evaluation's steps
            lower = "rerun lm.py tune, or give the flags with" if FLAGS.adapt else "give"
            raise cli.Stop(f"dynamic evaluation diverged (perplexity {perplexity} with {adapt.flags_text(settings)}): "
                           f"{lower} a smaller --dynamic_lr", guard.DIVERGED)
        print(f"Perplexity: {perplexity:.3f} with {adapt.flags_text(settings)}")
    elif command == "tune":
        run_tune(lm, settings)


def run_tune(lm, rms):
    """Chooses the adaptation's settings on --valid, reports them on --input, and keeps them in adapt.json.

    rms: {} or the RMS form's fixed settings (--dynamic_rms=FILE ...), to search that form too."""
    valid, test = read_ids(lm, FLAGS.valid, "--valid"), read_ids(lm, FLAGS.input)
    longest = tune.SGD_SEARCH.longest
    if len(valid) - 1 < longest:
        words = f"{len(valid) - 1} word{'s' * (len(valid) != 2)}"
        raise UsageError(f"--valid={FLAGS.valid} holds {words} to predict, fewer than tune's longest "
                         f"window ({longest}): give a longer text to choose the settings on (ptb.valid.txt)")
    evaluation, rms_passes = dynamic_evaluation(lm, rms), ""
    if rms:  # adapt.json keeps --dynamic_rms as given: eval --adapt=tuned reads a relative one from where it runs
        problem = evaluation.statistics.problem(tune.RMS_SEARCH.longest)  # refused now, not after hours of searches
        if problem:
            raise UsageError(f"{problem}, the longest tune tries: give a longer --dynamic_rms or a larger "
                             "--dynamic_stat_words")
        rms_passes = (f", {tune.RMS_SEARCH.passes} for its RMS form's (statistics on "
                      f"{len(evaluation.statistics.text) - 1} words of --dynamic_rms, gathered once for each window "
                      "length)")
    print(f"Tuning the cache and dynamic evaluation on --valid={FLAGS.valid} ({len(valid)} words): 1 pass for the "
          f"cache's grids, {tune.SGD_SEARCH.passes} for dynamic evaluation's{rms_passes}", flush=True)
    # What the results depend on (the statistics text by its ids, not its path): the same, and the results are read
    statistics = evaluation.statistics.text if evaluation.statistics else []
    identity = {"sha256": evaluation.digest(valid, test, statistics), "grids": tune.GRIDS,
                **{k: rms[k] for k in ("dynamic_stat_batch", "dynamic_eps") if k in rms}}
    progress = tune.TuneProgress(FLAGS.save_path, identity)
    if progress.done:
        print(f"Resuming: what an earlier run of this tune measured is in {progress.path}", flush=True)
    elif progress.foreign:
        print(f"note: {progress.path} holds another tune's progress (other weights, texts, settings or grids): this "
              "one replaces it", file=sys.stderr)
    try:
        record = tune.tune(evaluation, valid, test, say=lambda line: print(line, flush=True), rms=rms,
                           progress=progress)
    except cli.Interrupted as e:
        if progress.done:
            e.args = (f"{e}; what it measured is in {progress.path}: rerun the same command to resume",)
        raise
    record.update(checkpoint=os.path.basename(lm.prefix), valid=FLAGS.valid, test=FLAGS.input)
    with cli.signals_deferred():  # the files are written whole, then a Ctrl-C that came meanwhile ends the program
        kept = adapt.write_tuned(FLAGS.save_path, record)
        if kept:
            print(f"note: the {checkpoint.ADAPT} tune wrote before is kept as {kept}", file=sys.stderr)
        progress.remove()
        chosen = [record["dynamic_rms"]["dynamic_window"]] if rms else []
        # Its statistics only, which eval in that form then reads.
        if rms and set(chosen) & set(evaluation.statistics.gathered):
            try:
                evaluation.statistics.save(os.path.join(FLAGS.save_path, checkpoint.ADAPT_RMS), chosen)
            except OSError as e:  # adapt.json is written: eval gathers them itself
                print(f"note: the RMS form's statistics not kept ({e.strerror or e}): eval gathers them again",
                      file=sys.stderr)
    if cli.received:
        raise cli.Interrupted(cli.received[0])
    print("\n".join(adapt.summary(record)))
    print(f"Chosen on --valid, written to {os.path.join(FLAGS.save_path, checkpoint.ADAPT)}; lm.py eval "
          f"--adapt=tuned applies {record['best']}")


def main(argv):
    run(argv[1])  # check_command has checked it


if __name__ == "__main__":
    cli.run(main)
