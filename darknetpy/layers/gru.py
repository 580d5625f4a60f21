"""[gru]: Darknet's GRU, one layer of `output` units.

    z = σ(wz(h) + uz(x))   r = σ(wr(h) + ur(x))
    c = act(wh(r⊙h) + uh(x))      act = tanh if tanh=1, else logistic (Darknet's default)
    h' = z⊙h + (1-z)⊙c

Each w*/u* is a connected sub-layer with its own bias (or batchnorm). uz, ur, uh are one stacked
matrix applied to all steps at once; wz, wr are one stacked matrix (one matmul per step); wh reads
r⊙h, so it needs its own matmul per step.
"""
import numpy as np

from . import Recurrent, halves, projector, rows, sigmoid_, sigmoid_grad, tanh_grad
from .connected import Dense


class GRU(Recurrent):
    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = section.int("output", 1)
        bn = section.int("batch_normalize", 0)
        self.tanh = bool(section.int("tanh", 0))
        self.wzr = Dense(n, n, ["wz", "wr"], bn, rng)
        self.wh = Dense(n, n, ["wh"], bn, rng)
        self.u = Dense(inputs, n, ["uz", "ur", "uh"], bn, rng)
        self.denses = [self.wzr, self.wh, self.u]  # save order: wz wr wh uz ur uh

    def _act(self, x):
        return np.tanh(x, out=x) if self.tanh else sigmoid_(x)

    def forward(self, x, train):
        T, S = x.shape[:2]
        n, wzr, wh, u = self.outputs, self.wzr, self.wh, self.u
        (h0,) = self.state(S)
        xu = u.matmul(rows(x), out=self.buffer("xu", (T * S, 3 * n))).reshape(T, S, 3 * n)
        xu = u.normalize(xu, train)
        if not wzr.bn:  # without batchnorm the recurrent biases fold into the input projection
            xu[..., :2 * n] += wzr.b
            xu[..., 2 * n:] += wh.b
        ZR = self.buffer("ZR", (T, S, 2 * n))    # σ gates z, r
        HC = self.buffer("HC", (T, S, n))        # candidate c
        RH = self.buffer("RH", (T, S, n))        # r ⊙ h, the input of wh
        H = self.buffer("H", (T + 1, S, n))
        H[0] = h0
        for t in range(T):
            zr, c = ZR[t], HC[t]
            np.matmul(H[t], wzr.W, out=zr)
            if wzr.bn:
                zr[...] = wzr.normalize(zr[None], train)[0]
            zr += xu[t, :, :2 * n]
            sigmoid_(zr)
            z, r = zr[:, :n], zr[:, n:]
            np.multiply(r, H[t], out=RH[t])
            np.matmul(RH[t], wh.W, out=c)
            if wh.bn:
                c[...] = wh.normalize(c[None], train)[0]
            c += xu[t, :, 2 * n:]
            self._act(c)
            # h' = z⊙h + (1-z)⊙c = c + z⊙(h - c)
            np.subtract(H[t], c, out=H[t + 1])
            H[t + 1] *= z
            H[t + 1] += c
        h0[...] = H[T]
        if train:
            self.x = rows(x)
        return H[1:]

    def stepper(self, streams, ids_input):
        """One step with the weights prepared once: batchnorm folded in, biases summed into the
        input projection, and every logistic column pre-halved so it is (1 + tanh) / 2."""
        n = self.outputs
        (h,) = self.state(streams)
        (U, bu), (Wzr, bzr), (Wh, bh) = self.u.folded(), self.wzr.folded(), self.wh.folded()
        half = halves(3 * n, 2 * n if self.tanh else 3 * n)
        xu, zr, c, rh, a = (np.empty((streams, m), self.dtype) for m in (3 * n, 2 * n, n, n, n))
        project = projector(U * half, (bu + np.concatenate([bzr, bh])) * half, ids_input, xu)
        Wzr, Wh = Wzr * half[:2 * n], Wh * half[2 * n:]
        z, r = zr[:, :n], zr[:, n:]

        def step(x):
            project(x)
            np.add(np.matmul(h, Wzr, out=zr), xu[:, :2 * n], out=zr)
            np.add(np.multiply(np.tanh(zr, out=zr), 0.5, out=zr), 0.5, out=zr)
            np.add(np.matmul(np.multiply(r, h, out=rh), Wh, out=c), xu[:, 2 * n:], out=c)
            np.tanh(c, out=c)
            if not self.tanh:
                np.add(np.multiply(c, 0.5, out=c), 0.5, out=c)
            np.multiply(np.subtract(h, c, out=a), z, out=a)   # h' = c + z⊙(h - c)
            np.add(a, c, out=h)
            return h
        return step

    def backward(self, dh_out, need_dx):
        T, S = dh_out.shape[:2]
        n, wzr, wh, u = self.outputs, self.wzr, self.wh, self.u
        ZR, HC, RH, H = self._buf_ZR, self._buf_HC, self._buf_RH, self._buf_H
        dP = self.buffer("dP", (T, S, 3 * n))    # deltas of the pre-activations z, r, c
        dPzr = self.buffer("dPzr", (T, S, 2 * n)) if wzr.bn else dP[..., :2 * n]
        dPh = self.buffer("dPh", (T, S, n)) if wh.bn else dP[..., 2 * n:]
        dh = self.zeros((S, n))
        a, drh = self.buffer("scratch", (S, n)), self.buffer("drh", (S, n))
        act_grad = tanh_grad if self.tanh else sigmoid_grad
        for t in reversed(range(T)):
            z, r, c, hp = ZR[t, :, :n], ZR[t, :, n:], HC[t], H[t]
            d = dP[t]
            dz, dr, dc = d[:, :n], d[:, n:2 * n], d[:, 2 * n:]
            dh += dh_out[t]
            act_grad(c, out=dc)                    # dc = dh ⊙ (1 - z) ⊙ act'(c)
            np.subtract(1, z, out=a)
            a *= dh
            dc *= a
            if wh.bn:
                dPh[t] = wh.backward_norm(dc[None])[0]
            np.matmul(dPh[t], wh.W.T, out=drh)     # delta of r ⊙ h
            sigmoid_grad(z, out=dz)                # dz = dh ⊙ (h - c) ⊙ σ'(z)
            np.subtract(hp, c, out=a)
            a *= dh
            dz *= a
            sigmoid_grad(r, out=dr)                # dr = drh ⊙ h ⊙ σ'(r)
            np.multiply(drh, hp, out=a)
            dr *= a
            if wzr.bn:
                dPzr[t] = wzr.backward_norm(d[None, :, :2 * n])[0]
            if t:  # truncated BPTT: nothing flows into the previous datum's state
                dh *= z                            # dh_prev = dh ⊙ z + drh ⊙ r + [dz dr] Wzrᵀ
                np.multiply(drh, r, out=a)
                dh += a
                dh += np.matmul(dPzr[t], wzr.W.T, out=a)
        if not wzr.bn:
            wzr.backward_norm(dP[..., :2 * n])
            wh.backward_norm(dP[..., 2 * n:])
        wzr.accumulate(rows(H[:T]), rows(np.ascontiguousarray(dPzr)))
        wh.accumulate(rows(RH), rows(np.ascontiguousarray(dPh)))
        du = rows(u.backward_norm(dP))
        u.accumulate(self.x, du)
        return u.back(du).reshape(T, S, self.inputs) if need_dx else None
