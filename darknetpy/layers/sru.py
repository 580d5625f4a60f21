"""[sru]: the Simple Recurrent Unit (Lei, Zhang, Wang, Dai and Artzi, EMNLP 2018), darknetpy's
extension: Darknet has no such layer. Per step, with x the layer's input and c the cell before:

    x~ = w(x)                      f  = σ(wf(x) + vf⊙c)         r = σ(wr(x) + vr⊙c)
    c' = f⊙c + (1 − f)⊙x~          h' = r⊙g(c') + (1 − r)⊙s     s = x if inputs == output else ws(x)

w, wf, wr (and ws) are linear connected sub-layers with their own bias (or batchnorm); g is the
layer's activation (linear by default, as in the paper); vf, vr are vectors of `output` values,
zero at first and updated like weights. The output is h', the carried state c'.

Every matrix reads only the layer's input, so the sub-layers are one stacked `Dense` and all
their products over all steps are one matmul (and one per weight gradient backward): the large,
fast kind. What is sequential is elementwise: f, r and c' over the steps, one call of
`sru_step` (its C form loops over the steps, each thread of the loops' team all steps of its share
of the streams, and back of the units; the numpy reference below is what it must equal), and back,
`sru_back`. h' does not feed back: for g linear or tanh the same loop writes it (and its
delta back), for any other g the layer computes it for all steps at once after. The arrays are
rows, (T, S, ·), as the matmul makes them: no transposes.

`.weights` order: w, wf, wr, [ws], then vf, vr (`output` float32 each).
"""
from typing import NamedTuple

import numpy as np

from .. import activations, kernels
from .base import Recurrent, output_units, projector, rows
from .connected import Dense, is_ids


def sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) = inf for z below about -88 gives exactly 0, the limit
        return 1 / (1 + np.exp(-z))


KERNEL_G = ("linear", "tanh")  # the g that sru_step and sru_back apply themselves, their `g` the index


def one_hot(s, n, dtype):
    """The highway s as rows (T, S, n): s itself, or the one-hot rows of ids (T, S)."""
    return (np.arange(n) == s[..., None]).astype(dtype) if is_ids(s) else s


def sru_step(Z, v, C, H=None, s=None, W=None, g=0):
    """The recurrence of T steps. Z (T, S, k n), k = 3 or 4: per step and stream the sub-layers'
    products x~ | wf(x) | wr(x) [| ws(x)], n each, without their biases; v (2n + k n,) = vf | vr |
    the biases (zero where batchnorm or the input's table added them); C (T+1, S, n), C[0] the cell
    before the first step. Adds the biases to Z, writes C[t+1] = c' and turns the wf, wr blocks
    into the gates: f = σ(wf(x) + vf⊙c), r = σ(wr(x) + vr⊙c), c' = f⊙c + (1 − f)⊙x~. With H
    (T, S, n) also the output h' = r⊙(g(c') − s) + s for g = KERNEL_G[g], s the ws block of Z
    (k = 4) or s (k = 3): rows (T, S, n), or the ids (T, S) of one-hot rows, with which W (n, k n)
    may come: the products are then W's rows at the ids, written into Z here (the C form reads
    each from cache as it goes)."""
    n = C.shape[2]
    vf, vr = v[:n], v[n:2 * n]
    if W is not None:
        np.take(W, s.reshape(-1), axis=0, out=Z.reshape(-1, Z.shape[2]))
    Z += v[2 * n:]
    for t in range(Z.shape[0]):
        z, c = Z[t], C[t]
        x, f, r = z[:, :n], z[:, n:2 * n], z[:, 2 * n:3 * n]
        f[...] = sigmoid(f + vf * c)
        r[...] = sigmoid(r + vr * c)
        C[t + 1] = f * c + (1 - f) * x
    if H is not None:
        s = Z[..., 3 * n:] if s is None else one_hot(s, n, Z.dtype)
        np.subtract(np.tanh(C[1:]) if g else C[1:], s, out=H)
        H *= Z[..., 2 * n:3 * n]
        H += s


def sru_back(dZ, Z, C, v, dv, dh=None, s=None, ds=None, g=0):
    """sru_step back, Z and C as sru_step left them, v as it took it. dZ (T, S, k n) comes in
    holding the delta reaching c' from h' in its x~ block and the delta of r in its wr block; or,
    given dh (T, S, n) the delta of h' for g = KERNEL_G[g], they are made here first:
    δr = dh⊙(g(c') − s), δc' = dh⊙r⊙g'(c'), and δs = dh − dh⊙r goes to dZ's ws block (k = 4, s from
    Z) or to ds (k = 3, s given as rows). Ids have no delta: in ds's place then may come dW
    (n, k n), the one-hot input's weight gradient, += dZ's rows at their ids (Dense.accumulate's;
    the C form adds each row while it is in cache, last step first), and dZ may then hold 2 steps,
    step t's rows at t mod 2 (nothing after reads them; the first two steps are left in it). Then
    the deltas of x~, wf(x) and wr(x) replace them. The delta of c' is completed step by step,
    last first: δc = δc'⊙f + δwf⊙vf + δwr⊙vr reaches the step before's c' (none reaches the cell
    before the datum: truncated BPTT). dv (2n + k n,) += the sums over steps and streams
    [δwf⊙c, δwr⊙c, dZ] (vf's, vr's and the sub-layers' biases' gradients)."""
    if dZ.shape[0] < Z.shape[0]:  # 2 steps with dW: all of them here, the first two kept
        full = np.empty_like(Z)
        sru_back(full, Z, C, v, dv, dh, s, ds, g)
        dZ[...] = full[:2]
        return
    n = C.shape[2]
    vf, vr = v[:n], v[n:2 * n]
    ids, dW = (s, ds) if s is not None and is_ids(s) else (None, None)
    if dh is not None:
        s, ds = (Z[..., 3 * n:], dZ[..., 3 * n:]) if s is None else (one_hot(s, n, Z.dtype), ds)
        G = np.tanh(C[1:]) if g else C[1:]
        np.multiply(dh, G - s, out=dZ[..., 2 * n:3 * n])
        np.multiply(dh, Z[..., 2 * n:3 * n], out=dZ[..., :n])
        if ds is not None and ids is None:
            np.subtract(dh, dZ[..., :n], out=ds)  # dh − dh⊙r
        if g:
            dZ[..., :n] *= 1 - G * G
    for t in reversed(range(Z.shape[0])):
        z, d, c = Z[t], dZ[t], C[t]
        x, f, r = z[:, :n], z[:, n:2 * n], z[:, 2 * n:3 * n]
        dc1 = d[:, :n].copy()
        df = dc1 * (c - x) * f * (1 - f)
        dr = d[:, 2 * n:3 * n] * r * (1 - r)
        d[:, :n] = dc1 * (1 - f)
        d[:, n:2 * n] = df
        d[:, 2 * n:3 * n] = dr
        dv[:n] += (df * c).sum(0)
        dv[n:2 * n] += (dr * c).sum(0)
        if t:
            dZ[t - 1, :, :n] += dc1 * f + df * vf + dr * vr
    dv[2 * n:] += dZ.sum(axis=(0, 1))
    if dW is not None:
        kernels.onehot_grad(dW, ids.reshape(-1), dZ.reshape(-1, dZ.shape[2]))


kernels.register(sru_step, sru_back)


def floats(arrays):
    """The float arrays of a kernel call, which pick its backend (`kernels.get`): all but ids."""
    return [a for a in arrays if not is_ids(a)]


class SRU(Recurrent):
    kind = "sru"
    state_names = ("c",)

    class Tape(NamedTuple):
        """What forward keeps for backward; all rows, (steps, streams, ·)."""
        x: np.ndarray    # the input rows (T*S, inputs), or ids (T*S,)
        Z: np.ndarray    # (T, S, k n) x~ | f | r [| ws(x)], the gates activated by sru_step
        C: np.ndarray    # (T+1, S, n) C[t] the cell before step t
        G: np.ndarray    # (T, S, n) g(c') for a g not in KERNEL_G, else None
        s: np.ndarray    # (T, S, n) the highway's s: ws(x), or x; or the ids (T, S) of one-hot x
        v: np.ndarray    # (2n + k n,) vf | vr | the biases sru_step added
        bn: list         # batchnorm's (x̂, σ, σ+ε) (Dense.normalize), or nothing without batchnorm

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = output_units(section)
        self.activation = section.str("activation", "linear")
        activations.get(self.activation, section)  # an unknown name is an error here
        self.f_ = activations.in_place(self.activation)
        self.g = KERNEL_G.index(self.activation) if self.activation in KERNEL_G else None  # None: numpy's
        self.delta_through = activations.delta_through(self.activation)
        self.ws = inputs != n
        names = ["w", "wf", "wr"] + (["ws"] if self.ws else [])
        self.dense = Dense(inputs, n, names, section.int("batch_normalize", 0), rng)
        self.denses = [self.dense]
        self.v = np.zeros(2 * n, np.float32)  # vf | vr, saved after the sub-layers
        self.dv = np.zeros_like(self.v)
        self.read_dropconnect(section, rng)  # an error: no recurrent matrix

    def describe(self):
        return self.activation

    def note(self):
        return ("[sru] is darknetpy's extension, not Darknet's: the C Darknet has no such layer, "
                "and this weights file is darknetpy's")

    def products(self):
        return [(self.inputs, len(self.dense.names) * self.outputs, False, True)]

    def slots(self):
        return super().slots() + [(self.v, self.dv, "weights")]  # updated like weights

    def astype(self, dtype):
        super().astype(dtype)
        self.v, self.dv = self.v.astype(dtype), self.dv.astype(dtype)

    def params(self, updates=False):
        out, v, n = super().params(updates), (self.dv if updates else self.v), self.outputs
        out.update(vf=v[:n], vr=v[n:])
        return out

    def vectors(self, biases):
        """sru_step's v: vf | vr | `biases` (the sub-layers' biases, or 0)."""
        n = self.outputs
        v = self.buffer("v", (2 * n + len(self.dense.names) * n,))
        v[:2 * n], v[2 * n:] = self.v, biases
        return v

    def highway(self, x, Z):
        """s for every step, (T, S, n): the ws block of Z, or x itself. One-hot ids stay ids (T, S)
        for a g in KERNEL_G, whose h' the kernels compute reading them as such; any other g gets
        their rows, for numpy's h'."""
        n = self.outputs
        if self.ws:
            return Z[..., 3 * n:]
        if is_ids(x) and self.g is not None:
            return x.astype(np.int64, copy=False)
        if is_ids(x):  # zeros and a one per row: a gather from np.eye wrote every element twice as slowly
            s = self.buffer("onehot", (*x.shape, n))
            s.fill(0)
            np.put(s, np.arange(x.size) * n + x.ravel(), 1)
            return s
        return x

    def fused(self, x):
        """Whether the kernels do W's part for one-hot ids x: sru_step gathers their rows of W as it
        goes and sru_back adds the deltas' rows to dW, each row from cache. For a g in KERNEL_G (the
        kernels then read s as ids), without ws or batchnorm (which needs all of Z first)."""
        return is_ids(x) and self.g is not None and not self.ws and not self.dense.bn

    def forward(self, x, train, state):
        T, S = x.shape[:2]
        n, d = self.outputs, self.dense
        (c0,) = state
        # All sub-layers, all steps: one matmul into rows (T*S, k n) (a row gather for one-hot ids,
        # or sru_step's); batchnorm per step over the streams. Without it the biases come with sru_step.
        Z = self.buffer("Z", (T * S, len(d.names) * n))
        table = (d.W,) if self.fused(x) else ()
        if not table:
            d.matmul(rows(x), out=Z, train=train)
        Z = Z.reshape(T, S, -1)
        bn = []
        if d.bn:
            Z = d.normalize(Z, train, bn)
        v = self.vectors(0 if d.bn else d.b)
        C = self.buffer("C", (T + 1, S, n))
        C[0] = c0
        H = self.buffer("H", (T, S, n))
        s = self.highway(x, Z)
        out = (H,) + (() if self.ws else (s,)) if self.g is not None else ()  # h' comes with it
        kernels.get("sru_step", Z, v, C, *floats(out), *table)(Z, v, C, *out, *table, g=self.g or 0)
        c0[...] = C[T]
        G = None
        if not out:  # h' = s + r⊙(g(c') − s)
            G = self.buffer("G", (T, S, n))
            np.copyto(G, C[1:])
            G = self.f_(G, self.buffer("scratch", (T, S, n)))
            np.multiply(np.subtract(G, s, out=H), Z[..., 2 * n:3 * n], out=H)
            H += s
        if train:
            self.tape = self.Tape(x=rows(x), Z=Z, C=C, G=G, s=s, v=v, bn=bn)
        return H

    def backward(self, dh, need_dx):
        T, S = dh.shape[:2]
        n, d = self.outputs, self.dense
        x, Z, C, G, s, v, bn = self.tape
        # dZ: all steps, but for fused ids, where nothing reads it after sru_back, its last two
        dZ = self.buffer("dZ", (2, S, Z.shape[2]) if self.fused(x) and T > 2 else Z.shape)
        # δs = δh⊙(1 − r), none for ids (nothing takes it: they are the network's input)
        ds = dZ[..., 3 * n:] if self.ws else None if is_ids(s) else self.buffer("ds", (T, S, n))
        highway = () if self.ws else (s, d.dW) if self.fused(x) else (s,) if ds is None else (s, ds)
        sums = self.buffer("sums", (2 * n + Z.shape[2],))  # the gradients of vf, vr and the biases
        sums[...] = 0
        back = kernels.get("sru_back", dZ, Z, C, v, sums, dh, *floats(highway))
        if self.g is not None:  # δr, δc' and δs come with the recurrence, in the kernel
            back(dZ, Z, C, v, sums, dh, *highway, g=self.g)
        else:
            dc1, dr, r = dZ[..., :n], dZ[..., 2 * n:3 * n], Z[..., 2 * n:3 * n]
            np.multiply(np.subtract(G, s, out=dr), dh, out=dr)      # δr = δh⊙(g(c') − s)
            np.multiply(dh, r, out=dc1)                              # δg(c') = δh⊙r
            np.subtract(dh, dc1, out=ds)
            np.copyto(dc1, self.delta_through(dc1, G, self.buffer("dG", (T, S, n))))  # δc' = δg(c')⊙g'(c')
            back(dZ, Z, C, v, sums)
        self.dv += sums[:2 * n]
        if d.bn:
            dz = rows(d.backward_norm(dZ, *bn))
        else:
            d.db += sums[2 * n:]
            dz = rows(dZ)
        if not self.fused(x):
            d.accumulate(x, dz)
        if not need_dx:
            return None
        dx = d.back(dz, out=self.buffer("dX", (T * S, self.inputs))).reshape(T, S, self.inputs)
        if not self.ws:
            kernels.get("add", dx, ds)(dx, ds)
        return dx

    def stepper(self, streams, ids_input, state, exact=True):
        """One step with the sub-layers' weights prepared once (batchnorm folded in; a one-hot input
        is a row of a table holding the bias), sru_step for T = 1, `state` updated in place."""
        n, (c,) = self.outputs, state
        W, b = self.dense.folded()
        z = np.empty((streams, W.shape[1]), W.dtype)
        project = projector(W, b, ids_input, z)
        Z, C, H = z[None], np.empty((2, streams, n), W.dtype), np.empty((1, streams, n), W.dtype)
        v = np.concatenate([self.v, np.zeros_like(b)])  # (the projection added the biases)
        h, r, scratch = H[0], z[:, 2 * n:3 * n], np.empty((streams, n), W.dtype)
        eye = np.eye(n, dtype=W.dtype) if ids_input and not self.ws else None
        linear = self.activation == "linear"

        def step(x):
            project(x)
            s = z[:, 3 * n:] if self.ws else eye[x] if eye is not None else np.ascontiguousarray(x)
            C[0] = c
            out = (H,) + (() if self.ws else (s[None],)) if linear else ()  # h' comes with it
            kernels.get("sru_step", Z, v, C, *out)(Z, v, C, *out)
            c[...] = C[1]
            if not linear:
                np.subtract(self.f_(C[1], scratch), s, out=h)
                np.multiply(h, r, out=h)
                np.add(h, s, out=h)
            return h
        return step

    def to_onnx(self, g, x):
        """The sub-layers over all steps at once (batchnorm folded), f, r and c' through g.scan,
        then h' = r⊙g(c') + (1 − r)⊙s for all steps."""
        n, k = self.outputs, 4 if self.ws else 3
        blocks = g.op("Split", g.dense(x, *self.dense.folded()), g.const([n] * k), axis=-1, outputs=k)
        s = blocks[3] if self.ws else g.floats(x)
        vf, vr = g.const(self.v[:n]), g.const(self.v[n:])

        def step(g, xs, states):
            (x_t, f_t, r_t), (c,) = xs, states
            f = g.op("Sigmoid", g.op("Add", f_t, g.op("Mul", vf, c)))
            r = g.op("Sigmoid", g.op("Add", r_t, g.op("Mul", vr, c)))
            c1 = g.op("Add", g.op("Mul", f, c), g.op("Mul", g.op("Sub", g.scalar(1), f), x_t))
            return [c1], [c1, r]
        (c,), (C, R) = g.scan(step, blocks[:3], g.state(self.kind, n))
        g.set_state(c)
        return g.op("Add", g.op("Mul", R, g.act(self.activation, C)), g.op("Mul", g.op("Sub", g.scalar(1), R), s))
