"""Test-time adaptation: a lower perplexity from the same trained weights (`lm.py eval`, `lm.py tune`).

A trained model reads a text with fixed weights and forgets whatever its LSTM state cannot hold. Two
published methods let it use the text it has just read, at no training cost:

- **the neural cache** (Grave, Joulin & Usunier 2017, "Improving Neural Language Models with a
  Continuous Cache"): h_t, the top LSTM layer's output at position t (the softmax's input), is compared
  with the h_i of the last N positions; each votes for the word that followed it, with weight
  exp(theta h_t . h_i). The vote p_cache is mixed into the model's p_vocab:
      p = (1 - lambda) p_vocab + lambda p_cache      (p_vocab alone where the cache is empty, t = 0)
  The weights do not change: one pass of the model gives every h_t and p_vocab(target), and any
  (N, theta, lambda) is then numpy arithmetic on them.
- **dynamic evaluation** (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of Neural
  Sequence Models"), in its plain SGD form: the text is read in windows of n words, the state carried
  from one to the next as a constant; each window is scored with the weights theta_s, then
      theta_{s+1} = theta_s - eta g_s + decay (theta_0 - theta_s)
  where g_s is the gradient of the window's *mean* loss at theta_s and theta_0 the trained weights.
  The steps live in the session only: nothing is ever written to the checkpoint.
  Or in Krause et al.'s RMS form ("RMS with a global decay prior", their dynamiceval.py): first, at theta_0,
  MS = the mean of g^2 (elementwise) over K windows of a training text, rms = sqrt(MS); then
      theta_{s+1} = theta_s - eta g_s / (rms + eps) + min(decay rms / mean_rms, 1) (theta_0 - theta_s)
  where mean_rms is the mean over the variables of each one's mean rms (Krause's gsum): weights whose
  gradient is usually large move more, and are pulled back harder.

Both read a text as `lm.py eval` does: one row, the state carried through the file, every word after
the first predicted once, perplexity = exp(mean of -log p(target)). Combined, the cache is built from
the hidden states the dynamic pass produces. tune() chooses each method's values on a validation text
by a coarse grid and then a finer one, and reports both texts.

Test perplexity, each method's values chosen on valid by `lm.py tune` (README: the commands, values, times):

    config   static   cache   dynamic SGD   dynamic RMS   both
    small    113.90   93.88      100.08        98.95      89.01
    medium    84.13   73.76       77.42        75.41      70.64
"""
import collections
import copy
import hashlib
import json
import math
import os
import time
import zipfile

import numpy as np

from model import MAX_LOG_FLOAT, PTBModel, carry_state
import reader
from tools import checkpoint
from tools.tf1 import tf

CACHE = ("cache_size", "cache_theta", "cache_lambda")  # lm.py eval's flags, and adapt.json's keys
DYNAMIC = ("dynamic_lr", "dynamic_decay", "dynamic_window")
RMS = ("dynamic_rms", "dynamic_stat_words", "dynamic_stat_batch", "dynamic_eps")  # the RMS form, with DYNAMIC's
# Each method's settings; "both" is the cache on the better dynamic form, with the RMS form's keys when it is that one.
SETTINGS = {"static": (), "cache": CACHE, "dynamic": DYNAMIC, "dynamic_rms": DYNAMIC + RMS,
            "both": CACHE + DYNAMIC + RMS}
EVAL_WINDOW = 100  # lm.py eval's windows: any length scores the same words, longer ones in fewer session runs

# tune's grids, from the literature on PTB (Grave et al. 2017; AWD-LSTM's pointer.py; Krause et al. 2018). The
# cache's cost nothing but numpy time on one pass's hidden states; each dynamic setting is a pass of the model.
CACHE_SIZES = (100, 500, 1000, 2000)
CACHE_THETAS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.2)  # h is in (-1, 1): h_t . h_i is at most the hidden size
CACHE_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3)
FINER_SIZES, FINER_THETAS, FINER_LAMBDAS = (0.7, 1, 1.4), (0.7, 0.85, 1, 1.2, 1.4), (-0.04, -0.02, 0, 0.02, 0.04)
FINER_LRS = (0.56, 1.8)  # half steps of the coarse grid, around its best


class Search(collections.namedtuple("Search", "method lrs window windows decays")):
    """A search of dynamic evaluation's settings: the rates `lrs` at `window` words, no decay; half steps around the
    best; the other `windows` at the same rate a word (lr scaled with n); then the `decays` (a window of `window`
    words; scaled with n likewise)."""

    @property
    def passes(self):
        return len(self.lrs) + len(FINER_LRS) + len(self.windows) + len(self.decays)


SGD_SEARCH = Search("dynamic", (0.001, 0.003, 0.01, 0.03, 0.1, 0.3), 20, (10, 35), (0.002, 0.006, 0.02))
# The RMS form's step g / (rms + eps) is about 1 a weight where plain SGD's is g: its rates are 100 times smaller
# (on small the best valid was 5e-4 at 5 words, 1e-3 at 10, results/small-adapt-rms.txt).
RMS_SEARCH = Search("dynamic_rms", (1e-4, 3e-4, 1e-3, 3e-3), 10, (5, 20), (0.003, 0.01, 0.03))
GIVE_UP_MARGIN = math.log(1.1)  # a grid's dynamic pass stops once it is 10% worse than static past a quarter of the text


def perplexity(log_p):
    """exp(mean -log p); inf where that is beyond a float, or not a number (a diverged pass)."""
    mean = -float(np.mean(log_p, dtype=np.float64))
    return math.exp(mean) if mean <= MAX_LOG_FLOAT else math.inf


def rounded(x):
    """Three significant digits: the grids' values as a user would type them."""
    return float(f"{x:.3g}")


# --- the cache -----------------------------------------------------------------------------------

def cache_log_probs(hidden, targets, size, thetas, block=512):
    """log p_cache(target) at every position t, for a cache of `size` pairs and each of thetas: {theta: [T]}.

    hidden [T, hidden size]: h_t; targets [T]: the word after position t. Position t's cache holds the
    pairs (h_i, targets[i]) for max(0, t - size) <= i < t, and p_cache(w) is the share of
    exp(theta h_t . h_i) that goes to the pairs of word w: -inf where none is the target, nan where the
    cache is empty (t = 0). Vectorised by blocks of positions: one matmul gives a block's dot products
    with every pair any of its caches holds; the mask, each row's largest and the shift (log-sum-exp)
    serve every theta (theta >= 0: the largest score is theta times the largest dot product).
    """
    hidden, targets = np.asarray(hidden, np.float32), np.asarray(targets)
    out = {theta: np.empty(len(targets)) for theta in thetas}
    for start in range(0, len(targets), block):
        stop = min(start + block, len(targets))
        first = max(0, start - size)  # the oldest pair any cache of this block holds
        age = np.arange(start, stop, dtype=np.int32)[:, None] - np.arange(first, stop, dtype=np.int32)  # t - i
        inside = (age >= 1) & (age <= size)
        dots = np.where(inside, hidden[start:stop] @ hidden[first:stop].T, -np.inf)  # [positions, pairs]
        top = dots.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0  # an empty cache: no pair at all
        shifted = dots - top  # <= 0 in the cache, -inf outside
        same = targets[start:stop, None] == targets[None, first:stop]
        for theta in thetas:
            weights = np.exp(theta * shifted) if theta > 0 else inside.astype(np.float32)  # 0 outside the cache
            with np.errstate(divide="ignore", invalid="ignore"):
                out[theta][start:stop] = (np.log(np.sum(weights, axis=1, where=same, dtype=np.float64))
                                          - np.log(np.sum(weights, axis=1, dtype=np.float64)))
    return out


def mix(log_vocab, log_cache, lam):
    """log((1 - lam) p_vocab + lam p_cache) at each position, by log-sum-exp; p_vocab where the cache is empty."""
    if lam == 0:
        return np.asarray(log_vocab, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # lam = 1: log 0 = -inf (p = 0); nan: an empty cache
        mixed = np.logaddexp(np.log1p(-lam) + log_vocab, np.log(lam) + log_cache)
    return np.where(np.isnan(log_cache), log_vocab, mixed)


# --- reading a text, and dynamic evaluation --------------------------------------------------------

class Adapter:
    """A trained model (lm.LanguageModel) that can also take the steps of dynamic evaluation.

    The trained weights theta_0 are copied into the graph as local variables (never seen by a Saver,
    so never saved); every dynamic pass starts from them and puts them back when it ends. Given
    `statistics` (the ids of a training text), it can take the RMS form's steps too: rms, a local
    variable per weight, is gathered on that text (in `stat_batch` rows) the first time a window length
    needs it (or read from the file save_statistics wrote, for the same weights, text and rows).
    """

    def __init__(self, lm, statistics=None, stat_batch=1):
        self.lm, self.session, self.stat_batch = lm, lm.session, stat_batch
        with lm.graph.as_default(), tf.name_scope("adapt"):
            self.variables = tf.trainable_variables()
            self.trained = [tf.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, name="trained",
                                        collections=[tf.GraphKeys.LOCAL_VARIABLES]) for v in self.variables]
            self.session.run(tf.variables_initializer(self.trained))
            self.session.run([t.assign(v) for t, v in zip(self.trained, self.variables)])
            self.back_to_trained = tf.group([v.assign(t) for v, t in zip(self.variables, self.trained)])
            self.lr = tf.placeholder(tf.float32, [], "lr")
            self.decay = tf.placeholder(tf.float32, [], "decay")
            if statistics is not None:
                self.rms = [tf.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, name="rms",
                                        collections=[tf.GraphKeys.LOCAL_VARIABLES]) for v in self.variables]
                self.mean_rms = tf.Variable(0.0, trainable=False, name="mean_rms",
                                            collections=[tf.GraphKeys.LOCAL_VARIABLES])
                self.eps = tf.placeholder(tf.float32, [], "eps")
                self.windows = tf.placeholder(tf.float32, [], "windows")
                self.clear_rms = tf.variables_initializer(self.rms)
                self.root_rms = tf.group([r.assign(tf.sqrt(r / self.windows)) for r in self.rms])
                self.average_rms = self.mean_rms.assign(tf.add_n([tf.reduce_mean(r) for r in self.rms])
                                                        / len(self.rms))
                self.rms_values = [tf.placeholder(r.dtype.base_dtype, r.shape) for r in self.rms]
                self.put_rms = tf.group([r.assign(value) for r, value in zip(self.rms, self.rms_values)])
        self.statistics, self.rms_window = statistics, None
        self.gathered = {}  # window: rms as gathered for it (numpy), put back when a search returns to that window
        self.gathering_seconds = {}  # window: the time its gathering took
        self.loaded = set()  # the windows whose statistics load_statistics read, not gathered here
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

    def gatherer(self, window):
        """(model, the op that adds g^2 to rms) for stat_batch rows of `window` words, g the gradient of their mean
        loss; built once."""
        if ("gather", window) not in self.steppers:
            with self.lm.graph.as_default():
                with tf.variable_scope("Model", reuse=True):
                    model = PTBModel(False, self.lm.config, self.stat_batch, window, rnn_mode="fast")
                grads = tf.gradients(tf.reduce_mean(model.word_losses), self.variables)
                gather = tf.group([self.add_square(r, g) for r, g in zip(self.rms, grads) if g is not None])
            self.steppers["gather", window] = model, gather
        return self.steppers["gather", window]

    def update(self, computed, grads, decayed, rms=False):
        """theta <- theta - lr g + decay (theta_0 - theta), after `computed` (the window's values at theta).

        The decay term (if decayed) is added first, from theta as it is; then TensorFlow's SGD op subtracts
        lr g: ResourceApplyGradientDescent, one fused op per variable, and for the embedding, whose gradient
        is IndexedSlices (the rows of the window's words), a scatter into those rows only.
        With rms, Krause's form: g / (rms + eps) for g, and decay min(rms / mean_rms, 1 / decay) for decay
        (his clip keeps a weight's pull below the whole distance back to theta_0).
        """
        with tf.control_dependencies(computed):
            pulls = []
            if decayed:
                # XLA compiles each weight's pull into one loop (a read of theta, theta_0 and rms, a write of
                # theta) where TensorFlow's ops one at a time write a temporary the size of the weight for each:
                # 9-35% off medium's decayed passes (results/benchmark-medium-adapt.txt).
                with tf.xla.experimental.jit_scope():
                    rates = ([tf.minimum(self.decay * r / self.mean_rms, 1.0) for r in self.rms] if rms
                             else [self.decay] * len(self.variables))
                    pulls = [v.assign_add(rate * (trained - v))
                             for v, trained, rate in zip(self.variables, self.trained, rates)]
            with tf.control_dependencies(pulls):
                if rms:
                    grads = [self.normalised(g, r) for g, r in zip(grads, self.rms)]
                return tf.train.GradientDescentOptimizer(self.lr).apply_gradients(zip(grads, self.variables))

    def normalised(self, g, r):
        """g / (rms + eps); for the embedding's IndexedSlices each row by its own rms (repeated rows add up after)."""
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(g.values / (tf.gather(r, g.indices) + self.eps), g.indices, g.dense_shape)
        return None if g is None else g / (r + self.eps)

    @staticmethod
    def add_square(r, g):
        """r += g^2; the embedding's rows outside the window have g = 0, a repeated row's slices are summed first."""
        if isinstance(g, tf.IndexedSlices):
            rows, at = tf.unique(g.indices)
            return r.scatter_add(tf.IndexedSlices(tf.square(tf.math.unsorted_segment_sum(g.values, at, tf.size(rows))),
                                                  rows))
        return r.assign_add(tf.square(g))

    def statistics_problem(self, window):
        """What keeps the statistics text from a full window of `window` words (in each of its rows), or None."""
        words = len(self.statistics) // self.stat_batch - 1
        if words < window:
            rows = f" in each of {self.stat_batch} rows" if self.stat_batch > 1 else ""
            return (f"the RMS form's statistics text has {words} words to predict{rows}, fewer than a window of "
                    f"{window}")
        return None

    def gather_statistics(self, window):
        """rms and mean_rms at theta_0 from the statistics text, cut into stat_batch rows (reader.ptb_iterator): its
        full windows of `window` words, the state carried, g the gradient of a batch of windows' mean loss. Batch 1
        reads as the adapted pass does; Krause et al. gathered at batch 100 (windows of 5 words)."""
        if self.rms_window == window:
            return
        self.rms_window = None  # until complete: an interrupted gathering is not kept
        if window in self.gathered:
            self.session.run(self.put_rms, dict(zip(self.rms_values, self.gathered[window])))
        else:
            problem = self.statistics_problem(window)
            if problem:
                rows = ", fewer --dynamic_stat_batch rows" if self.stat_batch > 1 else ""
                raise ValueError(f"{problem}: give a longer --dynamic_rms, a larger --dynamic_stat_words{rows} or a "
                                 "shorter --dynamic_window")
            clock = time.time()
            self.session.run([self.back_to_trained, self.clear_rms])
            self.session.run(self.root_rms, {self.windows: self.add_squares(window)})
            self.gathered[window] = self.session.run(self.rms)
            self.gathering_seconds[window] = time.time() - clock
        self.session.run(self.average_rms)
        self.rms_window = window

    def add_squares(self, window):
        """rms += g^2 for each batch of full windows of the statistics text; returns how many batches."""
        model, gather = self.gatherer(window)
        return sum(1 for _ in self.carried(self.statistics, self.stat_batch, window, lambda length: (model, gather)))

    def digest(self, *texts):
        """sha256 of the trained weights and the ids of `texts`: what a result stored for them depends on."""
        digest = hashlib.sha256()
        for value in self.session.run(self.trained):
            digest.update(value.tobytes())
        for ids in texts:
            digest.update(np.int64(len(ids)).tobytes() + np.asarray(ids, np.int64).tobytes())
        return digest.hexdigest()

    def save_statistics(self, path, windows):
        """Writes the rms gathered for each of `windows` to path (an .npz; whole or not at all), for a later
        Adapter of the same weights and statistics text: what lm.py tune gathered, which eval would gather again."""
        key = json.dumps({"sha256": self.digest(self.statistics), "batch": self.stat_batch,
                          "seconds": {str(w): self.gathering_seconds.get(w) for w in windows}})
        arrays = {f"w{w}_{i}": value for w in windows for i, value in enumerate(self.gathered[w])}
        with checkpoint.replacing(path) as tmp, open(tmp, "xb") as f:
            np.savez(f, key=np.array(key), **arrays)

    def load_statistics(self, path, windows=None):
        """The windows (of `windows`, default all) whose rms path holds, now taken as gathered: none if there is no
        such file, or it is another model's or text's, or unreadable (then they are gathered when needed)."""
        shapes = [tuple(r.shape.as_list()) for r in self.rms]
        try:
            with np.load(path, allow_pickle=False) as stored:
                key = json.loads(str(stored["key"]))
                if key["sha256"] != self.digest(self.statistics) or key["batch"] != self.stat_batch:
                    return []
                gathered = {int(w): [stored[f"w{w}_{i}"] for i in range(len(self.rms))] for w in key["seconds"]
                            if windows is None or int(w) in windows}
            seconds = {w: float(key["seconds"][str(w)]) for w in gathered}
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return []
        gathered = {w: rms for w, rms in gathered.items() if [a.shape for a in rms] == shapes}
        self.gathered.update(gathered)
        self.gathering_seconds.update({w: seconds[w] for w in gathered})
        self.loaded.update(gathered)
        return sorted(gathered)

    def carried(self, ids, rows, window, model_and_op, fetches=None, feed=None, keep_remainder=False):
        """Runs the windows of ids cut into `rows` rows (reader.ptb_iterator), the LSTM state carried from each
        window to the next (model.carry_state); yields what each fetched.

        model_and_op(length) -> (model, an op to run with the window, or None); fetches(model): more to fetch.
        """
        def graph_for(length):
            model, op = model_and_op(length)
            wanted = fetches(model) if fetches else {}
            return model, wanted if op is None else {**wanted, "op": op}

        windows = reader.ptb_iterator(ids, rows, window, keep_remainder=keep_remainder)
        for _, got in carry_state(self.session, windows, graph_for, feed):
            yield got

    def read(self, ids, window, model_and_op, hidden=False, feed=None, reference=None):
        """One pass over ids as lm.py eval reads them: windows of `window` words, the last shorter, state carried.

        model_and_op(length) -> (model, an op to run with the window, or None). Returns log p(target) at every
        position, float64 [len(ids) - 1], and with hidden the top layer's output there [len(ids) - 1, size].
        The pass stops at a non-finite loss, or, given reference (another pass's log p), once past a quarter
        of the text it is more than 10% worse than that: the rest is scored -inf, no hidden states.
        """
        def fetches(model):
            return {"losses": model.word_losses, **({"hidden": model.outputs} if hidden else {})}

        log_p, outputs = [], []
        done, total, total_reference = 0, 0.0, 0.0
        for got in self.carried(ids, 1, window, model_and_op, fetches, feed, keep_remainder=True):
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

    def static_pass(self, ids, hidden=False):
        """log p(target) with the trained weights, as lm.py eval computes it (and h with hidden)."""
        return self.read(ids, min(EVAL_WINDOW, len(ids) - 1), lambda length: (self.lm.model, None), hidden)

    def dynamic_pass(self, ids, lr, decay, window, hidden=False, reference=None, eps=None):
        """log p(target) under dynamic evaluation from the trained weights, which are back in place after.

        With eps, the RMS form (the Adapter needs its statistics text)."""
        window = min(window, len(ids) - 1)
        feed = {self.lr: lr, self.decay: decay}
        if eps is not None:
            self.gather_statistics(window)
            feed[self.eps] = eps

        def model_and_op(length):  # the windows' graph; the last, shorter window's takes any length
            model, updates = self.stepper(window if length == window else None)
            return model, updates[decay > 0] if eps is None else updates["rms", decay > 0]

        self.session.run(self.back_to_trained)
        try:
            return self.read(ids, window, model_and_op, hidden, feed, reference)
        finally:
            self.session.run(self.back_to_trained)


def log_probs(adapter, ids, settings):
    """log p(target) at every position of ids under settings: {} (static), CACHE's keys, DYNAMIC's (with RMS's:
    the RMS form), or both."""
    cache = CACHE[0] in settings
    if DYNAMIC[0] in settings:
        log_p, hidden = adapter.dynamic_pass(ids, *(settings[k] for k in DYNAMIC), hidden=cache,
                                             eps=settings.get("dynamic_eps"))
    else:
        log_p, hidden = adapter.static_pass(ids, hidden=cache)
    if cache and hidden is not None:  # None: the dynamic pass diverged, its perplexity is inf anyway
        size, theta, lam = (settings[k] for k in CACHE)
        log_p = mix(log_p, cache_log_probs(hidden, ids[1:], size, [theta])[theta], lam)
    return log_p


def evaluate(adapter, ids, settings):
    return perplexity(log_probs(adapter, ids, settings))


# --- tune: the grids -------------------------------------------------------------------------------

def best_of(results):
    return min(results, key=results.get)


def cache_grid(log_p, hidden, targets, sizes, thetas, lambdas, label, say):
    """{(N, theta, lambda): perplexity} over the grid; a line per size."""
    results = {}
    for n in sizes:
        clock = time.time()
        for theta, log_cache in cache_log_probs(hidden, targets, n, thetas).items():
            for lam in lambdas:
                results[n, theta, lam] = perplexity(mix(log_p, log_cache, lam))
        _, theta, lam = best_of({k: v for k, v in results.items() if k[0] == n})
        say(f"{label}: size={n} x {len(thetas)} thetas x {len(lambdas)} lambdas: best valid "
            f"{results[n, theta, lam]:.3f} at theta={theta:g} lambda={lam:g} ({time.time() - clock:.0f} s)")
    return results


def search_cache(log_p, hidden, targets, label, say):
    """The cache's settings with the lowest perplexity: the coarse grid, then a finer one around its best."""
    results = cache_grid(log_p, hidden, targets, CACHE_SIZES, CACHE_THETAS, CACHE_LAMBDAS, label, say)
    n, theta, lam = best_of(results)
    results.update(cache_grid(log_p, hidden, targets, sorted({max(1, round(n * f)) for f in FINER_SIZES}),
                              [rounded(theta * f) for f in FINER_THETAS],
                              [rounded(lam + d) for d in FINER_LAMBDAS if 0 < lam + d <= 1], label + ", finer", say))
    best = best_of(results)
    say(f"{label}: chosen {flags_text(dict(zip(CACHE, best)))}: valid {results[best]:.3f}")
    return {**dict(zip(CACHE, best)), "valid": results[best]}


def search_dynamic(adapter, ids, reference, search, say, eps=None, progress=None):
    """The settings of one dynamic form (the plain one, or with eps the RMS one) with the lowest perplexity on ids,
    and (log p, h) of that pass, or None if it was measured in an earlier sitting: search.passes passes, those
    clearly worse than `reference` (static) cut short, each kept in `progress` (a TuneProgress) as it ends."""
    progress = progress or TuneProgress()
    results, kept = {}, {}

    def trial(lr, decay, window):
        key = rounded(lr), rounded(decay), window
        flags, passes = flags_text(dict(zip(DYNAMIC, key))), {}

        def measure():
            gathered_window = min(window, len(ids) - 1)  # the window dynamic_pass uses on a text this short
            if eps is not None and gathered_window not in adapter.gathered:
                # A new window's statistics (10-30 minutes on medium), on disk before the pass that needs them
                # starts: a rerun after a stop during that pass reads them back.
                adapter.gather_statistics(gathered_window)
                progress.keep_statistics(adapter, say)
            clock = time.time()
            passes[key] = adapter.dynamic_pass(ids, *key, hidden=True, reference=reference, eps=eps)
            return {"valid": perplexity(passes[key][0]), "stopped": passes[key][1] is None,
                    "seconds": round(time.time() - clock, 1)}

        got, before = progress.recall(search.method, flags, measure)
        results[key] = got["valid"]
        if best_of(results) == key:
            kept.clear()
            kept.update(passes)
        outcome = f"{got['valid']:.3f}" if not got["stopped"] else "- (stopped: diverged, or 10% worse than static)"
        took = "measured before a stop" if before else f"{got['seconds']:.0f} s"
        say(f"{search.method} {len(results)}/{search.passes}: {flags}: valid {outcome} ({took})")

    for lr in search.lrs:
        trial(lr, 0, search.window)
    lr, _, window = best_of(results)
    for f in FINER_LRS:
        trial(lr * f, 0, window)
    lr, _, window = best_of(results)
    for n in search.windows:
        trial(lr * n / window, 0, n)
    lr, _, window = best_of(results)
    for decay in search.decays:
        trial(lr, decay * window / search.window, window)
    best = best_of(results)
    say(f"{search.method}: chosen {flags_text(dict(zip(DYNAMIC, best)))}: valid {results[best]:.3f}")
    return {**dict(zip(DYNAMIC, best)), "valid": results[best]}, kept.get(best)


def tune(adapter, valid, test, say=print, rms=None, progress=None):
    """Each method's settings chosen on the ids `valid`, and every method's perplexity on valid and `test`.

    rms: {} or the RMS form's fixed settings (RMS's keys; the adapter holds their statistics), to search it too.
    Passes of the model over valid: 1 static (the cache's grids reuse its hidden states) and the dynamic
    searches' (the combined method's cache grids reuse the hidden states of the better form's best pass); over
    test, one per method as soon as its search has chosen, each timed on its own (the RMS form's statistics,
    gathered during the search, apart).
    progress (a TuneProgress): what an earlier sitting measured, not measured again; what this one does, kept there.
    Returns the record adapt.json keeps: {method: {settings..., "valid", "test", "seconds"}, "best": method}.
    """
    progress = progress or TuneProgress()

    def report(method):
        """The test text's perplexity with the settings just chosen on valid, measured as soon as they are: a tune
        that ends early (a lost machine) has reported every method it got through."""
        def measure():
            clock = time.time()
            return {"test": evaluate(adapter, test, settings_of(record, method)),
                    "seconds": round(time.time() - clock, 1)}

        got, before = progress.recall("test", method, measure)
        record[method].update(got)
        also = "; measured before a stop" if before else ""
        rms_window = record[method]["dynamic_window"] if RMS[0] in record[method] else None
        gathering = adapter.gathering_seconds.get(rms_window)  # before the search's first pass at that window
        if gathering is not None:
            record[method]["statistics_seconds"] = round(gathering, 1)
            where = f"read from {checkpoint.ADAPT_RMS}" if rms_window in adapter.loaded else "during the search"
            also += f"; gathering its statistics took {gathering:.0f} s, {where}"
        say(f"{method}: test {record[method]['test']:.3f} ({record[method]['seconds']:.0f} s{also})")

    clock = time.time()
    static, hidden = adapter.static_pass(valid, hidden=True)  # always: the searches' reference, and the cache's h
    record = {"static": {"valid": perplexity(static)}}
    say(f"static: valid {record['static']['valid']:.3f} ({time.time() - clock:.0f} s)")
    report("static")
    record["cache"] = recalled(progress, "cache", lambda: search_cache(static, hidden, valid[1:], "cache", say), say)
    report("cache")
    del hidden  # [words, hidden size]: a large model's is 0.4 GB, and each dynamic search keeps its own
    form, best_pass = None, None
    for search, fixed in [(SGD_SEARCH, {})] + ([(RMS_SEARCH, rms)] if rms else []):
        found, kept = search_dynamic(adapter, valid, static, search, say, fixed.get("dynamic_eps"), progress)
        record[search.method] = {**found, **fixed}
        report(search.method)
        if form is None or found["valid"] < record[form]["valid"]:
            form, best_pass = search.method, kept

    def both():
        """The cache on the better form's best pass (run again if an earlier sitting measured it); None if every
        setting diverged: no hidden states to build a cache on."""
        if not math.isfinite(record[form]["valid"]):
            return None
        settings, best = settings_of(record, form), best_pass
        if best is None:
            say(f"both: the pass of {flags_text({k: settings[k] for k in DYNAMIC})} again, for its hidden states "
                "(measured before a stop)")
            best = adapter.dynamic_pass(valid, *(settings[k] for k in DYNAMIC), hidden=True,
                                        eps=settings.get("dynamic_eps"))
        dynamic, hidden = best
        cache = search_cache(dynamic, hidden, valid[1:], "both", say)
        return {**{k: cache[k] for k in CACHE}, **settings, "valid": cache["valid"]}

    found = recalled(progress, "both", both, say)
    if found is not None:
        record["both"] = found
        report("both")
    record["best"] = min(record, key=lambda method: record[method]["valid"])
    return record


def recalled(progress, name, search, say):
    """A cache grid's choice: from progress if an earlier sitting made it, else search() now (and kept)."""
    found, before = progress.recall("search", name, search)
    if before and found is not None:
        say(f"{name}: chosen {flags_text({k: found[k] for k in CACHE})}: valid {found['valid']:.3f} (measured "
            "before a stop)")
    return found


class TuneProgress:
    """What a tune has measured, kept in save_path's adapt_progress.json as each search or pass ends: rerun on the
    same weights, texts, settings and grids (`identity`) after a stop (a Ctrl-C, the end of a sitting), tune reads
    those back and follows the same path through the grids; it runs again only the static pass (the searches'
    reference) and, if the combined method is still to search, the pass it is built on. No save_path: kept in
    memory only. A folder keeps one tune's progress: another tune's replaces it (`foreign` says it did)."""

    def __init__(self, save_path=None, identity=None):
        self.save_path, self.identity, self.done, self.foreign = save_path, identity, {}, False
        if self.path and os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    stored = json.load(f)
                done = stored["done"]
                valid = isinstance(done, dict) and all(isinstance(v, dict) for v in done.values())
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
                valid = False  # not one a tune wrote: measured again, and replaced
            if valid and stored.get("identity") == identity:
                self.done = done
            else:
                self.foreign = True

    @property
    def path(self):
        return self.save_path and os.path.join(self.save_path, checkpoint.ADAPT_PROGRESS)

    def recall(self, section, key, measure):
        """(the value kept under section and key, True), or (measure()'s, False), then kept; a copy either way."""
        kept = key in self.done.get(section, {})
        if not kept:
            self.done.setdefault(section, {})[key] = measure()
            if self.path:
                checkpoint.write_atomically(self.path, json.dumps({"identity": self.identity, "done": self.done},
                                                                  indent=1) + "\n")
        return copy.deepcopy(self.done[section][key]), kept

    def keep_statistics(self, adapter, say):
        """Every window's statistics gathered so far, into adapt_rms.npz, for a rerun to read (lm.adapter); if it
        cannot be written, the rerun gathers them again."""
        if self.save_path:
            try:
                adapter.save_statistics(os.path.join(self.save_path, checkpoint.ADAPT_RMS), sorted(adapter.gathered))
            except OSError as e:
                say(f"note: the RMS form's statistics not kept ({e.strerror or e}): a rerun would gather them again")

    def remove(self):
        if self.path and os.path.exists(self.path):
            os.remove(self.path)


# What tune searches: a kept result is read back only for the same grids.
GRIDS = repr((CACHE_SIZES, CACHE_THETAS, CACHE_LAMBDAS, FINER_SIZES, FINER_THETAS, FINER_LAMBDAS, FINER_LRS,
              SGD_SEARCH, RMS_SEARCH, GIVE_UP_MARGIN))


def settings_of(record, method):
    """The lm.py eval flags of a method in tune's record; "both" has the RMS form's only when built on that form."""
    names = SETTINGS[method]
    if method == "both" and RMS[0] not in record[method]:  # built on the plain form
        names = CACHE + DYNAMIC
    return {k: record[method][k] for k in names}


# --- adapt.json ------------------------------------------------------------------------------------

def flags_text(settings):
    """The settings as lm.py eval's flags; None is a flag's default (dynamic_stat_words: the whole text)."""
    return " ".join(f"--{k}={v:g}" if isinstance(v, float) else f"--{k}={v}" for k, v in settings.items()
                    if v is not None)


def summary(record):
    """The table tune prints: each method's valid and test perplexity and the flags that give it."""
    lines = [f"{'method':11} {'valid':>9} {'test':>9}  settings (lm.py eval flags)"]
    for method in SETTINGS:
        if method in record:
            r = record[method]
            lines.append(f"{method:11} {r['valid']:9.3f} {r['test']:9.3f}  {flags_text(settings_of(record, method))}")
    return lines


def write_tuned(save_path, record):
    checkpoint.write_atomically(os.path.join(save_path, checkpoint.ADAPT), json.dumps(record, indent=2) + "\n")


def read_tuned(save_path):
    """(method, its settings, the whole record) of the method lm.py tune found best, from the folder's adapt.json."""
    path = os.path.join(save_path, checkpoint.ADAPT)
    if not os.path.isfile(path):
        raise checkpoint.CheckpointError(f"{save_path} holds no {checkpoint.ADAPT}: choose the values first with "
                                         f"python lm.py tune --save_path={save_path} --valid=FILE --input=FILE")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        for values in record.values():  # written before --dynamic_stat_batch: the statistics were gathered at batch 1
            if isinstance(values, dict) and RMS[0] in values:
                values.setdefault("dynamic_stat_batch", 1)
        method = record["best"]
        return method, settings_of(record, method), record
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{path} is not one lm.py tune wrote ({type(e).__name__}: {e}): rerun "
                                         "lm.py tune")
