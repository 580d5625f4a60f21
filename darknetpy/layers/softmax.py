"""[softmax]: probabilities over `groups` equal slices of the input, at `temperature`.

As in Darknet the training delta handed back is (truth - p), not divided by the temperature, and
the cost is Σ -ln p over every entry whose truth is non-zero (not weighted by the truth value).
"""
import numpy as np

from . import Layer, fused
from .connected import is_ids


class Softmax(Layer):
    def __init__(self, section, inputs):
        self.inputs = self.outputs = inputs
        self.groups = section.int("groups", 1)
        if self.groups < 1 or inputs % self.groups:
            raise section.error(f"groups={self.groups} must divide the layer's {inputs} inputs", "groups")
        self.temperature = section.float("temperature", 1.0)
        if self.temperature <= 0:
            raise section.error("temperature must be > 0", "temperature")
        section.int("noloss", 0)

    def forward(self, x, train):
        z = x.reshape(*x.shape[:-1], self.groups, self.inputs // self.groups)
        t = x.dtype.type(self.temperature)
        # Darknet: exp(x/T - max/T), then divide by the sum (x/1 is x exactly: no pass for it).
        # Training reuses one array; otherwise the result is new (it is what the caller gets back).
        # Training runs the C kernel when built (its exp is within 2 ulp of numpy's); generation
        # and validation keep numpy's, whose float32 results the Darknet-exact sampling was checked on.
        e = self.buffer("P", z.shape) if train else np.empty_like(z)
        kernel = fused("softmax", x.dtype) if train else None
        if kernel:
            kernel(np.ascontiguousarray(x), e, self.groups, t)
            return e.reshape(x.shape)
        top = z.max(axis=-1, keepdims=True)
        if t == 1:
            np.subtract(z, top, out=e)
        else:
            np.subtract(np.divide(z, t, out=e), top / t, out=e)
        np.exp(e, out=e)
        e /= e.sum(axis=-1, keepdims=True)
        return e.reshape(x.shape)

    def loss(self, p, truth):
        """(cost, delta) for probabilities p (T, S, n) and truth as one-hot rows or indices (T, S)."""
        kernel = fused("xent", p.dtype)
        if kernel and is_ids(truth):
            delta = self.buffer("delta", p.shape)
            cost = kernel(p.reshape(-1, p.shape[-1]), truth.reshape(-1).astype(np.int64, copy=False),
                          delta.reshape(-1, p.shape[-1]))
            return p.dtype.type(cost), delta
        if is_ids(truth):
            picked = np.take_along_axis(p, truth[..., None], axis=-1)
            cost = -np.log(picked).sum(dtype=p.dtype)
            delta = np.negative(p, out=self.buffer("delta", p.shape))
            np.put_along_axis(delta, truth[..., None], np.float32(1) - picked, axis=-1)
            return cost, delta
        hot = truth != 0
        with np.errstate(divide="ignore"):
            cost = -np.log(p[hot]).sum(dtype=p.dtype)
        return cost, (truth - p).astype(p.dtype)
