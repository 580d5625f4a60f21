"""[lstm]: Darknet's LSTM, one layer of `output` units.

    f = σ(wf(h) + uf(x))   i = σ(wi(h) + ui(x))   o = σ(wo(h) + uo(x))   g = tanh(wg(h) + ug(x))
    c' = f⊙c + i⊙g         h' = o⊙tanh(c')

With `peephole=1` (darknetpy's extension; Darknet has no such key) the logistic gates also see
the cell, through vectors pi, pf, po of `output` values (zero at first: a plain LSTM), added after
the sub-layers' batchnorm:

    i = σ(wi(h) + ui(x) + pi⊙c)   f = σ(wf(h) + uf(x) + pf⊙c)   o = σ(wo(h) + uo(x) + po⊙c')

Each w*/u* is a connected sub-layer with its own bias (or batchnorm). The four u's are one stacked
matrix applied to all steps at once; the four w's are one stacked matrix, one matmul per step.
Gate columns are ordered i, f, o, g — Darknet's save order wi, wf, wo, wg / ui, uf, uo, ug.
"""
from typing import NamedTuple

import numpy as np

from .. import kernels
from .base import (Buffers, Recurrent, feature_major_times, halves, id_columns, output_units, rows, step_product,
                   times, transpose_into)
from .connected import Dense, row_sum


class LSTM(Recurrent):
    kind = "lstm"
    state_names = ("h", "c")
    alexeyab_order = ("wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo")

    class Tape(NamedTuple):
        """What forward keeps for backward; the step loop's arrays are feature-major, (·, n, S)."""
        x: np.ndarray    # the input rows (T*S, inputs), or ids (T*S,)
        XU: np.ndarray   # (T, 4n, S) the input projections; backward reuses their memory
        G: np.ndarray    # (T, 4n, S) the activated gates i f o g
        C: np.ndarray    # (T+1, n, S) C[t] the cell before step t
        TC: np.ndarray   # (T, n, S) tanh(c') per step
        Y: np.ndarray    # (T+1, S, n) Y[t] the output h before step t, as rows
        bn: dict         # batchnorm's (x̂, σ, σ+ε) (Dense.normalize): "u": [one], "w": [one per step]

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = output_units(section)
        self.bn = bn = bool(section.int("batch_normalize", 0))
        self.w = Dense(n, n, ["wi", "wf", "wo", "wg"], bn, rng)
        self.u = Dense(inputs, n, ["ui", "uf", "uo", "ug"], bn, rng)
        self.denses = [self.w, self.u]  # save order
        peephole = section.int("peephole", 0)
        if peephole not in (0, 1):
            raise section.error(f"peephole must be 0 or 1, got {peephole}", "peephole")
        self.peep = Peepholes(n) if peephole else None  # saved after the denses

    def describe(self):
        return "lstm+peephole" if self.peep else "lstm"

    def note(self):
        if self.peep:
            return ("peephole=1 is darknetpy's extension, not Darknet's: its pi, pf, po follow the "
                    "eight sub-layers in the weights file, and the C Darknet ignores the key")
        return None

    def slots(self):
        return super().slots() + (self.peep.slots() if self.peep else [])

    def astype(self, dtype):
        super().astype(dtype)
        if self.peep:
            self.peep.astype(dtype)

    def params(self, updates=False):
        out = super().params(updates)
        if self.peep:
            out.update(self.peep.params(updates))
        return out

    def products(self):
        n = self.outputs
        return [(self.inputs, 4 * n, False, True), (n, 4 * n, True, False)]

    def forward(self, x, train):
        T, S = x.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        h0, c0 = self.state(S)
        # The step loop runs feature-major: gates (4n, S), states (n, S). Each gate is then one
        # contiguous block (numpy's ops on column slices of (S, 4n) rows are slower), and BLAS
        # runs W (4n x n) @ h (n x S), its fast shape for few streams. The i f o rows are
        # pre-halved (exact) so one tanh serves all four gates in numpy: σ(z) = (1 + tanh(z/2)) / 2.
        # Each step's elementwise math is one call: kernels.lstm_step.
        half = halves(4 * n, 3 * n)
        bn = {"u": [], "w": []}
        XU = self.project_steps(u, x, u.b + w.b, half, train, bn["u"])  # the recurrent bias comes with it
        WT = self.transposed("WT", w.W, half)
        G = self.buffer("G", (T, 4 * n, S))      # activated gates i f o g
        H = self.buffer("H", (T + 1, n, S))      # H[t] is h before step t
        C = self.buffer("C", (T + 1, n, S))
        TC = self.buffer("TC", (T, n, S))        # tanh(c') per step
        H[0], C[0] = h0.T, c0.T
        step = self.peep.step(S) if self.peep else kernels.get("lstm_step", G)
        recur = step_product(WT, S)
        for t in range(T):
            g = G[t]
            if self.bn:
                np.multiply(w.normalize((H[t].T @ w.W)[None], train, bn["w"])[0].T, half[:, None], out=g)
            else:
                recur(H[t], g)
            step(g, XU[t], C[t], C[t + 1], TC[t], H[t + 1])
        Y = self.buffer("Y", (T + 1, S, n))      # back to (steps, streams, n); Y[t] is h before step t
        Y[0] = h0
        transpose_into(Y[1:], H[1:])
        h0[...], c0[...] = Y[T], C[T].T
        if train:
            self.tape = self.Tape(x=rows(x), XU=XU, G=G, C=C, TC=TC, Y=Y, bn=bn)
        return Y[1:]

    def stepper(self, streams, ids_input, state):
        """One step with the weights prepared once: batchnorm folded in, the two biases summed, the
        i f o columns pre-halved so one tanh serves all four gates, and for a float input [x, h] in
        one matmul. A one-hot input is a row of a table that already holds the bias."""
        n, k = self.outputs, self.inputs
        h, c = state
        (U, bu), (W, bw) = self.u.folded(), self.w.folded()
        half = halves(4 * n, 3 * n)
        if streams > 1 and not self.peep and h.T.flags.c_contiguous and c.T.flags.c_contiguous:
            return self.stepper_feature_major(U * half, (bu + bw) * half, W * half, ids_input, h, c)
        G, ig, tc = (np.empty((streams, m), self.dtype) for m in (4 * n, n, n))
        i, f, o, g, ifo = G[:, :n], G[:, n:2 * n], G[:, 2 * n:3 * n], G[:, 3 * n:], G[:, :3 * n]
        if ids_input:
            table, recur = (U + (bu + bw)) * half, times(W * half)

            def gates(x):
                recur(h, G)
                np.add(G, table[x], out=G)
        else:
            both, b = times(np.concatenate([U, W]) * half), (bu + bw) * half
            xh = np.empty((streams, k + n), self.dtype)

            def gates(x):
                xh[:, :k], xh[:, k:] = x, h
                np.add(both(xh, G), b, out=G)

        if self.peep:
            return self.peep.stepper(gates, G, h, c)

        def step(x):
            gates(x)
            np.tanh(G, out=G)
            np.multiply(ifo, 0.5, out=ifo)
            np.add(ifo, 0.5, out=ifo)
            np.multiply(c, f, out=c)
            np.add(c, np.multiply(i, g, out=ig), out=c)
            np.multiply(o, np.tanh(c, out=tc), out=h)
            return h
        return step

    def stepper_feature_major(self, U, b, W, ids_input, h, c):
        """The step for many streams on feature-major state (h.T, c.T contiguous (n, S)): the gates
        as (4n, S) = Wᵀ hᵀ plus the input part, then all the elementwise maths in one
        kernels.lstm_step call, as the training loop runs it. U (k, 4n), b (4n,), W (n, 4n), with
        the i f o columns pre-halved. Returns h, (S, n), a view of the state."""
        n, S = W.shape[0], h.shape[0]
        hT, cT = h.T, c.T
        WT = np.ascontiguousarray(W.T)
        GT, XU, c1, tc = (np.empty((m, S), self.dtype) for m in (4 * n, 4 * n, n, n))
        lstm_step = kernels.get("lstm_step", GT, XU, cT, c1, tc, hT)
        if ids_input:
            recur = feature_major_times(WT, GT)
            project = id_columns(U + b, XU)  # row x of U + b is x's projection and bias

            def step(x):
                project(x)
                lstm_step(recur(hT), XU, cT, c1, tc, hT)
                np.copyto(cT, c1)
                return h
            return step
        k = U.shape[0]
        both = feature_major_times(np.ascontiguousarray(np.concatenate([U, W]).T), GT)  # (4n, k + n)
        XU[...] = b[:, None]  # the bias, as the kernel's input part
        xh = np.empty((k + n, S), self.dtype)

        def step(x):
            xh[:k], xh[k:] = x.T, hT
            lstm_step(both(xh), XU, cT, c1, tc, hT)
            np.copyto(cT, c1)
            return h
        return step

    def backward(self, dh_out, need_dx):
        T, S = dh_out.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        x, XU, G, C, TC, Y, bn = self.tape
        # Feature-major like the forward loop. Everything in the gate deltas but dh and dc comes
        # from the forward pass's gates, cells and tanh(c'):
        #   di = dc ⊙ g⊙σ'(i)   df = dc ⊙ c⊙σ'(f)   do = dh ⊙ tanh(c')⊙σ'(o)   dg = dc ⊙ i⊙tanh'(g)
        #   dc += dh ⊙ o⊙tanh'(c'),  and dc reaches the step before through f.
        # (Deriving these factors here rather than storing them in the forward pass costs nothing
        # measurable and saves memory: benchmarks/lstm2x512-mem.cfg, benchmarks/README.md.)
        # Each step's deltas are also copied into rows (steps, streams, 4n) while in cache, in the
        # memory of the spent input projections: the weight gradients' matmuls and the one-hot
        # gradient read rows at full speed.
        DH = self.buffer("DH", (T, n, S))
        transpose_into(DH, dh_out)
        d = self.buffer("d", (4 * n, S))
        dG = XU.reshape(T, S, 4 * n)
        dGw = self.buffer("dGw", (T, S, 4 * n)) if self.bn else dG  # through w's batchnorm
        dh = self.zeros((n, S))
        dc = self.zeros((n, S))
        back = self.peep.back(S) if self.peep else kernels.get("lstm_back", d)
        recur = step_product(w.W, S)
        for t in reversed(range(T)):
            back(dh, dc, DH[t], G[t], C[t], TC[t], d)
            transpose_into(dG[t], d)
            if self.bn:
                dGw[t] = w.backward_norm(dG[t][None], bn["w"][t])[0]
            if t:  # the gradient into the previous datum's state is not propagated (truncated BPTT)
                recur(dGw[t].T if self.bn else d, dh)
        w.accumulate(rows(Y[:T]), rows(dGw))
        if self.peep:
            self.peep.accumulate()
        if self.bn:  # (w's bias gradient came with each step's backward_norm)
            du = rows(u.backward_norm(dG, *bn["u"]))
        else:  # w's and u's biases add to the same pre-activations: one sum serves both
            db = row_sum(dG)
            w.db += db
            u.db += db
            du = rows(dG)
        u.accumulate(x, du)
        if not need_dx:
            return None
        return u.back(du, out=self.buffer("dX", (T * S, self.inputs))).reshape(T, S, self.inputs)

    def to_onnx(self, g, x):
        """ONNX's LSTM: Darknet's gates i f o g reordered to ONNX's i o f c, input and recurrent
        biases apart, batchnorm folded into each sub-layer; the peepholes as ONNX's P (i o f), whose
        o sees the new cell as here."""
        n = self.outputs
        (U, bu), (W, bw) = self.u.folded(), self.w.folded()
        iofc = np.r_[0:n, 2 * n:3 * n, n:2 * n, 3 * n:4 * n]
        P = None
        if self.peep:
            p = self.peep.params()
            P = np.concatenate([p["pi"], p["po"], p["pf"]])
        h, states = g.recurrent_op("LSTM", x, U[:, iofc].T, W[:, iofc].T, np.concatenate([bu[iofc], bw[iofc]]),
                                   g.state(self.kind, n, n), P)
        g.set_state(*states)
        return h


class Peepholes(Buffers):
    """pi, pf, po of a peephole LSTM, stacked as p (3n,), with dp its accumulated update (a negative
    gradient, as every d* buffer). They weigh each cell elementwise, so the feature-major step loops
    take them tiled over the streams, (3n, S): forward halved like the i f o rows, back as they are."""

    def __init__(self, n):
        self.n = n
        self.p = np.zeros(3 * n, np.float32)
        self.dp = np.zeros_like(self.p)
        self.dP = None  # a backward pass's deltas of p per stream (3n, S), until `accumulate`

    @property
    def dtype(self):
        return self.p.dtype

    def astype(self, dtype):
        self.p, self.dp = self.p.astype(dtype), self.dp.astype(dtype)

    def params(self, updates=False):
        v, n = (self.dp if updates else self.p), self.n
        return {"pi": v[:n], "pf": v[n:2 * n], "po": v[2 * n:]}

    def slots(self):
        return [(self.p, self.dp, "weights")]  # updated like weights: momentum, decay, Adam

    def tiled(self, name, S, scale):
        """p⊙scale as columns of S equal entries, in the buffer `name`."""
        return np.multiply(self.p[:, None], scale, out=self.buffer(name, (3 * self.n, S)))

    def step(self, S):
        """The forward step function for S streams, with lstm_step's arguments."""
        P = self.tiled("Ph", S, 0.5)
        kernel = kernels.get("lstm_step_peephole", P)
        return lambda g, xu, c, c1, tc, h1: kernel(g, xu, c, c1, tc, h1, P)

    def back(self, S):
        """The backward step function for S streams, with lstm_back's arguments. Each step adds
        its peephole deltas per stream to dP; `accumulate` sums them into dp."""
        P, dP = self.tiled("P", S, 1.0), self.buffer("dP", (3 * self.n, S))
        dP[...] = 0
        self.dP = dP
        kernel = kernels.get("lstm_back_peephole", P, dP)
        return lambda dh, dc, DH, g, c, tc, d: kernel(dh, dc, DH, g, c, tc, d, P, dP)

    def accumulate(self):
        self.dp += self.dP.sum(axis=1)

    def stepper(self, gates, G, h, c):
        """LSTM.stepper's step with the peepholes: `gates(x)` leaves the pre-activations (streams,
        4n) in G, i f o pre-halved; h and c are the state, updated in place."""
        n = self.n
        pi, pf, po = (self.p[k * n:(k + 1) * n] * 0.5 for k in range(3))
        i, f, o, g, i_f = G[:, :n], G[:, n:2 * n], G[:, 2 * n:3 * n], G[:, 3 * n:], G[:, :2 * n]
        s = np.empty_like(c)

        def step(x):
            gates(x)
            np.add(i, np.multiply(c, pi, out=s), out=i)
            np.add(f, np.multiply(c, pf, out=s), out=f)
            np.tanh(i_f, out=i_f)
            np.tanh(g, out=g)
            np.multiply(i_f, 0.5, out=i_f)
            np.add(i_f, 0.5, out=i_f)
            np.multiply(c, f, out=c)
            np.add(c, np.multiply(i, g, out=s), out=c)
            np.add(o, np.multiply(c, po, out=s), out=o)
            np.tanh(o, out=o)
            np.multiply(o, 0.5, out=o)
            np.add(o, 0.5, out=o)
            np.multiply(o, np.tanh(c, out=s), out=h)
            return h
        return step
