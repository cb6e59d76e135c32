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
AVX-512 AMD EPYC: README.md has the commands, logs and times; large with --seed=2,
as seed 1 stops learning in its first minutes.)

With --save_path the run can be stopped (Ctrl-C, SIGTERM) and resumed by rerunning the same
command: a checkpoint is written at every epoch end and every --checkpoint_minutes, and it
holds the position inside the epoch, the LSTM state and the running totals with the weights.
"""
import math
import os
import time

import cli  # first: from here on a signal ends the program with one line, even during TensorFlow's import
from absl import flags

import configs

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_string("data_path", None, "Folder with ptb.{train,valid,test}.txt (or {train,valid,test}.txt, or "
                    "WikiText's wiki.{train,valid,test}.tokens); default: data/ of this project, where PTB is "
                    "downloaded if missing.")
flags.DEFINE_enum("model", "small", list(configs.CONFIGS), "Model config.")
flags.DEFINE_string("save_path", None, "Folder for checkpoints, config, vocabulary, TensorBoard summaries, "
                    "metrics and plot. Rerunning with the same folder resumes the run.")
flags.DEFINE_enum("rnn_mode", None, list(configs.RNN_MODES), "How the LSTM runs: basic (BasicLSTMCell, the "
                  "reference), block (fused BlockLSTM kernel), fast (BlockLSTM with a faster gradient of our own), "
                  "cudnn (GPU). Default: fast, the fastest measured.")
flags.DEFINE_enum("precision", "fp32", list(configs.PRECISIONS), "Matmul precision; variables, loss and gradient "
                  "clipping stay fp32. bf16: the softmax in bfloat16 (BlockLSTM has no bf16 kernel); fp16: the "
                  "softmax and the LSTM in float16.")
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
flags.DEFINE_bool("variational_dropout", False, "One dropout mask a sequence, the same at every time step "
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
flags.DEFINE_float("worker_timeout", 120, "With TF_CONFIG (several workers): a worker stops when a step waits this "
                   "many seconds for the others (at start it waits 10 minutes for them).")
FLAGS = flags.FLAGS
if __name__ == "__main__":  # the flags are checked here, before TensorFlow's import: a typo costs no wait
    cli.parse_first()

# Only now what is slow to import: TensorFlow (through tf1, which most modules below import) and numpy.
import numpy as np  # noqa: E402

import checkpoint  # noqa: E402
import distribute  # noqa: E402
import embeddings  # noqa: E402
import monitor  # noqa: E402
import reader  # noqa: E402
import runfolder  # noqa: E402
from model import (MAX_LOG_FLOAT, Position, PTBModel, check_options, check_rnn_mode, default_rnn_mode,  # noqa: E402
                   dropout_seed, run_epoch)
from tf1 import session_config, tf  # noqa: E402


LOST = 4  # exit code: another worker of the cluster stopped or was lost


class Stop(Exception):
    """Training ends early; the message says why and what to do next."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class Progress:
    """Where training is, kept in variables so that it is saved with (and only with) the weights."""

    def __init__(self, state_shape):
        zeros = tf.zeros_initializer()
        with tf.variable_scope("Train"):
            self.vars = {name: tf.get_variable(name, [], dtype, trainable=False, initializer=zeros)
                         for name, dtype in (("epoch", tf.int64), ("step", tf.int64),
                                             ("costs", tf.float64), ("iters", tf.int64))}
            self.vars["lstm_state"] = tf.get_variable("lstm_state", state_shape, tf.float32, trainable=False,
                                                      initializer=zeros)
        self.feeds = {k: tf.placeholder(v.dtype.base_dtype, v.shape) for k, v in self.vars.items()}
        self.assign = tf.group(*[tf.assign(self.vars[k], self.feeds[k]) for k in self.vars])

    def write(self, session, epoch, position):
        state = position.state if position.state is not None else np.zeros(self.feeds["lstm_state"].shape)
        values = dict(epoch=epoch, step=position.step, costs=position.costs, iters=position.iters, lstm_state=state)
        session.run(self.assign, {self.feeds[k]: v for k, v in values.items()})

    def read(self, session):
        v = session.run(self.vars)
        state = v["lstm_state"] if v["step"] > 0 else None
        return int(v["epoch"]), Position(int(v["step"]), float(v["costs"]), int(v["iters"]), state)


def training_model(config, rnn_mode, precision, seed, replicas=None):
    """Builds the training model in the current graph: a PTBModel of the whole batch, or with distribute.Replicas
    their replicas (distribute.ReplicatedModel), each a PTBModel of its rows."""
    tf.set_random_seed(seed)
    initializer = tf.random_uniform_initializer(-config.init_scale, config.init_scale)

    def build(batch_size=config.batch_size, rows=None):
        return PTBModel(True, config, batch_size, config.num_steps, rnn_mode, precision, rows=rows)

    with tf.variable_scope("Model", reuse=None, initializer=initializer):
        return build() if replicas is None else distribute.ReplicatedModel(replicas, build, config)


class Trainer:
    """Builds the graph of one training run and runs it, epoch by epoch."""

    def __init__(self, data, config, rnn_mode="block", precision="fp32", save_path=None, seed=None, pretrained=None,
                 replicas=None):
        """replicas: None, one process on one device (the default); else distribute.Replicas, whose replicas
        share each training batch (with several workers, only the chief is given a save_path)."""
        self.data, self.config, self.save_path, self.pretrained = data, config, save_path, pretrained
        self.replicas = replicas
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.m = training_model(config, rnn_mode, precision, seed, replicas)
            test_steps = 1 if rnn_mode == "basic" else None  # batch 1: every word sees all the text before it
            with tf.variable_scope("Model", reuse=True):
                self.mvalid = PTBModel(False, config, config.batch_size, config.num_steps, rnn_mode, precision)
                self.mtest = PTBModel(False, config, 1, test_steps, rnn_mode, precision)
            with tf.variable_scope("Model"):
                seed_var = dropout_seed()
            self.progress = Progress(self.m.initial_state.shape)
            self.global_step = tf.train.get_global_step()
            self.weights_finite = tf.reduce_all([tf.reduce_all(tf.is_finite(v)) for v in tf.trainable_variables()])
            # Relative paths in the 'checkpoint' index: the folder can be moved or copied.
            self.saver = tf.train.Saver(tf.global_variables(), max_to_keep=3, save_relative_paths=True)
            self.session = tf.Session(config=session_config(FLAGS.num_threads)) if replicas is None else \
                replicas.session()
            if replicas is None:
                self.session.run(tf.global_variables_initializer())
            else:  # with several workers, the initializers wait for them all
                if replicas.workers > 1:
                    print(f"Waiting for the {replicas.workers} workers to start (at most "
                          f"{distribute.START_TIMEOUT // 60} minutes)", flush=True)
                replicas.run_at_start(self.session, tf.global_variables_initializer())
            self.session.run(seed_var.assign(seed))
            if replicas is not None:
                self.session.run(tf.local_variables_initializer())
            if replicas is not None and replicas.chief:  # start where one process starts (restore() passes it on)
                start = distribute.one_process_values(lambda: training_model(config, rnn_mode, precision, seed))
                self.load({v: start[v.op.name] for v in tf.trainable_variables()})
        self.log = monitor.RunLog(save_path, FLAGS.model)

    def load(self, values):
        """Sets {variable: value}: every copy of a replicated variable."""
        if self.replicas is None:
            for variable, value in values.items():
                variable.load(value, self.session)
        else:
            with self.graph.as_default():
                distribute.load(self.session, self.replicas.strategy, values)

    def restore(self, prefix):
        """Resumes from checkpoint `prefix`, if any (checked by runfolder.check): (epoch, position).

        With several workers, the chief restores (or starts) and every worker takes its variables."""
        several = self.replicas is not None and self.replicas.workers > 1
        if prefix:
            checkpoint.restore(self.session, self.saver, prefix)
        else:
            self.load_pretrained()
        if several:
            with self.graph.as_default():
                distribute.take_the_chiefs(self.session, self.replicas, tf.global_variables())
        if not prefix and not several:
            return 0, None
        epoch, position = self.progress.read(self.session)
        if prefix or epoch or position.step:
            print(f"Resuming from {prefix or 'the chief'}: epoch {epoch + 1}, step {position.step}", flush=True)
        return epoch, position

    def load_pretrained(self):
        """Starts the embedding rows of the words that have pretrained vectors from those."""
        if self.pretrained is None:
            return
        vectors, found = self.pretrained
        with self.graph.as_default():
            embedding = [v for v in tf.global_variables() if v.op.name == embeddings.EMBEDDING][0]
        value = self.session.run(embedding)
        value[found] = vectors[found]
        self.load({embedding: value})

    def save(self, epoch, position):
        """A checkpoint, of sound weights only: finite, and with a finite loss on a window of validation text."""
        if not self.save_path:
            return
        x, y = next(reader.ptb_iterator(self.data.valid, self.mvalid.batch_size, self.mvalid.num_steps))
        finite, cost = self.session.run([self.weights_finite, self.mvalid.cost],
                                        {self.mvalid.input_data: x, self.mvalid.targets: y})
        if not (finite and cost / self.mvalid.num_steps <= MAX_LOG_FLOAT):
            self.diverged(f"the weights to be saved at epoch {epoch + 1}, step {position.step} are "
                          f"{'not finite' if not finite else f'diverged (a loss of {cost:.3g} on validation text)'}")
        self.progress.write(self.session, epoch, position)
        checkpoint.save(self.session, self.saver, self.save_path, self.config, self.data.vocab, self.global_step)
        self.last_save = time.time()

    def diverged(self, what):
        if self.save_path and checkpoint.latest(self.save_path):
            kept = f"the last good checkpoint in {self.save_path} is kept"
        else:
            kept = "nothing was saved" + (" (it diverged before its first checkpoint)" if self.save_path else "")
        raise Stop(f"{what}: training stopped, {kept}; lower --learning_rate", 3)

    def run(self, resume_from=None):
        config = self.config
        first_epoch, position = self.restore(resume_from)
        self.last_save = time.time()
        with cli.signals_deferred():  # a signal is acted on between steps, where the run can be saved
            for i in range(first_epoch, config.max_max_epoch):
                self.run_epoch(i, position)
                position = None
        try:
            test_perplexity = run_epoch(self.session, self.mtest, self.data.test, window=FLAGS.test_window)
        except cli.Interrupted as e:
            where = f"the trained model is saved in {self.save_path}" if self.save_path else "nothing saved"
            raise Stop(f"{e} in the test pass; {where}: rerun the same command to run the test pass", 128 + e.signum)
        if not math.isfinite(test_perplexity):
            self.diverged(f"the test perplexity is {test_perplexity}")
        print(f"Test Perplexity: {test_perplexity:.3f}", flush=True)
        self.log.test(self.session.run(self.global_step), test_perplexity)
        self.log.close()
        return test_perplexity

    def run_epoch(self, i, position):
        """Epoch i (0-based): train, validate, save, from `position` if resumed inside it."""
        lr = configs.learning_rate(self.config, i)
        self.m.assign_lr(self.session, lr)
        print(f"Epoch: {i + 1} Learning rate: {lr:.3f}", flush=True)
        self.epoch, self.epoch_start, self.first_step = i, time.time(), position.step if position else 0
        train_perplexity = run_epoch(self.session, self.m, self.data.train, self.m.train_op, position=position,
                                     on_step=self.after_step)
        print(f"Epoch: {i + 1} Train Perplexity: {train_perplexity:.3f}", flush=True)
        valid_perplexity = run_epoch(self.session, self.mvalid, self.data.valid)
        print(f"Epoch: {i + 1} Valid Perplexity: {valid_perplexity:.3f}", flush=True)
        if not math.isfinite(valid_perplexity):
            self.diverged(f"the valid perplexity became {valid_perplexity} at epoch {i + 1}")
        self.save(i + 1, Position())
        self.log_epoch(i + 1, lr, train_perplexity, valid_perplexity)
        self.stop_if_signalled(i + 1, 0)

    def after_step(self, position, vals, epoch_size):
        """Between two training steps: the divergence guard, progress lines, checkpoints, signals."""
        loss = vals["cost"] / self.m.num_steps  # a word's mean loss: ln(vocab_size) at the start
        if not (loss <= MAX_LOG_FLOAT and math.isfinite(vals["grad_norm"])):  # NaN fails every comparison
            self.diverged(f"the loss became {vals['cost']} (gradient norm {vals['grad_norm']}) at epoch "
                          f"{self.epoch + 1}, step {position.step}")
        step = position.step - 1
        if epoch_size >= 10 and step % (epoch_size // 10) == 10:
            self.print_progress(position, epoch_size)
        if self.save_path and time.time() - self.last_save > 60 * FLAGS.checkpoint_minutes:
            self.save(self.epoch, position)
        self.stop_if_signalled(self.epoch, position.step, position, vals["train_op"])

    def print_progress(self, position, epoch_size):
        elapsed = time.time() - self.epoch_start
        seconds_per_step = elapsed / (position.step - self.first_step)
        epoch_left = (epoch_size - position.step) * seconds_per_step
        run_left = epoch_left + (self.config.max_max_epoch - self.epoch - 1) * epoch_size * seconds_per_step
        wps = (position.step - self.first_step) * self.m.batch_size * self.m.num_steps / elapsed
        print(f"{position.step / epoch_size:.3f} perplexity: {position.perplexity:.3f} speed: {wps:.0f} wps "
              f"eta: epoch {monitor.duration(epoch_left)}, run {monitor.duration(run_left)}", flush=True)
        self.log.scalars(self.session.run(self.global_step), train_loss=math.log(position.perplexity),
                         learning_rate=self.session.run(self.m.lr), words_per_second=wps)

    def log_epoch(self, epoch, lr, train_perplexity, valid_perplexity):
        step = self.session.run(self.global_step)
        self.log.scalars(step, train_perplexity=train_perplexity, valid_perplexity=valid_perplexity)
        self.log.epoch({"epoch": epoch, "learning_rate": lr, "train_perplexity": train_perplexity,
                        "valid_perplexity": valid_perplexity, "global_step": int(step)})

    def stop_if_signalled(self, epoch, step, position=None, stop_requests=None):
        """Ends the run on SIGINT or SIGTERM, saving where it is (an epoch's end is saved already).

        With several workers, stop_requests (inside an epoch) is how many asked to stop before the step just
        run: a signal here is passed on with the next step, and every worker stops after that same step."""
        if stop_requests is not None:
            if cli.received:
                self.session.run(self.m.stop_request.assign(1.0))
            if stop_requests:
                self.save(epoch, position)
                signalled = f"by signal {cli.received[0]}" if cli.received else "as another worker was"
                where = f"saved epoch {epoch + 1}, step {step} to {self.save_path}" if self.save_path else \
                    f"worker 0 saved epoch {epoch + 1}, step {step}"
                raise Stop(f"stopped {signalled}; {where}: rerun the same command on every worker to resume",
                           128 + cli.received[0] if cli.received else LOST)
            return
        if not cli.received:
            return
        if self.replicas is not None and not self.replicas.chief:
            raise Stop(f"stopped by signal {cli.received[0]}; worker 0 keeps its checkpoints: rerun the same command "
                       "on every worker to resume", 128 + cli.received[0])
        signum = cli.received[0]
        if not self.save_path:
            raise Stop(f"stopped by signal {signum} at epoch {epoch + 1}, step {step}; nothing saved "
                       "(no --save_path)", 128 + signum)
        if position is not None:
            self.save(epoch, position)
        raise Stop(f"stopped by signal {signum}; saved epoch {epoch + 1}, step {step} to {self.save_path}: "
                   "rerun the same command to resume", 128 + signum)


def prepare_save_path(path):
    """Creates the folder and makes sure it can be written, before hours of training.

    Returns the folders it created, deepest first: a run that saves nothing leaves none of them behind
    (runfolder.remove_unused)."""
    created, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")  # its own: two trainings may start together
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise reader.DataError(f"cannot write to --save_path={path} ({e.strerror}): choose a writable folder")
    return created


def load_data_and_config(cluster=None):
    """The corpus and the config, every flag and file checked before any graph is built.

    The flags' ranges are checked by cli when they are parsed; here what only the corpus tells.
    """
    config = configs.get_config(FLAGS.model)
    for name in CONFIG_FLAGS:
        if FLAGS[name].present:
            setattr(config, name, FLAGS[name].value)
    check_rnn_mode(FLAGS.rnn_mode or default_rnn_mode())
    check_options(config, FLAGS.rnn_mode or default_rnn_mode())
    distribute.check_replicas(FLAGS.replicas, config, FLAGS.rnn_mode or default_rnn_mode(), cluster)
    if FLAGS.embedding_file:
        reader.check_readable(FLAGS.embedding_file, "--embedding_file", "a GloVe text file")
    data_path = FLAGS.data_path or reader.maybe_download(os.path.join(HERE, "data"))
    data = reader.load_ptb(data_path, FLAGS.max_vocab)
    train, valid, test = reader.split_paths(data_path)
    if FLAGS.train_words:
        data = data._replace(train=data.train[:FLAGS.train_words])
        train += f" (--train_words={FLAGS.train_words})"
    config.vocab_size = len(data.vocab)
    configs.check(config)
    reader.epoch_size(len(data.train), config.batch_size, config.num_steps, train)
    reader.epoch_size(len(data.valid), config.batch_size, config.num_steps, valid)
    reader.epoch_size(len(data.test), 1, 1, test)
    return data, config


def main(argv):
    del argv
    cluster = distribute.read_tf_config(os.environ.get("TF_CONFIG", ""))
    save_path = FLAGS.save_path if cluster is None or cluster.index == 0 else None  # only the chief writes
    created = prepare_save_path(save_path) if save_path else []
    try:
        train(cluster, save_path)
    except Stop as e:
        cli.fail(f"Stopped: {e}", e.exit_code, prefix="")
    finally:
        runfolder.remove_unused(created)


def train(cluster, save_path):
    data, config = load_data_and_config(cluster)
    resume_from = save_path and runfolder.check(save_path, config, data.vocab, len(data.train))
    rnn_mode = FLAGS.rnn_mode or default_rnn_mode()
    precision = "fp16" if FLAGS.use_fp16 else FLAGS.precision
    seed = runfolder.seed(resume_from, FLAGS.seed, lambda: int(np.random.randint(2 ** 31)))
    chief = cluster is None or cluster.index == 0
    pretrained = None
    if FLAGS.embedding_file and not resume_from and chief:
        pretrained = embeddings.load_glove(FLAGS.embedding_file, data.vocab, config.embedding_size or
                                           config.hidden_size)
        print(f"Embedding: {pretrained[1].sum()} of {len(data.vocab)} words ({pretrained[1].mean():.1%}) start "
              f"from {FLAGS.embedding_file}", flush=True)
    if save_path:  # every input checked: from here on the folder is this run's (the chief's alone)
        resume_from = runfolder.claim(save_path, config, data.vocab, len(data.train), FLAGS.model)
    worker = f"worker {cluster.index} of {len(cluster.workers)}, " if cluster else ""
    seed_used = seed if chief else "the chief's"
    print(f"Model: {FLAGS.model}, rnn_mode: {rnn_mode}, precision: {precision}, {worker}seed: {seed_used}, "
          f"vocabulary: {config.vocab_size} words, train/valid/test: {len(data.train)}/{len(data.valid)}/"
          f"{len(data.test)} words", flush=True)
    if any(data.unknown.values()):
        print("Outside the vocabulary, read as <unk>: " + ", ".join(f"{n} {split}" for split, n in
                                                                    data.unknown.items()) + " words", flush=True)
    replicas = None
    if FLAGS.replicas > 1 or cluster:
        replicas = distribute.Replicas(FLAGS.replicas, cluster, FLAGS.num_threads, FLAGS.worker_timeout)
    start = time.time()
    try:
        Trainer(data, config, rnn_mode, precision, save_path, seed, pretrained, replicas).run(resume_from)
    except tf.errors.OpError as e:
        if cluster is None:
            raise
        kept = f"the last checkpoint in {save_path} is kept" if save_path else "worker 0 keeps the last checkpoint"
        raise Stop(f"lost touch with the other workers ({distribute.error_cause(e)}); {kept}: restart every worker "
                   "with the same command to resume", LOST)
    print(f"Wall time: {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    cli.run(main)
