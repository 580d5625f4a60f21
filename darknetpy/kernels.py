"""Every op that has a compiled form, with its numpy reference beside it, and the one function that
picks an implementation: `get(name, *arrays)`.

An op is a plain function that writes into arrays it is given (shapes in each docstring). Its
numpy form (below, or a recurrent kind's step in its layer file) is the reference: the C kernels in `_kernels.c` compute the same float32
operations (the tests hold them to these functions, bit for bit where the order of operations is
the same). The implementations form a table with one column per backend:

    op            numpy             c (_kernels.c, optional)
    lstm_step     layers/lstm.py    _kernels.lstm_step (_steps.h)
    transpose     transpose below   _kernels.transpose
    ...

`get` walks the backends in use, in order, and returns the first implementation whose backend
takes the arrays: the C one wants float32 arrays in C order. Numpy takes everything (float64 runs
the finite-difference checks). A second backend (CuPy on a GPU, say) would be one more column,
a dict of its functions and the test of which arrays it takes, added to `BACKENDS`: no layer
changes.

The C backend is left out when it was not built (no C compiler at install) or when the environment
sets DARKNETPY_KERNELS=0; DARKNETPY_KERNELS=avx2 keeps it without its AVX-512 functions (_kernels.c
leaves them out, as on a CPU without AVX-512). Tests pick the backends with `use("numpy")` (a
context manager).
"""
import contextlib
import os

import numpy as np

from .launcher import blas_threads

try:  # the optional C kernels (setup.py builds them when a compiler is there)
    from . import _kernels as _c
except ImportError:
    _c = None

f32 = np.float32


# ---- the numpy references ----------------------------------------------------------------------
# Each recurrent kind's step ops (lstm_step, gru_zr, rnn_step, sru_step, ...) live in its layer
# file, beside the layer that runs them, and join this table through `register`. They take either
# layout of `blocks`.

def blocks(a, k, like):
    """The k gate blocks of a step op's array a, each shaped like the state `like`. Feature-major
    (the training loops): a (k n, S), like (n, S), the blocks one after the other, each (n, S)
    contiguous. Rows (the steppers): a (S, k n), like (S, n), the blocks side by side in each row."""
    if a.ndim == 2 and a.shape[0] == like.shape[0] and k > 1:
        n = like.shape[1]
        return [a[:, j * n:(j + 1) * n] for j in range(k)]
    n = like.shape[0]
    return [a[j * n:(j + 1) * n] for j in range(k)]


def slope_act(x, a):
    """x = x if x > 0 else a·x, in place, for 0 < a < 1 (leaky 0.1, relie 0.01): max(x, a·x) is that
    exactly."""
    np.maximum(x, np.multiply(x, f32(a)), out=x)


def slope_grad(y, out, a, delta=None):
    """out = (1 if y > 0 else a) [· delta]: the slope activation's derivative from its output."""
    pick(np.greater(y, f32(0), out=out), 1, a, out)
    if delta is not None:
        np.multiply(out, delta, out=out)


def pick(cond, a, b, out=None):
    """cond ? a : b for scalars a > b >= 0, as max(cond·a, b), into `out` (cond may be out holding
    1.0 / 0.0): exact, and much faster than np.where with scalar operands (which takes numpy's slow
    broadcasting path)."""
    out = np.multiply(cond, f32(a), out=out)
    return np.maximum(out, f32(b), out=out)


def sigmoid_grad(y, out):
    """out = y (1 - y), the logistic's derivative from its output, without temporaries."""
    np.multiply(y, y, out=out)
    return np.subtract(y, out, out=out)


def tanh_grad(y, out):
    """out = 1 - y², tanh's derivative from its output, without temporaries."""
    np.multiply(y, y, out=out)
    return np.subtract(1, out, out=out)


def bn_forward(z, xhat, out, stats, scales, bias, eps):
    """Batchnorm in training over z (G, R, n): per group g and feature, the mean and the variance
    with the n-1 divisor over the R rows, into stats (4, G, n) = mean, var, σ = √var, d = σ + eps;
    xhat = (z - mean) / d and out = scales·xhat + bias (G, R, n)."""
    mean, var, sigma, d = stats
    np.mean(z, axis=1, out=mean)
    np.copyto(var, z.var(axis=1, ddof=1))
    np.sqrt(var, out=sigma)
    np.add(sigma, eps, out=d)
    np.divide(z - mean[:, None], d[:, None], out=xhat)
    np.add(xhat * scales, bias, out=out)


def bn_backward(dz, xhat, sigma, d, scales, dx, dscales):
    """Back through bn_forward, exactly: dscales (n,) += Σ dz⊙xhat, and with g = dz·scales and R rows
    dx = (g - mean(g)) / d - xhat · Σ(g·xhat) / (σ (R - 1)), all (G, R, n) (Darknet's own backward
    uses sqrt(var + 1e-5) and is not the gradient of its forward)."""
    dscales += (dz * xhat).sum(axis=(0, 1))
    g = dz * scales
    rows = g.shape[1]
    gx = (g * xhat).sum(axis=1) / (sigma * (rows - 1) + f32(1e-30))  # σ = 0 means x̂ = 0: no term
    np.subtract((g - g.mean(axis=1, keepdims=True)) / d[:, None], xhat * gx[:, None], out=dx)


def onehot_grad(dW, ids, dz):
    """dW[id] += the rows of dz (R, k) whose input is one-hot `id` (ids (R,)), for every id: one sum
    per id present over its rows in time order (a stable sort finds them): faster than a one-hot
    matmul, np.add.at or np.add.reduceat."""
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    total = np.empty(dz.shape[1], dz.dtype)
    for a, b in zip(starts.tolist(), np.r_[starts[1:], ids.size].tolist()):
        dW[ids[a]] += np.add.reduce(dz[order[a:b]], axis=0, out=total)


def onehot_project(out, table, ids):
    """out (T, k, S) = the rows table[ids[t, s], :k] laid out feature-major, for ids (T, S) and a
    table (V, k + pad) (the C kernel reads rows padded off 4 KB strides)."""
    k = out.shape[1]
    np.copyto(out, np.swapaxes(table[ids][..., :k], 1, 2))


def to_steps(out, F, bias):
    """out (T, k, S)[t, j, s] = F[j, t S + s] + bias[j]: a recurrent layer's input projection, one
    GEMM's result F (k, T S), laid out for the feature-major step loops with the bias (k,) added.
    The C form makes one pass over memory, shared among the step loops' threads."""
    T, k, S = out.shape
    np.add(F.reshape(k, T, S).transpose(1, 0, 2), bias[:, None], out=out)


def add(out, x):
    """out (..., n) += x, x shaped as out or as its last axis (n,), a bias on every row: the passes
    numpy would run on one thread beside the two-thread GEMMs (Dense.normalize's bias, [sru]'s
    highway delta). The C form (_head.h) shares the rows among the step loops' team: the same bits."""
    np.add(out, x, out=out)


def transpose(out, x):
    """out = x with its last two axes swapped, (B, R, C) -> (B, C, R) or (R, C) -> (C, R): the layout
    changes around the feature-major step loops. Rows of 1024 and more go eight at a time, since
    copied whole the reads run down columns whose elements lie 4 KB apart, which share cache sets
    and thrash (shorter rows are faster whole)."""
    if x.shape[-1] < 1024:
        np.copyto(out, np.swapaxes(x, -1, -2))
        return
    for a in range(0, x.shape[-2], 8):
        np.copyto(out[..., a:a + 8], np.swapaxes(x[..., a:a + 8, :], -1, -2))


def softmax(x, p, groups, temperature):
    """p = softmax over each of `groups` equal slices of x's last axis, at the temperature, as
    Darknet: exp(x/T - max/T) divided by the sum (x/1 is x exactly: no pass for it). x, p (..., n);
    the temperature is one number, or one per row of x (..., ) (a stepper's streams, each at its
    own: the same bits per row as that row alone at its number)."""
    z = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    e = p.reshape(z.shape)
    t = np.asarray(temperature, x.dtype)
    t = t.reshape(t.shape + (1, 1)) if t.ndim else t
    top = z.max(axis=-1, keepdims=True)
    if t.ndim == 0 and t == 1:
        np.subtract(z, top, out=e)
    else:
        np.subtract(np.divide(z, t, out=e), top / t, out=e)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)


def softmax_rows(x, p, groups, t):
    """softmax with one temperature per row, x, p (R, n), t (R,) float32: the steppers' (each row
    alone, so a stream's probabilities are the same bits beside any others). Its C form runs each
    row through the C softmax, which the one-stream loop (sample_program) runs too."""
    softmax(x, p, groups, t)


def draw(p, u, out):
    """One inverse-CDF draw per row: out (R,) int64 = the first symbol whose cumulative mass, summed
    in float64 in order, exceeds u (R,) times the row's total, never a zero-mass one (rounding near
    u = 1 falls back to the last symbol with mass). p (R, V); `get` picks the form by p alone, since u
    and out are always float64 and int64."""
    c = np.cumsum(p, axis=-1, dtype=np.float64)
    idx = (c <= u[:, None] * c[:, -1:]).sum(axis=-1)
    last = p.shape[-1] - 1 - np.argmax(p[:, ::-1] > 0, axis=-1)
    np.minimum(idx, last, out=out)


def xent(p, ids, delta):
    """The cross-entropy of probabilities p (R, k) against class ids (R,): returns Σ -ln p[r, ids[r]]
    (float32, Darknet's cost) and writes delta (R, k) = onehot(ids) - p."""
    picked = np.take_along_axis(p, ids[:, None], axis=-1)
    cost = -np.log(picked).sum(dtype=p.dtype)
    np.negative(p, out=delta)
    np.put_along_axis(delta, ids[:, None], f32(1) - picked, axis=-1)
    return cost


PANEL = 32  # the columns of one panel of panel_matmul's packed weights


def pack_panels(W):
    """W (K, N) -> Wp (P, K, 32), P = ceil(N / 32): Wp[j, k, c] = W[k, 32 j + c], zeros past N. The
    layout panel_matmul reads, made once for weights that stay (a stepper's)."""
    K, N = W.shape
    P = -(-N // PANEL)
    padded = np.zeros((K, P * PANEL), W.dtype)
    padded[:, :N] = W
    return np.ascontiguousarray(padded.reshape(K, P, PANEL).transpose(1, 0, 2))


def panel_matmul(out, x, Wp, b):
    """out (M, N) = x (M, K) W + b for Wp = pack_panels(W) (P, K, 32) and b (N,): a many-stream
    step's projection. The C form (AVX-512 CPUs only) streams the packed panels on every thread
    instead of repacking W on each call as sgemm does at a few rows; it adds in another order, so
    it equals this to float32 rounding."""
    P, K, _ = Wp.shape
    W = Wp.transpose(1, 0, 2).reshape(K, P * PANEL)[:, :out.shape[1]]
    np.add(np.matmul(x, W, out=out), b, out=out)


def panel_matmul_t(out, xT, Wp, b):
    """panel_matmul of x given as its transpose xT (K, M) contiguous: a feature-major state."""
    panel_matmul(out, xT.T, Wp, b)


def bf16(x):
    """x rounded to bfloat16 (to nearest, ties to even), held as float32 with its low 16 bits zero:
    what AMX's and AVX512-BF16's conversions (vcvtne2ps2bf16) produce. Not for NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) & np.uint32(0xFFFF0000)).view(np.float32)


def matmul_bf16(out, a, b, ta, tb, beta):
    """out (M, N) = beta·out + bf16(A) @ bf16(B), summed in float32, for beta 0 or 1: the mixed
    precision product of `[net] precision=bf16`. A is a (M, K), or aᵀ when ta (a is then (K, M));
    B is b (K, N), or bᵀ when tb (b (N, K)). a and b stay float32: the kernel rounds as it packs.
    The C form (AMX-BF16 CPUs) sums in another order, so it equals this to float32 rounding."""
    A, B = bf16(a.T if ta else a), bf16(b.T if tb else b)
    if beta:
        out += A @ B
    else:
        np.matmul(A, B, out=out)


def adam(p, u, m, v, decay, B1, one_B1, B2, one_B2, c1, c2, lr, eps):
    """One Adam update of a parameter array p with its accumulated negative gradient u and moments
    m, v (all one shape): u += decay p (decay = -decay·B; 0 skips it); m = B1 m + (1-B1) u;
    v = B2 v + (1-B2) u²; p += lr (m / c1) / (sqrt(v / c2) + eps); u = 0."""
    a, b = np.empty_like(p), np.empty_like(p)
    if decay:
        u += np.multiply(p, decay, out=a)
    m *= B1
    m += np.multiply(u, one_B1, out=a)
    v *= B2
    v += np.multiply(np.multiply(u, u, out=a), one_B2, out=a)
    np.sqrt(np.divide(v, c2, out=a), out=a)
    a += eps
    np.multiply(np.divide(m, c1, out=b), lr, out=b)
    p += np.divide(b, a, out=b)
    u[...] = 0


def adam_ema(p, u, m, v, s, shrink, decay, B1, one_B1, B2, one_B2, c1, c2, lr, eps, D, rest):
    """One slot's whole update: AdamW's shrink p *= shrink (1 skips it), then `adam`, then the EMA's
    move of its shadow s = D s + rest p (rest = 1 - D; s None: no average), each as optim.AdamW and
    optim.EMA.update do it. The C form (_optim.h) makes it one pass over the elements, on the step
    loops' team: the same bits."""
    if shrink != 1:
        p *= shrink
    adam(p, u, m, v, decay, B1, one_B1, B2, one_B2, c1, c2, lr, eps)
    if s is not None:
        s *= D
        s += np.multiply(p, rest)


def sgd(p, u, decay, rate, momentum):
    """One SGD update of p with its accumulated negative gradient u: u += decay p (decay = -decay·B
    for weights; 0 skips it); p += rate u (rate = lr/B); u *= momentum."""
    a = np.empty_like(p)
    if decay:
        u += np.multiply(p, decay, out=a)
    p += np.multiply(u, rate, out=a)
    u *= momentum


OPS = ("slope_act", "slope_grad", "bn_forward", "bn_backward", "onehot_grad", "onehot_project",
       "to_steps", "add", "transpose", "softmax", "softmax_rows", "draw", "xent", "adam_ema", "sgd", "panel_matmul",
       "panel_matmul_t", "matmul_bf16")


# ---- the backends -------------------------------------------------------------------------------
class Backend:
    """One column of the table: `ops` maps op names to implementations, `takes(arrays)` says
    whether they run on these arrays."""

    def __init__(self, name, ops, takes):
        self.name, self.ops, self.takes = name, ops, takes


def _c_takes(arrays):
    for a in arrays:  # a loop, not all(...): this runs in the step loops, and a generator costs more
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            return False
    return True


threads = blas_threads  # the threads a compiled op may use: as many as numpy's BLAS runs


NUMPY = Backend("numpy", {name: globals()[name] for name in OPS}, lambda arrays: True)
# The C column lacks an op the CPU cannot run (panel_matmul without AVX-512): numpy's serves it.
C = Backend(f"C ({_c.isa})", {name: getattr(_c, name) for name in OPS if hasattr(_c, name)},
            _c_takes) if _c is not None else None
if C is not None and "panel_matmul" in C.ops:
    _c.panel_threads(threads())
if C is not None and hasattr(_c, "sample_threads"):  # the one-stream sampling loop's (_sample.h)
    _c.sample_threads(threads())
if C is not None and hasattr(_c, "loop_threads"):  # the step loops' team (_loop.h)
    _c.loop_threads(threads())
BACKENDS = [b for b in (C, NUMPY) if b is not None]   # in order of preference
_active = [C, NUMPY] if C is not None and os.environ.get("DARKNETPY_KERNELS") != "0" else [NUMPY]


def register(*references):
    """Add ops a layer kind brings in its own file: each a numpy reference, named as its op. Its C
    form joins the C column when the compiled module has one (a kind's own header, _kinds.h)."""
    for fn in references:
        NUMPY.ops[fn.__name__] = fn
        if C is not None and hasattr(_c, fn.__name__):
            C.ops[fn.__name__] = getattr(_c, fn.__name__)


def get(name, *arrays):
    """The implementation of op `name` for these arrays (the ones it reads or writes): the first
    backend in use that takes them, else numpy's reference."""
    for backend in _active:
        if name in backend.ops and backend.takes(arrays):
            return backend.ops[name]
    return NUMPY.ops[name]


def sample_loop():
    """The compiled one-stream loop (_sample.h: `sample_program`, `sample_run`; generation.Loop) when
    the C backend is in use and has it (AVX-512 CPUs, as the panel kernel), else None."""
    return _c if C in _active and hasattr(_c, "sample_run") else None


def compiled(name):
    """Whether a backend in use other than numpy has op `name`: for a choice between a compiled
    op and a different numpy formulation (panel_matmul's reference repacks its weights)."""
    return any(name in backend.ops for backend in _active if backend is not NUMPY)


@contextlib.contextmanager
def use(*names):
    """Run only the backends named ("numpy", "c") inside the block, for tests: `with
    kernels.use("numpy"): ...` runs the numpy references. A name whose backend is not built raises
    LookupError, so a test can skip."""
    global _active
    chosen = []
    for name in names:
        match = [b for b in BACKENDS if b.name.split()[0].lower() == name.lower()]
        if not match:
            raise LookupError(f"backend {name!r} is not available (built: {', '.join(b.name for b in BACKENDS)})")
        chosen += match
    previous, _active = _active, chosen + ([NUMPY] if NUMPY not in chosen else [])
    try:
        yield
    finally:
        _active = previous


def label():
    """What runs the float32 training math that has compiled kernels, for benchmark reports."""
    if _active[0] is not NUMPY:
        avx2 = os.environ.get("DARKNETPY_KERNELS") == "avx2"  # the name's ISA says avx2+fma then
        return _active[0].name + (" (DARKNETPY_KERNELS=avx2)" if avx2 else "")
    if C is None:
        return "numpy (not built: no C compiler at install)"
    return "numpy (DARKNETPY_KERNELS=0)" if os.environ.get("DARKNETPY_KERNELS") == "0" else "numpy (kernels.use)"
