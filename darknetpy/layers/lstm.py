"""[lstm]: Darknet's LSTM (no peepholes), one layer of `output` units.

    f = σ(wf(h) + uf(x))   i = σ(wi(h) + ui(x))   o = σ(wo(h) + uo(x))   g = tanh(wg(h) + ug(x))
    c' = f⊙c + i⊙g         h' = o⊙tanh(c')

Each w*/u* is a connected sub-layer with its own bias (or batchnorm). The four u's are one stacked
matrix applied to all steps at once; the four w's are one stacked matrix, one matmul per step.
Gate columns are ordered i, f, o, g — Darknet's save order wi, wf, wo, wg / ui, uf, uo, ug.
"""
import numpy as np

from . import Recurrent, halves, rows, sigmoid_grad, tanh_grad
from .connected import Dense


class LSTM(Recurrent):
    state_names = ("h", "c")

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = section.int("output", 1)
        bn = section.int("batch_normalize", 0)
        self.w = Dense(n, n, ["wi", "wf", "wo", "wg"], bn, rng)
        self.u = Dense(inputs, n, ["ui", "uf", "uo", "ug"], bn, rng)
        self.denses = [self.w, self.u]  # save order

    def forward(self, x, train):
        T, S = x.shape[:2]
        n, w, u = self.outputs, self.w, self.u
        h0, c0 = self.state(S)
        # The i f o columns of both matrices and biases are pre-halved so one tanh serves all four
        # gates: σ(z) = (1 + tanh(z/2)) / 2, and halving is exact. Input projections of every step
        # in one matmul; without batchnorm both biases fold in there.
        half = halves(4 * n, 3 * n)
        W = w.W * half
        if u.bn:
            xu = u.normalize(u.matmul(rows(x)).reshape(T, S, 4 * n), train) * half
        else:
            xu = u.matmul(rows(x), W=u.W * half, out=self.buffer("xu", (T * S, 4 * n))).reshape(T, S, 4 * n)
        loose = [d.b for d in (u, w) if not d.bn]  # the biases no batchnorm applies
        if loose:
            xu += sum(loose) * half
        G = self.buffer("G", (T, S, 4 * n))      # activated gates i f o g
        H = self.buffer("H", (T + 1, S, n))      # H[t] is h before step t
        C = self.buffer("C", (T + 1, S, n))
        TC = self.buffer("TC", (T, S, n))        # tanh(c') per step
        if train:  # the factors of the gate deltas that backward needs, made while G[t] is in cache
            P = self.buffer("P", (T, S, 4 * n))  # di df do dg = [dc dc dh dc] ⊙ P
            Pc = self.buffer("Pc", (T, S, n))    # dc += dh ⊙ Pc
        H[0], C[0] = h0, c0
        ig = self.buffer("ig", (S, n))
        for t in range(T):
            g = G[t]
            if w.bn:
                np.multiply(w.normalize(np.matmul(H[t], w.W)[None], train)[0], half, out=g)
            else:
                np.matmul(H[t], W, out=g)
            g += xu[t]
            np.tanh(g, out=g)
            ifo = g[:, :3 * n]
            ifo *= 0.5
            ifo += 0.5
            i, f, o, gg = g[:, :n], g[:, n:2 * n], g[:, 2 * n:3 * n], g[:, 3 * n:]
            np.multiply(f, C[t], out=C[t + 1])
            C[t + 1] += np.multiply(i, gg, out=ig)
            np.tanh(C[t + 1], out=TC[t])
            np.multiply(o, TC[t], out=H[t + 1])
            if train:
                p = P[t]
                sigmoid_grad(ifo, out=p[:, :3 * n])     # σ'(i) σ'(f) σ'(o)
                p[:, :n] *= gg                          # g ⊙ σ'(i)
                p[:, n:2 * n] *= C[t]                   # c ⊙ σ'(f)
                p[:, 2 * n:3 * n] *= TC[t]              # tanh(c') ⊙ σ'(o)
                np.multiply(tanh_grad(gg, out=p[:, 3 * n:]), i, out=p[:, 3 * n:])  # i ⊙ tanh'(g)
                np.multiply(tanh_grad(TC[t], out=Pc[t]), o, out=Pc[t])          # o ⊙ tanh'(c')
        h0[...], c0[...] = H[T], C[T]
        if train:
            self.x = rows(x)
        return H[1:]

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
            table, W = (U + (bu + bw)) * half, W * half

            def gates(x):
                np.matmul(h, W, out=G)
                np.add(G, table[x], out=G)
        else:
            UW, b = np.concatenate([U, W]) * half, (bu + bw) * half
            xh = np.empty((streams, k + n), self.dtype)

            def gates(x):
                xh[:, :k], xh[:, k:] = x, h
                np.add(np.matmul(xh, UW, out=G), b, out=G)

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
        G, H = self._buf_G, self._buf_H
        # Everything in the gate deltas but dh and dc came from the forward pass (P, Pc):
        #   di = dc ⊙ g⊙σ'(i)   df = dc ⊙ c⊙σ'(f)   do = dh ⊙ tanh(c')⊙σ'(o)   dg = dc ⊙ i⊙tanh'(g)
        #   dc += dh ⊙ o⊙tanh'(c'),  and dc reaches the step before through f.
        P, Pc, f = self._buf_P, self._buf_Pc, G[..., n:2 * n]
        dG = self.buffer("dG", (T, S, 4 * n))    # deltas of the gate pre-activations
        dGw = self.buffer("dGw", (T, S, 4 * n)) if w.bn else dG
        dh = self.zeros((S, n))
        dc = self.zeros((S, n))
        a = self.buffer("scratch", (S, n))
        for t in reversed(range(T)):
            dh += dh_out[t]
            dc += np.multiply(dh, Pc[t], out=a)
            d = dG[t]
            np.multiply(P[t].reshape(S, 4, n), dc[:, None, :], out=d.reshape(S, 4, n))
            np.multiply(P[t, :, 2 * n:3 * n], dh, out=d[:, 2 * n:3 * n])
            dc *= f[t]
            if w.bn:
                dGw[t] = w.backward_norm(d[None])[0]
            if t:  # the gradient into the previous datum's state is not propagated (truncated BPTT)
                np.matmul(dGw[t], w.W.T, out=dh)
        if not w.bn:
            w.backward_norm(dG)
        w.accumulate(rows(H[:T]), rows(dGw))
        du = rows(u.backward_norm(dG))
        u.accumulate(self.x, du)
        return u.back(du).reshape(T, S, self.inputs) if need_dx else None
