"""[gru]: Darknet's GRU, one layer of `output` units.

    z = σ(wz(h) + uz(x))   r = σ(wr(h) + ur(x))
    c = act(wh(r⊙h) + uh(x))      act = tanh if tanh=1, else logistic (Darknet's default)
    h' = z⊙h + (1-z)⊙c

Each w*/u* is a connected sub-layer with its own bias (or batchnorm). uz, ur, uh are one stacked
matrix applied to all steps at once; wz, wr are one stacked matrix (one matmul per step); wh reads
r⊙h, so it needs its own matmul per step.
"""
from typing import NamedTuple

import numpy as np

from .. import kernels
from .base import (Recurrent, feature_major_times, halves, id_columns, output_units, projector, rows,
                   step_product, times, transpose_into)
from .connected import Dense, row_sum


class GRU(Recurrent):
    kind = "gru"
    alexeyab_order = ("uz", "ur", "uh", "wz", "wr", "wh")

    class Tape(NamedTuple):
        """What forward keeps for backward; the step loop's arrays are feature-major, (·, n, S)."""
        x: np.ndarray        # the input rows (T*S, inputs), or ids (T*S,)
        XU: np.ndarray       # (T, 3n, S) the input projections; backward reuses their memory
        ZR: np.ndarray       # (T, 2n, S) the gates z, r
        P: np.ndarray        # (T, 3n, S) the factors of the deltas (kernels.gru_step)
        RHrows: np.ndarray   # (T, S, n) r⊙h as rows, the input of wh
        Y: np.ndarray        # (T+1, S, n) Y[t] the output h before step t, as rows
        bn: dict             # batchnorm's (x̂, σ, σ+ε) (Dense.normalize): "u": [one], "wzr", "wh": [one per step]

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = output_units(section)
        self.bn = bn = bool(section.int("batch_normalize", 0))
        self.tanh = bool(section.int("tanh", 0))
        self.wzr = Dense(n, n, ["wz", "wr"], bn, rng)
        self.wh = Dense(n, n, ["wh"], bn, rng)
        self.u = Dense(inputs, n, ["uz", "ur", "uh"], bn, rng)
        self.denses = [self.wzr, self.wh, self.u]  # save order: wz wr wh uz ur uh

    def describe(self):
        return "tanh" if self.tanh else "logistic"

    def products(self):
        n = self.outputs
        return [(self.inputs, 3 * n, False, True), (n, 2 * n, True, False), (n, n, True, False)]

    def forward(self, x, train):
        T, S = x.shape[:2]
        n, wzr, wh, u = self.outputs, self.wzr, self.wh, self.u
        (h0,) = self.state(S)
        # The step loop runs feature-major, as lstm.py explains: z r (2n, S), c h (n, S). Every
        # logistic row is pre-halved so it is (1 + tanh) / 2, one tanh and two exact affine ops.
        # The elementwise math around the two matmuls: kernels.gru_zr and kernels.gru_step.
        half = halves(3 * n, 2 * n if self.tanh else 3 * n)
        hc = half[2 * n]                         # the candidate's factor: 0.5 logistic, 1 tanh
        bn = {"u": [], "wzr": [], "wh": []}
        XU = self.project_steps(u, x, u.b + np.concatenate([wzr.b, wh.b]), half, train, bn["u"])  # with the recurrent biases
        WzrT, WhT = self.transposed("WzrT", wzr.W, half[:2 * n]), self.transposed("WhT", wh.W, half[2 * n:])
        ZR = self.buffer("ZR", (T, 2 * n, S))    # σ gates z, r
        HC = self.buffer("HC", (T, n, S))        # candidate c
        RH = self.buffer("RH", (T, n, S))        # r ⊙ h, the input of wh
        if train:                                # ... and as rows for wh's weight gradient
            RHrows = self.buffer("RHrows", (T, S, n))
        H = self.buffer("H", (T + 1, n, S))      # H[t] is h before step t
        if train:  # dz = dh ⊙ P[z]   dr = drh ⊙ P[r]   dc = dh ⊙ P[c], for backward
            P = self.buffer("P", (T, 3 * n, S))
        H[0] = h0.T
        gates, step = kernels.get("gru_zr", ZR), kernels.get("gru_step", ZR)
        recur_zr, recur_h = step_product(WzrT, S), step_product(WhT, S)
        for t in range(T):
            zr, c, h = ZR[t], HC[t], H[t]
            if self.bn:
                np.multiply(wzr.normalize((h.T @ wzr.W)[None], train, bn["wzr"])[0].T, np.float32(0.5), out=zr)
            else:
                recur_zr(h, zr)
            gates(zr, XU[t, :2 * n], h, RH[t])
            if self.bn:
                np.multiply(wh.normalize((RH[t].T @ wh.W)[None], train, bn["wh"])[0].T, hc, out=c)
            else:
                recur_h(RH[t], c)
            if train:
                step(self.tanh, c, XU[t, 2 * n:], zr, h, H[t + 1], P[t])
                transpose_into(RHrows[t], RH[t])
            else:
                step(self.tanh, c, XU[t, 2 * n:], zr, h, H[t + 1])
        Y = self.buffer("Y", (T + 1, S, n))      # back to (steps, streams, n); Y[t] is h before step t
        Y[0] = h0
        transpose_into(Y[1:], H[1:])
        h0[...] = Y[T]
        if train:
            self.tape = self.Tape(x=rows(x), XU=XU, ZR=ZR, P=P, RHrows=RHrows, Y=Y, bn=bn)
        return Y[1:]

    def stepper(self, streams, ids_input, state):
        """One step with the weights prepared once: batchnorm folded in, biases summed into the
        input projection, and every logistic column pre-halved so it is (1 + tanh) / 2."""
        n = self.outputs
        (h,) = state
        (U, bu), (Wzr, bzr), (Wh, bh) = self.u.folded(), self.wzr.folded(), self.wh.folded()
        half = halves(3 * n, 2 * n if self.tanh else 3 * n)
        if streams > 1 and h.T.flags.c_contiguous:
            return self.stepper_feature_major(U * half, (bu + np.concatenate([bzr, bh])) * half,
                                              Wzr * half[:2 * n], Wh * half[2 * n:], ids_input, h)
        xu, zr, c, rh, a = (np.empty((streams, m), self.dtype) for m in (3 * n, 2 * n, n, n, n))
        project = projector(U * half, (bu + np.concatenate([bzr, bh])) * half, ids_input, xu)
        recur_zr, recur_h = times(Wzr * half[:2 * n]), times(Wh * half[2 * n:])
        z, r = zr[:, :n], zr[:, n:]

        def step(x):
            project(x)
            np.add(recur_zr(h, zr), xu[:, :2 * n], out=zr)
            np.add(np.multiply(np.tanh(zr, out=zr), 0.5, out=zr), 0.5, out=zr)
            np.add(recur_h(np.multiply(r, h, out=rh), c), xu[:, 2 * n:], out=c)
            np.tanh(c, out=c)
            if not self.tanh:
                np.add(np.multiply(c, 0.5, out=c), 0.5, out=c)
            np.multiply(np.subtract(h, c, out=a), z, out=a)   # h' = c + z⊙(h - c)
            np.add(a, c, out=h)
            return h
        return step

    def stepper_feature_major(self, U, b, Wzr, Wh, ids_input, h):
        """The step for many streams on feature-major state (h.T contiguous (n, S)), as the training
        loop runs it: z r = Wzrᵀ hᵀ + input part through kernels.gru_zr, then the candidate from
        Whᵀ (r⊙h) through kernels.gru_step. U (k, 3n), b (3n,), Wzr (n, 2n), Wh (n, n), every
        logistic column pre-halved. Returns h, (S, n), a view of the state."""
        n, S = Wh.shape[0], h.shape[0]
        hT = h.T
        WzrT, WhT = np.ascontiguousarray(Wzr.T), np.ascontiguousarray(Wh.T)
        XU, ZR, C, RH, H1 = (np.empty((m, S), self.dtype) for m in (3 * n, 2 * n, n, n, n))
        gates, candidate = kernels.get("gru_zr", ZR, XU[:2 * n], hT, RH), kernels.get("gru_step", C, ZR, hT, H1)
        recur_zr, recur_h = feature_major_times(WzrT, ZR), feature_major_times(WhT, C)
        if ids_input:
            project = id_columns(U + b, XU)  # row x of U + b is x's projection and bias
        else:
            inputs, bias = feature_major_times(np.ascontiguousarray(U.T), XU), b[:, None]

            def project(x):
                np.add(inputs(x.T), bias, out=XU)

        def step(x):
            project(x)
            gates(recur_zr(hT), XU[:2 * n], hT, RH)
            candidate(self.tanh, recur_h(RH), XU[2 * n:], ZR, hT, H1)
            np.copyto(hT, H1)
            return h
        return step

    def backward(self, dh_out, need_dx):
        T, S = dh_out.shape[:2]
        n, wzr, wh, u = self.outputs, self.wzr, self.wh, self.u
        x, XU, ZR, P, RHrows, Y, bn = self.tape
        DH = self.buffer("DH", (T, n, S))
        transpose_into(DH, dh_out)
        d = self.buffer("d", (3 * n, S))         # this step's deltas of the pre-activations z r c
        dP = XU.reshape(T, S, 3 * n)   # every step's as rows, for the weight gradients (in
                                                 # the memory of the spent input projections)
        if self.bn:                              # the w sub-layers' deltas through their batchnorm
            dPzr, dPh = self.buffer("dPzr", (T, S, 2 * n)), self.buffer("dPh", (T, S, n))
        dh = self.zeros((n, S))
        a, drh = self.buffer("scratch", (n, S)), self.buffer("drh", (n, S))
        back = kernels.get("gru_back", d)
        recur_zr, recur_h = step_product(wzr.W, S), step_product(wh.W, S)
        for t in reversed(range(T)):
            dh += DH[t]
            dc = np.multiply(P[t, 2 * n:], dh, out=d[2 * n:])
            if self.bn:
                dPh[t] = wh.backward_norm(dc.T[None], bn["wh"][t])[0]
                dc = dPh[t].T
            recur_h(dc, drh)                                    # delta of r ⊙ h
            back(dh, drh, ZR[t], P[t], d)                       # dz dr; dh = dh ⊙ z + drh ⊙ r
            dzr = d[:2 * n]
            if self.bn:
                dPzr[t] = wzr.backward_norm(dzr.T[None], bn["wzr"][t])[0]
                dzr = dPzr[t].T
            transpose_into(dP[t], d)                            # while d is in cache
            if t:  # truncated BPTT: nothing flows into the previous datum's state
                dh += recur_zr(dzr, a)                          # dh_prev = dh ⊙ z + drh ⊙ r + Wzr [dz dr]
        if self.bn:  # (the w sub-layers' bias gradients came with each step's backward_norm)
            dPzr, dPh = rows(dPzr), rows(dPh)
            du = rows(u.backward_norm(dP, *bn["u"]))
        else:  # wz wr wh's biases add to the same pre-activations as uz ur uh's: one sum serves both
            db = row_sum(dP)
            wzr.db += db[:2 * n]
            wh.db += db[2 * n:]
            u.db += db
            dPzr, dPh, du = rows(dP[..., :2 * n]), rows(dP[..., 2 * n:]), rows(dP)
        wzr.accumulate(rows(Y[:T]), dPzr)
        wh.accumulate(rows(RHrows), dPh)
        u.accumulate(x, du)
        if not need_dx:
            return None
        return u.back(du, out=self.buffer("dX", (T * S, self.inputs))).reshape(T, S, self.inputs)

    def to_onnx(self, g, x):
        """ONNX's GRU, which is this one: z r h as ONNX's z r h, linear_before_reset=0 (r multiplies
        h before wh), the candidate tanh or logistic; input and recurrent biases apart; batchnorm
        folded into each sub-layer."""
        (U, bu), (Wzr, bzr), (Wh, bh) = self.u.folded(), self.wzr.folded(), self.wh.folded()
        activations = ["Sigmoid", "Tanh" if self.tanh else "Sigmoid"]
        h, (h1,) = g.recurrent_op("GRU", x, U.T, np.concatenate([Wzr, Wh], axis=1).T, np.concatenate([bu, bzr, bh]),
                                  g.state(self.kind, self.outputs), activations=activations, linear_before_reset=0)
        g.set_state(h1)
        return h
