"""The neural cache (Grave, Joulin & Usunier 2017, "Improving Neural Language Models with a Continuous Cache").

h_t, the top LSTM layer's output at position t (the softmax's input), is compared with the h_i of the last N
positions; each votes for the word that followed it, with weight exp(theta h_t . h_i). The vote p_cache is mixed
into the model's p_vocab:

    p = (1 - lambda) p_vocab + lambda p_cache      (p_vocab alone where the cache is empty, t = 0)

The weights do not change: one pass of the model gives every h_t and p_vocab(target), and any (N, theta, lambda)
is then numpy arithmetic on them (tools/adapt.py's log_probs, lm.py tune's grids).
"""
import numpy as np


def log_probs(hidden, targets, size, thetas, block=512):
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
