"""Darknet's sampler, byte for byte (generation.py runs it).

Matching Darknet's generated text needs its random stream (glibc's rand(), emulated exactly here,
including the draws Darknet's network construction burns before sampling starts) and its float32
sampling arithmetic. `rnn valid` and `rnn vec` are in evaluate.py.
"""
import functools

import numpy as np


_MASK = 0xFFFFFFFF  # glibc's state words are 32 bits; the generator is linear over Z/2^32
_DEG, _SEP = 31, 3  # TYPE_3: r[i] = r[i-3] + r[i-31]


def _poly_mulmod(a, b):
    """a*b mod (x^31 - x^28 - 1) over Z/2^32; polynomials are 31 coefficients, lowest first."""
    prod = [0] * (2 * _DEG - 1)
    for i, ai in enumerate(a):
        if ai:
            for j, bj in enumerate(b):
                prod[i + j] += ai * bj
    for d in range(2 * _DEG - 2, _DEG - 1, -1):  # x^d = x^(d-3) + x^(d-31)
        prod[d - _SEP] += prod[d]
        prod[d - _DEG] += prod[d]
    return [c & _MASK for c in prod[:_DEG]]


def _poly_times_x(a):
    """x*a mod (x^31 - x^28 - 1): a shift, with x^31 folded back onto x^28 + 1."""
    top = a[-1]
    out = [top] + a[:-1]
    out[_DEG - _SEP] = (out[_DEG - _SEP] + top) & _MASK
    return out


@functools.lru_cache(maxsize=8)  # every seeded sample of one network skips the same count
def _poly_xpow(n):
    """x^n mod (x^31 - x^28 - 1), by square-and-multiply."""
    result = [1] + [0] * (_DEG - 1)
    base = [0, 1] + [0] * (_DEG - 2)
    while n:
        if n & 1:
            result = _poly_mulmod(result, base)
        base = _poly_mulmod(base, base)
        n >>= 1
    return result


class GlibcRand:
    """glibc's srand(seed) / rand() (the default TYPE_3 additive generator), draw for draw.

    The state is the last 31 terms of r[i] = r[i-3] + r[i-31] (mod 2^32), kept in a ring where
    r[j] sits at slot j % 31; rand() returns r[i] >> 1. `skip(n)` jumps n draws in O(log n).
    """

    def __init__(self, seed):
        seed &= _MASK  # srand takes an unsigned int; Darknet hands it an int, so negatives wrap
        seed = seed or 1  # glibc: seed 0 behaves as 1
        word = seed - (1 << 32) if seed >= 1 << 31 else seed  # glibc's int32_t copy of the seed
        ring = [seed]
        for _ in range(1, _DEG):
            # glibc's Schrage form of word = 16807 * word % 2147483647, with C's truncating division
            hi = -(-word // 127773) if word < 0 else word // 127773
            lo = word - hi * 127773
            word = 16807 * lo - 2836 * hi
            if word < 0:
                word += 2147483647
            ring.append(word)
        # r[31..33] = r[0..2] are the values already in slots 0..2, so the first term computed
        # is r[34]; glibc then throws away 310 draws.
        self._ring, self._pos = ring, 34 % _DEG
        self.skip(10 * _DEG)

    def rand(self):
        """One rand(): an int in [0, 2^31)."""
        ring, i = self._ring, self._pos
        ring[i] = (ring[i] + ring[(i - _SEP) % _DEG]) & _MASK  # slot i held r[k-31]; now r[k]
        self._pos = (i + 1) % _DEG
        return ring[i] >> 1

    def skip(self, n):
        """Advance by n draws, as n calls to rand() would, in O(log n) polynomial products.

        With w = the last 31 terms, r[k-31+t] = sum_j c_j w_j where x^t = sum_j c_j x^j
        mod the characteristic polynomial x^31 - x^28 - 1.
        """
        if n < 0:
            raise ValueError("cannot skip a negative number of draws")
        i = self._pos
        window = [self._ring[(i + j) % _DEG] for j in range(_DEG)]  # r[k-31], ..., r[k-1]
        coeffs = _poly_xpow(n)
        for m in range(_DEG):  # the new window r[k+n-31+m], m = 0..30
            self._ring[(i + n + m) % _DEG] = sum(c * w for c, w in zip(coeffs, window)) & _MASK
            coeffs = _poly_times_x(coeffs)
        self._pos = (i + n) % _DEG

    def uniform(self):
        """Darknet's rand_uniform(0, 1): (float)rand() / RAND_MAX, where RAND_MAX becomes 2^31 in float."""
        return np.float32(self.rand()) / np.float32(2147483648.0)

    def uniforms(self, n):
        """The next n of `uniform`, float32 (n,)."""
        return np.array([self.rand() for _ in range(n)], np.float32) / np.float32(2147483648.0)


class NumpyRand:
    """The sampling stream when no srand is given (Darknet then seeds with time(0))."""

    def __init__(self, seed=None):
        self._gen = np.random.default_rng(seed)

    def uniform(self):
        """A float32 in [0, 1)."""
        return np.float32(self._gen.random(dtype=np.float32))

    def uniforms(self, n):
        """The next n of `uniform`, float32 (n,) (numpy fills them from the same stream)."""
        return self._gen.random(n, dtype=np.float32)


# C compares each float probability with the double 0.0001. float32(0.0001) lies just below 0.0001,
# so for a float32 p, p < 0.0001 exactly when p <= float32(0.0001): no float64 copy needed.
_CUT = np.float32(0.0001)
assert float(_CUT) < 0.0001 < float(np.nextafter(_CUT, np.float32(1)))


def sample_index(p, rng):
    """Darknet's sampling step in its exact float32 arithmetic: returns the chosen index (one draw
    of rng, as Darknet's one rand() per symbol)."""
    return int(sample_rows(np.asarray(p, dtype=np.float32)[None], [rng.uniform()])[0])


def sample_rows(p, u):
    """Darknet's sampling step for each row of p (R, V) with its own uniform u (R,), each row as
    Darknet computes it alone: probabilities below 0.0001 are zeroed, the rest renormalized; r = u
    then walks r -= p[i] and stops at the first r <= 0 (the last index if it never does)."""
    p = np.asarray(p, dtype=np.float32)
    p = np.where(p <= _CUT, np.float32(0), p)
    total = np.add.accumulate(p, axis=-1)[:, -1]  # C's sequential float sum (np.sum is pairwise)
    walk = np.empty((p.shape[0], p.shape[1] + 1), dtype=np.float32)
    walk[:, 0] = u
    with np.errstate(divide="ignore", invalid="ignore"):  # scale_array(a, n, 1./sum): double 1/s as float
        np.multiply(p, (1.0 / total.astype(np.float64)).astype(np.float32)[:, None], out=walk[:, 1:])
    walk = np.subtract.accumulate(walk, axis=-1)[:, 1:]  # r - p0 - p1 - ..., one rounding per step
    hit = np.argmax(walk <= 0, axis=-1)
    found = np.take_along_axis(walk, hit[:, None], -1)[:, 0] <= 0
    ok = (total > 0) & (total < np.inf)  # all cut (or NaN): Darknet's NaNs pick the last index
    return np.where(found & ok, hit, p.shape[1] - 1)

