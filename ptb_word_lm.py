"""Trains the word-level LSTM language model of Zaremba et al. (2014) on the Penn Treebank.

"Recurrent Neural Network Regularization", https://arxiv.org/abs/1409.2329

    python ptb_word_lm.py --model=small                      # fetches PTB into data/ if needed
    python ptb_word_lm.py --data_path=simple-examples/data --model=medium --save_path=runs/medium

| config | epochs | train ppl | valid ppl | test ppl (paper) | test ppl here (train / valid) |
| ------ | ------ | --------- | --------- | ---------------- | ----------------------------- |
| small  | 13     | 37.99     | 121.39    | 115.91 (114.5)   | 113.90 (41.13 / 119.42)       |
| medium | 39     | 48.45     | 86.16     |  82.07  (82.7)   |  83.97 (45.64 / 87.42)        |
| large  | 55     | 37.87     | 82.62     |  78.29  (78.4)   |  78.65 (38.01 / 82.57)        |

(the TensorFlow tutorial's numbers, and this code's in the default mode, --seed=1, on 2 cores of an
AVX-512 AMD EPYC: docs/reproducing.md has the commands, logs and times; large with --seed=2,
as seed 1 stops learning in its first minutes. --precision=bf16 trains 1.5x faster on a CPU with bf16
instructions, at a test perplexity about 0.9% higher (three seeds of small).)

With --save_path the run can be stopped (Ctrl-C, SIGTERM) and resumed by rerunning the same
command: a checkpoint is written at every epoch end and every --checkpoint_minutes, and it
holds the position inside the epoch, the LSTM state and the running totals with the weights.
"""
from tools import cli  # first: from here on a signal ends the program with one line, even during TensorFlow's import
import os  # noqa: E402 (every import after cli's)
import time  # noqa: E402

from absl import flags  # noqa: E402

import configs

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_string("data_path", None, "Folder with ptb.{train,valid,test}.txt (or {train,valid,test}.txt, or "
                    "WikiText's wiki.{train,valid,test}.tokens); default: data/ of this project, where PTB is "
                    "downloaded if missing.")
flags.DEFINE_enum("model", "small", list(configs.CONFIGS), "Model config.")
flags.DEFINE_string("save_path", None, "Folder for checkpoints, config, vocabulary, TensorBoard summaries, "
                    "metrics and plot. Rerunning with the same folder resumes the run.")
flags.DEFINE_enum("rnn_mode", "fast", list(configs.RNN_MODES), "How the LSTM runs: basic (BasicLSTMCell, the "
                  "reference), block (fused BlockLSTM kernel), fast (BlockLSTM with a faster gradient of our own, "
                  "the fastest measured).")
flags.DEFINE_enum("precision", "fp32", ["auto", *configs.PRECISIONS], "Matmul precision; variables, loss and "
                  "gradient clipping stay fp32. fp32: the paper's arithmetic; bf16: the softmax's and the fast LSTM "
                  "gradient's matmuls take bfloat16 inputs (BlockLSTM's forward has no bf16 kernel), 1.5x faster on "
                  "a CPU with bf16 instructions, test perplexity 0.4-1.3% higher than fp32's (README); fp16: the "
                  "softmax and the LSTM in float16; auto: bf16 where the CPU has bf16 instructions (avx512_bf16, "
                  "amx_bf16), else fp32. A resumed run keeps its own.")
flags.DEFINE_bool("use_fp16", False, "The tutorial's flag: the same as --precision=fp16.")
# Flags that override a field of the config when given.
flags.DEFINE_integer("max_max_epoch", None, "Train this many epochs instead of the config's.")
flags.DEFINE_float("learning_rate", None, "Initial learning rate instead of the config's.")
flags.DEFINE_integer("max_epoch", None, "Epochs at the initial learning rate instead of the config's.")
flags.DEFINE_float("lr_decay", None, "Learning-rate factor per epoch after max_epoch instead of the config's.")
flags.DEFINE_float("keep_prob", None, "Dropout keep probability of the embedding and every layer's output.")
flags.DEFINE_enum("cell", "lstm", list(configs.CELLS), "Recurrent cell: lstm, gru, or rnn (tanh).")
flags.DEFINE_integer("embedding_size", None, "Word vector size (default: hidden_size).")
flags.DEFINE_bool("tie_embeddings", False, "The softmax weight is the transposed embedding (Press & Wolf 2017).")
flags.DEFINE_bool("variational_dropout", False, "One dropout mask per sequence, the same at every time step "
                  "(Gal & Ghahramani 2016).")
flags.DEFINE_float("state_keep_prob", 1.0, "Dropout keep probability of the recurrent state (cell-by-cell graph: "
                   "--rnn_mode=basic for the LSTM).")
flags.DEFINE_float("word_keep_prob", 1.0, "Keep probability of whole words in the embedding (word dropout).")
CONFIG_FLAGS = ("max_max_epoch", "learning_rate", "max_epoch", "lr_decay", "keep_prob", "cell", "embedding_size",
                "tie_embeddings", "variational_dropout", "state_keep_prob", "word_keep_prob")
flags.DEFINE_integer("seed", None, "Random seed of initialisation and dropout; default: a random one, printed.")
flags.DEFINE_integer("max_vocab", None, "Keep only the most frequent words of the training text; the rest "
                     "become <unk>. Default: every word.")
flags.DEFINE_string("embedding_file", None, "GloVe text file whose vectors start the embedding rows of the "
                    "words it holds (its dimension must be the embedding size).")
flags.DEFINE_integer("train_words", None, "Train on the first N words only (quick trials).")
flags.DEFINE_float("checkpoint_minutes", 10, "With --save_path: also checkpoint inside an epoch this often.")
flags.DEFINE_integer("test_window", 100, "Window length of the test pass (batch size 1); any length gives "
                     "the tutorial's num_steps=1 result, longer windows just run faster. Not in basic mode.")
flags.DEFINE_integer("num_threads", 0, "Threads for TensorFlow's ops (0: one per core).")
flags.DEFINE_integer("replicas", 1, "Split each training batch over this many devices of this machine (its GPUs, "
                     "else logical CPU devices), synchronously: the same numbers as one (distribute.py). With "
                     "TF_CONFIG naming several workers, the replicas of each worker: its GPUs, or 1.")
flags.DEFINE_float("max_cell_state", 1000, "The guard: a run whose LSTM cell state goes beyond this in the first "
                   "tenth of epoch 1 stopped learning (a saturated cell); without --seed it starts again with "
                   "another seed, with --seed it stops (exit 3). 0: no such check (docs/reproducing.md).")
flags.DEFINE_float("worker_timeout", 120, "With TF_CONFIG (several workers): a worker stops when a step waits this "
                   "many seconds for the others (at start it waits 10 minutes for them).")
FLAGS = flags.FLAGS
if __name__ == "__main__":  # the flags are checked here, before TensorFlow's import: a typo costs no wait
    cli.parse_first()

# Only now what is slow to import: TensorFlow (through tools/tf1.py, which most modules below import) and numpy.
import numpy as np  # noqa: E402

import reader  # noqa: E402
from model import PTBModel, check_options, run_epoch  # noqa: E402
from tools import distribute, embeddings, ranges, runfolder, training  # noqa: E402
from tools.tf1 import tf  # noqa: E402


def create_models(config, rnn_mode, precision, seed, replicas=None):
    """The tutorial's three models in the current graph, sharing one set of variables: m trains (with
    replicas, split over them), mvalid validates at the same shapes, mtest reads the test text as one row
    (batch 1), each word after all the text before it."""
    tf.set_random_seed(seed)
    initializer = tf.random_uniform_initializer(-config.init_scale, config.init_scale)
    with tf.variable_scope("Model", reuse=None, initializer=initializer):
        if replicas is None:
            m = PTBModel(True, config, config.batch_size, config.num_steps, rnn_mode, precision)
        else:
            m = distribute.ReplicatedModel(replicas, config, rnn_mode, precision)
    with tf.variable_scope("Model", reuse=True):
        mvalid = PTBModel(False, config, config.batch_size, config.num_steps, rnn_mode, precision)
        mtest = PTBModel(False, config, 1, 1 if rnn_mode == "basic" else None, rnn_mode, precision)
    return m, mvalid, mtest


def train_and_test(run, m, mvalid, mtest, data, config, test_window, resume_from=None):
    """The tutorial's loop: each epoch trains at the schedule's learning rate and validates; then the test text.

    `run` (tools/training.py) resumes, saves, guards and reports around it."""
    first_epoch, position = run.start(resume_from)  # the session, with fresh or resumed weights
    session = run.session
    with cli.signals_deferred():  # a signal is acted on between steps, where the run can be saved
        for i in range(first_epoch, config.max_max_epoch):
            lr = configs.learning_rate(config, i)
            m.assign_lr(session, lr)
            print(f"Epoch: {i + 1} Learning rate: {lr:.3f}", flush=True)
            run.start_epoch(i, position)
            train_perplexity = run_epoch(session, m, data.train, m.train_op, position=position,
                                         on_step=run.after_step)
            print(f"Epoch: {i + 1} Train Perplexity: {train_perplexity:.3f}", flush=True)
            valid_perplexity = run_epoch(session, mvalid, data.valid)
            print(f"Epoch: {i + 1} Valid Perplexity: {valid_perplexity:.3f}", flush=True)
            run.end_epoch(i, lr, train_perplexity, valid_perplexity)
            position = None
    test_perplexity = run.test_pass(lambda: run_epoch(session, mtest, data.test, window=test_window))
    print(f"Test Perplexity: {test_perplexity:.3f}", flush=True)
    run.end(test_perplexity)


def main(argv):
    """Everything the command line asks for is checked before any graph is built: the flags, the corpus, the
    run's folder; then the models, and the loop."""
    del argv
    cluster = distribute.read_tf_config(os.environ.get("TF_CONFIG", ""))
    chief = cluster is None or cluster.index == 0
    save_path = FLAGS.save_path if chief else None  # only the chief writes
    rnn_mode, requested = FLAGS.rnn_mode, "fp16" if FLAGS.use_fp16 else FLAGS.precision
    with runfolder.made(save_path):  # created now if missing, and removed again if the run saves nothing
        config = configs.get_config(FLAGS.model)
        for name in CONFIG_FLAGS:
            if FLAGS[name].present:
                setattr(config, name, FLAGS[name].value)
        check_options(config, rnn_mode)
        distribute.check_replicas(FLAGS.replicas, config, rnn_mode, cluster)
        if FLAGS.embedding_file:
            reader.check_readable(FLAGS.embedding_file, "--embedding_file", "a GloVe text file")
        data_path = FLAGS.data_path or reader.maybe_download(os.path.join(HERE, "data"))
        data = load_data(data_path, config, FLAGS.max_vocab, FLAGS.train_words)

        resume_from = save_path and runfolder.check(save_path, config, data.vocab, len(data.train))
        seed = runfolder.seed(resume_from, FLAGS.seed, draw_seed)
        given = FLAGS["precision"].present or FLAGS.use_fp16
        precision, chosen_by = runfolder.precision(resume_from, save_path, requested, given)
        pretrained, embedding_size = None, config.embedding_size or config.hidden_size
        if FLAGS.embedding_file and chief and resume_from:  # the checkpoint's embedding wins; the file is checked
            embeddings.load_glove(FLAGS.embedding_file, data.vocab, embedding_size)
        elif FLAGS.embedding_file and chief:
            pretrained = load_pretrained(FLAGS.embedding_file, data.vocab, embedding_size)
        if save_path:  # every input checked: from here on the folder is this run's (the chief's alone)
            resume_from = runfolder.claim(save_path, config, data.vocab, len(data.train), FLAGS.model, precision)
            finished = resume_from and not cluster and runfolder.finished(resume_from, save_path, config.max_max_epoch)
            if finished:  # rerun after its end: its numbers, not a second test pass
                print(finished, flush=True)
                return
        worker = f"worker {cluster.index} of {len(cluster.workers)}, " if cluster else ""
        seed_used = seed if chief else "the chief's"
        chosen = f" ({chosen_by})" if chosen_by else ""
        print(f"Model: {FLAGS.model}, rnn_mode: {rnn_mode}, precision: {precision}{chosen}, {worker}seed: {seed_used}, "
              f"vocabulary: {config.vocab_size} words, train/valid/test: {len(data.train)}/{len(data.valid)}/"
              f"{len(data.test)} words", flush=True)
        if any(data.unknown.values()):
            print("Outside the vocabulary, read as <unk>: " + ", ".join(f"{n} {split}" for split, n in
                                                                        data.unknown.items()) + " words", flush=True)
        replicas = None
        if FLAGS.replicas > 1 or cluster:
            replicas = distribute.Replicas(FLAGS.replicas, cluster, FLAGS.num_threads, FLAGS.worker_timeout)

        def train(seed):
            with distribute.stop_if_workers_are_lost(cluster, save_path), tf.Graph().as_default():
                m, mvalid, mtest = create_models(config, rnn_mode, precision, seed, replicas)
                run = training.TrainingRun(
                    m, mvalid, data, config, seed, save_path, replicas,
                    one_process_model=lambda: create_models(config, rnn_mode, precision, seed),
                    pretrained=pretrained, model_name=FLAGS.model, checkpoint_minutes=FLAGS.checkpoint_minutes,
                    num_threads=FLAGS.num_threads, max_cell_state=FLAGS.max_cell_state or None)
                train_and_test(run, m, mvalid, mtest, data, config, FLAGS.test_window, resume_from)

        start = time.time()
        # A large run can stop learning in its first steps (a saturated cell): then it starts again with another seed.
        seed_chosen = FLAGS.seed is not None or bool(resume_from) or cluster is not None
        training.until_it_learns(train, seed, draw_seed, seed_chosen, save_path, resuming=bool(resume_from))
        print(f"Wall time: {time.time() - start:.0f} s", flush=True)


def draw_seed():
    return int(np.random.randint(2 ** 31))


def load_data(data_path, config, max_vocab=None, train_words=None):
    """The corpus, checked against the config (each text long enough for one window); sets config.vocab_size."""
    data = reader.load_ptb(data_path, max_vocab, train_words)
    train, valid, test = reader.split_paths(data_path)
    if train_words:
        train += f" (--train_words={train_words})"
    if len(data.vocab) < 2:
        raise reader.DataError(f"{train} has one word in its vocabulary, {data.vocab[0]!r} (and no line end, read as "
                               f"{reader.EOS}): a language model needs two different words or more to choose between")
    config.vocab_size = len(data.vocab)
    ranges.check_config(config)
    reader.epoch_size(len(data.train), config.batch_size, config.num_steps, train)
    reader.epoch_size(len(data.valid), config.batch_size, config.num_steps, valid)
    reader.epoch_size(len(data.test), 1, 1, test)
    return data


def load_pretrained(path, vocab, size):
    """GloVe vectors for the words of `vocab` that `path` holds: (vectors, found), which start their embedding rows."""
    pretrained = embeddings.load_glove(path, vocab, size)
    print(f"Embedding: {pretrained[1].sum()} of {len(vocab)} words ({pretrained[1].mean():.1%}) start from {path}",
          flush=True)
    return pretrained


if __name__ == "__main__":
    cli.run(main)
