"""[rnn]: Darknet's vanilla RNN with three connected sub-layers, all with the layer's activation.

    s_t = input(x_t) + self(s_{t-1}) (+ s_{t-1} if shortcut)      y_t = output(s_t)

where each sub-layer is act(W · + b) (or act(batchnorm)). The recurrence carries s, not y.
input and output need no recurrence, so each is one matmul over all steps; only self runs per step.

What one step computes after self's product is `rnn_step` below, for any activation (its C form in
_steps.h for the slope activations leaky and relie), in the training loop and in the stepper alike
(`step_functions`); `rnn_back` is its way back. `rnn_loop` and `rnn_loop_back` are the training
loops around them, products included (for leaky and relie one C call for all the steps on AVX-512
CPUs: _loop.h).
"""
from functools import partial
from typing import NamedTuple

import numpy as np

from .. import activations, kernels
from ..kernels import slope_act, slope_grad
from .base import Recurrent, output_units, projector, rows, step_product, transpose_into
from .connected import Dense, row_sum


def rnn_step(f, b, bias, x, s1, s=None):
    """One [rnn] step, arrays of one shape (either layout): b = f(b + bias) in place, s1 = x + b
    (+ s with shortcut). f is the layer's activation in place, f(b); or, for a slope activation
    (x above zero, a·x below: leaky, relie), its slope a, what the C form takes."""
    b += bias
    if callable(f):
        f(b)
    else:
        slope_act(b, f)
    np.add(x, b, out=s1)
    if s is not None:
        s1 += s


def rnn_back(f, ds1, w, y, d, ds=None):
    """One [rnn] step back, blocks (n, S): ds1 += w (+ ds with shortcut), then d = ds1 ⊙ f'(y) from
    the step's output y; f is the activation's gradient g(y, out) -> out, or a slope activation's
    slope a (the C form's)."""
    ds1 += w
    if ds is not None:
        ds1 += ds
    if callable(f):
        np.multiply(f(y, d), ds1, out=d)
    else:
        slope_grad(y, d, f, ds1)


def rnn_loop(f, shortcut, WT, bias, A, B, Sf, St):
    """The step loop (feature-major, T steps of S streams): for each t, B[t] = WT Sf[t] then
    rnn_step(f, B[t], bias, A[t]ᵀ, Sf[t+1][, Sf[t] with shortcut]) and St[t] = Sf[t+1]ᵀ. WT (n, n);
    bias (n, S); B (T, n, S); Sf (T+1, n, S), Sf[0] the state before; A, St (T, S, n): the input
    sub-layer's outputs and the states as rows, the layout of the sub-layers' matmuls. f as rnn_step
    takes it; the C form (_loop.h, AVX-512 CPUs) takes a slope, runs the whole loop in one call on
    its threads, and equals this to float32 rounding (its products add in another order)."""
    T, n, S = B.shape
    recur, a = step_product(WT, S), np.empty((n, S), B.dtype)
    step = partial(rnn_step, f) if callable(f) else partial(kernels.get("rnn_step", B), f)
    for t in range(T):
        recur(Sf[t], B[t])
        step(B[t], bias, transpose_into(a, A[t]), Sf[t + 1], *(Sf[t],) if shortcut else ())
        transpose_into(St[t], Sf[t + 1])


def rnn_loop_back(f, shortcut, W, B, dS, dB, db):
    """The step loop's way back, from dS (T, S, n), the states' deltas from the output sub-layer as
    rows: dSf = dSᵀ, dBf[T-1] = dSf[T-1]⊙f'(B[T-1]), then for t from T-1 down to 1, rnn_back(f,
    dSf[t-1], W dBf[t], B[t-1], dBf[t-1][, dSf[t] with shortcut]) (truncated BPTT: nothing flows
    into the state before the datum); dS becomes dSfᵀ, dB (T, S, n) dBfᵀ (the deltas before the
    self sub-layer's activation, as rows) and db (n,) their sum over steps and streams. W (n, n); B
    (T, n, S); f as rnn_back takes it."""
    T, n, S = B.shape
    recur, w = step_product(W, S), np.empty((n, S), B.dtype)
    dSf, dBf = transpose_into(np.empty(B.shape, B.dtype), dS), np.empty(B.shape, B.dtype)
    back = partial(rnn_back, f) if callable(f) else partial(kernels.get("rnn_back", B), f)
    back(dSf[T - 1], np.zeros((n, S), B.dtype), B[T - 1], dBf[T - 1])
    for t in reversed(range(1, T)):
        back(dSf[t - 1], recur(dBf[t], w), B[t - 1], dBf[t - 1], *(dSf[t],) if shortcut else ())
    transpose_into(dS, dSf)
    transpose_into(dB, dBf)
    db[...] = row_sum(dB)


kernels.register(rnn_step, rnn_back, rnn_loop, rnn_loop_back)


class RNN(Recurrent):
    kind = "rnn"
    recurrent = ("self_layer",)  # dropconnect's

    class Tape(NamedTuple):
        """What forward keeps for backward."""
        x: np.ndarray    # the input rows (T*S, inputs), or ids (T*S,)
        A: np.ndarray    # (T, S, n) the input sub-layer's outputs
        B: np.ndarray    # (T, n, S) the self sub-layer's outputs, feature-major
        St: np.ndarray   # (T+1, S, n) St[t] the state before step t, as rows
        Y: np.ndarray    # (T, S, n) the output sub-layer's outputs
        bn: dict         # batchnorm's (x̂, σ, σ+ε) (Dense.normalize): "U", "V": [one], "W": [one per step]
        Ws: np.ndarray   # (n, n) the self sub-layer's W as the steps ran it (Recurrent.connected: masked with dropconnect)

    def __init__(self, section, inputs, rng):
        self.inputs = inputs
        self.outputs = n = output_units(section)
        self.activation = section.str("activation", "logistic")
        activations.get(self.activation, section)  # an unknown name is an error here
        self.f_ = activations.in_place(self.activation)
        self.gradient = activations.gradient_into(self.activation)
        self.delta_through = activations.delta_through(self.activation)
        bn = section.int("batch_normalize", 0)
        self.shortcut = bool(section.int("shortcut", 0))
        self.input_layer = Dense(inputs, n, ["input_layer"], bn, rng)
        self.self_layer = Dense(n, n, ["self_layer"], bn, rng)
        self.output_layer = Dense(n, n, ["output_layer"], bn, rng)
        self.denses = [self.input_layer, self.self_layer, self.output_layer]  # save order
        self.read_dropconnect(section, rng)

    def describe(self):
        return self.activation

    def products(self):
        n = self.outputs
        return [(self.inputs, n, False, True), (n, n, True, False), (n, n, False, False)]

    def sublayer(self, dense, x, name, train, keep):
        """act(normalize(x W)) for all steps at once, (T, S, n), in the buffer `name` (a new array
        with batchnorm); each step's rows are normalized together (what backward needs: to `keep`)."""
        T, S = x.shape[:2]
        z = self.buffer(name, (T, S, self.outputs))
        dense.matmul(rows(x), out=rows(z), train=train)
        z = dense.normalize(z, train, keep)  # in place without batchnorm
        return self.f_(z, self.buffer("scratch", z.shape))

    def shortcut_to(self, s):
        """The optional last argument of the step functions: the state s added with shortcut=1."""
        return (s,) if self.shortcut else ()

    def loop_function(self, name, scratch, like):
        """(f, loop): the step loop `name` (rnn_loop, rnn_loop_back) for arrays like `like` and what
        it takes as f: the compiled loop and the slope for a slope activation, else the numpy loop
        with the activation in place (on `scratch`; forward) or its gradient (back)."""
        slope = activations.SLOPES.get(self.activation)
        if slope is not None:
            return slope, kernels.get(name, like)
        if name == "rnn_loop":
            return (lambda b: self.f_(b, scratch)), rnn_loop
        return self.gradient, rnn_loop_back

    def step_functions(self, scratch):
        """(step, back): rnn_step and rnn_back for this layer's activation, on arrays shaped like
        `scratch` (feature-major (n, streams) in training, rows (streams, n) in the stepper; its
        work array): the compiled ops for the slope activations (leaky, relie), else the numpy
        references with the activation and its gradient:
          step(b, bias, x, s1[, s]):  b = f(b + bias) in place, s1 = x + b (+ s)
          back(ds1, w, y, d[, ds]):   ds1 += w (+ ds), then d = ds1 ⊙ f'(y)"""
        slope = activations.SLOPES.get(self.activation)
        if slope is not None:
            return partial(kernels.get("rnn_step", scratch), slope), partial(kernels.get("rnn_back", scratch), slope)
        return partial(rnn_step, lambda b: self.f_(b, scratch)), partial(rnn_back, self.gradient)

    def forward(self, x, train, state):
        T, S = x.shape[:2]
        n, U, W, V = self.outputs, self.input_layer, self.self_layer, self.output_layer
        (h0,) = state
        bn = {"U": [], "W": [], "V": []}         # batchnorm's arrays for backward: U's, W's per step, V's
        A = self.sublayer(U, x, "A", train, bn["U"])  # input sub-layer, all steps
        # The step loop runs feature-major, states (n, S) as in lstm.py: BLAS runs Wᵀ (n x n) @
        # s (n x S) faster than s (S x n) @ W for few streams. Rows go in and come out.
        (Ws,) = self.connected(train)
        WT = self.transposed("WT", Ws)
        B = self.buffer("B", (T, n, S))          # self sub-layer outputs
        Sf = self.buffer("Sf", (T + 1, n, S))    # Sf[t] is the state before step t
        St = self.buffer("S", (T + 1, S, n))     # the states as rows
        Sf[0], St[0] = h0.T, h0
        bias = self.buffer("bias", (n, S))       # the self sub-layer's, added in the step (with
        bias[...] = 0 if W.bn else W.b[:, None]  # batchnorm normalize adds it)
        if W.bn:  # each step's product normalized over the streams before its step
            Af = transpose_into(self.buffer("Af", (T, n, S)), A)
            step, _ = self.step_functions(self.buffer("scratch_f", (n, S)))
            recur = step_product(WT, S)
            for t in range(T):
                b = B[t]
                recur(Sf[t], b)  # statistics on rows in C order (what the batchnorm kernel takes)
                b[...] = W.normalize(np.ascontiguousarray(b.T)[None], train, bn["W"])[0].T
                step(b, bias, Af[t], Sf[t + 1], *self.shortcut_to(Sf[t]))
            transpose_into(St[1:], Sf[1:])
        else:
            f, loop = self.loop_function("rnn_loop", self.buffer("scratch_f", (n, S)), B)
            loop(f, self.shortcut, WT, bias, A, B, Sf, St[1:])
        h0[...] = St[T]
        Y = self.sublayer(V, St[1:], "Y", train, bn["V"])
        if train:
            self.tape = self.Tape(x=rows(x), A=A, B=B, St=St, Y=Y, bn=bn, Ws=Ws)
        return Y

    def stepper(self, streams, ids_input, state, exact=True):
        """One step on rows (streams, n), `step_functions`' step as the training loop runs it, with
        batchnorm folded into each sub-layer's weights once (self's bias comes with its product,
        so the step adds zeros). For the slope activations (the C step's) its `loop(x)` as
        LSTM.stepper's."""
        n, f_ = self.outputs, self.f_
        (s,) = state
        (U, bu), (W, bw), (V, bv) = self.input_layer.folded(), self.self_layer.folded(), self.output_layer.folded()
        a, b, y, s1, zero, scratch = (np.zeros((streams, n), self.dtype) for _ in range(6))
        project = projector(U, bu, ids_input, a)
        recur = projector(W, bw, False, b)
        output = projector(V, bv, False, y)
        rnn, _ = self.step_functions(scratch)

        def step(x):
            rnn(recur(s), zero, f_(project(x), scratch), s1, *self.shortcut_to(s))
            np.copyto(s, s1)
            return f_(output(s), scratch)
        slope = activations.SLOPES.get(self.activation)
        if slope is not None:
            step.loop = lambda x: (project.loop(x) + [("slope", slope, a)] + recur.loop(s)
                                   + [("rnn", slope, b, zero, a, s1, *self.shortcut_to(s)), ("copy", s1, s)]
                                   + output.loop(s) + [("slope", slope, y)], y)
        return step

    def backward(self, dy, need_dx):
        T, S = dy.shape[:2]
        n, U, W, V = self.outputs, self.input_layer, self.self_layer, self.output_layer
        x, A, B, St, Y, bn, Ws = self.tape
        dZ = self.buffer("dZ", (T, S, n))
        dzv = V.backward_norm(self.delta_through(dy, Y, dZ), *bn["V"])
        V.accumulate(rows(St[1:]), rows(dzv))
        dS = self.buffer("dS", (T, S, n))        # delta of every s_t, from the output sub-layer first
        V.back(rows(dzv), out=rows(dS))
        dB = self.buffer("dB", (T, S, n))        # deltas before the self sub-layer's activation, rows
        if W.bn:  # each step's deltas back through the batchnorm before their product
            dSf = transpose_into(self.buffer("dSf", (T, n, S)), dS)  # feature-major, as forward
            dBf = self.buffer("dBf", (T, n, S))
            np.multiply(self.gradient(B[T - 1], dBf[T - 1]), dSf[T - 1], out=dBf[T - 1])
            _, back = self.step_functions(self.buffer("scratch_f", (n, S)))
            a = self.buffer("Wdb", (n, S))
            recur = step_product(Ws, S)
            for t in reversed(range(T)):
                db = dBf[t]                      # complete: dSf[t] had every contribution
                db[...] = W.backward_norm(np.ascontiguousarray(db.T)[None], bn["W"][t])[0].T
                if t:  # truncated BPTT: nothing flows into the previous datum's state
                    back(dSf[t - 1], recur(db, a), B[t - 1], dBf[t - 1], *self.shortcut_to(dSf[t]))
            transpose_into(dS, dSf)              # back to rows
            transpose_into(dB, dBf)
        else:  # the loop reads and writes the rows, and sums the bias gradient
            f, loop = self.loop_function("rnn_loop_back", None, B)
            db = self.buffer("db", (n,))
            loop(f, self.shortcut, Ws, B, dS, dB, db)
            W.db += db
        self.accumulate(W, rows(St[:T]), rows(dB))
        du = rows(U.backward_norm(self.delta_through(dS, A, dZ), *bn["U"]))  # dZ is spent: reuse
        U.accumulate(x, du)
        if not need_dx:
            return None
        return U.back(du, out=self.buffer("dX", (T * S, self.inputs))).reshape(T, S, self.inputs)

    def to_onnx(self, g, x):
        """The input and output sub-layers over all steps at once, the recurrence through g.scan;
        batchnorm folded into each sub-layer."""
        (U, bu), (W, bw), (V, bv) = self.input_layer.folded(), self.self_layer.folded(), self.output_layer.folded()
        a = g.act(self.activation, g.dense(x, U, bu))

        def step(g, xs, states):
            (a_t,), (s,) = xs, states
            s1 = g.op("Add", a_t, g.act(self.activation, g.dense(s, W, bw)))
            if self.shortcut:
                s1 = g.op("Add", s1, s)
            return [s1], [s1]
        (s,), (states,) = g.scan(step, [a], g.state(self.kind, self.outputs))
        g.set_state(s)
        return g.act(self.activation, g.dense(states, V, bv))
