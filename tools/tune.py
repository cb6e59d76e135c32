"""lm.py tune: each adaptation's settings chosen on a validation text, then every method measured on a test text.

The cache's settings by a grid on one pass's hidden states (numpy only); dynamic evaluation's, plain and in the
RMS form, by a search whose every trial is a pass of the model: rates, then half steps around the best, then
window lengths, then decays. Passes clearly worse than the static one are cut short. What a tune has measured is
kept in the run folder as it goes (TuneProgress), so that a rerun after a stop picks up where it was.
"""
import collections
import copy
import json
import math
import os
import time

from tools import adapt, cache, checkpoint
from tools.adapt import CACHE, DYNAMIC, RMS, flags_text, perplexity, settings_of
from tools.dynamic_eval import GIVE_UP_MARGIN

# tune's grids, from the literature on PTB (Grave et al. 2017; AWD-LSTM's pointer.py; Krause et al. 2018). The
# cache's cost nothing but numpy time on one pass's hidden states; each dynamic setting is a pass of the model.
CACHE_SIZES = (100, 500, 1000, 2000)
CACHE_THETAS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.2)  # h is in (-1, 1): h_t . h_i is at most the hidden size
CACHE_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3)
FINER_SIZES, FINER_THETAS, FINER_LAMBDAS = (0.7, 1, 1.4), (0.7, 0.85, 1, 1.2, 1.4), (-0.04, -0.02, 0, 0.02, 0.04)
FINER_LRS = (0.56, 1.8)  # half steps of the coarse grid, around its best


class Search(collections.namedtuple("Search", "method lrs window windows decays")):
    """A search of dynamic evaluation's settings: the rates `lrs` at `window` words, no decay; half steps around the
    best; the other `windows` at the same rate per word (lr scaled with n); then the `decays` (a window of `window`
    words; scaled with n likewise)."""

    @property
    def passes(self):
        return len(self.lrs) + len(FINER_LRS) + len(self.windows) + len(self.decays)

    @property
    def longest(self):
        """The longest window it tries: a text to search on needs that many words to predict."""
        return max(self.window, *self.windows)


SGD_SEARCH = Search("dynamic", (0.001, 0.003, 0.01, 0.03, 0.1, 0.3), 20, (10, 35), (0.002, 0.006, 0.02))
# The RMS form's step g / (rms + eps) is about 1 per weight where plain SGD's is g: its rates are 100 times smaller
# (on small the best valid was 5e-4 at 5 words, 1e-3 at 10, results/small-adapt-rms.txt).
RMS_SEARCH = Search("dynamic_rms", (1e-4, 3e-4, 1e-3, 3e-3), 10, (5, 20), (0.003, 0.01, 0.03))


def rounded(x):
    """Three significant digits: the grids' values as a user would type them."""
    return float(f"{x:.3g}")


def best_of(results):
    return min(results, key=results.get)


def cache_grid(log_p, hidden, targets, sizes, thetas, lambdas, label, say):
    """{(N, theta, lambda): perplexity} over the grid; a line per size."""
    results = {}
    for n in sizes:
        clock = time.time()
        for theta, log_cache in cache.log_probs(hidden, targets, n, thetas).items():
            for lam in lambdas:
                results[n, theta, lam] = perplexity(cache.mix(log_p, log_cache, lam))
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


def search_dynamic(evaluation, ids, reference, search, say, eps=None, progress=None):
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
            if eps is not None and gathered_window not in evaluation.statistics.gathered:
                # A new window's statistics (10-30 minutes on medium), on disk before the pass that needs them
                # starts: a rerun after a stop during that pass reads them back.
                evaluation.statistics.gather(gathered_window)
                progress.keep_statistics(evaluation, say)
            clock = time.time()
            passes[key] = evaluation.dynamic_pass(ids, *key, hidden=True, reference=reference, eps=eps)
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


def tune(evaluation, valid, test, say=print, rms=None, progress=None):
    """Each method's settings chosen on the ids `valid`, and every method's perplexity on valid and `test`.

    rms: {} or the RMS form's fixed settings (RMS's keys; the evaluation holds their statistics), to search it too.
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
            return {"test": adapt.evaluate(evaluation, test, settings_of(record, method)),
                    "seconds": round(time.time() - clock, 1)}

        got, before = progress.recall("test", method, measure)
        record[method].update(got)
        also = "; measured before a stop" if before else ""
        rms_window = record[method]["dynamic_window"] if RMS[0] in record[method] else None
        # Timed on its own, before the search's first pass at that window.
        gathering = evaluation.statistics.seconds.get(rms_window) if rms_window else None
        if gathering is not None:
            record[method]["statistics_seconds"] = round(gathering, 1)
            where = (f"read from {checkpoint.ADAPT_RMS}" if rms_window in evaluation.statistics.loaded
                     else "during the search")
            also += f"; gathering its statistics took {gathering:.0f} s, {where}"
        say(f"{method}: test {record[method]['test']:.3f} ({record[method]['seconds']:.0f} s{also})")

    clock = time.time()
    static, hidden = evaluation.static_pass(valid, hidden=True)  # always: the searches' reference, and the cache's h
    record = {"static": {"valid": perplexity(static)}}
    say(f"static: valid {record['static']['valid']:.3f} ({time.time() - clock:.0f} s)")
    report("static")
    record["cache"] = recalled(progress, "cache", lambda: search_cache(static, hidden, valid[1:], "cache", say), say)
    report("cache")
    del hidden  # [words, hidden size]: a large model's is 0.4 GB, and each dynamic search keeps its own
    form, best_pass = None, None
    for search, fixed in [(SGD_SEARCH, {})] + ([(RMS_SEARCH, rms)] if rms else []):
        found, kept = search_dynamic(evaluation, valid, static, search, say, fixed.get("dynamic_eps"), progress)
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
            best = evaluation.dynamic_pass(valid, *(settings[k] for k in DYNAMIC), hidden=True,
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

    def keep_statistics(self, evaluation, say):
        """Every window's statistics gathered so far, into adapt_rms.npz, for a rerun to read (lm.dynamic_evaluation);
        if it cannot be written, the rerun gathers them again."""
        if self.save_path:
            try:
                statistics = evaluation.statistics
                statistics.save(os.path.join(self.save_path, checkpoint.ADAPT_RMS), sorted(statistics.gathered))
            except OSError as e:
                say(f"note: the RMS form's statistics not kept ({e.strerror or e}): a rerun would gather them again")

    def remove(self):
        if self.path and os.path.exists(self.path):
            os.remove(self.path)


# What tune searches: a kept result is read back only for the same grids.
GRIDS = repr((CACHE_SIZES, CACHE_THETAS, CACHE_LAMBDAS, FINER_SIZES, FINER_THETAS, FINER_LAMBDAS, FINER_LRS,
              SGD_SEARCH, RMS_SEARCH, GIVE_UP_MARGIN))

