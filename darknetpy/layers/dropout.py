"""[dropout]: zero each input with `probability` in training and scale the rest by 1/(1-p).

With `variational=1` (darknetpy's key; Darknet has no such key) one mask per stream holds for all
the time steps of a datum, as in Gal & Ghahramani's variational dropout for RNNs (2016): a unit
dropped for a stream stays dropped for the whole sequence, instead of a fresh mask every step.

A unit's mask is 16 random bits, four to each 64-bit draw of the network's generator (its
`random_raw`): the unit is dropped when they are below round(p·65536), so p is taken to the nearest
1/65536 (0.25 exactly, 0.2 as 0.199997). That is half the generator's draws float32 masks take,
and no conversion to float; the multiply by the mask and its gradient are one op, `dropout`, on the
step loops' team."""
import numpy as np

from .. import kernels
from .base import Layer

LEVELS = 65536  # the values of a unit's 16 bits


def dropout(out, x, bits, threshold, scale):
    """out (T, S, n) = x·m with m = scale where bits >= threshold, else 0 (a dropped unit): bits
    uint16, shaped as x, or (1, S, n) for one mask over every step. The forward (x the input) and the
    backward (x the output's delta). The C form (_head.h) makes it one pass on the step loops'
    team: the same bits."""
    np.multiply(x, (bits >= threshold) * x.dtype.type(scale), out=out)


kernels.register(dropout)


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
        self.threshold, self.scale = round(self.probability * LEVELS), 1 / (1 - self.probability)

    def forward(self, x, train, state, block=None):
        """x (T, S, n). In training, `block` = (offset, total): x holds streams offset..offset+S of
        a datum of `total`; the masks of all `total` streams are drawn and x's kept, so the masks,
        and the rng's state after them, do not depend on how the streams are split. Variational:
        one (1, total, n) draw, broadcast over the T steps."""
        if not train or self.probability == 0:
            self.bits = None
            return x
        T, S = x.shape[:2]
        offset, total = block or (0, S)
        shape = (1 if self.variational else T, total) + x.shape[2:]
        count = int(np.prod(shape))
        bits = self.rng.bit_generator.random_raw(-(-count // 4)).view(np.uint16)[:count].reshape(shape)
        self.bits = np.ascontiguousarray(bits[:, offset:offset + S])
        return self.masked(x, "Y")

    def backward(self, dy, need_dx):
        return dy if self.bits is None else self.masked(dy, "dX")

    def masked(self, x, name):
        """x times the drawn masks, in the work array `name`."""
        out = self.buffer(name, x.shape)
        kernels.get("dropout", out, x)(out, x, self.bits, self.threshold, self.scale)
        return out

    def stepper(self, streams, ids_input, state, exact=True):
        """The identity: no dropout at inference."""
        def step(x):
            return x
        step.loop = lambda x: ([], x)  # no op in the one-stream loop
        return step

    def to_onnx(self, g, x):
        return x  # the identity at inference
