"""The same network as a darknetpy benchmark cfg, in PyTorch, for benchmarks/throughput.py.

PyTorch is optional: nothing in the darknetpy package imports this file, and throughput.py imports
it only in a worker process after checking that torch is importable.

The models follow Darknet's math exactly as darknetpy computes it (sizes, activations, biases,
batchnorm), written by hand with torch ops and a per-step loop with fused gate matmuls:
  [lstm]  f,i,o = σ(U x + W h), g = tanh(U x + W h), c' = f⊙c + i⊙g, h' = o⊙tanh(c'); the four
          input and four recurrent matrices each stacked into one; separate input and recurrent
          biases (as Darknet's separate connected sub-layers).
  [gru]   z = σ(Uz x + Wz h), r = σ(Ur x + Wr h), c = act(Uh x + Wh(r⊙h)), h' = z⊙h + (1−z)⊙c,
          act = tanh if tanh=1 else logistic (Darknet's default); r applied BEFORE the Wh matmul.
  [rnn]   s' = act(U x) + act(W s) (+ s if shortcut), y = act(V s'): three sub-layers, each with the
          layer's activation (and its own batchnorm with batch_normalize).
  batchnorm: per time step over the streams, variance with n−1, x̂ = (x−μ)/(σ+1e-6), rolling
          statistics updated 1% per step; inference uses the rolling ones.
  [connected] act(x W + b); [softmax] + Darknet's cost Σ −ln p: F.cross_entropy(reduction="sum").
The first layer's input projection takes the one-hot inputs as ids through F.embedding (a row
gather; its backward is a dense scatter-add), the fastest form in PyTorch for a one-hot matmul.
For [lstm]-only nets, `impl="nn"` uses torch.nn.LSTM instead (oneDNN/MKL fused CPU kernel, same
math: bias_ih and bias_hh are Darknet's separate biases), fed one-hot float rows since it has no
embedding input. throughput.py reports the faster of the two.

Training step = forward + backward + optimizer step on a (time_steps, streams) datum of random ids,
the state carried (detached) between steps as darknetpy does. Adam for adam=1 cfgs, else SGD with
momentum; weight decay as Darknet's (decay * batch * time_steps on a summed loss).
Generation = one stream, one char at a time under torch.inference_mode(), softmax at temperature
0.7 and torch.multinomial, the sample fed back.
"""
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from darknetpy import cfg as cfgmod
from darknetpy.layers import KINDS as LAYER_KINDS
from darknetpy.measure import fastest

ACTIVATIONS = {
    "linear": lambda x: x,
    "leaky": lambda x: F.leaky_relu(x, 0.1),
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "elu": F.elu,
}


def read_cfg(path):
    """{'inputs', 'batch', 'time_steps', 'adam', ..., 'layers': [(kind, options)]} from a cfg."""
    sections = cfgmod.parse_cfg(path, LAYER_KINDS)
    net = sections[0]
    spec = {"inputs": net.int("inputs"), "batch": net.int("batch", 1) // net.int("subdivisions", 1),
            "time_steps": net.int("time_steps", 1), "adam": bool(net.int("adam", 0)),
            "lr": net.float("learning_rate", 0.001), "momentum": net.float("momentum", 0.9),
            "decay": net.float("decay", 0.0001), "B1": net.float("B1", 0.9), "B2": net.float("B2", 0.999),
            "eps": net.float("eps", 1e-7), "layers": []}
    for s in sections[1:]:
        if s.type in ("connected", "rnn"):
            opts = {"output": s.int("output", 1), "activation": s.str("activation", "logistic"),
                    "bn": bool(s.int("batch_normalize", 0)), "shortcut": bool(s.int("shortcut", 0))}
        elif s.type in ("lstm", "gru"):
            opts = {"output": s.int("output", 1), "bn": bool(s.int("batch_normalize", 0)),
                    "tanh": bool(s.int("tanh", 0))}
        elif s.type == "softmax":
            opts = {}
        else:
            raise ValueError(f"{path}: the torch reference has no [{s.type}]")
        spec["layers"].append((s.type, opts))
    if spec["layers"][-1][0] != "softmax":
        raise ValueError(f"{path}: the torch reference needs a final [softmax]")
    return spec


class Sub(nn.Module):
    """k stacked Darknet connected sub-layers: x W (W is inputs x outputs) + bias, or batchnorm."""

    def __init__(self, inputs, outputs, bn):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inputs, outputs).uniform_(-1, 1) * (2.0 / inputs) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(outputs))
        self.bn = bn
        if bn:
            self.scales = nn.Parameter(torch.ones(outputs))
            self.register_buffer("rolling_mean", torch.zeros(outputs))
            self.register_buffer("rolling_variance", torch.ones(outputs))

    def project(self, x):
        """Integer ids (..., ) -> a row gather; float rows (..., inputs) -> a matmul."""
        if not torch.is_floating_point(x):
            return F.embedding(x, self.weight)
        return x @ self.weight

    def norm(self, z, dim):
        """Add the bias, or batchnorm with the statistics over the streams axis `dim`."""
        if not self.bn:
            return z + self.bias
        if self.training:
            mean = z.mean(dim, keepdim=True)
            var = z.var(dim, keepdim=True, unbiased=True)
            with torch.no_grad():  # rolling = 0.99 rolling + 0.01 batch, once per time step in order
                m, v = mean.detach().reshape(-1, z.shape[-1]), var.detach().reshape(-1, z.shape[-1])
                k = m.shape[0]
                w = 0.01 * 0.99 ** torch.arange(k - 1, -1, -1, dtype=z.dtype)
                self.rolling_mean.mul_(0.99 ** k).add_(w @ m)
                self.rolling_variance.mul_(0.99 ** k).add_(w @ v)
            xhat = (z - mean) / (var.sqrt() + 1e-6)
        else:
            xhat = (z - self.rolling_mean) / (self.rolling_variance.sqrt() + 1e-6)
        return xhat * self.scales + self.bias


class Connected(nn.Module):
    def __init__(self, inputs, o):
        super().__init__()
        self.outputs = o["output"]
        self.d = Sub(inputs, self.outputs, o["bn"])
        self.act = ACTIVATIONS[o["activation"]]

    def init_state(self, streams):
        return ()

    def forward(self, x, state):
        z = self.d.project(x)
        if self.d.bn:  # a top-level [connected]'s statistics span all steps*streams rows
            z = self.d.norm(z.reshape(-1, self.outputs), 0).reshape(z.shape)
        else:
            z = z + self.d.bias
        return self.act(z), ()


class LSTM(nn.Module):
    def __init__(self, inputs, o):
        super().__init__()
        self.outputs = n = o["output"]
        self.u, self.w = Sub(inputs, 4 * n, o["bn"]), Sub(n, 4 * n, o["bn"])

    def init_state(self, streams):
        return (torch.zeros(streams, self.outputs), torch.zeros(streams, self.outputs))

    def forward(self, x, state):
        n, W = self.outputs, self.w.weight
        xu = self.u.norm(self.u.project(x), 1)
        if not self.w.bn:
            xu = xu + self.w.bias  # both biases fold into the all-steps input projection
        h, c = state
        hs = []
        for t in range(xu.shape[0]):
            g = self.w.norm(h @ W, 0) + xu[t] if self.w.bn else torch.addmm(xu[t], h, W)
            i, f, o = torch.sigmoid(g[:, :3 * n]).chunk(3, 1)
            gg = torch.tanh(g[:, 3 * n:])
            c = torch.addcmul(f * c, i, gg)
            h = o * torch.tanh(c)
            hs.append(h)
        return torch.stack(hs), (h, c)


class GRU(nn.Module):
    def __init__(self, inputs, o):
        super().__init__()
        self.outputs = n = o["output"]
        self.act = torch.tanh if o["tanh"] else torch.sigmoid
        self.wzr, self.wh, self.u = Sub(n, 2 * n, o["bn"]), Sub(n, n, o["bn"]), Sub(inputs, 3 * n, o["bn"])

    def init_state(self, streams):
        return (torch.zeros(streams, self.outputs),)

    def forward(self, x, state):
        n, bn = self.outputs, self.wzr.bn
        xu = self.u.norm(self.u.project(x), 1)
        if not bn:
            xu = xu + torch.cat([self.wzr.bias, self.wh.bias])
        (h,) = state
        hs = []
        for t in range(xu.shape[0]):
            xt = xu[t]
            if bn:
                zr = torch.sigmoid(self.wzr.norm(h @ self.wzr.weight, 0) + xt[:, :2 * n])
            else:
                zr = torch.sigmoid(torch.addmm(xt[:, :2 * n], h, self.wzr.weight))
            z, r = zr.chunk(2, 1)
            rh = r * h
            if bn:
                c = self.act(self.wh.norm(rh @ self.wh.weight, 0) + xt[:, 2 * n:])
            else:
                c = self.act(torch.addmm(xt[:, 2 * n:], rh, self.wh.weight))
            h = torch.addcmul(c, z, h - c)  # z⊙h + (1−z)⊙c
            hs.append(h)
        return torch.stack(hs), (h,)


class RNN(nn.Module):
    def __init__(self, inputs, o):
        super().__init__()
        self.outputs = n = o["output"]
        self.act = ACTIVATIONS[o["activation"]]
        self.shortcut = o["shortcut"]
        self.input_layer, self.self_layer, self.output_layer = Sub(inputs, n, o["bn"]), Sub(n, n, o["bn"]), Sub(n, n, o["bn"])

    def init_state(self, streams):
        return (torch.zeros(streams, self.outputs),)

    def forward(self, x, state):
        U, W, V = self.input_layer, self.self_layer, self.output_layer
        A = self.act(U.norm(U.project(x), 1))
        (s,) = state
        ss = []
        for t in range(A.shape[0]):
            b = self.act(W.norm(s @ W.weight, 0)) if W.bn else self.act(torch.addmm(W.bias, s, W.weight))
            s = A[t] + b + s if self.shortcut else A[t] + b
            ss.append(s)
        S = torch.stack(ss)
        return self.act(V.norm(V.project(S), 1)), (s,)


class TorchLSTM(nn.Module):
    """Consecutive [lstm] layers of one size as one torch.nn.LSTM (its fused CPU kernel)."""

    def __init__(self, inputs, n, layers):
        super().__init__()
        self.inputs, self.outputs, self.layers = inputs, n, layers
        self.lstm = nn.LSTM(inputs, n, num_layers=layers)

    def init_state(self, streams):
        return (torch.zeros(self.layers, streams, self.outputs), torch.zeros(self.layers, streams, self.outputs))

    def forward(self, x, state):
        if not torch.is_floating_point(x):
            x = F.one_hot(x, self.inputs).float()  # nn.LSTM has no embedding input
        y, (h, c) = self.lstm(x, state)
        return y, (h, c)


KINDS = {"connected": Connected, "lstm": LSTM, "gru": GRU, "rnn": RNN}


class Model(nn.Module):
    def __init__(self, spec, impl="hand"):
        super().__init__()
        layers, inputs = [], spec["inputs"]
        todo = [l for l in spec["layers"] if l[0] != "softmax"]
        k = 0
        while k < len(todo):
            kind, o = todo[k]
            if impl == "nn" and kind == "lstm":
                j = k
                while j < len(todo) and todo[j][0] == "lstm" and todo[j][1]["output"] == o["output"]:
                    if todo[j][1]["bn"]:
                        raise ValueError("torch.nn.LSTM has no batchnorm: use impl='hand'")
                    j += 1
                layers.append(TorchLSTM(inputs, o["output"], j - k))
                k = j
            else:
                layers.append(KINDS[kind](inputs, o))
                k += 1
            inputs = layers[-1].outputs
        if impl == "nn" and not any(isinstance(l, TorchLSTM) for l in layers):
            raise ValueError("impl='nn' is for nets with [lstm] layers")
        self.layers = nn.ModuleList(layers)
        self.outputs = inputs

    def init_state(self, streams):
        return [l.init_state(streams) for l in self.layers]

    def forward(self, x, state):
        new = []
        for layer, s in zip(self.layers, state):
            x, s = layer(x, s)
            new.append(s)
        return x, new


def supports_nn(spec):
    """True when impl='nn' applies: the net has [lstm] layers, none with batchnorm."""
    lstms = [o for kind, o in spec["layers"] if kind == "lstm"]
    return bool(lstms) and not any(o["bn"] for o in lstms)


def _optimizer(model, spec):
    B = spec["batch"] * spec["time_steps"]
    params = list(model.parameters())
    wd = spec["decay"] * B  # Darknet: upd += -decay*B*w on a summed gradient
    if spec["adam"]:
        for kwargs in ({"fused": True}, {"foreach": True}, {}):
            try:
                return torch.optim.Adam(params, lr=spec["lr"], betas=(spec["B1"], spec["B2"]), eps=spec["eps"],
                                        weight_decay=wd, **kwargs)
            except (RuntimeError, TypeError, ValueError):
                continue
    return torch.optim.SGD(params, lr=spec["lr"] / B, momentum=spec["momentum"], weight_decay=wd, foreach=True)


def measure_train(cfg, impl="hand", iterations=5, warmup=1, seed=0):
    """Median chars/s of full training steps (forward + backward + optimizer step) on random ids."""
    torch.manual_seed(seed)
    spec = read_cfg(cfg)
    T, S = spec["time_steps"], spec["batch"]
    model = Model(spec, impl)
    model.train()
    opt = _optimizer(model, spec)
    state = model.init_state(S)
    rng = np.random.default_rng(seed)
    steps = []
    for k in range(warmup + iterations):
        x = torch.from_numpy(rng.integers(0, spec["inputs"], size=(T, S)))
        y = torch.from_numpy(rng.integers(0, model.outputs, size=(T, S)))
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(T * S, -1), y.reshape(-1), reduction="sum")
        loss.backward()
        opt.step()
        state = [tuple(s.detach() for s in layer_state) for layer_state in state]
        if k >= warmup:
            steps.append(time.perf_counter() - t)
    median = statistics.median(steps)
    return {"chars_per_s": T * S / median, "step_s": steps, "impl": impl}


def measure_generate(cfg, impl="hand", chars=500, warmup=10, seed=0, temp=0.7):
    """chars/s of one-stream generation: one char at a time, sampled and fed back."""
    torch.manual_seed(seed)
    spec = read_cfg(cfg)
    model = Model(spec, impl)
    model.eval()
    with torch.inference_mode():
        state = model.init_state(1)
        c = 10

        def step(c, state):
            logits, state = model(torch.tensor([[c]]), state)
            p = torch.softmax(logits[0, 0] / temp, dim=0)
            return int(torch.multinomial(p, 1)), state
        for _ in range(warmup):
            c, state = step(c, state)
        t = time.perf_counter()
        for _ in range(chars):
            c, state = step(c, state)
        elapsed = time.perf_counter() - t
    return {"chars_per_s": chars / elapsed, "chars": chars, "impl": impl}


def matmul_peak(n=2048, repeats=5):
    """torch's float32 (n x n) @ (n x n) GFLOP/s, best of `repeats` after one warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    return 2.0 * n ** 3 / fastest(lambda: torch.matmul(a, b, out=c), repeats) / 1e9


def blas_label():
    """The BLAS torch was built with (BLAS_INFO in torch.__config__.show()) and its threads."""
    import re
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return f"{m.group(1) if m else 'unknown'}, {torch.get_num_threads()} threads"
