"""[softmax]: probabilities over `groups` equal slices of the input, at `temperature`.

As in Darknet the training delta handed back is (truth - p), not divided by the temperature, and
the cost is Σ -ln p over every entry whose truth is non-zero (not weighted by the truth value).
"""
import numpy as np

from .. import kernels
from .base import Layer
from .connected import is_ids


def softmax_xent(x, ids, delta, groups, temperature):
    """The training [softmax] and its cross-entropy against class ids, from the logits x (R, n):
    delta (R, n) = onehot(ids) − p for p = softmax(x) in `groups` slices at the temperature, and the
    cost Σ -ln p[r, ids[r]] returned. The C form (_head.h) makes each row's p in its delta row and
    turns it into the delta there, one read of x and one write of delta instead of softmax's and
    xent's two each: the same bits as these two ops."""
    kernels.softmax(x, delta, groups, temperature)
    return kernels.xent(delta, ids, delta)


kernels.register(softmax_xent)


class Softmax(Layer):
    kind, aliases, loss_at = "softmax", ("soft",), "any"

    def __init__(self, section, inputs, rng):
        self.inputs = self.outputs = inputs
        self.groups = section.int("groups", 1)
        if self.groups < 1 or inputs % self.groups:
            raise section.error(f"groups={self.groups} must divide the layer's {inputs} inputs", "groups")
        self.temperature = section.float("temperature", 1.0)
        if self.temperature <= 0:
            raise section.error("temperature must be > 0", "temperature")
        section.int("noloss", 0)

    def set_temperature(self, t):
        """One temperature, or an array of one per stream that a stepper made now reads at each
        step (serve sets each request's streams in it)."""
        self.temperature = t if isinstance(t, np.ndarray) else float(t)

    def forward(self, x, train, state):
        # Training reuses one array and runs the C kernel when built (its exp is within 2 ulp of
        # numpy's); otherwise the result is new (it is what the caller gets back) and numpy's
        # softmax, the reference the steppers' (generation's and validation's) is held to.
        if train:
            x = np.ascontiguousarray(x)
            p = self.buffer("P", x.shape)
            kernels.get("softmax", x, p)(x, p, self.groups, self.temperature)
        else:
            p = np.empty_like(x)
            kernels.softmax(x, p, self.groups, self.temperature)
        return p

    def stepper(self, streams, ids_input, state, exact=True):
        """One step at the temperature of the moment it is prepared (one number, or the array of
        one per stream it was given, read at each step): a later set_temperature does not reach
        it. Each call returns a new array. Each row by itself at its own temperature
        (kernels.softmax_rows: the C loop's softmax too): a row's probabilities are then the same
        bits alone or beside others, and from the C loop (Darknet's sampler draws from them,
        checked byte for byte against Darknet with one stream). Its `loop(x)` as LSTM.stepper's,
        into an array of its own."""
        T = self.temperature
        t = T if isinstance(T, np.ndarray) else np.full(streams, T, np.float32)
        probabilities = np.empty((streams, self.inputs), np.float32)

        def step(x):
            p = np.empty_like(x)
            kernels.get("softmax_rows", x, p, t)(x, p, self.groups, t)
            return p
        if t.dtype == np.float32:
            step.loop = lambda x: ([("softmax", self.groups, t, x, probabilities)], probabilities)
        return step

    def train_loss(self, x, truth):
        """(cost, delta) of a training step from this layer's input x (T, S, n): forward, then
        `loss`, or for class ids the two in one op (`softmax_xent`), the same bits."""
        if not is_ids(truth):
            return self.loss(self.forward(x, True, []), truth)
        rows, ids = np.ascontiguousarray(x).reshape(-1, x.shape[-1]), truth.reshape(-1).astype(np.int64, copy=False)
        delta = self.buffer("delta", x.shape)
        cost = kernels.get("softmax_xent", rows, delta)(rows, ids, delta.reshape(rows.shape), self.groups,
                                                        self.temperature)
        return x.dtype.type(cost), delta

    def loss(self, p, truth):
        """(cost, delta) for probabilities p (T, S, n) and truth as one-hot rows or indices (T, S)."""
        if is_ids(truth):
            delta = self.buffer("delta", p.shape)
            rows, ids = p.reshape(-1, p.shape[-1]), truth.reshape(-1).astype(np.int64, copy=False)
            cost = kernels.get("xent", rows, delta)(rows, ids, delta.reshape(rows.shape))
            return p.dtype.type(cost), delta
        hot = truth != 0
        with np.errstate(divide="ignore"):
            cost = -np.log(p[hot]).sum(dtype=p.dtype)
        return cost, (truth - p).astype(p.dtype)

    def to_onnx(self, g, x):
        """Softmax of x / T over each of `groups` slices, T the model's `temperature` input (its
        initializer: this layer's temperature)."""
        z = g.op("Div", g.floats(x), g.temperature(self.temperature))
        if self.groups == 1:
            return g.op("Softmax", z, axis=-1)
        p = g.op("Softmax", g.last_axis(z, (self.groups, self.inputs // self.groups)), axis=-1)
        return g.last_axis(p, (self.inputs,))
