"""[lstm]: Darknet's LSTM (no peepholes), one layer of `output` units.

    f = σ(wf(h) + uf(x))   i = σ(wi(h) + ui(x))   o = σ(wo(h) + uo(x))   g = tanh(wg(h) + ug(x))
    c' = f⊙c + i⊙g         h' = o⊙tanh(c')

Each w*/u* is a connected sub-layer with its own bias (or batchnorm). The four u's are one stacked
matrix applied to all steps at once; the four w's are one stacked matrix, one matmul per step.
Gate columns are ordered i, f, o, g — Darknet's save order wi, wf, wo, wg / ui, uf, uo, ug.
"""
import numpy as np

from . import Recurrent, fused, halves, rows, sigmoid_grad, tanh_grad, times, transpose_into
from .connected import Dense, row_sum


class LSTM(Recurrent):
    state_names = ("h", "c")

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = section.int("output", 1)
        self.bn = bn = bool(section.int("batch_normalize", 0))
        self.w = Dense(n, n, ["wi", "wf", "wo", "wg"], bn, rng)
        self.u = Dense(inputs, n, ["ui", "uf", "uo", "ug"], bn, rng)
        self.denses = [self.w, self.u]  # save order

    def forward(self, x, train):
        T, S = x.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        h0, c0 = self.state(S)
        # The step loop runs feature-major: gates (4n, S), states (n, S). Each gate is then one
        # contiguous block (numpy's ops on column slices of (S, 4n) rows are 2-3x slower), and BLAS
        # runs W (4n x n) @ h (n x S), its fast shape for few streams. The i f o rows are
        # pre-halved (exact) so one tanh serves all four gates in numpy: σ(z) = (1 + tanh(z/2)) / 2.
        # Each step's elementwise math is one call: the C kernel when built, else lstm_step below.
        half = halves(4 * n, 3 * n)
        XU = self.project_steps(u, x, u.b + w.b, half, train)  # the recurrent bias comes with it
        WT = self.transposed("WT", w.W, half)
        G = self.buffer("G", (T, 4 * n, S))      # activated gates i f o g
        H = self.buffer("H", (T + 1, n, S))      # H[t] is h before step t
        C = self.buffer("C", (T + 1, n, S))
        TC = self.buffer("TC", (T, n, S))        # tanh(c') per step
        H[0], C[0] = h0.T, c0.T
        step = fused("lstm_step", self.dtype) or lstm_step
        for t in range(T):
            g = G[t]
            if self.bn:
                np.multiply(w.normalize((H[t].T @ w.W)[None], train)[0].T, half[:, None], out=g)
            else:
                np.matmul(WT, H[t], out=g)
            step(g, XU[t], C[t], C[t + 1], TC[t], H[t + 1])
        Y = self.buffer("Y", (T + 1, S, n))      # back to (steps, streams, n); Y[t] is h before step t
        Y[0] = h0
        transpose_into(Y[1:], H[1:])
        h0[...], c0[...] = Y[T], C[T].T
        if train:
            self.x = rows(x)
        return Y[1:]

    def stepper(self, streams, ids_input):
        """One step with the weights prepared once: batchnorm folded in, the two biases summed, the
        i f o columns pre-halved so one tanh serves all four gates, and for a float input [x, h] in
        one matmul. A one-hot input is a row of a table that already holds the bias."""
        n, k = self.outputs, self.inputs
        h, c = self.state(streams)
        (U, bu), (W, bw) = self.u.folded(), self.w.folded()
        half = halves(4 * n, 3 * n)
        G, ig, tc = (np.empty((streams, m), self.dtype) for m in (4 * n, n, n))
        i, f, o, g, ifo = G[:, :n], G[:, n:2 * n], G[:, 2 * n:3 * n], G[:, 3 * n:], G[:, :3 * n]
        if ids_input:
            table, recur = (U + (bu + bw)) * half, times(W * half, streams)

            def gates(x):
                recur(h, G)
                np.add(G, table[x], out=G)
        else:
            both, b = times(np.concatenate([U, W]) * half, streams), (bu + bw) * half
            xh = np.empty((streams, k + n), self.dtype)

            def gates(x):
                xh[:, :k], xh[:, k:] = x, h
                np.add(both(xh, G), b, out=G)

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

    def backward(self, dh_out, need_dx):
        T, S = dh_out.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        G, C, TC, Y = self._buf_G, self._buf_C, self._buf_TC, self._buf_Y
        # Feature-major like the forward loop. Everything in the gate deltas but dh and dc comes
        # from the forward pass's gates, cells and tanh(c'):
        #   di = dc ⊙ g⊙σ'(i)   df = dc ⊙ c⊙σ'(f)   do = dh ⊙ tanh(c')⊙σ'(o)   dg = dc ⊙ i⊙tanh'(g)
        #   dc += dh ⊙ o⊙tanh'(c'),  and dc reaches the step before through f.
        # (Deriving these factors here rather than storing them in the forward pass costs nothing
        # measurable and saves memory: 870 -> 703 MB peak for benchmarks/lstm2x512-mem.cfg.)
        # Each step's deltas are also copied into rows (steps, streams, 4n) while in cache, in the
        # memory of the spent input projections: the weight gradients' matmuls and the one-hot
        # gradient read rows at full speed.
        DH = self.buffer("DH", (T, n, S))
        transpose_into(DH, dh_out)
        d = self.buffer("d", (4 * n, S))
        dG = self._buf_XU.reshape(T, S, 4 * n)
        dGw = self.buffer("dGw", (T, S, 4 * n)) if self.bn else dG  # through w's batchnorm
        dh = self.zeros((n, S))
        dc = self.zeros((n, S))
        back = fused("lstm_back", self.dtype) or lstm_back
        for t in reversed(range(T)):
            back(dh, dc, DH[t], G[t], C[t], TC[t], d)
            transpose_into(dG[t], d)
            if self.bn:
                dGw[t] = w.backward_norm(dG[t][None])[0]
            if t:  # the gradient into the previous datum's state is not propagated (truncated BPTT)
                np.matmul(w.W, dGw[t].T if self.bn else d, out=dh)
        w.accumulate(rows(Y[:T]), rows(dGw))
        if self.bn:  # (w's bias gradient came with each step's backward_norm)
            du = rows(u.backward_norm(dG))
        else:  # w's and u's biases add to the same pre-activations: one sum serves both
            db = row_sum(dG)
            w.db += db
            u.db += db
            du = rows(dG)
        u.accumulate(self.x, du)
        if not need_dx:
            return None
        return u.back(du, out=self.buffer("dX", (T * S, self.inputs))).reshape(T, S, self.inputs)


# The step math in numpy: the reference for darknetpy/_kernels.c's lstm_step and lstm_back, which
# the loops above use instead when built (one pass over memory instead of about twenty).
def lstm_step(g, xu, c, c1, tc, h1):
    """One step's gates in place, g += xu then i f o = (1 + tanh) / 2 (pre-halved rows) and
    g = tanh; c1 = f⊙c + i⊙g, tc = tanh(c1), h1 = o⊙tc."""
    n = c.shape[0]
    g += xu
    np.tanh(g, out=g)
    ifo = g[:3 * n]
    ifo *= 0.5
    ifo += 0.5
    i, f, o, gg = g[:n], g[n:2 * n], g[2 * n:3 * n], g[3 * n:]
    np.multiply(f, c, out=c1)
    c1 += np.multiply(i, gg, out=h1)  # h1 as scratch until its turn
    np.tanh(c1, out=tc)
    np.multiply(o, tc, out=h1)


def lstm_back(dh, dc, DH, g, c, tc, d):
    """One step back from the step's gates g, cell c before it and tc = tanh(c'): dh += DH,
    dc += dh⊙o⊙tanh'(c'), the gate deltas d = [dc⊙g⊙σ'(i), dc⊙c⊙σ'(f), dh⊙tc⊙σ'(o),
    dc⊙i⊙tanh'(g)], then dc *= f (the cell's delta for the step before)."""
    n = dh.shape[0]
    i, f, o, gg = g[:n], g[n:2 * n], g[2 * n:3 * n], g[3 * n:]
    di, df, do, dg = d[:n], d[n:2 * n], d[2 * n:3 * n], d[3 * n:]
    dh += DH
    dc += np.multiply(np.multiply(tanh_grad(tc, out=di), o, out=di), dh, out=di)  # di as scratch
    np.multiply(np.multiply(sigmoid_grad(i, out=di), gg, out=di), dc, out=di)
    np.multiply(np.multiply(sigmoid_grad(f, out=df), c, out=df), dc, out=df)
    np.multiply(np.multiply(sigmoid_grad(o, out=do), tc, out=do), dh, out=do)
    np.multiply(np.multiply(tanh_grad(gg, out=dg), i, out=dg), dc, out=dg)
    dc *= f
