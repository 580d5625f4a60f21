"""[dropout]: zero each input with `probability` in training and scale the rest by 1/(1-p)."""
import numpy as np

from .base import Layer


class Dropout(Layer):
    kind = "dropout"
    def __init__(self, section, inputs, rng):
        self.inputs = self.outputs = inputs
        self.probability = section.float("probability", 0.5)
        if not 0 <= self.probability < 1:
            raise section.error("probability must be in [0, 1)", "probability")
        self.rng = rng

    def forward(self, x, train):
        if not train or self.probability == 0:
            self.mask = None
            return x
        # Under MPI every rank draws the masks of all K*S streams, as one process does, and keeps
        # its own block: the masks, and the rng's state after them, are one process's.
        T, S = x.shape[:2]
        r, K = self.block
        draw = self.rng.random((T, K * S) + x.shape[2:], dtype=np.float32)
        keep = draw[:, r * S:(r + 1) * S] >= self.probability
        self.mask = keep * x.dtype.type(1 / (1 - self.probability))
        return x * self.mask

    def backward(self, dy, need_dx):
        return dy if self.mask is None else dy * self.mask

    def to_onnx(self, g, x):
        return x  # the identity at inference
