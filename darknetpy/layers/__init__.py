"""One module per Darknet layer kind. `Layer` is the stateless default; `Recurrent` holds what rnn,
gru and lstm share: per-stream state that carries over between calls, and reusable work buffers."""
import numpy as np


class Layer:
    """What a layer without parameters or state needs: nothing to save, nothing to reset."""
    denses = ()
    dtype = np.float32

    def params(self, updates=False):
        return {}

    def reset_state(self, stream=None):
        pass

    def backward(self, dy, need_dx):
        return dy


class Recurrent(Layer):
    state_names = ("h",)

    def state(self, streams):
        """The carried state arrays, (re)made as zeros when the number of streams changes; also
        starts a forward pass by dropping batchnorm statistics a previous pass left unused."""
        for d in self.denses:
            d.cache.clear()
        for name in self.state_names:
            s = getattr(self, name, None)
            if s is None or s.shape[0] != streams:
                setattr(self, name, np.zeros((streams, self.outputs), self.dtype))
        return [getattr(self, name) for name in self.state_names]

    def reset_state(self, stream=None):
        for name in self.state_names:
            s = getattr(self, name, None)
            if s is not None:
                s[slice(None) if stream is None else stream] = 0

    def buffer(self, name, shape):
        """A work array reused across calls of the same shape (no allocation in steady state)."""
        buf = self.__dict__.get("_buf_" + name)
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, self.dtype)
            setattr(self, "_buf_" + name, buf)
        return buf

    def zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def params(self, updates=False):
        out = {}
        for d in self.denses:
            out.update(d.params(updates))
        return out


def sigmoid_(x):
    """In-place logistic 1 / (1 + e^-x), computed as (1 + tanh(x/2)) / 2: numpy's float32 tanh is
    about twice as fast as its exp, and this form cannot overflow."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


def sigmoid_grad(y, out):
    """out = y (1 - y), the logistic's derivative from its output, without temporaries."""
    np.multiply(y, y, out=out)
    return np.subtract(y, out, out=out)


def tanh_grad(y, out):
    """out = 1 - y², tanh's derivative from its output, without temporaries."""
    np.multiply(y, y, out=out)
    return np.subtract(1, out, out=out)


def rows(x):
    """(T, S, F) -> (T*S, F); indices (T, S) -> (T*S,)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
