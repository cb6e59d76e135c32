"""Synchronous data-parallel training with tf.distribute: the same numbers as one process, on several devices.

    python ptb_word_lm.py --model=medium --replicas=2      # the batch split over 2 devices of this machine
    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \
        python ptb_word_lm.py --model=medium --save_path=runs/medium    # on host1; index 1 on host2

`--replicas=N` runs the training step as N replicas under tf.distribute.MirroredStrategy, on the machine's
GPUs when it has N, else on N logical CPU devices. A TF_CONFIG naming several workers runs it under
MultiWorkerMirroredStrategy, with replicas on every worker (one on a CPU, one a GPU), the gradients summed by
TensorFlow's collective all-reduce between the workers. Each replica builds the model (model.PTBModel, with
`rows`) on its share of the global batch: rows [r * B/N, (r + 1) * B/N) of the windows reader.ptb_iterator cuts
(every worker reads the whole corpus and feeds the whole batch; each replica takes its rows), the LSTM state
of those rows, and the rows of the dropout masks one process draws for the whole batch. Its cost is its rows'
share of the one-process cost, so the replicas' gradients, summed across them before the clipping, are the
one-process gradient, and every copy of the variables takes the one-process SGD update. Outside,
ReplicatedModel looks like one PTBModel of the whole batch (the same placeholders, cost and final state, summed
over the replicas), so model.run_epoch and the Trainer drive it unchanged, and its checkpoints, holding every
row's state under the one-process variable names, resume with any replica count.

With several workers, worker 0 (the chief) alone reads and writes the checkpoint folder; every worker takes the
chief's variables at start (copy_from_the_chief), once all are seen to train in the chief's precision
(check_one_precision); a signal on any worker stops them all after the same step (the
chief saving); a worker that dies or hangs stops the others within --worker_timeout (Replicas).

The default, one replica and no TF_CONFIG, builds none of this: ptb_word_lm.Trainer builds the one-process
graph as before.
"""
import collections
import contextlib
import json
import threading

import configs
from model import STATE_PARTS, PTBModel
from tools import cli, tf1
from tools.tf1 import session_config, tf

Cluster = collections.namedtuple("Cluster", "workers index")
Cluster.__doc__ = """The workers' addresses ("host:port", worker 0 the chief) and this process's index among them."""

START_TIMEOUT = 600  # seconds the workers wait for each other at start

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", '
                     '"index": 0}}')


def read_tf_config(text):
    """The cluster the TF_CONFIG text describes; None if it is empty or names one worker (one process).

    Refuses, in one line, what would not run: not JSON, other jobs than workers (here worker 0 is the
    chief), an address that is not host:port, a task that is not one of the workers."""
    if not text.strip():
        return None
    hint = f"give TF_CONFIG like '{TF_CONFIG_EXAMPLE}'"
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e}): {hint}")
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or list(cluster) != ["worker"]:
        raise ValueError(f"TF_CONFIG's cluster must name workers only (worker 0 is the chief): {hint}")
    workers = cluster["worker"]
    if not (isinstance(workers, list) and workers and all(is_address(w) for w in workers)):
        raise ValueError(f"TF_CONFIG's workers must be a list of host:port addresses: {hint}")
    if len(set(workers)) < len(workers):
        raise ValueError(f"TF_CONFIG names an address twice ({', '.join(workers)}): give each worker its own port")
    task = spec.get("task")
    index = task.get("index") if isinstance(task, dict) else None
    if task is None or task.get("type") != "worker" or not isinstance(index, int) or not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG's task must be {{\"type\": \"worker\", \"index\": i}} with i from 0 to "
                         f"{len(workers) - 1}: {hint}")
    return Cluster(tuple(workers), index) if len(workers) > 1 else None


def is_address(text):
    host, _, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def check_replicas(replicas, config, rnn_mode, cluster=None):
    """Refuses what replicas cannot compute as one process does, before anything is built."""
    workers = len(cluster.workers) if cluster else 1
    if config.batch_size % (replicas * workers):
        count = f"--replicas={replicas} x {workers} workers = {replicas * workers} replicas do" if cluster else \
            f"--replicas={replicas} does"
        raise ValueError(f"{count} not divide batch_size={config.batch_size}: each replica takes an equal share of "
                         f"the batch; use a replica count that divides {config.batch_size}")
    gpus = len(tf.config.list_physical_devices("GPU"))
    if cluster and replicas != max(gpus, 1):
        raise ValueError(f"--replicas={replicas}: with TF_CONFIG each worker runs one replica per GPU, and on a "
                         f"machine without GPUs one replica (MultiWorkerMirroredStrategy); this one has {gpus} GPUs, so give "
                         f"--replicas={max(gpus, 1)} (CUDA_VISIBLE_DEVICES chooses the GPUs)")
    if 0 < gpus < replicas:
        raise ValueError(f"--replicas={replicas}: this machine has {gpus} GPUs; give at most {gpus}")
    cell_by_cell = rnn_mode == "basic" or config.cell != "lstm"  # model.PTBModel.cell_layers
    if replicas * workers > 1 and cell_by_cell and min(config.keep_prob, config.state_keep_prob) < 1:
        raise ValueError("--replicas with dropout needs the LSTM in block or fast mode: the cell-by-cell graph's "
                         "DropoutWrapper draws masks of each replica's own shape, not the rows of one process's")


class Replicas:
    """Where the replicas of a training step run: the tf.distribute strategy, and the session it runs in.

    Without a cluster, MirroredStrategy over `count` devices of this machine: its GPUs, or as many logical
    CPU devices (set up before TensorFlow's runtime starts, so before the first session). With one
    (TF_CONFIG), MultiWorkerMirroredStrategy, which reads TF_CONFIG itself: each worker's devices hold
    replicas, the gradients are summed by collective all-reduce between the workers, and this process
    serves its worker's part (a tf.distribute.Server) and runs its session there.
    """

    def __init__(self, count, cluster=None, num_threads=0, timeout=120):
        self.cluster, self.chief = cluster, cluster is None or cluster.index == 0
        self.workers = len(cluster.workers) if cluster else 1
        if cluster:
            self.strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy()
        elif tf.config.list_physical_devices("GPU"):
            self.strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(count)])
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
            self.strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])
        self.config = self.strategy.update_config_proto(session_config(num_threads))
        self.config.device_count["CPU"] = len(tf.config.list_logical_devices("CPU"))  # a session is told apart
        self.target, self.start = "", None  # the session's server, the RunOptions of what waits for all workers
        if cluster:
            # Collectives wait for the other workers, and one that died may leave them waiting for ever: so every
            # run of the session gives up after `timeout` seconds, but those at start (self.start), which wait
            # for the other workers to start and build their graphs, after START_TIMEOUT.
            self.config.operation_timeout_in_ms = int(timeout * 1000)
            self.start = tf.RunOptions(timeout_in_ms=START_TIMEOUT * 1000)
            try:
                server = tf.distribute.Server(tf.train.ClusterSpec({"worker": list(cluster.workers)}), "worker",
                                              cluster.index, config=self.config)
            except tf.errors.OpError as e:
                raise ValueError(f"worker {cluster.index} cannot serve on {cluster.workers[cluster.index]} "
                                 f"({e.message.splitlines()[0]}): give TF_CONFIG a free port for it")
            self.target = server.target

    def session(self):
        return tf.Session(self.target, config=self.config)

    def run_at_start(self, session, fetches):
        """session.run(fetches) for what waits for every worker to start, in a thread of its own.

        Python acts on a signal only between its own instructions, never inside session.run: waiting here
        instead, Ctrl-C still ends the program at once while the other workers are awaited."""
        outcome = {}

        def run():
            try:
                outcome["value"] = session.run(fetches, options=self.start)
            except tf.errors.OpError as e:
                outcome["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        try:  # thread.start() inside: a signal that comes as the thread starts still finds it ended at once
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
        except cli.Interrupted:
            cli.exit_at_once()
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")


class ReplicaModel(PTBModel):
    """One replica's PTBModel: the same graph on its `rows` of the global batch, computing its share of what one
    process computes on the whole batch. What differs from PTBModel, each in a method of its own:

    - it reads its rows of the global batch's input_data, targets and initial_state (tensors, not placeholders);
    - its cost divides its rows' losses by the global batch size, so the replicas' costs sum to the cost;
    - its dropout masks are its rows of the masks one process draws for the whole batch;
    - its gradient is summed across the replicas (tf.distribute's all-reduce) before the clipping, and the SGD
      update applied once to each copy of the variables.
    """

    def __init__(self, rows, global_batch_size, inputs, config, rnn_mode, precision):
        self.rows, self.global_batch_size = rows, global_batch_size  # rows: a slice of the global batch
        super().__init__(True, config, rows.stop - rows.start, config.num_steps, rnn_mode, precision, inputs=inputs)

    def embedding_device(self):
        return contextlib.nullcontext()  # a replica's copy of the embedding is on its own device

    def batch_mean(self, total, shape):
        return total / float(self.global_batch_size)

    def dropout(self, x, site, time_axis=1):
        """x times its rows of the dropout mask one process draws for the whole batch (0 or 1 / keep_prob).

        The mask is drawn at the global batch's shape from the same seed, so it is the one-process mask;
        x * mask is then what stateless_dropout computes: x / keep_prob where kept, 0 where dropped."""
        if self.keep_prob >= 1.0:
            return x
        noise_shape = self.noise_shape(x, time_axis)
        batch_axis = 1 - time_axis
        shape = tf.shape(x) if noise_shape is None else noise_shape
        global_shape = tf.tensor_scatter_nd_update(shape, [[batch_axis]], [self.global_batch_size])
        mask = tf.nn.experimental.stateless_dropout(tf.ones(global_shape, x.dtype), rate=1.0 - self.keep_prob,
                                                    seed=self.seed(site))
        return x * (mask[self.rows] if batch_axis == 0 else mask[:, self.rows])

    def build_train_op(self):
        """PTBModel's clipped SGD, on the gradient summed across the replicas (the one-process gradient)."""
        # One variable for all replicas, named as one process names it (tf.Variable would add name scopes); its
        # value is set from outside the replicas (ReplicatedModel).
        self.lr = tf.get_variable("learning_rate", [], tf.float32, tf.zeros_initializer(), trainable=False)
        tvars = tf.trainable_variables()
        grads = tf.gradients(self.cost, tvars)
        grads = tf.distribute.get_replica_context().merge_call(sum_across_replicas, args=(grads,))
        self.clipped_grads, self.grad_norm = tf.clip_by_global_norm(grads, self.config.max_grad_norm)
        self.train_op = tf.distribute.get_replica_context().merge_call(
            sgd_update_of_every_copy, args=(self.clipped_grads, tvars, self.lr))


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


class ReplicatedModel:
    """The training model of a data-parallel step, seen from outside as one PTBModel of the global batch.

    Each replica builds a ReplicaModel (in the variable scope the caller opened) on its rows. The input_data,
    targets and initial_state placeholders hold the global batch; each replica reads its rows. cost is the
    replicas' costs summed, final_state their final states, each in its rows: both what one process computes.
    train_op runs every replica's step; grad_norm (the norm of the summed gradient, the same on every replica)
    and lr are those of the first local replica.
    With several workers, train_op's value is how many of them asked to stop (stop_request, set by a
    signal) before the step: all see the same count, so all stop after the same step.
    """

    def __init__(self, replicas, config, rnn_mode, precision):
        strategy = replicas.strategy
        self.batch_size, self.num_steps, self.precision = config.batch_size, config.num_steps, precision
        self.input_data = tf.placeholder(tf.int32, [self.batch_size, self.num_steps], name="input_data")
        self.targets = tf.placeholder(tf.int32, [self.batch_size, self.num_steps], name="targets")
        state_shape = [config.num_layers, STATE_PARTS[config.cell], self.batch_size, config.hidden_size]
        self.initial_state = tf.placeholder_with_default(tf.zeros(state_shape), state_shape, name="initial_state")
        self.replicas = {}
        with strategy.scope():
            cost, final_state, grad_norm, train_op = strategy.extended.call_for_each_replica(
                tf.autograph.experimental.do_not_convert(lambda: self.replica(config, rnn_mode, precision)))
            self.cost = strategy.reduce(tf.distribute.ReduceOp.SUM, cost, axis=None)
            self.final_state = strategy.reduce(tf.distribute.ReduceOp.SUM, final_state, axis=None)
            self.grad_norm = strategy.experimental_local_results(grad_norm)[0]
            self.train_op = tf.group(strategy.experimental_local_results(train_op))
            self.lr = self.replicas[min(self.replicas)].lr  # one variable, a copy on each device
            # Set from here, outside the replicas: a mirrored variable is assigned to all its copies at once.
            self.new_lr = tf.placeholder(tf.float32, [], name="new_learning_rate")
            self.lr_update = tf.assign(self.lr, self.new_lr)
        if replicas.workers > 1:
            # Whether this worker was asked to stop: a local variable, not saved with the weights.
            self.stop_request = tf.Variable(0.0, trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES],
                                            name="stop_request")
            with strategy.scope(), tf.control_dependencies([self.train_op]):
                self.train_op = sum_over_workers(replicas, self.stop_request.read_value())

    assign_lr = PTBModel.assign_lr

    def replica(self, config, rnn_mode, precision):
        """Runs on each replica, on its device: its model, on its rows of the global batch."""
        context = tf.distribute.get_replica_context()
        index = int(tf.get_static_value(context.replica_id_in_sync_group))
        size = self.batch_size // context.num_replicas_in_sync
        rows = slice(index * size, (index + 1) * size)
        inputs = self.input_data[rows], self.targets[rows], self.initial_state[:, :, rows]
        model = ReplicaModel(rows, self.batch_size, inputs, config, rnn_mode, precision)
        self.replicas[index] = model
        # Its rows' final state in their place in the global batch, zeros elsewhere: summed over the replicas,
        # the whole batch's state (TensorFlow 1's strategies have no all-gather).
        final_state = tf.pad(model.final_state, [[0, 0], [0, 0], [rows.start, self.batch_size - rows.stop], [0, 0]])
        return model.cost, final_state, model.grad_norm, model.train_op


def one_process_values(build):
    """The values a one-process run starts from: build() builds its training model in a graph of its own.

    Initializers draw from (graph seed, op id), and a replicated graph numbers its ops otherwise, so a
    replicated run loads these to start where one process with the same --seed starts."""
    with tf.Graph().as_default():
        build()
        variables = tf.trainable_variables()
        with tf.Session(config=session_config()) as session:
            session.run(tf.global_variables_initializer())
            return dict(zip([v.op.name for v in variables], session.run(variables)))


def sum_over_workers(replicas, value):
    """`value` summed over the workers (an all-reduce), on every worker; inside replicas.strategy.scope()."""
    return replicas.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)


def chiefs_value(replicas, value):
    """The chief's `value`, on every worker: summed, the chief giving its value and the others zeros."""
    return sum_over_workers(replicas, value if replicas.chief else tf.zeros_like(value))


def copy_from_the_chief(session, replicas, variables):
    """Every worker sets `variables` to the chief's values (its weights, or where its checkpoint was)."""
    with replicas.strategy.scope():
        values = [chiefs_value(replicas, v.read_value()) for v in variables]
        replicas.run_at_start(session, tf.group(*[v.assign(value) for v, value in zip(variables, values)]))


def check_one_precision(session, replicas, precision):
    """With several workers, stops every one with the same line unless all train in the chief's precision. The same
    command can choose two: auto by each machine's CPU, and a resumed run the precision its folder records, which
    the chief alone reads. A precision is a one-hot row: the chief's, and the sum of every worker's, counts."""
    names = list(configs.PRECISIONS)
    mine = tf.one_hot(names.index(precision), len(names))
    with replicas.strategy.scope():
        chief_row, counts = replicas.run_at_start(session, [chiefs_value(replicas, mine),
                                                            sum_over_workers(replicas, mine)])
    chief = names[int(chief_row.argmax())]
    others = [f"{name} on {int(n)}" for name, n in zip(names, counts) if n and name != chief]
    if others:
        raise ValueError(f"the workers would train in different precisions, {chief} on worker 0 (the chief), "
                         f"{', '.join(others)} of the others (another --precision, auto on another kind of CPU, or "
                         f"a resumed run's recorded one): give every worker --precision={chief}")


LOST = 4  # exit code: another worker of the cluster stopped or was lost


@contextlib.contextmanager
def stop_if_workers_are_lost(cluster, save_path):
    """With several workers (cluster), a TensorFlow error inside the block (a worker died, hung or cannot be
    reached) stops this one with one line and exit code LOST; save_path: this worker's (the chief's) or None."""
    try:
        yield
    except tf.errors.OpError as e:
        if cluster is None:
            raise
        kept = f"the last checkpoint in {save_path} is kept" if save_path else "worker 0 keeps the last checkpoint"
        raise cli.Stop(f"lost touch with the other workers ({error_cause(e)}); {kept}: restart every worker with "
                       "the same command to resume", LOST)


def error_cause(error):
    """What a TensorFlow error says went wrong between the workers ("Operation timed out.", "... Connection reset
    by peer")."""
    if isinstance(error, tf.errors.DeadlineExceededError):
        return f"no answer in time, --worker_timeout or {START_TIMEOUT // 60} minutes at start"
    return tf1.error_summary(error)


def load(session, strategy, values):
    """Assigns {variable: value} to every copy of each (mirrored) variable."""
    with strategy.scope():
        feeds = {v: tf.placeholder(v.dtype.base_dtype, v.shape) for v in values}
        assign = tf.group(*[v.assign(feeds[v]) for v in values])
    session.run(assign, {feeds[v]: value for v, value in values.items()})
