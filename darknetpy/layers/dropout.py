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
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.probability
        self.mask = keep * x.dtype.type(1 / (1 - self.probability))
        return x * self.mask

    def backward(self, dy, need_dx):
        return dy if self.mask is None else dy * self.mask
