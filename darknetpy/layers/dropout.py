"""[dropout]: zero each input with `probability` in training and scale the rest by 1/(1-p).

With `variational=1` (darknetpy's key; Darknet has no such key) one mask per stream holds for all
the time steps of a datum, as in Gal & Ghahramani's variational dropout for RNNs (2016): a unit
dropped for a stream stays dropped for the whole sequence, instead of a fresh mask every step."""
import numpy as np

from .base import Layer


class Dropout(Layer):
    kind = "dropout"
    draws_masks = True
    def __init__(self, section, inputs, rng):
        self.inputs = self.outputs = inputs
        self.probability = section.float("probability", 0.5)
        if not 0 <= self.probability < 1:
            raise section.error("probability must be in [0, 1)", "probability")
        self.variational = section.int("variational", 0)
        if self.variational not in (0, 1):
            raise section.error("variational must be 0 or 1", "variational")
        self.rng = rng

    def forward(self, x, train, state, block=None):
        """x (T, S, n). In training, `block` = (offset, total): x holds streams offset..offset+S of
        a datum of `total`; the masks of all `total` streams are drawn and x's kept, so the masks,
        and the rng's state after them, do not depend on how the streams are split. Variational:
        one (1, total, n) draw, broadcast over the T steps."""
        if not train or self.probability == 0:
            self.mask = None
            return x
        T, S = x.shape[:2]
        offset, total = block or (0, S)
        draw = self.rng.random((1 if self.variational else T, total) + x.shape[2:], dtype=np.float32)
        keep = draw[:, offset:offset + S] >= self.probability
        self.mask = keep * x.dtype.type(1 / (1 - self.probability))
        return x * self.mask

    def backward(self, dy, need_dx):
        return dy if self.mask is None else dy * self.mask

    def stepper(self, streams, ids_input, state, exact=True):
        """The identity: no dropout at inference."""
        def step(x):
            return x
        step.loop = lambda x: ([], x)  # no op in the one-stream loop
        return step

    def to_onnx(self, g, x):
        return x  # the identity at inference
