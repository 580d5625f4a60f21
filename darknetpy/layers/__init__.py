"""One module per Darknet layer kind. `Layer` is the stateless default; `Recurrent` holds what rnn,
gru and lstm share: per-stream state that carries over between calls."""
import os

import numpy as np

try:  # the optional C kernels (setup.py builds them when a compiler is there)
    from .. import _kernels as KERNELS
except ImportError:
    KERNELS = None
if os.environ.get("DARKNETPY_KERNELS") == "0":
    KERNELS = None


def fused(name, dtype):
    """The compiled kernel `name` (darknetpy/_kernels.c) for float32 arrays, or None when it was
    not built, is switched off (DARKNETPY_KERNELS=0) or the net is not float32 (float64 runs the
    finite-difference checks). Each kernel computes what numpy code does (lstm.py, gru.py: the
    function of the same name; rnn.py: RNN.step_functions; connected.onehot_grad and Dense's
    batchnorm in training; project_steps' one-hot gather; transpose_into; the leaky and relie
    forms in activations.py; Softmax.forward and .loss; optim.py: adam_update, sgd_update), which
    stays the reference the tests hold it to."""
    return getattr(KERNELS, name) if KERNELS is not None and dtype == np.float32 else None


def fused_for(name, *arrays):
    """The kernel `name` when every array is float32 in C order (what the kernels take) and the
    kernels are in use, else None: the caller then runs its numpy form."""
    if KERNELS is None:
        return None
    for a in arrays:  # a loop, not all(...): this runs in the step loops, and a generator costs more
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            return None
    return getattr(KERNELS, name)


def kernels_label():
    """What runs the float32 training math that has C kernels, for benchmark reports."""
    if KERNELS is not None:
        return f"C ({KERNELS.isa})"
    why = "DARKNETPY_KERNELS=0" if os.environ.get("DARKNETPY_KERNELS") == "0" else "not built: no C compiler at install"
    return f"numpy ({why})"


class Buffers:
    """Work arrays kept between calls. A training step reuses them rather than allocating: a fresh
    array of a megabyte or more is new memory from the OS, and its first touch costs a page fault
    per 4 KB (about 2 µs each here: more than the arithmetic done in it)."""

    def buffer(self, name, shape):
        """The array `name` of `shape` and the owner's dtype, reused while the shape stays."""
        buf = self.__dict__.get("_buf_" + name)
        if buf is None or buf.shape != shape or buf.dtype != self.dtype:
            buf = np.empty(shape, self.dtype)
            setattr(self, "_buf_" + name, buf)
        return buf


class Layer(Buffers):
    """What a layer without parameters or state needs: nothing to save, nothing to reset."""
    denses = ()
    dtype = np.float32

    def params(self, updates=False):
        return {}

    def reset_state(self, stream=None):
        pass

    def backward(self, dy, need_dx):
        return dy

    def stepper(self, streams, ids_input):
        """An inference function for one step, x (streams, inputs) or ids (streams,) -> (streams,
        outputs), for generation and validation. Layers with weights override it to prepare their
        weights once (see Network.stepper); this default runs `forward` for a single step."""
        return lambda x: self.forward(x[None], False)[0]


class Recurrent(Layer):
    state_names = ("h",)

    def state(self, streams):
        """The carried state arrays, (re)made as zeros when the number of streams changes; also
        starts a forward pass by dropping batchnorm statistics a previous pass left unused."""
        for d in self.denses:
            d.cache.clear()
        for name in self.state_names:
            s = getattr(self, name, None)
            if s is None or s.shape[0] != streams:
                setattr(self, name, np.zeros((streams, self.outputs), self.dtype))
        return [getattr(self, name) for name in self.state_names]

    def reset_state(self, stream=None):
        for name in self.state_names:
            s = getattr(self, name, None)
            if s is not None:
                s[slice(None) if stream is None else stream] = 0

    def transposed(self, name, W, scale=None):
        """Wᵀ with row j scaled by scale[j] (if given), in C order (BLAS's faster left operand for
        the step loops' products), in the buffer `name`."""
        out = transpose_into(self.buffer(name, W.shape[::-1]), W)
        if scale is not None:
            out *= scale[:, None]
        return out

    def project_steps(self, dense, x, bias, scale, train):
        """The input projections of all steps, (x U + bias) scaled per column by `scale` (powers of
        two, so the scaling is exact and may apply to the sum or to its terms), laid out for a
        feature-major step loop: (T, k, S). One-hot ids: the C kernel gathers rows of U (with the
        bias added) straight into that layout; numpy gathers columns of Uᵀ, step by step. Float
        rows take one matmul into (k, T*S), then a copy of S-long blocks (4x faster than
        transposing element by element). With batchnorm `normalize` applies the sub-layer's bias
        and `bias` is not used."""
        T, S = x.shape[:2]
        k = scale.size
        out = self.buffer("XU", (T, k, S))
        if dense.bn:
            z = dense.normalize(dense.matmul(rows(x)).reshape(T, S, k), train) * scale
            transpose_into(out, z)
        elif x.dtype.kind in "iu" and fused("onehot_project", self.dtype):
            V = dense.W.shape[0]  # rows padded by 16 floats: see _kernels.c
            table = self.buffer("table", (V, k + 16))
            np.multiply(dense.W, scale, out=table[:, :k])
            table[:, :k] += bias * scale
            KERNELS.onehot_project(out, table, x.astype(np.int64, copy=False))
        elif x.dtype.kind in "iu":
            table = self.transposed("table", dense.W, scale)
            table += (bias * scale)[:, None]
            for t in range(T):  # ids are in range (Network checks them): mode="wrap" skips numpy's
                np.take(table, x[t], axis=1, out=out[t], mode="wrap")  # check and its copy of `out`
        else:
            U = np.multiply(dense.W, scale, out=self.buffer("U", dense.W.shape))
            F = np.matmul(U.T, rows(x).T, out=self.buffer("F", (k, T * S)))
            F += (bias * scale)[:, None]
            np.copyto(out, F.reshape(k, T, S).transpose(1, 0, 2))
        return out

    def zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def params(self, updates=False):
        out = {}
        for d in self.denses:
            out.update(d.params(updates))
        return out


def transpose_into(out, x):
    """out = x with its last two axes swapped, (B, R, C) -> (B, C, R) or (R, C) -> (C, R): the
    layout changes around the feature-major step loops. The C kernel for float32 arrays in C
    order, else numpy: for rows of 1024 and more eight of them at a time, since copied whole the
    reads run down columns whose elements lie 4 KB apart, which share cache sets and thrash (a
    256 x 1024 matrix: 0.9 ms whole, 0.3 ms by eight rows; shorter rows are faster whole)."""
    kernel = fused_for("transpose", out, x)
    if kernel:
        kernel(out, x)
    elif x.shape[-1] < 1024:
        np.copyto(out, np.swapaxes(x, -1, -2))
    else:
        for a in range(0, x.shape[-2], 8):
            np.copyto(out[..., a:a + 8], np.swapaxes(x[..., a:a + 8, :], -1, -2))
    return out


def times(W, streams):
    """(x, out) -> x W written into out, for x of `streams` rows. With one stream (generate, valid)
    and a large W, as W's transpose in rows times x as a column: OpenBLAS's GEMV runs that form
    1.1-1.4x faster for 256x1024 and larger (measured here), the plain one faster below."""
    if streams == 1 and W.size >= 256 * 1024:
        WT = np.ascontiguousarray(W.T)
        return lambda x, out: np.matmul(WT, x.T, out=out.T).T
    return lambda x, out: np.matmul(x, W, out=out)


def projector(W, b, ids_input, out):
    """x -> x W + b written into `out`, for the step functions: a row gather from a table that
    already holds b when x is one-hot ids, else one matmul and an add."""
    if ids_input:
        table = W + b
        return lambda x: np.take(table, x, axis=0, out=out)
    product = times(W, out.shape[0])
    return lambda x: np.add(product(x, out), b, out=out)


def halves(n, count):
    """Column factors 0.5 for the first `count` of n columns, 1 for the rest. A logistic gate whose
    weights and bias are pre-halved is (1 + tanh(z)) / 2 with no z/2 at run time (halving is exact);
    numpy's float32 tanh is about twice as fast as its exp, and this form cannot overflow."""
    return np.where(np.arange(n) < count, 0.5, 1.0).astype(np.float32)


def sigmoid_grad(y, out):
    """out = y (1 - y), the logistic's derivative from its output, without temporaries."""
    np.multiply(y, y, out=out)
    return np.subtract(y, out, out=out)


def tanh_grad(y, out):
    """out = 1 - y², tanh's derivative from its output, without temporaries."""
    np.multiply(y, y, out=out)
    return np.subtract(1, out, out=out)


def rows(x):
    """(T, S, F) -> (T*S, F); indices (T, S) -> (T*S,)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
