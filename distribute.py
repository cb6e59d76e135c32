"""Synchronous data-parallel training with tf.distribute: the same numbers as one process, on several devices.

    python ptb_word_lm.py --model=medium --replicas=2      # the batch split over 2 devices of this machine

`--replicas=N` runs the training step as N replicas under tf.distribute.MirroredStrategy, on the machine's
GPUs when it has N, else on N logical CPU devices. Each replica builds the model (model.PTBModel, with `rows`)
on its share of the global batch: rows [r * B/N, (r + 1) * B/N) of the windows reader.ptb_iterator cuts, the
LSTM state of those rows, and the rows of the dropout masks one process draws for the whole batch. Its cost is
its rows' share of the one-process cost, so the replicas' gradients, summed across them by the strategy before
the clipping, are the one-process gradient, and every copy of the variables takes the one-process SGD update.
Outside, ReplicatedModel looks like one PTBModel of the whole batch (the same placeholders, cost and final
state, summed and gathered over the replicas), so model.run_epoch and the Trainer drive it unchanged, and its
checkpoints, holding every row's state under the one-process variable names, resume with any replica count.

The default, one replica, builds none of this: ptb_word_lm.Trainer builds the one-process graph as before.
"""
from model import STATE_PARTS, PTBModel, Rows
from tf1 import session_config, tf


def check_replicas(replicas, config, rnn_mode):
    """Refuses what replicas cannot compute as one process does, before anything is built."""
    if config.batch_size % replicas:
        raise ValueError(f"--replicas={replicas} does not divide batch_size={config.batch_size}: each replica takes "
                         f"an equal share of the batch; give a divisor of {config.batch_size}")
    gpus = len(tf.config.list_physical_devices("GPU"))
    if 0 < gpus < replicas:
        raise ValueError(f"--replicas={replicas}: this machine has {gpus} GPUs; give at most {gpus}")
    cell_by_cell = rnn_mode == "basic" or config.cell != "lstm"  # model.PTBModel.cell_layers
    if replicas > 1 and cell_by_cell and min(config.keep_prob, config.state_keep_prob) < 1:
        raise ValueError("--replicas with dropout needs the LSTM in block or fast mode: the cell-by-cell graph's "
                         "DropoutWrapper draws masks of each replica's own shape, not the rows of one process's")


def local_strategy(replicas):
    """MirroredStrategy over `replicas` devices of this machine: its GPUs, or as many logical CPU devices.

    Logical devices must be set before TensorFlow's runtime starts: before the first session."""
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(replicas)])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def strategy_session_config(strategy, num_threads=0):
    """The session's config under `strategy`: the logical CPU devices, which a session is told separately."""
    config = strategy.update_config_proto(session_config(num_threads))
    config.device_count["CPU"] = len(tf.config.list_logical_devices("CPU"))
    return config


class ReplicatedModel:
    """The training model of a data-parallel step, seen from outside as one PTBModel of the global batch.

    build(batch_size, rows) builds one replica's PTBModel (in the variable scope the caller opened). The
    input_data, targets and initial_state placeholders hold the global batch; each replica reads its rows.
    cost is the replicas' costs summed, final_state their final states, each in its rows: both what one
    process computes. train_op runs every replica's step; grad_norm (the norm of the summed gradient, the
    same on every replica) and lr are those of the first local replica.
    """

    def __init__(self, strategy, build, config):
        self.strategy = strategy
        self.batch_size, self.num_steps = config.batch_size, config.num_steps
        self.input_data = tf.placeholder(tf.int32, [self.batch_size, self.num_steps], name="input_data")
        self.targets = tf.placeholder(tf.int32, [self.batch_size, self.num_steps], name="targets")
        state_shape = [config.num_layers, STATE_PARTS[config.cell], self.batch_size, config.hidden_size]
        self.initial_state = tf.placeholder_with_default(tf.zeros(state_shape), state_shape, name="initial_state")
        self.replicas = {}
        with strategy.scope():
            cost, final_state, grad_norm, train_op = strategy.extended.call_for_each_replica(
                tf.autograph.experimental.do_not_convert(lambda: self.replica(build)))
            self.cost = strategy.reduce(tf.distribute.ReduceOp.SUM, cost, axis=None)
            self.final_state = strategy.reduce(tf.distribute.ReduceOp.SUM, final_state, axis=None)
            self.grad_norm = strategy.experimental_local_results(grad_norm)[0]
            self.train_op = tf.group(strategy.experimental_local_results(train_op))
            self.lr = self.replicas[min(self.replicas)].lr  # one variable, a copy on each device
            # Set from here, outside the replicas: a mirrored variable is assigned to all its copies at once.
            self.new_lr = tf.placeholder(tf.float32, [], name="new_learning_rate")
            self.lr_update = tf.assign(self.lr, self.new_lr)

    assign_lr = PTBModel.assign_lr

    def replica(self, build):
        """Runs on each replica, on its device: its model, on its rows of the global batch."""
        context = tf.distribute.get_replica_context()
        index = int(tf.get_static_value(context.replica_id_in_sync_group))
        rows = self.batch_size // context.num_replicas_in_sync
        start, stop = index * rows, (index + 1) * rows
        model = build(rows, Rows(self.input_data[start:stop], self.targets[start:stop],
                                 self.initial_state[:, :, start:stop], start, self.batch_size))
        self.replicas[index] = model
        # Its rows' final state in their place in the global batch, zeros elsewhere: summed over the replicas,
        # the whole batch's state (TensorFlow 1's strategies have no all-gather).
        final_state = tf.pad(model.final_state, [[0, 0], [0, 0], [start, self.batch_size - stop], [0, 0]])
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


def load(session, strategy, values):
    """Assigns {variable: value} to every copy of each (mirrored) variable."""
    with strategy.scope():
        feeds = {v: tf.placeholder(v.dtype.base_dtype, v.shape) for v in values}
        assign = tf.group(*[v.assign(feeds[v]) for v in values])
    session.run(assign, {feeds[v]: value for v, value in values.items()})
