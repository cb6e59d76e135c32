"""The statistics of dynamic evaluation's RMS form (Krause et al. 2018, "RMS with a global decay prior", their
dynamiceval.py): how large each weight's gradient usually is.

First, at the trained weights theta_0, MS = the mean of g^2 (elementwise) over K windows of a training text,
rms = sqrt(MS); then each step of dynamic evaluation (tools/dynamic_eval.py) is

    theta_{s+1} = theta_s - eta g_s / (rms + eps) + min(decay rms / mean_rms, 1) (theta_0 - theta_s)

where mean_rms is the mean over the variables of each one's mean rms (Krause's gsum): weights whose gradient is
usually large move more, and are pulled back harder. Gathering is a pass of the model with its gradient (10-30
minutes on medium's training text), so lm.py tune keeps what it gathered in the run folder for eval to read back.
"""
import json
import time
import zipfile

import numpy as np

from model import PTBModel, carry_state
import reader
from tools import checkpoint
from tools.tf1 import tf


class RMSStatistics:
    """rms per weight of `evaluation` (a DynamicEvaluation), gathered on the ids `text` cut into `batch` rows the
    first time a window length needs it, or read from the file `save` wrote for the same weights, text and rows.
    Built in the graph of its evaluation, inside the caller's graph and name scope."""

    def __init__(self, evaluation, text, batch=1):
        self.evaluation, self.text, self.batch = evaluation, text, batch
        self.rms = [tf.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, name="rms",
                                collections=[tf.GraphKeys.LOCAL_VARIABLES]) for v in evaluation.variables]
        self.mean_rms = tf.Variable(0.0, trainable=False, name="mean_rms", collections=[tf.GraphKeys.LOCAL_VARIABLES])
        self.eps = tf.placeholder(tf.float32, [], "eps")
        self.windows = tf.placeholder(tf.float32, [], "windows")
        self.clear_rms = tf.variables_initializer(self.rms)
        self.root_rms = tf.group([r.assign(tf.sqrt(r / self.windows)) for r in self.rms])
        self.average_rms = self.mean_rms.assign(tf.add_n([tf.reduce_mean(r) for r in self.rms]) / len(self.rms))
        self.rms_values = [tf.placeholder(r.dtype.base_dtype, r.shape) for r in self.rms]
        self.put_rms = tf.group([r.assign(value) for r, value in zip(self.rms, self.rms_values)])
        self.window = None  # the window whose rms the variables hold
        self.gathered = {}  # window: rms as gathered for it (numpy), put back when a search returns to that window
        self.seconds = {}  # window: the time its gathering took
        self.loaded = set()  # the windows whose statistics load() read, not gathered here
        self.gatherers = {}

    # --- in the update of each step ---

    def normalised(self, grads):
        """g / (rms + eps) for each gradient; for the embedding's IndexedSlices each row by its own rms (repeated rows
        add up after)."""
        def one(g, r):
            if isinstance(g, tf.IndexedSlices):
                return tf.IndexedSlices(g.values / (tf.gather(r, g.indices) + self.eps), g.indices, g.dense_shape)
            return None if g is None else g / (r + self.eps)
        return [one(g, r) for g, r in zip(grads, self.rms)]

    def pull_rates(self, decay):
        """Each weight's rate back to theta_0: min(decay rms / mean_rms, 1) (Krause's clip keeps a weight's pull below
        the whole distance back)."""
        return [tf.minimum(decay * r / self.mean_rms, 1.0) for r in self.rms]

    # --- gathering ---

    def problem(self, window):
        """What keeps the statistics text from a full window of `window` words (in each of its rows), or None."""
        words = max(0, len(self.text) // self.batch - 1)
        if words < window:
            rows = f" in each of {self.batch} rows" if self.batch > 1 else ""
            return (f"the RMS form's statistics text has {words} word{'s' * (words != 1)} to predict{rows}, fewer "
                    f"than a window of {window}")
        return None

    def gatherer(self, window):
        """(model, the op that adds g^2 to rms) for `batch` rows of `window` words, g the gradient of their mean
        loss; built once."""
        if window not in self.gatherers:
            lm = self.evaluation.lm
            with lm.graph.as_default():
                with tf.variable_scope("Model", reuse=True):
                    model = PTBModel(False, lm.config, self.batch, window, rnn_mode="fast")
                grads = tf.gradients(tf.reduce_mean(model.word_losses), self.evaluation.variables)
                gather = tf.group([add_square(r, g) for r, g in zip(self.rms, grads) if g is not None])
            self.gatherers[window] = model, gather
        return self.gatherers[window]

    def gather(self, window):
        """rms and mean_rms at theta_0 from the text, cut into `batch` rows (reader.ptb_iterator): its full windows of
        `window` words, the state carried, g the gradient of a batch of windows' mean loss. Batch 1 reads as the
        adapted pass does; Krause et al. gathered at batch 100 (windows of 5 words)."""
        if self.window == window:
            return
        session = self.evaluation.session
        self.window = None  # until complete: an interrupted gathering is not kept
        if window in self.gathered:
            session.run(self.put_rms, dict(zip(self.rms_values, self.gathered[window])))
        else:
            problem = self.problem(window)
            if problem:
                rows = ", fewer --dynamic_stat_batch rows" if self.batch > 1 else ""
                raise ValueError(f"{problem}: give a longer --dynamic_rms, a larger --dynamic_stat_words{rows} or a "
                                 "shorter --dynamic_window")
            clock = time.time()
            session.run([self.evaluation.back_to_trained, self.clear_rms])
            session.run(self.root_rms, {self.windows: self.add_squares(window)})
            self.gathered[window] = session.run(self.rms)
            self.seconds[window] = time.time() - clock
        session.run(self.average_rms)
        self.window = window

    def add_squares(self, window):
        """rms += g^2 for each batch of full windows of the text; returns how many batches."""
        model, gather = self.gatherer(window)
        batches = reader.ptb_iterator(self.text, self.batch, window)
        return sum(1 for _ in carry_state(self.evaluation.session, batches, lambda length: (model, {"op": gather})))

    # --- kept in the run folder ---

    def save(self, path, windows):
        """Writes the rms gathered for each of `windows` to path (an .npz; whole or not at all), for a later
        RMSStatistics of the same weights and text: what lm.py tune gathered, which eval would gather again."""
        key = json.dumps({"sha256": self.evaluation.digest(self.text), "batch": self.batch,
                          "seconds": {str(w): self.seconds.get(w) for w in windows}})
        arrays = {f"w{w}_{i}": value for w in windows for i, value in enumerate(self.gathered[w])}
        with checkpoint.replacing(path) as tmp, open(tmp, "xb") as f:
            np.savez(f, key=np.array(key), **arrays)

    def load(self, path, windows=None):
        """The windows (of `windows`, default all) whose rms path holds, now taken as gathered: none if there is no
        such file, or it is another model's or text's, or unreadable (then they are gathered when needed)."""
        shapes = [tuple(r.shape.as_list()) for r in self.rms]
        try:
            with np.load(path, allow_pickle=False) as stored:
                key = json.loads(str(stored["key"]))
                if key["sha256"] != self.evaluation.digest(self.text) or key["batch"] != self.batch:
                    return []
                gathered = {int(w): [stored[f"w{w}_{i}"] for i in range(len(self.rms))] for w in key["seconds"]
                            if windows is None or int(w) in windows}
            seconds = {w: float(key["seconds"][str(w)]) for w in gathered}
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return []
        gathered = {w: rms for w, rms in gathered.items() if [a.shape for a in rms] == shapes}
        self.gathered.update(gathered)
        self.seconds.update({w: seconds[w] for w in gathered})
        self.loaded.update(gathered)
        return sorted(gathered)


def add_square(r, g):
    """r += g^2; the embedding's rows outside the window have g = 0, a repeated row's slices are summed first."""
    if isinstance(g, tf.IndexedSlices):
        rows, at = tf.unique(g.indices)
        return r.scatter_add(tf.IndexedSlices(tf.square(tf.math.unsorted_segment_sum(g.values, at, tf.size(rows))),
                                              rows))
    return r.assign_add(tf.square(g))
