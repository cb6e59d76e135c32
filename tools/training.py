"""What a training run needs around the tutorial's epoch loop (ptb_word_lm.py), behind a few calls:

    run = TrainingRun(models, data, config, session, ...)   # its checkpoints, guard, progress lines and summaries
    first_epoch, position = run.start(resume_from)        # fresh weights (or GloVe rows), or a checkpoint's
    run_epoch(session, m, data.train, m.train_op, position=position, on_step=run.after_step)
    run.end_epoch(epoch, learning_rate, train_perplexity, valid_perplexity)
    run.end(test_perplexity)

- A checkpoint (--save_path) at every epoch end and every --checkpoint_minutes inside one: the weights with
  where training is (SavedPosition), so that the same command resumes the very step it stopped at.
- The divergence guard (guard.py): a loss or weights that are not finite stop training with exit code 3,
  and a checkpoint is only ever of sound weights.
- Progress lines about ten times per epoch, and TensorBoard scalars, metrics.jsonl and the plot (monitor.py).
- SIGINT and SIGTERM (cli.py) are acted on between two steps: the run saves where it is, then stops.
"""
import math
import time

import numpy as np

from model import Position, dropout_seed
import reader
from tools import checkpoint, cli, distribute, embeddings, guard, monitor, runfolder
from tools.tf1 import session_config, tf

MAX_SEEDS = 20  # seeds tried, without --seed, before a run whose LSTM keeps stopping to learn gives up


def until_it_learns(train, seed, draw_seed, seed_chosen, save_path=None, resuming=False):
    """train(seed); again with a seed from draw_seed() each time the run's LSTM stops learning in its first steps
    (guard.StoppedLearning: a saturated cell, docs/reproducing.md), MAX_SEEDS seeds at most.

    A seed that was chosen (seed_chosen: --seed, a resumed run's own, the chief's for several workers) is not
    replaced: the run stops with exit code 3. Each abandoned seed is recorded in the run folder's run.json."""
    for attempt in range(1, MAX_SEEDS + 1):
        try:
            return train(seed)
        except guard.StoppedLearning as e:
            if seed_chosen or attempt == MAX_SEEDS:
                advice = "start again in another --save_path" if resuming else "choose another --seed"
                tried = f"{attempt} seeds tried; " if attempt > 1 else ""
                raise cli.Stop(f"{e}; {tried}seed {seed} does this on this CPU: {advice} (or "
                               "--max_cell_state=0 to train it all the same)", guard.DIVERGED)
            if save_path:
                runfolder.record_abandoned_seed(save_path, seed)
            abandoned, seed = seed, draw_seed()
            print(f"Seed {abandoned} stopped learning at epoch 1, step {e.step} (a cell state of {e.value:.6g}, "
                  f"beyond --max_cell_state={e.limit:g}): starting again with seed {seed}", flush=True)


class SavedPosition:
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


class TrainingRun:
    """The machinery of one training run, around the graph of its models (m: training, mvalid: validation).

    Built in that graph (graph.as_default()), after the models: it adds its own variables, then start() opens
    the session. seed: the run's; replicas: None (one process) or the distribute.Replicas the graph was built
    for, and one_process_model() then builds the one-process training model whose start values the replicas
    take; save_path: None saves nothing (with several workers, only the chief is given one); pretrained: None,
    or (vectors, found) from embeddings.load_glove, whose rows start the embedding of a fresh run.
    """

    def __init__(self, m, mvalid, data, config, seed, save_path=None, replicas=None, one_process_model=None,
                 pretrained=None, model_name=None, checkpoint_minutes=10, num_threads=0, max_cell_state=None):
        self.m, self.mvalid, self.data, self.config, self.seed = m, mvalid, data, config, seed
        self.save_path, self.replicas, self.pretrained = save_path, replicas, pretrained
        self.one_process_model, self.num_threads = one_process_model, num_threads
        self.max_cell_state = max_cell_state  # None: the guard does not check that the LSTM learns
        self.checkpoint_seconds = 60 * checkpoint_minutes
        self.graph = tf.get_default_graph()
        with tf.variable_scope("Model"):
            self.seed_variable = dropout_seed()
        self.saved_position = SavedPosition(m.initial_state.shape)
        self.global_step = tf.train.get_global_step()
        self.weights_finite = tf.reduce_all([tf.reduce_all(tf.is_finite(v)) for v in tf.trainable_variables()])
        # Relative paths in the 'checkpoint' index: the folder can be moved or copied.
        self.saver = tf.train.Saver(tf.global_variables(), max_to_keep=3, save_relative_paths=True)
        self.guard = guard.Guard(save_path)
        self.progress = monitor.ProgressLines(m.batch_size * m.num_steps, config.max_max_epoch)
        self.log = monitor.RunLog(save_path, model_name)
        self.session, self.epoch, self.last_save = None, 0, time.time()

    def open_session(self):
        """The session, every variable initialized: fresh weights from the seed; replicated, the weights one
        process starts from (with several workers, once every worker has started)."""
        replicas = self.replicas
        if replicas is None:
            self.session = tf.Session(config=session_config(self.num_threads))
            self.session.run(tf.global_variables_initializer())
        else:
            self.session = replicas.session()
            if replicas.workers > 1:
                print(f"Waiting for the {replicas.workers} workers to start (at most "
                      f"{distribute.START_TIMEOUT // 60} minutes)", flush=True)
            replicas.run_at_start(self.session, tf.global_variables_initializer())
        self.session.run(self.seed_variable.assign(self.seed))
        if replicas is not None:
            self.session.run(tf.local_variables_initializer())
        if replicas is not None and replicas.chief:  # start where one process starts (start() passes it on)
            start = distribute.one_process_values(self.one_process_model)
            self.load({v: start[v.op.name] for v in tf.trainable_variables()})
        self.last_save = time.time()

    def load(self, values):
        """Sets {variable: value}: every copy of a replicated variable."""
        if self.replicas is None:
            for variable, value in values.items():
                variable.load(value, self.session)
        else:
            with self.graph.as_default():
                distribute.load(self.session, self.replicas.strategy, values)

    def start(self, prefix):
        """Resumes from checkpoint `prefix`, if any (checked by runfolder.check), else starts from the initialized
        weights (and the GloVe rows): (the 0-based epoch, the Position inside it, or None at its start).

        With several workers, the chief restores (or starts) and every worker takes its variables."""
        with self.graph.as_default():
            self.open_session()
        several = self.replicas is not None and self.replicas.workers > 1
        if prefix:
            checkpoint.restore(self.session, self.saver, prefix)
        else:
            self.load_pretrained()
        if several:
            with self.graph.as_default():
                distribute.check_one_precision(self.session, self.replicas, self.m.precision)
                distribute.copy_from_the_chief(self.session, self.replicas, tf.global_variables())
        if not prefix and not several:
            return 0, None
        epoch, position = self.saved_position.read(self.session)
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

    def start_epoch(self, epoch, position):
        self.epoch = epoch
        self.progress.start_epoch(epoch, position.step if position else 0)

    def after_step(self, position, vals, epoch_size):
        """Between two training steps: the divergence guard, progress lines, checkpoints, signals."""
        self.guard.check_step(vals["cost"], self.m.num_steps, vals["grad_norm"], self.epoch, position.step)
        checking = self.max_cell_state is not None and self.guard.checks_learning(self.epoch, position.step,
                                                                                  epoch_size)
        if checking:
            try:
                self.guard.check_learning(position.state, position.step, self.max_cell_state)
            except guard.StoppedLearning:
                self.abandon()  # its session and summaries; it saved no checkpoint
                raise
        if self.progress.due(position.step, epoch_size):
            wps, perplexity = self.progress.print(position, epoch_size)
            self.log.scalars(self.session.run(self.global_step), train_loss=math.log(perplexity),
                             learning_rate=self.session.run(self.m.lr), words_per_second=wps)
        # No periodic checkpoint while the guard still checks that the LSTM learns: a run it abandons leaves none.
        if self.save_path and time.time() - self.last_save > self.checkpoint_seconds and not checking:
            self.save(self.epoch, position)
        self.stop_if_signalled(self.epoch, position.step, position, vals["train_op"])

    def end_epoch(self, epoch, lr, train_perplexity, valid_perplexity):
        """After epoch `epoch` (0-based) and its validation: the guard, a checkpoint, its metrics, signals."""
        self.guard.check_perplexity(valid_perplexity, f"the valid perplexity became {valid_perplexity} at epoch "
                                                      f"{epoch + 1}")
        step = self.session.run(self.global_step)
        # The epoch's line first: a save that fails (a full disk) keeps it, and the epoch redone replaces it.
        self.log.epoch({"epoch": epoch + 1, "learning_rate": lr, "train_perplexity": train_perplexity,
                        "valid_perplexity": valid_perplexity, "global_step": int(step)})
        self.save(epoch + 1, Position())
        self.log.scalars(step, train_perplexity=train_perplexity, valid_perplexity=valid_perplexity)
        self.stop_if_signalled(epoch + 1, 0)

    def test_pass(self, run_test):
        """run_test(), the test text's perplexity, checked by the guard; a signal during it stops the run (the
        trained model is saved already)."""
        try:
            perplexity = run_test()
        except cli.Interrupted as e:
            where = f"the trained model is saved in {self.save_path}" if self.save_path else "nothing saved"
            raise cli.Stop(f"{e} in the test pass; {where}: rerun the same command to run the test pass",
                           128 + e.signum)
        self.guard.check_perplexity(perplexity, f"the test perplexity is {perplexity}")
        return perplexity

    def end(self, test_perplexity):
        """The test perplexity into the summaries and metrics; the summaries closed."""
        self.log.test(self.session.run(self.global_step), test_perplexity)
        self.log.close()

    def abandon(self):
        """Closes the session and the summaries, and removes the TensorBoard file this run wrote: an attempt the
        guard stopped in its first steps (nothing else of it is saved)."""
        self.log.discard()
        if self.session is not None:
            self.session.close()

    def save(self, epoch, position):
        """A checkpoint, of sound weights only: finite, and with a finite loss on a window of validation text."""
        if not self.save_path:
            return
        x, y = next(reader.ptb_iterator(self.data.valid, self.mvalid.batch_size, self.mvalid.num_steps))
        finite, cost = self.session.run([self.weights_finite, self.mvalid.cost],
                                        {self.mvalid.input_data: x, self.mvalid.targets: y})
        self.guard.check_weights(finite, cost, self.mvalid.num_steps, epoch, position.step)
        self.saved_position.write(self.session, epoch, position)
        checkpoint.save(self.session, self.saver, self.save_path, self.config, self.data.vocab, self.global_step)
        self.last_save = time.time()

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
                raise cli.Stop(f"stopped {signalled}; {where}: rerun the same command on every worker to resume",
                               128 + cli.received[0] if cli.received else distribute.LOST)
            return
        if not cli.received:
            return
        if self.replicas is not None and not self.replicas.chief:
            raise cli.Stop(f"stopped by signal {cli.received[0]}; worker 0 keeps its checkpoints: rerun the same "
                           "command on every worker to resume", 128 + cli.received[0])
        signum = cli.received[0]
        if not self.save_path:
            raise cli.Stop(f"stopped by signal {signum} at epoch {epoch + 1}, step {step}; nothing saved "
                           "(no --save_path)", 128 + signum)
        if position is not None:
            self.save(epoch, position)
        raise cli.Stop(f"stopped by signal {signum}; saved epoch {epoch + 1}, step {step} to {self.save_path}: "
                       "rerun the same command to resume", 128 + signum)
