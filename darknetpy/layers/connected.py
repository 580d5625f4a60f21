"""[connected]: y = act(x W + b), or with batch_normalize y = act(scale * x̂ + b).

`Dense` is the building block every layer uses: k Darknet connected sub-layers that read the same
input, stacked side by side so one BLAS call computes all of them (LSTM's four gates, GRU's z/r).
Darknet keeps each matrix as (outputs, inputs); we store the transpose (inputs, k*outputs) so that
`x @ W` needs no copy and a one-hot input is a row gather. `params()` hands out views in Darknet's
shape and save order, so the weights file never sees the stacking.

Sign convention, as in Darknet: every delta is the NEGATIVE gradient of the cost, and the `d*`
buffers accumulate negative gradients (Darknet's weight_updates / bias_updates / scale_updates).
"""
from typing import NamedTuple

import numpy as np

from .base import Buffers, Layer, mixed, output_units, projector
from .. import activations, kernels

BN_EPS = np.float32(1e-6)  # Darknet adds it after the square root: (x - mean) / (sqrt(var) + 1e-6)


def row_sum(dz):
    """Σ of dz (..., k) over all but its last axis: a bias gradient. As a product with ones: BLAS
    reads the transposed views the step loops hand over at full speed, numpy's sum does not
    (benchmarks/README.md, "Design measurements")."""
    return np.matmul(np.ones(dz.size // dz.shape[-1], dz.dtype), dz.reshape(-1, dz.shape[-1]))


def is_ids(x):
    """True for integer class indices standing for one-hot rows."""
    return x.dtype.kind in "iu"


class Dense(Buffers):
    """k stacked connected sub-layers (`names`), each inputs -> outputs, sharing one input.

    `bf16` (set by the network once it is built, from `[net] precision`): training's products over
    all rows, x W forward, xᵀ dz and dz Wᵀ backward, take their float inputs rounded to bfloat16
    (base.mixed); sums, weights and gradients stay float32. Inference (train=False) never does."""
    bf16 = False

    def __init__(self, inputs, outputs, names, batch_normalize, rng):
        self.inputs, self.outputs, self.names, self.bn = inputs, outputs, names, bool(batch_normalize)
        n = outputs * len(names)
        # Darknet's init: scale * uniform(-1, 1) with scale = sqrt(2 / inputs); biases 0.
        self.W = (np.sqrt(2.0 / inputs) * rng.uniform(-1, 1, size=(inputs, n))).astype(np.float32)
        self.b = np.zeros(n, np.float32)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)
        if self.bn:
            self.scales = np.ones(n, np.float32)
            self.rolling_mean = np.zeros(n, np.float32)
            self.rolling_variance = np.ones(n, np.float32)
            self.dscales = np.zeros_like(self.scales)

    def params(self, updates=False):
        """Darknet-named views in save order: biases, weights (out, in), [scales, rolling_mean,
        rolling_variance]. With updates=True: the matching accumulated updates (trainable ones only)."""
        out = {}
        for j, name in enumerate(self.names):
            cols = slice(j * self.outputs, (j + 1) * self.outputs)
            key = f"{name}." if name else ""
            out[key + "biases"] = (self.db if updates else self.b)[cols]
            out[key + "weights"] = (self.dW if updates else self.W)[:, cols].T
            if self.bn:
                out[key + "scales"] = (self.dscales if updates else self.scales)[cols]
                if not updates:
                    out[key + "rolling_mean"] = self.rolling_mean[cols]
                    out[key + "rolling_variance"] = self.rolling_variance[cols]
        return out

    def slots(self):
        """(parameter, accumulated update, kind) triples for the optimizer."""
        s = [(self.b, self.db, "biases"), (self.W, self.dW, "weights")]
        if self.bn:
            s.append((self.scales, self.dscales, "scales"))
        return s

    @property
    def dtype(self):
        return self.W.dtype

    def astype(self, dtype):
        """Convert every array (float64 for finite-difference checks)."""
        for name, value in list(vars(self).items()):
            if isinstance(value, np.ndarray):
                setattr(self, name, value.astype(dtype))

    def matmul(self, x, out=None, train=False):
        """x (N, inputs) @ W, or a row gather when x holds one-hot indices (N,); in bf16 in training."""
        if is_ids(x):  # in range (Network checks them): mode="wrap" skips the check and a copy of out
            return np.take(self.W, x, axis=0, out=out, mode="wrap")
        if train and self.bf16:
            out = np.empty((x.shape[0], self.W.shape[1]), self.dtype) if out is None else out
            return mixed(out, x, self.W, self.buffer)
        return np.matmul(x, self.W, out=out)

    def normalize(self, z, train, keep=None):
        """Add the bias, or batchnorm then scale and bias. z is (groups, rows, n); statistics per group.

        In training the statistics are the group's own (variance with the n-1 divisor, as Darknet)
        and each group moves the rolling statistics by 1%, in order; what backward_norm needs,
        (x̂, σ, σ+ε), is appended to the list `keep`, which the layer keeps in its Tape.
        """
        if not self.bn:
            kernels.get("add", z, self.b)(z, self.b)
            return z
        if train:
            xhat, out = np.empty_like(z), np.empty_like(z)
            mean, var, sigma, d = stats = np.empty((4, z.shape[0], z.shape[2]), z.dtype)
            bn_forward = kernels.get("bn_forward", z, stats) if z.shape[1] > 1 else kernels.bn_forward
            bn_forward(z, xhat, out, stats, self.scales, self.b, BN_EPS)
            for g in range(z.shape[0]):
                self.rolling_mean *= np.float32(0.99)
                self.rolling_mean += np.float32(0.01) * mean[g]
                self.rolling_variance *= np.float32(0.99)
                self.rolling_variance += np.float32(0.01) * var[g]
            keep.append((xhat, sigma, d))
            return out
        xhat = (z - self.rolling_mean) / (np.sqrt(self.rolling_variance) + BN_EPS)
        return xhat * self.scales + self.b

    def folded(self):
        """(W, b) for inference with batchnorm folded in: x W + b equals `normalize(x W, train=False)`,
        scale (x W - mean) / (√var + ε) + bias, up to float32 rounding. Copies: later updates leave it."""
        if not self.bn:
            return self.W.copy(), self.b.copy()
        a = self.scales / (np.sqrt(self.rolling_variance) + BN_EPS)
        return self.W * a, self.b - self.rolling_mean * a

    def backward_norm(self, dz, kept=None):
        """Back through `normalize`: accumulate bias (and scale) updates; return the delta of x W.
        With batchnorm, `kept` is what that normalize call kept.

        The batchnorm gradient is the exact derivative of the forward above (Darknet's own uses
        sqrt(var + 1e-5) and is not). With d = σ + ε and R rows:
        dx = (g - mean(g)) / d - x̂ · Σ(g·x̂) / (σ (R - 1)),  g = δ · scale.
        """
        self.db += row_sum(dz)
        if not self.bn:
            return dz
        xhat, sigma, d = kept
        dx = np.empty_like(dz)
        kernels.get("bn_backward", dz, xhat, dx)(dz, xhat, sigma, d, self.scales, dx, self.dscales)
        return dx

    def accumulate(self, x, dz, mask=None):
        """dW += xᵀ dz over all rows at once (in bf16 without a mask: straight into dW). `mask`, W's
        shape (DropConnect's M/(1-p) for float rows x, base.Recurrent.accumulate): dW += (xᵀ dz)⊙mask, the
        gradient of W through the masked weights the step ran on."""
        if is_ids(x):
            dz = np.ascontiguousarray(dz)
            kernels.get("onehot_grad", self.dW, dz)(self.dW, x.astype(np.int64, copy=False), dz)
        elif self.bf16 and mask is None:
            mixed(self.dW, x.T, dz, self.buffer, beta=1)
        else:
            dWx = self.buffer("dWx", self.W.shape)
            if self.bf16:
                mixed(dWx, x.T, dz, self.buffer)
            else:
                np.matmul(x.T, dz, out=dWx)
            if mask is not None:
                dWx *= mask
            kernels.get("add", self.dW, dWx)(self.dW, dWx)

    def back(self, dz, out=None):
        """The delta for the input: dz Wᵀ (a backward product: in bf16 with `bf16`)."""
        if self.bf16:
            out = np.empty((dz.shape[0], self.W.shape[0]), self.dtype) if out is None else out
            return mixed(out, dz, self.W.T, self.buffer)
        return np.matmul(dz, self.W.T, out=out)


class Connected(Layer):
    """A top-level [connected] layer. Its batchnorm statistics span all steps*streams rows of a datum."""
    kind, aliases = "connected", ("conn",)

    class Tape(NamedTuple):
        """What forward keeps for backward."""
        x: np.ndarray   # the input rows (T*S, inputs), or ids (T*S,)
        y: np.ndarray   # the activated outputs (T, S, outputs)
        bn: list        # batchnorm's (x̂, σ, σ+ε) (Dense.normalize), or nothing without batchnorm

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = output_units(section)
        self.activation = name = section.str("activation", "logistic")
        self.f = activations.get(name, section)[0]
        self.f_ = activations.in_place(name)
        self.delta_through = activations.delta_through(name)
        self.dense = Dense(inputs, self.outputs, [""], section.int("batch_normalize", 0), rng)
        self.denses = [self.dense]

    def describe(self):
        return self.activation

    def products(self):
        return [(self.inputs, self.outputs, False, True)]

    def forward(self, x, train, state):
        T, S = x.shape[:2]
        rows = x.reshape(T * S) if is_ids(x) else x.reshape(T * S, self.inputs)
        if not train:  # a new array: it may be what the caller gets back
            return self.f(self.dense.normalize(self.dense.matmul(rows)[None], False)).reshape(T, S, self.outputs)
        z = self.dense.matmul(rows, out=self.buffer("Z", (T * S, self.outputs)), train=True)
        bn = []
        z = self.dense.normalize(z[None], True, bn)
        y = self.f_(z, self.buffer("scratch", z.shape)).reshape(T, S, self.outputs)
        self.tape = self.Tape(x=rows, y=y, bn=bn)
        return y

    def backward(self, dy, need_dx):
        T, S = dy.shape[:2]
        x, y, bn = self.tape
        dz = self.delta_through(dy, y, self.buffer("dZ", dy.shape)).reshape(1, T * S, self.outputs)
        dz = self.dense.backward_norm(dz, *bn).reshape(T * S, self.outputs)
        self.dense.accumulate(x, dz)
        if not need_dx:
            return None
        return self.dense.back(dz, out=self.buffer("dX", (T * S, self.inputs))).reshape(T, S, self.inputs)

    def stepper(self, streams, ids_input, state, exact=True):
        """act(x W + b), batchnorm folded; for a linear or slope activation its `loop(x)` as
        LSTM.stepper's (a slope activation in place: the same bits as self.f's)."""
        W, b = self.dense.folded()
        out = np.empty((streams, self.outputs), W.dtype)
        project = projector(W, b, ids_input, out)

        def step(x):
            return self.f(project(x))
        if self.activation == "linear":
            step.loop = lambda x: (project.loop(x), out)
        elif self.activation in activations.SLOPES:
            step.loop = lambda x: (project.loop(x) + [("slope", activations.SLOPES[self.activation], out)], out)
        return step

    def params(self, updates=False):
        return self.dense.params(updates)

    def to_onnx(self, g, x):
        """act(x W + b), batchnorm folded into W and b."""
        return g.act(self.activation, g.dense(x, *self.dense.folded()))
