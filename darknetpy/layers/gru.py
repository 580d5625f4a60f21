"""[gru]: Darknet's GRU, one layer of `output` units.

    z = σ(wz(h) + uz(x))   r = σ(wr(h) + ur(x))
    c = act(wh(r⊙h) + uh(x))      act = tanh if tanh=1, else logistic (Darknet's default)
    h' = z⊙h + (1-z)⊙c

Each w*/u* is a connected sub-layer with its own bias (or batchnorm). uz, ur, uh are one stacked
matrix applied to all steps at once; wz, wr are one stacked matrix (one matmul per step); wh reads
r⊙h, so it needs its own matmul per step.

What one step computes around those two products is `gru_zr` (the gates and r⊙h) then `gru_step`
(the candidate and h') below (their C forms in _steps.h), in the training loop and in the stepper
alike; `gru_back` is their way back. `gru_loop` and `gru_loop_back` are the training loops around
them, products included (one C call for all the steps on AVX-512 CPUs: _loop.h).
"""
from typing import NamedTuple

import numpy as np

from .. import kernels
from ..kernels import blocks, sigmoid_grad, tanh_grad
from .base import (Recurrent, bf16_flag, halves, loop_product, matvec, output_units, projector, row_product, rows,
                   step_product, transpose_into)
from .connected import Dense, row_sum
from .lstm import logistic_halved


def gru_zr(zr, xu, h, rh):
    """The GRU's gates in either layout (kernels.blocks): zr (2 blocks) the recurrent part of the
    pre-halved pre-activations of z and r, xu (3 blocks) the input part of z r c; zr becomes
    the gates, zr += xu's first two blocks then (1 + tanh) / 2; rh = r⊙h (shaped like h)."""
    z, r = blocks(zr, 2, h)
    xz, xr, _ = blocks(xu, 3, h)
    z += xz
    r += xr
    logistic_halved(z)
    logistic_halved(r)
    np.multiply(r, h, out=rh)


def gru_step(tanh, c, xu, zr, h, h1, P=None):
    """The candidate c (shaped like h) in place, c = act(c + xu's third block) (tanh, or logistic
    from pre-halved rows), and h1 = z⊙h + (1-z)⊙c = c + z⊙(h - c); in training the factors of the
    deltas, P (3 blocks) = [(h - c)⊙σ'(z), h⊙σ'(r), (1 - z)⊙act'(c)]."""
    z, r = blocks(zr, 2, h)
    c += blocks(xu, 3, h)[2]
    if tanh:
        np.tanh(c, out=c)
    else:
        logistic_halved(c)
    if P is not None:
        pz, pr, pc = blocks(P, 3, h)
        (tanh_grad if tanh else sigmoid_grad)(c, out=pc)
        pc *= np.subtract(1, z, out=h1)  # h1 as scratch until its turn
    np.subtract(h, c, out=h1)
    if P is not None:
        sigmoid_grad(z, out=pz)
        pz *= h1
        sigmoid_grad(r, out=pr)
        pr *= h
    h1 *= z
    h1 += c


def gru_back(dh, drh, zr, P, d):
    """Back through a step (feature-major): dz = dh⊙P[z] and dr = drh⊙P[r] into d (3n, S); then
    dh = dh⊙z + drh⊙r (n, S) (wzr's share of dh comes after, from the deltas)."""
    n = dh.shape[0]
    np.multiply(P[:n], dh, out=d[:n])
    np.multiply(P[n:2 * n], drh, out=d[n:2 * n])
    dh *= zr[:n]
    dh += drh * zr[n:]


def gru_loop(tanh, WzrT, WhT, XU, ZR, HC, RH, H, Y, P=None, RHrows=None, bf16=False):
    """The forward step loop (feature-major, T steps of S streams): for each t, ZR[t] = WzrT H[t],
    gru_zr(ZR[t], XU[t], H[t], RH[t]), HC[t] = WhT RH[t], gru_step(tanh, HC[t], XU[t], ZR[t], H[t],
    H[t+1][, P[t]]), Y[t] = H[t+1]ᵀ (the output as rows), and in training (P given) RHrows[t] =
    RH[t]ᵀ, wh's input as rows. WzrT (2n, n) and WhT (n, n) with the logistic rows halved; XU, P
    (T, 3n, S); ZR (T, 2n, S); HC, RH (T, n, S); H (T+1, n, S), H[0] the state before; Y, RHrows
    (T, S, n). bf16 (in training): the two products with bf16 operands (base.loop_product). The C
    form (_loop.h, AVX-512 CPUs; bf16 on AMX) runs the whole loop in one call, each thread owning a
    slice of the units; its products add in another order, so it equals this to float32 rounding."""
    T, S = XU.shape[0], XU.shape[2]
    gates, step = kernels.get("gru_zr", ZR), kernels.get("gru_step", ZR)
    recur_zr, recur_h = loop_product(WzrT, S, bf16), loop_product(WhT, S, bf16)
    for t in range(T):
        recur_zr(H[t], ZR[t])
        gates(ZR[t], XU[t], H[t], RH[t])
        recur_h(RH[t], HC[t])
        if P is None:
            step(tanh, HC[t], XU[t], ZR[t], H[t], H[t + 1])
        else:
            step(tanh, HC[t], XU[t], ZR[t], H[t], H[t + 1], P[t])
            transpose_into(RHrows[t], RH[t])
        transpose_into(Y[t], H[t + 1])


def gru_loop_back(Wzr, Wh, DY, ZR, P, dP, db, dh, bf16=False):
    """The step loop's way back, from what gru_loop left: for t from T-1 down, dh += DY[t]ᵀ, the
    candidate's delta dc = P[t][c]⊙dh, drh = Wh dc, gru_back(dh, drh, ZR[t], P[t], d), the deltas
    d = [dz dr dc] (3n, S) written as rows dP[t] (S, 3n), and for t > 0 dh += Wzr [dz dr] (truncated
    BPTT); then db = Σ over steps and streams of the deltas (the bias gradient). Wzr (n, 2n), Wh
    (n, n), DY (T, S, n) the output deltas as rows, ZR (T, 2n, S), P (T, 3n, S), dP (T, S, 3n), db
    (3n,); dh (n, S) starts at zero; bf16 as gru_loop's. The C form sums db on the threads that own
    the units."""
    T, S, n = DY.shape
    d, drh, a = np.empty((3 * n, S), dh.dtype), np.empty((n, S), dh.dtype), np.empty((n, S), dh.dtype)
    back = kernels.get("gru_back", d)
    recur_zr, recur_h = loop_product(Wzr, S, bf16), loop_product(Wh, S, bf16)
    for t in reversed(range(T)):
        dh += DY[t].T
        recur_h(np.multiply(P[t, 2 * n:], dh, out=d[2 * n:]), drh)
        back(dh, drh, ZR[t], P[t], d)
        transpose_into(dP[t], d)
        if t:
            dh += recur_zr(d[:2 * n], a)
    db[...] = row_sum(dP)


kernels.register(gru_zr, gru_step, gru_back, gru_loop, gru_loop_back)


class GRU(Recurrent):
    kind = "gru"
    recurrent = ("wzr", "wh")  # dropconnect's: wz wr wh
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
        W: list              # [Wzr, Wh] as the steps ran them (Recurrent.connected: masked with dropconnect)

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = output_units(section)
        self.bn = bn = bool(section.int("batch_normalize", 0))
        self.tanh = bool(section.int("tanh", 0))
        self.wzr = Dense(n, n, ["wz", "wr"], bn, rng)
        self.wh = Dense(n, n, ["wh"], bn, rng)
        self.u = Dense(inputs, n, ["uz", "ur", "uh"], bn, rng)
        self.denses = [self.wzr, self.wh, self.u]  # save order: wz wr wh uz ur uh
        self.read_dropconnect(section, rng)

    def describe(self):
        return "tanh" if self.tanh else "logistic"

    def products(self):
        n = self.outputs
        return [(self.inputs, 3 * n, False, True), (n, 2 * n, True, False), (n, n, True, False)]

    def forward(self, x, train, state):
        T, S = x.shape[:2]
        n, wzr, wh, u = self.outputs, self.wzr, self.wh, self.u
        (h0,) = state
        # The step loop runs feature-major, as lstm.py explains: z r (2n, S), c h (n, S). Every
        # logistic row is pre-halved so it is (1 + tanh) / 2, one tanh and two exact affine ops.
        # The elementwise math around the two matmuls: gru_zr and gru_step.
        half = halves(3 * n, 2 * n if self.tanh else 3 * n)
        hc = half[2 * n]                         # the candidate's factor: 0.5 logistic, 1 tanh
        bn = {"u": [], "wzr": [], "wh": []}
        XU = self.project_steps(u, x, u.b + np.concatenate([wzr.b, wh.b]), half, train, bn["u"])  # with the recurrent biases
        Wzr, Wh = self.connected(train)
        WzrT, WhT = self.transposed("WzrT", Wzr, half[:2 * n]), self.transposed("WhT", Wh, half[2 * n:])
        ZR = self.buffer("ZR", (T, 2 * n, S))    # σ gates z, r
        HC = self.buffer("HC", (T, n, S))        # candidate c
        RH = self.buffer("RH", (T, n, S))        # r ⊙ h, the input of wh
        if train:                                # ... and as rows for wh's weight gradient
            RHrows = self.buffer("RHrows", (T, S, n))
        H = self.buffer("H", (T + 1, n, S))      # H[t] is h before step t
        Y = self.buffer("Y", (T + 1, S, n))      # the outputs as rows (steps, streams, n); Y[t] is h before step t
        if train:  # dz = dh ⊙ P[z]   dr = drh ⊙ P[r]   dc = dh ⊙ P[c], for backward
            P = self.buffer("P", (T, 3 * n, S))
        H[0], Y[0] = h0.T, h0
        training = (P, RHrows) if train else ()
        if self.bn:  # each step's products normalized over the streams before its step ops
            gates, step = kernels.get("gru_zr", ZR), kernels.get("gru_step", ZR)
            for t in range(T):
                zr, c, h = ZR[t], HC[t], H[t]
                np.multiply(wzr.normalize((h.T @ Wzr)[None], train, bn["wzr"])[0].T, np.float32(0.5), out=zr)
                gates(zr, XU[t], h, RH[t])
                np.multiply(wh.normalize((RH[t].T @ Wh)[None], train, bn["wh"])[0].T, hc, out=c)
                step(self.tanh, c, XU[t], zr, h, H[t + 1], *(P[t],) if train else ())
                if train:
                    transpose_into(RHrows[t], RH[t])
            transpose_into(Y[1:], H[1:])
        else:
            arrays = (WzrT, WhT, XU, ZR, HC, RH, H, Y[1:], *training)
            loop = kernels.get("gru_loop", *arrays)
            loop(self.tanh, *arrays, *bf16_flag(wzr, train, loop))
        h0[...] = Y[T]
        if train:
            self.tape = self.Tape(x=rows(x), XU=XU, ZR=ZR, P=P, RHrows=RHrows, Y=Y, bn=bn, W=[Wzr, Wh])
        return Y[1:]

    def stepper(self, streams, ids_input, state, exact=True):
        """One step on rows (streams, ·), gru_zr and gru_step as the training loop runs them, with
        the weights prepared once: batchnorm folded in, biases summed into the input projection,
        and every logistic column pre-halved so it is (1 + tanh) / 2. Its `loop(x)` as LSTM.stepper's."""
        n = self.outputs
        (h,) = state
        (U, bu), (Wzr, bzr), (Wh, bh) = self.u.folded(), self.wzr.folded(), self.wh.folded()
        half = halves(3 * n, 2 * n if self.tanh else 3 * n)
        xu, zr = np.empty((streams, 3 * n), self.dtype), np.empty((streams, 2 * n), self.dtype)
        c, rh, h1 = (np.empty((streams, n), self.dtype) for _ in range(3))
        project = projector(U * half, (bu + np.concatenate([bzr, bh])) * half, ids_input, xu)
        recur_zr, recur_h = row_product(Wzr * half[:2 * n], exact), row_product(Wh * half[2 * n:], exact)
        gates, candidate = kernels.get("gru_zr", zr, xu, h, rh), kernels.get("gru_step", c, xu, zr, h, h1)

        def step(x):
            project(x)
            gates(recur_zr(h, zr), xu, h, rh)
            candidate(self.tanh, recur_h(rh, c), xu, zr, h, h1)
            np.copyto(h, h1)
            return h
        step.loop = lambda x: (project.loop(x) + [matvec(recur_zr, h, zr), ("gru_zr", zr, xu, h, rh),
                                                   matvec(recur_h, rh, c), ("gru_step", int(self.tanh), c, xu, zr, h, h1),
                                                   ("copy", h1, h)], h)
        return step

    def backward(self, dh_out, need_dx):
        T, S = dh_out.shape[:2]
        n, wzr, wh, u = self.outputs, self.wzr, self.wh, self.u
        x, XU, ZR, P, RHrows, Y, bn, (Wzr, Wh) = self.tape
        dP = XU.reshape(T, S, 3 * n)   # every step's as rows, for the weight gradients (in
                                                 # the memory of the spent input projections)
        if self.bn:                              # the w sub-layers' deltas through their batchnorm
            dPzr, dPh = self.buffer("dPzr", (T, S, 2 * n)), self.buffer("dPh", (T, S, n))
        dh = self.zeros((n, S))
        if self.bn:  # each step's deltas back through the w sub-layers' batchnorm before their products
            DH = transpose_into(self.buffer("DH", (T, n, S)), dh_out)
            d = self.buffer("d", (3 * n, S))     # this step's deltas of the pre-activations z r c
            a, drh = self.buffer("scratch", (n, S)), self.buffer("drh", (n, S))
            back = kernels.get("gru_back", d)
            recur_zr, recur_h = step_product(Wzr, S), step_product(Wh, S)
            for t in reversed(range(T)):
                dh += DH[t]
                dc = np.multiply(P[t, 2 * n:], dh, out=d[2 * n:])
                dPh[t] = wh.backward_norm(dc.T[None], bn["wh"][t])[0]
                recur_h(dPh[t].T, drh)                          # delta of r ⊙ h
                back(dh, drh, ZR[t], P[t], d)                   # dz dr; dh = dh ⊙ z + drh ⊙ r
                dPzr[t] = wzr.backward_norm(d[:2 * n].T[None], bn["wzr"][t])[0]
                transpose_into(dP[t], d)                        # while d is in cache
                if t:  # truncated BPTT: nothing flows into the previous datum's state
                    dh += recur_zr(dPzr[t].T, a)                # dh_prev = dh ⊙ z + drh ⊙ r + Wzr [dz dr]
        else:  # the loop sums the bias gradient too: wz wr wh's biases add to the same
            db = self.buffer("db", (3 * n,))     # pre-activations as uz ur uh's, one sum serves both
            arrays = (Wzr, Wh, dh_out, ZR, P, dP, db, dh)
            loop = kernels.get("gru_loop_back", *arrays)
            loop(*arrays, *bf16_flag(wzr, True, loop))
        if self.bn:  # (the w sub-layers' bias gradients came with each step's backward_norm)
            dPzr, dPh = rows(dPzr), rows(dPh)
            du = rows(u.backward_norm(dP, *bn["u"]))
        else:
            wzr.db += db[:2 * n]
            wh.db += db[2 * n:]
            u.db += db
            dPzr, dPh, du = rows(dP[..., :2 * n]), rows(dP[..., 2 * n:]), rows(dP)
        self.accumulate(wzr, rows(Y[:T]), dPzr)
        self.accumulate(wh, rows(RHrows), dPh)
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
