"""[cost]: Darknet's sum-of-squares cost layer (type=sse).

At inference it passes its input through. In training it is the loss only when no [softmax] comes
before it; Darknet's own cfg/rnn.cfg puts it after [softmax], where Darknet averages both costs and
doubles the delta. darknetpy then trains with the softmax cross-entropy alone (see network.py).
"""
import numpy as np

from .base import Layer


class Cost(Layer):
    kind, loss_at = "cost", "end"

    def __init__(self, section, inputs, rng):
        self.inputs = self.outputs = inputs
        kind = section.str("type", "sse")
        if kind != "sse":
            raise section.error(f"cost type '{kind}' is not supported; darknetpy implements type=sse", "type")
        self.scale = section.float("scale", 1.0)

    def forward(self, x, train, state):
        return x

    def stepper(self, streams, ids_input, state, exact=True):
        """The identity: the cost is only a loss."""
        def step(x):
            return x
        step.loop = lambda x: ([], x)  # no op in the one-stream loop
        return step

    def train_loss(self, x, truth):
        """(cost, delta) of a training step from this layer's input: `loss` of the identity."""
        return self.loss(x, truth)

    def loss(self, x, truth):
        if truth.dtype.kind in "iu":
            truth = np.eye(self.inputs, dtype=x.dtype)[truth]
        delta = (truth - x).astype(x.dtype)
        return (delta * delta).sum(), delta * x.dtype.type(self.scale)

    def to_onnx(self, g, x):
        return x  # the identity at inference
