"""The sampling rules beyond Darknet's, one function per rule, on probabilities of shape (..., V).

Every rule is defined on p_T, the network's probabilities at temperature T: p_T ∝ p_1^(1/T), which
is softmax(logits / T) — `--temp` replaces the softmax temperature, as in Darknet. Ties are kept
together (a rule keeps every symbol as likely as the last one it keeps), so no rule depends on the
order of the vocabulary. Darknet's 0.0001 cut belongs to its own sampler (darknet_sampler.py) only.
"""
import numpy as np

from . import kernels


def within(p, n):
    """The probabilities of ids 0..n-1 alone, renormalized per row: a cfg may have more outputs
    than its vocabulary has tokens, and an id beyond has no text. n >= V: p itself, untouched."""
    if n >= p.shape[-1]:
        return p
    q = p[..., :n]
    return q / q.sum(axis=-1, keepdims=True)


def top_k(p, k):
    """Keep the k most likely symbols (and any tied with the k-th), renormalized; k >= V keeps all."""
    p = np.asarray(p, np.float64)
    if k >= p.shape[-1]:
        return p / p.sum(axis=-1, keepdims=True)
    kth = np.partition(p, -k, axis=-1)[..., -k, None]
    q = np.where(p >= kth, p, 0.0)
    return q / q.sum(axis=-1, keepdims=True)


def top_p(p, P):
    """Nucleus: keep each symbol whose strictly more likely symbols hold less than P of the mass
    (the smallest most-likely set reaching P, ties kept together), renormalized; P = 1 keeps all."""
    p = np.asarray(p, np.float64)
    if P >= 1:
        return p / p.sum(axis=-1, keepdims=True)
    order = np.argsort(-p, axis=-1, kind="stable")
    s = np.take_along_axis(p, order, -1)
    n = s.shape[-1]
    above = np.zeros_like(s)                                # mass before each position
    np.cumsum(s[..., :-1], axis=-1, out=above[..., 1:])
    new = np.concatenate([np.ones(s.shape[:-1] + (1,), bool), s[..., 1:] != s[..., :-1]], -1)
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0), axis=-1)  # first of each tie group
    keep_sorted = np.take_along_axis(above, start, -1) < P
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    q = np.where(keep, p, 0.0)
    return q / q.sum(axis=-1, keepdims=True)


# The rules that keep some symbols of p_T and renormalize, in the order they apply: the name of the
# options.GenerationOptions field (marked `filter`: its default keeps every symbol) -> rule(p, value).
FILTERS = {"top_k": top_k, "top_p": top_p}


def greedy(p):
    """The most likely symbol per row (the first of ties)."""
    return np.argmax(p, axis=-1)


def draw(p, u):
    """Inverse-CDF draw per row: the first symbol whose cumulative mass exceeds u * total, u in [0, 1),
    never a zero-mass symbol (kernels.draw; float32 rows run its C form)."""
    p = np.asarray(p)
    rows = np.ascontiguousarray(p.reshape(-1, p.shape[-1]))
    out = np.empty(rows.shape[0], np.int64)
    kernels.get("draw", rows)(rows, np.asarray(u, np.float64).reshape(-1), out)
    return out.reshape(p.shape[:-1])


def beam_steps(logp0, width, length):
    """Beam search, the `length`-symbol continuation of highest total log-probability a beam of
    `width` finds, as a generator for a caller that runs the network itself (a batch of streams).

    logp0 (V,) scores the first symbol. It yields (parents, symbols): beam j is to become the state
    of beam parents[j] fed symbols[j]; it is then sent the next log-probabilities (width, V). The
    greedy path is kept in the beam (it replaces the last pick when it would drop out), so the
    result is never less likely than greedy; width 1 is greedy. Returns (symbols, total
    log-probability)."""
    V = logp0.shape[-1]
    scores = np.full(width, -np.inf)
    scores[0] = 0.0
    logp = np.broadcast_to(np.asarray(logp0, np.float64), (width, V))
    g, history = 0, []
    for t in range(length):
        flat = (scores[:, None] + logp).ravel()
        order = np.argsort(-flat, kind="stable")[:width]
        want = g * V + int(np.argmax(logp[g]))
        hit = np.flatnonzero(order == want)
        if hit.size == 0:
            order[-1], hit = want, [width - 1]
        g = int(hit[0])
        parents, symbols = order // V, order % V
        scores = flat[order]
        history.append((parents, symbols))
        if t < length - 1:
            logp = np.asarray((yield parents, symbols), np.float64)
    best = int(np.argmax(scores)) if length else 0
    out = []
    for parents, symbols in reversed(history):
        out.append(int(symbols[best]))
        best = int(parents[best])
    return out[::-1], float(scores.max()) if length else 0.0
