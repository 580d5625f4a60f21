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

What one step computes from the gates' pre-activations and the cell is `lstm_step` below (its C
form in _steps.h), in the training loop and in the stepper alike; `lstm_back` is its way back.
`lstm_loop` and `lstm_loop_back` are the training loops around them, products included (one C call
for all the steps on AVX-512 CPUs: _loop.h).
"""
from typing import NamedTuple

import numpy as np

from .. import kernels
from ..kernels import blocks, sigmoid_grad, tanh_grad
from .base import (Buffers, Recurrent, bf16_flag, halves, loop_product, matvec, output_units, row_product, rows,
                   step_product, transpose_into)
from .connected import Dense, row_sum


def logistic_halved(z):
    """σ in place from a pre-halved pre-activation: σ(z) = (1 + tanh(z/2)) / 2 (numpy's float32 tanh
    is faster than its exp, and this form cannot overflow)."""
    np.tanh(z, out=z)
    z *= 0.5
    z += 0.5


def lstm_step(g, xu, c, c1, tc, h1, P=None):
    """One LSTM step in either layout (kernels.blocks): g (4 blocks) the recurrent part of the gates'
    pre-activations i f o g, i f o pre-halved, xu (4 blocks) the input part, c the cell before; g
    becomes the gates, and c1 = f⊙c + i⊙g, tc = tanh(c1), h1 = o⊙tc (each shaped like c). With
    peepholes P (3 blocks) = [pi pf po]/2 tiled over the streams (halved as the i f o rows are): i
    and f see the cell c before the step, o the cell c1 after it."""
    i, f, o, gg = blocks(g, 4, c)
    g += xu
    if P is not None:
        pi, pf, po = blocks(P, 3, c)
        i += np.multiply(pi, c, out=h1)  # h1 as scratch until its turn
        f += np.multiply(pf, c, out=h1)
    logistic_halved(i)
    logistic_halved(f)
    np.tanh(gg, out=gg)
    np.multiply(f, c, out=c1)
    c1 += np.multiply(i, gg, out=h1)
    if P is not None:
        o += np.multiply(po, c1, out=h1)
    logistic_halved(o)
    np.tanh(c1, out=tc)
    np.multiply(o, tc, out=h1)


def lstm_back(dh, dc, DH, g, c, tc, d, P=None, dP=None):
    """One LSTM step back (feature-major), from what lstm_step left: the gates g (4n, S), the cell
    c (n, S) before the step and tc = tanh(c'). dh += DH, dc += dh⊙o⊙tanh'(c'), the gate deltas
    d (4n, S) = [dc⊙g⊙σ'(i), dc⊙c⊙σ'(f), dh⊙tc⊙σ'(o), dc⊙i⊙tanh'(g)], then dc *= f (the cell's delta
    for the step before). With peepholes P (3n, S) = [pi pf po] tiled: o's delta also reaches the
    cell after the step, dc += do⊙po, and the cell before gets di⊙pi + df⊙pf besides dc⊙f; their
    deltas add to dP (3n, S) += [di⊙c, df⊙c, do⊙c'], c' = f⊙c + i⊙g recomputed from the gates."""
    i, f, o, gg = blocks(g, 4, c)
    di, df, do, dg = blocks(d, 4, c)
    dh += DH
    np.multiply(np.multiply(sigmoid_grad(o, out=do), tc, out=do), dh, out=do)
    dc += np.multiply(np.multiply(tanh_grad(tc, out=di), o, out=di), dh, out=di)  # di, df as scratch
    if P is not None:
        pi, pf, po = blocks(P, 3, c)
        dc += np.multiply(do, po, out=di)
        np.multiply(f, c, out=di)
        di += np.multiply(i, gg, out=df)
        blocks(dP, 3, c)[2][...] += np.multiply(do, di, out=di)
    np.multiply(np.multiply(sigmoid_grad(i, out=di), gg, out=di), dc, out=di)
    np.multiply(np.multiply(sigmoid_grad(f, out=df), c, out=df), dc, out=df)
    np.multiply(np.multiply(tanh_grad(gg, out=dg), i, out=dg), dc, out=dg)
    dc *= f
    if P is not None:
        dPi, dPf, _ = blocks(dP, 3, c)
        scratch = np.empty_like(dh)
        dPi += np.multiply(di, c, out=scratch)
        dPf += np.multiply(df, c, out=scratch)
        dc += np.multiply(di, pi, out=scratch)
        dc += np.multiply(df, pf, out=scratch)


def lstm_loop(WT, XU, G, C, TC, H, Y, P=None, bf16=False):
    """The forward step loop (feature-major, T steps of S streams): for each t, G[t] = WT H[t] (the
    recurrent part of the pre-activations, WT (4n, n) with the i f o rows halved), then
    lstm_step(G[t], XU[t], C[t], C[t+1], TC[t], H[t+1][, P]) and Y[t] = H[t+1]ᵀ, the output as rows
    (the next layer's and the weight gradient's layout). XU, G (T, 4n, S); C, H (T+1, n, S) with
    C[0], H[0] the state before; TC (T, n, S); Y (T, S, n); P (3n, S). bf16 (in training): the
    products with bf16 operands (loop_product), a trailing int as the C form takes it (without P it
    comes in P's place). The C form (_loop.h, AVX-512 CPUs; bf16 on AMX) runs the whole loop in one
    call on its own threads, each owning a slice of the units; its products add in another order, so
    it equals this to float32 rounding."""
    P, bf16 = (None, P) if isinstance(P, int) else (P, bf16)
    T, S = XU.shape[0], XU.shape[2]
    recur, step = loop_product(WT, S, bf16), kernels.get("lstm_step", G, *LSTM.peep_args(P))
    for t in range(T):
        recur(H[t], G[t])
        step(G[t], XU[t], C[t], C[t + 1], TC[t], H[t + 1], *LSTM.peep_args(P))
        transpose_into(Y[t], H[t + 1])


def lstm_loop_back(W, DY, G, C, TC, dG, db, dh, dc, P=None, dP=None, bf16=False):
    """The step loop's way back, from what lstm_loop left: for t from T-1 down, lstm_back(dh, dc,
    DY[t]ᵀ, G[t], C[t], TC[t], d[, P, dP]), the gate deltas d (4n, S) written as rows dG[t] (S, 4n),
    and for t > 0 dh = W d (truncated BPTT: nothing flows into the state before the datum); then
    db = Σ over steps and streams of the deltas (the gates' bias gradient). W (n, 4n), DY (T, S, n)
    the output deltas as rows, TC (T, n, S), G (T, 4n, S), C (T+1, n, S), dG (T, S, 4n), db (4n,);
    dh, dc (n, S) start at zero; bf16 as lstm_loop's. The C form sums db on the threads that own the
    units, step by step."""
    P, bf16 = (None, P) if isinstance(P, int) else (P, bf16)
    T, S = DY.shape[:2]
    d, DH = np.empty(G.shape[1:], G.dtype), np.empty(DY.shape[:0:-1], G.dtype)
    recur, back = loop_product(W, S, bf16), kernels.get("lstm_back", d, *LSTM.peep_args(P, dP))
    for t in reversed(range(T)):
        back(dh, dc, transpose_into(DH, DY[t]), G[t], C[t], TC[t], d, *LSTM.peep_args(P, dP))
        transpose_into(dG[t], d)
        if t:
            recur(d, dh)
    db[...] = row_sum(dG)


kernels.register(lstm_step, lstm_back, lstm_loop, lstm_loop_back)


class LSTM(Recurrent):
    kind = "lstm"
    state_names = ("h", "c")
    recurrent = ("w",)  # dropconnect's: wi wf wo wg
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
        W: np.ndarray    # (n, 4n) w's W as the steps ran it (Recurrent.connected: masked with dropconnect)

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
        self.read_dropconnect(section, rng)

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

    def forward(self, x, train, state):
        T, S = x.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        h0, c0 = state
        # The step loop runs feature-major: gates (4n, S), states (n, S). Each gate is then one
        # contiguous block (numpy's ops on column slices of (S, 4n) rows are slower), and BLAS
        # runs W (4n x n) @ h (n x S), its fast shape for few streams. The i f o rows are
        # pre-halved (exact) so one tanh serves all four gates in numpy: σ(z) = (1 + tanh(z/2)) / 2.
        # Each step's elementwise math is one call: lstm_step.
        half = halves(4 * n, 3 * n)
        bn = {"u": [], "w": []}
        XU = self.project_steps(u, x, u.b + w.b, half, train, bn["u"])  # the recurrent bias comes with it
        (W,) = self.connected(train)
        WT = self.transposed("WT", W, half)
        G = self.buffer("G", (T, 4 * n, S))      # activated gates i f o g
        H = self.buffer("H", (T + 1, n, S))      # H[t] is h before step t
        C = self.buffer("C", (T + 1, n, S))
        TC = self.buffer("TC", (T, n, S))        # tanh(c') per step
        Y = self.buffer("Y", (T + 1, S, n))      # the outputs as rows (steps, streams, n); Y[t] is h before step t
        H[0], C[0], Y[0] = h0.T, c0.T, h0
        P = self.peep.tiled("Ph", S, 0.5) if self.peep else None
        if self.bn:  # each step's product normalized over the streams before its step
            step = kernels.get("lstm_step", G, *self.peep_args(P))
            for t in range(T):
                np.multiply(w.normalize((H[t].T @ W)[None], train, bn["w"])[0].T, half[:, None], out=G[t])
                step(G[t], XU[t], C[t], C[t + 1], TC[t], H[t + 1], *self.peep_args(P))
            transpose_into(Y[1:], H[1:])
        else:
            arrays = (WT, XU, G, C, TC, H, Y[1:], *self.peep_args(P))
            loop = kernels.get("lstm_loop", *arrays)
            loop(*arrays, *bf16_flag(w, train, loop))
        h0[...], c0[...] = Y[T], C[T].T
        if train:
            self.tape = self.Tape(x=rows(x), XU=XU, G=G, C=C, TC=TC, Y=Y, bn=bn, W=W)
        return Y[1:]

    @staticmethod
    def peep_args(*arrays):
        """The peephole arguments of lstm_step / lstm_back: none without peepholes."""
        return arrays if arrays[0] is not None else ()

    def stepper(self, streams, ids_input, state, exact=True):
        """One step on rows (streams, ·), lstm_step as the training loop runs it, with the weights
        prepared once: batchnorm folded in, the two biases summed, the i f o columns pre-halved, and
        for a float input [x, h] in one product (the bias then the kernel's input part). A one-hot
        input's part is a row of a table that already holds the bias. Its `loop(x)`: the same step as
        ops of the one-stream C loop, and the array of its result (generation.Loop)."""
        n, k = self.outputs, self.inputs
        h, c = state
        (U, bu), (W, bw) = self.u.folded(), self.w.folded()
        half = halves(4 * n, 3 * n)
        G, XU = np.empty((streams, 4 * n), self.dtype), np.empty((streams, 4 * n), self.dtype)
        c1, tc = np.empty_like(c), np.empty_like(c)
        P = np.tile(self.peep.p * 0.5, (streams, 1)) if self.peep else None  # rows (streams, 3n)
        step = kernels.get("lstm_step", G, XU, c, c1, tc, h, *self.peep_args(P))
        if ids_input:
            table, recur = (U + (bu + bw)) * half, row_product(W * half, exact)

            def gates(x):
                recur(h, G)
                np.take(table, x, axis=0, out=XU)

            def gate_ops(x):
                return [("gather", table, XU), matvec(recur, h, G)]
        else:
            both, xh = row_product(np.concatenate([U, W]) * half, exact), np.empty((streams, k + n), self.dtype)
            XU[...] = (bu + bw) * half

            def gates(x):
                xh[:, :k], xh[:, k:] = x, h
                both(xh, G)

            def gate_ops(x):
                return [("copy", x, xh[:, :k]), ("copy", h, xh[:, k:]), matvec(both, xh, G)]

        def one(x):
            gates(x)
            step(G, XU, c, c1, tc, h, *self.peep_args(P))
            np.copyto(c, c1)
            return h
        one.loop = lambda x: (gate_ops(x) + [("lstm", G, XU, c, c1, tc, h, *self.peep_args(P)), ("copy", c1, c)], h)
        return one

    def backward(self, dh_out, need_dx):
        T, S = dh_out.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        x, XU, G, C, TC, Y, bn, W = self.tape
        # Feature-major like the forward loop. Everything in the gate deltas but dh and dc comes
        # from the forward pass's gates, cells and tanh(c'):
        #   di = dc ⊙ g⊙σ'(i)   df = dc ⊙ c⊙σ'(f)   do = dh ⊙ tanh(c')⊙σ'(o)   dg = dc ⊙ i⊙tanh'(g)
        #   dc += dh ⊙ o⊙tanh'(c'),  and dc reaches the step before through f.
        # (Deriving these factors here rather than storing them in the forward pass costs nothing
        # measurable and saves memory: benchmarks/lstm2x512-mem.cfg, benchmarks/README.md.)
        # Each step's deltas are also copied into rows (steps, streams, 4n) while in cache, in the
        # memory of the spent input projections: the weight gradients' matmuls and the one-hot
        # gradient read rows at full speed. The loop reads dh_out as the layer above left it, rows.
        dG = XU.reshape(T, S, 4 * n)
        dGw = self.buffer("dGw", (T, S, 4 * n)) if self.bn else dG  # through w's batchnorm
        dh = self.zeros((n, S))
        dc = self.zeros((n, S))
        P, dP = (self.peep.tiled("P", S, 1.0), self.peep.deltas(S)) if self.peep else (None, None)
        peep = self.peep_args(P, dP)
        if self.bn:  # each step's deltas back through w's batchnorm before its product
            d, DH = self.buffer("d", (4 * n, S)), transpose_into(self.buffer("DH", (T, n, S)), dh_out)
            back, recur = kernels.get("lstm_back", d, *peep), step_product(W, S)
            for t in reversed(range(T)):
                back(dh, dc, DH[t], G[t], C[t], TC[t], d, *peep)
                transpose_into(dG[t], d)
                dGw[t] = w.backward_norm(dG[t][None], bn["w"][t])[0]
                if t:  # the gradient into the previous datum's state is not propagated (truncated BPTT)
                    recur(dGw[t].T, dh)
        else:  # the loop sums the bias gradient too: w's and u's biases add to the same pre-activations
            db = self.buffer("db", (4 * n,))
            arrays = (W, dh_out, G, C, TC, dG, db, dh, dc, *peep)
            loop = kernels.get("lstm_loop_back", *arrays)
            loop(*arrays, *bf16_flag(w, True, loop))
            w.db += db
            u.db += db
        self.accumulate(w, rows(Y[:T]), rows(dGw))
        if self.peep:
            self.peep.accumulate()
        if self.bn:  # (w's bias gradient came with each step's backward_norm)
            du = rows(u.backward_norm(dG, *bn["u"]))
        else:
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
        """p⊙scale as columns of S equal entries (3n, S), the training loops' P, in the buffer `name`."""
        return np.multiply(self.p[:, None], scale, out=self.buffer(name, (3 * self.n, S)))

    def deltas(self, S):
        """dP (3n, S), zeroed: a backward pass's peephole deltas per stream, until `accumulate`."""
        self.dP = self.buffer("dP", (3 * self.n, S))
        self.dP[...] = 0
        return self.dP

    def accumulate(self):
        self.dp += self.dP.sum(axis=1)
