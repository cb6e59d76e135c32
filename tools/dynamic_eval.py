"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of Neural Sequence Models").

The text is read in windows of n words, the state carried from one to the next as a constant; each window is
scored with the weights theta_s, then, in the plain SGD form,

    theta_{s+1} = theta_s - eta g_s + decay (theta_0 - theta_s)

where g_s is the gradient of the window's *mean* loss at theta_s and theta_0 the trained weights. The steps live
in the session only: nothing is ever written to the checkpoint. The RMS form divides g_s by each weight's usual
gradient size and pulls weights back by it too (tools/rms_statistics.py).

A pass reads a text as lm.py eval does: one row, the state carried through the file (model.carry_state), every
word after the first predicted once.
"""
import hashlib
import math
import sys

import numpy as np

from model import PTBModel, carry_state
import reader
from tools import adapt, cli
from tools.rms_statistics import RMSStatistics
from tools.tf1 import tf

GIVE_UP_MARGIN = math.log(1.1)  # a pass given a reference stops once it is 10% worse, past a quarter of the text


def read_text(session, ids, window, model_and_op, hidden=False, feed=None, reference=None):
    """One pass over ids as lm.py eval reads them: windows of `window` words, the last shorter, state carried.

    model_and_op(length) -> (model, an op to run with the window, or None). Returns log p(target) at every
    position, float64 [len(ids) - 1], and with hidden the top layer's output there [len(ids) - 1, size].
    The pass stops at a non-finite loss, or, given reference (another pass's log p), once past a quarter
    of the text it is more than GIVE_UP_MARGIN worse than that: the rest is scored -inf, no hidden states.
    """
    def graph_for(length):
        model, op = model_and_op(length)
        fetches = {"losses": model.word_losses, **({"hidden": model.outputs} if hidden else {})}
        return model, fetches if op is None else {**fetches, "op": op}

    log_p, outputs = [], []
    done, total, total_reference = 0, 0.0, 0.0
    for _, got in carry_state(session, reader.ptb_iterator(ids, 1, window, keep_remainder=True), graph_for, feed):
        log_p.append(-got["losses"][0].astype(np.float64))
        if hidden:
            outputs.append(got["hidden"][0])
        total += log_p[-1].sum()
        if reference is not None:
            total_reference += reference[done:done + len(log_p[-1])].sum()
        done += len(log_p[-1])
        if not math.isfinite(total) or (reference is not None and done >= len(reference) / 4
                                        and (total_reference - total) / done > GIVE_UP_MARGIN):
            return np.concatenate(log_p + [np.full(len(ids) - 1 - done, -np.inf)]), None
    return np.concatenate(log_p), np.concatenate(outputs) if hidden else None


class DynamicEvaluation:
    """A trained model (lm.LanguageModel) that can also take the steps of dynamic evaluation.

    The trained weights theta_0 are copied into the graph as local variables (never seen by a Saver,
    so never saved); every dynamic pass starts from them and puts them back when it ends. Given
    `statistics` (the ids of a training text), it takes the RMS form's steps too, with the statistics
    gathered on that text in `stat_batch` rows (self.statistics, an RMSStatistics).
    """

    def __init__(self, lm, statistics=None, stat_batch=1):
        self.lm, self.session = lm, lm.session
        with lm.graph.as_default(), tf.name_scope("adapt"):
            self.variables = tf.trainable_variables()
            self.trained = [tf.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, name="trained",
                                        collections=[tf.GraphKeys.LOCAL_VARIABLES]) for v in self.variables]
            self.session.run(tf.variables_initializer(self.trained))
            self.session.run([t.assign(v) for t, v in zip(self.trained, self.variables)])
            self.back_to_trained = tf.group([v.assign(t) for v, t in zip(self.variables, self.trained)])
            self.lr = tf.placeholder(tf.float32, [], "lr")
            self.decay = tf.placeholder(tf.float32, [], "decay")
            self.statistics = None if statistics is None else RMSStatistics(self, statistics, stat_batch)
        self.steppers = {}

    def stepper(self, num_steps):
        """(model, {decayed: the update op}) for windows of num_steps words (None: any length), built once.

        With statistics, the dict also holds {("rms", decayed): the RMS form's update}.

        rnn_mode fast: BlockLSTM's forward, and a gradient that steps back doing only the recurrence per
        step (kernels.fast_block_lstm); unrolled when num_steps is known, a tf.while_loop otherwise.
        """
        if num_steps not in self.steppers:
            with self.lm.graph.as_default():
                with tf.variable_scope("Model", reuse=True):
                    model = PTBModel(False, self.lm.config, 1, num_steps, rnn_mode="fast")
                grads = tf.gradients(tf.reduce_mean(model.word_losses), self.variables)
                # Whatever a window fetches is computed at theta_s, before any variable is written.
                computed = [model.word_losses, model.final_state, model.outputs]
                computed += [t for g in grads if g is not None
                             for t in ((g.values, g.indices) if isinstance(g, tf.IndexedSlices) else (g,))]
                updates = {decayed: self.update(computed, grads, decayed) for decayed in (False, True)}
                if self.statistics is not None:
                    updates.update({("rms", decayed): self.update(computed, grads, decayed, rms=True)
                                    for decayed in (False, True)})
            self.steppers[num_steps] = model, updates
        return self.steppers[num_steps]

    def update(self, computed, grads, decayed, rms=False):
        """theta <- theta - lr g + decay (theta_0 - theta), after `computed` (the window's values at theta).

        The decay term (if decayed) is added first, from theta as it is; then TensorFlow's SGD op subtracts
        lr g: ResourceApplyGradientDescent, one fused op per variable, and for the embedding, whose gradient
        is IndexedSlices (the rows of the window's words), a scatter into those rows only.
        With rms, Krause's form: g / (rms + eps) for g, and each weight's own pull rate (RMSStatistics).
        """
        with tf.control_dependencies(computed):
            pulls = []
            if decayed:
                # XLA compiles each weight's pull into one loop (a read of theta, theta_0 and rms, a write of
                # theta) where TensorFlow's ops one at a time write a temporary the size of the weight for each:
                # 9-35% off medium's decayed passes (results/benchmark-medium-adapt.txt).
                with tf.xla.experimental.jit_scope():
                    rates = (self.statistics.pull_rates(self.decay) if rms
                             else [self.decay] * len(self.variables))
                    pulls = [v.assign_add(rate * (trained - v))
                             for v, trained, rate in zip(self.variables, self.trained, rates)]
            with tf.control_dependencies(pulls):
                if rms:
                    grads = self.statistics.normalised(grads)
                return tf.train.GradientDescentOptimizer(self.lr).apply_gradients(zip(grads, self.variables))

    def digest(self, *texts):
        """sha256 of the trained weights and the ids of `texts`: what a result stored for them depends on."""
        digest = hashlib.sha256()
        for value in self.session.run(self.trained):
            digest.update(value.tobytes())
        for ids in texts:
            digest.update(np.int64(len(ids)).tobytes() + np.asarray(ids, np.int64).tobytes())
        return digest.hexdigest()

    def static_pass(self, ids, hidden=False):
        """log p(target) with the trained weights, as lm.py eval computes it (and h with hidden)."""
        return read_text(self.session, ids, min(adapt.EVAL_WINDOW, len(ids) - 1),
                         lambda length: (self.lm.model, None), hidden)

    def dynamic_pass(self, ids, lr, decay, window, hidden=False, reference=None, eps=None):
        """log p(target) under dynamic evaluation from the trained weights, which are back in place after.

        With eps, the RMS form (built with its statistics text)."""
        window = min(window, len(ids) - 1)
        feed = {self.lr: lr, self.decay: decay}
        if eps is not None:
            self.statistics.gather(window)
            feed[self.statistics.eps] = eps

        def model_and_op(length):  # the windows' graph; the last, shorter window's takes any length
            model, updates = self.stepper(window if length == window else None)
            return model, updates[decay > 0] if eps is None else updates["rms", decay > 0]

        self.session.run(self.back_to_trained)
        try:
            return read_text(self.session, ids, window, model_and_op, hidden, feed, reference)
        finally:
            # The trained weights back, but not when a signal ends the program: it may have come inside TensorFlow's
            # own code, building an op or in session.run, and left the graph's lock held; another session.run would
            # wait for it for ever.
            if not isinstance(sys.exc_info()[1], cli.Interrupted):
                self.session.run(self.back_to_trained)
