"""Learning-rate policies and Darknet's update rules (SGD with momentum and decay, Adam),
darknetpy's AdamW (Adam with decoupled weight decay), and `EMA`, the average of the weights a run
keeps beside them (`[net] ema_alpha`).

The accumulated updates (`upd`, Darknet's *_updates) hold NEGATIVE gradients summed over the
B = batch * time_steps rows of one update; SGD keeps what momentum leaves in them, Adam zeroes them.
"""
import contextlib
import math

import numpy as np

from . import kernels

POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "random")


def read_policy(net):
    """Policy options from the [net] section (Darknet's parse_net_options), as a plain dict."""
    hp = {"policy": net.str("policy", "constant"),
          "learning_rate": net.float("learning_rate", 0.001),
          "burn_in": net.int("burn_in", 0), "power": net.float("power", 4.0),
          "max_batches": net.int("max_batches", 0)}
    policy = hp["policy"]
    if policy not in POLICIES:  # Darknet says "Couldn't find policy" and goes constant; we refuse.
        raise net.error(f"unknown policy '{policy}'; expected one of {', '.join(POLICIES)}", "policy")
    if policy == "step":
        hp.update(step=net.int("step", 1), scale=net.float("scale", 1.0))
    elif policy == "steps":
        hp.update(steps=net.ints("steps"), scales=net.floats("scales"))
        if len(hp["steps"]) != len(hp["scales"]):
            raise net.error(f"steps has {len(hp['steps'])} entries but scales has {len(hp['scales'])}", "scales")
    elif policy == "exp":
        hp.update(gamma=net.float("gamma", 1.0))
    elif policy == "sigmoid":
        hp.update(gamma=net.float("gamma", 1.0), step=net.int("step", 1))
    elif policy == "poly" and hp["max_batches"] <= 0:
        raise net.error("policy=poly needs max_batches > 0", "policy")
    return hp


def position(hp, n):
    """Where update n is in the schedule: n itself, unless a resume moved the run's end (`anchor`,
    see `continue_policy`): then the schedule still ahead at update n_a, the fraction u_a of it
    done, is spread over the updates from n_a to the end H = hp["max_batches"]:

        position(n) = H * (u_a + (n - n_a) / (H - n_a) * (1 - u_a))

    so the rate goes on from where it was, without a jump, and reaches the schedule's end at H."""
    anchor, end = hp.get("anchor"), hp["max_batches"]
    if not anchor or end <= anchor[0]:
        return n
    n_a, u_a = anchor
    return end * (u_a + (n - n_a) / (end - n_a) * (1 - u_a))


def done(hp, n):
    """The fraction of the schedule `hp` run by update n (1: at or past its end)."""
    return min(1.0, position(hp, n) / hp["max_batches"])


def continue_policy(hp, ran, n, max_batches):
    """The schedule of a run resumed at update n with a new end `max_batches` (a higher
    --max-batches, a --time-budget), after running `ran` (the hp it had): the cfg's policy `hp`
    stretched to the new end, with the part of it still ahead spread over the updates left
    (`position`). A run at the end of its schedule (finished: poly's rate is 0) starts it again
    over the updates added, from learning_rate without burn_in: a warm restart."""
    at = done(ran, n)
    return stretch_policy(dict(hp, anchor=[int(n), 0.0 if at >= 1 else at]), max_batches)


def learning_rate(hp, n, rng=None):
    """The rate for update number n (n = seen / (batch * time_steps), the first update has n = 1)."""
    lr = hp["learning_rate"]
    if n < hp["burn_in"]:
        return lr * (n / hp["burn_in"]) ** hp["power"]
    n = position(hp, n)
    policy = hp["policy"]
    if policy == "step":
        return lr * hp["scale"] ** (n // hp["step"])
    if policy == "steps":
        for step, scale in zip(hp["steps"], hp["scales"]):
            if step > n:
                break
            lr *= scale
        return lr
    if policy == "exp":
        return lr * hp["gamma"] ** n
    if policy == "poly":
        return lr * max(0.0, 1 - n / hp["max_batches"]) ** hp["power"]
    if policy == "sigmoid":
        # Darknet computes n - step unsigned, so its rate is 0 before `step`; we use the real formula.
        x = hp["gamma"] * (n - hp["step"])
        return lr / (1 + math.exp(x)) if x < 700 else 0.0
    if policy == "random":
        return lr * float(rng.random()) ** hp["power"]
    return lr


def stretch_policy(hp, max_batches):
    """The policy `hp` (read for hp["max_batches"] updates) run over `max_batches` instead: poly's
    horizon moves, step/steps/sigmoid's update numbers scale, exp's gamma is re-rooted so that
    gamma^max_batches is the same; burn_in stays. A cfg without max_batches only gets the horizon."""
    out = dict(hp, max_batches=int(max_batches))
    if hp["max_batches"] <= 0:
        return out
    scale = max_batches / hp["max_batches"]
    if hp["policy"] in ("step", "sigmoid"):
        out["step"] = max(1, round(hp["step"] * scale))
    elif hp["policy"] == "steps":
        out["steps"] = [max(1, round(s * scale)) for s in hp["steps"]]
    elif hp["policy"] == "exp":
        out["gamma"] = hp["gamma"] ** (1 / scale)
    return out


class Optimizer:
    """What every optimizer shares: the step count t, darknetpy's `clip` of the global gradient
    norm, and a state that a checkpoint saves and restores.

    A subclass sets `name`, lists in `buffers` the names of its per-slot arrays (lists of arrays,
    one per (param, upd, kind) slot, in slot order), and defines `update(slots, lr, B, moves)` and
    `hyperparameters()`. `state()` then holds t and those buffers, and is all a checkpoint stores
    besides the slots' own upd arrays, so a new optimizer is one subclass.

    `moves` are an EMA's moves of this update (`EMA.moves`: {id(parameter): (s, D, 1 - D)}): an
    optimizer that folds a slot's move into its own pass over the slot (Adam: the parameter is then
    read once) returns the ids it moved, and `EMA.update` moves the rest.
    """
    name = None
    buffers = ()

    def __init__(self, decay, clip=0.0):
        self.decay, self.clip = decay, clip
        self.t = 0  # updates so far (Adam's bias correction)
        self.planned = 0.0  # the passes over the training text the schedule plans (0: not known), as of this update
        for name in self.buffers:
            setattr(self, name, [])

    def step(self, slots, lr, B, moves=None, planned=0.0):
        """One update with rate lr and divisor B = batch * time_steps, in a schedule that plans
        `planned` passes over the training text (0: not known; AdamW's `epochs` reads it); returns
        the ids of the parameters whose average it moved (of `moves`, see the class)."""
        self.t += 1
        self.planned = planned
        if self.clip > 0:  # darknetpy's `clip`: bound the global L2 norm of the mean gradient
            norm = math.sqrt(sum(float(np.dot(u.ravel(), u.ravel())) for _, u, _ in slots)) / B
            if norm > self.clip:
                for _, u, _ in slots:
                    u *= np.float32(self.clip / norm)
        return self.update(slots, lr, B, moves or {})

    def state(self):
        """{"t": updates so far, <buffer name>: [array per slot], ...}: what a resumed run needs."""
        return {"t": self.t, **{name: getattr(self, name) for name in self.buffers}}

    def load_state(self, state):
        """Restore `state()`'s content; a buffer missing from it starts afresh (empty)."""
        self.t = int(state["t"])
        for name in self.buffers:
            setattr(self, name, list(state.get(name, [])))


class SGD(Optimizer):
    """Darknet's update_connected_layer: momentum, and weight decay on the weights only."""
    name = "sgd"

    def __init__(self, momentum=0.9, decay=0.0001, clip=0.0):
        super().__init__(decay, clip)
        self.momentum = momentum

    def hyperparameters(self):
        return {"optimizer": self.name, "momentum": self.momentum, "decay": self.decay, "clip": self.clip}

    def update(self, slots, lr, B, moves):
        f = np.float32
        for p, u, kind in slots:
            kernels.get("sgd", p, u)(p, u, f(-self.decay * B) if kind == "weights" else f(0), f(lr / B), f(self.momentum))
        return set()


class Adam(Optimizer):
    """Darknet's adam_update, with moments m and v per slot (created at the first update). Each slot
    is one call of `kernels.adam_ema`: the weights' `shrink` (AdamW's), the Adam step and the EMA's
    move of the slot's average (`moves`) in one pass over its elements."""
    name = "adam"
    buffers = ("m", "v")

    def __init__(self, B1=0.9, B2=0.999, eps=1e-7, decay=0.0001, clip=0.0):
        super().__init__(decay, clip)
        self.B1, self.B2, self.eps = B1, B2, eps

    def hyperparameters(self):
        return {"optimizer": self.name, "B1": self.B1, "B2": self.B2, "eps": self.eps,
                "decay": self.decay, "clip": self.clip}

    def shrink(self, lr, kind):
        """The factor a slot's parameters are multiplied by before the step: 1 (AdamW's decay)."""
        return np.float32(1)

    def update(self, slots, lr, B, moves):
        f = np.float32
        if not self.m:
            self.m = [np.zeros_like(p) for p, _, _ in slots]
            self.v = [np.zeros_like(p) for p, _, _ in slots]
        c1, c2 = f(1 - self.B1 ** self.t), f(1 - self.B2 ** self.t)
        moved = set()
        for (p, u, kind), m, v in zip(slots, self.m, self.v):  # Darknet's Adam decays biases and scales too
            s, D, rest = moves.get(id(p), (None, f(1), f(0)))
            arrays = (p, u, m, v) if s is None else (p, u, m, v, s)
            kernels.get("adam_ema", *arrays)(p, u, m, v, s, self.shrink(lr, kind), f(-self.decay * B), f(self.B1),
                                             f(1 - self.B1), f(self.B2), f(1 - self.B2), c1, c2, f(lr), f(self.eps), D, rest)
            if s is not None:
                moved.add(id(p))
        return moved


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019), darknetpy's `[net]
    weight_decay=W` with adam=1: before each Adam step the weights shrink, p -= lr·W·p, outside the
    moments. Darknet's Adam adds `decay` into the gradient instead (L2), which the division by
    sqrt(v) then rescales per parameter, so weights with large gradients are barely decayed.
    Only "weights" slots decay (as SGD's decay), not biases or scales.

    `epochs` (`[net] weight_decay_epochs=E`, 0: off): W is the decay of a run planned to pass over
    its training text up to E times; one planned for `planned` > E passes (its schedule's end, the
    cfg's max_batches or what --time-budget fits and refits, in passes) decays by W·planned/E. A
    run overfits more the more passes it makes, and the decay that suits it grows with them; a
    larger text, or a shorter budget, keeps W."""
    name = "adamw"

    def __init__(self, weight_decay, epochs=0.0, **adam):
        super().__init__(**adam)
        self.weight_decay, self.epochs = weight_decay, epochs

    def hyperparameters(self):
        return {**super().hyperparameters(), "optimizer": self.name, "weight_decay": self.weight_decay,
                **({"weight_decay_epochs": self.epochs} if self.epochs else {})}

    def strength(self, planned):
        """The decay in effect in a run planned for `planned` passes over its training text."""
        if self.epochs and planned > self.epochs:
            return self.weight_decay * planned / self.epochs
        return self.weight_decay

    def shrink(self, lr, kind):
        return np.float32(1 - lr * self.strength(self.planned)) if kind == "weights" else np.float32(1)


def parameter_arrays(net):
    """The whole arrays `net.params()`'s views look into (a Dense's W holds several gates, stored
    transposed), each once, in order: everything the .weights file holds, as contiguous arrays."""
    whole = {}
    for view in net.params().values():
        array = view if view.base is None else view.base
        whole.setdefault(id(array), array)
    return list(whole.values())


class EMA:
    """darknetpy's `[net] ema_alpha=D`: an exponential moving average of the weights, kept beside
    training and never fed back into it. After update n each array w of `parameter_arrays`
    (weights, biases, and batchnorm's scales and rolling statistics) moves its shadow s:

        s = D_n s + (1 - D_n) w,   D_n = min(D, (1 + n) / (10 + n))   (s starts as a copy of w)

    the update formula of the AlexeyAB fork's ema_alpha (its ema_update), in place in float32, with
    TensorFlow's ExponentialMovingAverage(num_updates) warm-up: the window is at most about the last
    n/9 updates, so a short run (a small --time-budget) averages its end, not its random start; the
    cap D binds from n = (10 D - 1) / (1 - D) on (about 20,000 updates for 0.9995). The trainer
    scores the shadows and hands them over as the best and final weights (`applied`).

    Adam folds the move of its slots' parameters into its update's pass (`moves`, kernels.adam_ema);
    `update` is the reference it equals, and moves the arrays no optimizer did (batchnorm's rolling
    statistics, SGD's slots)."""
    BLOCK = 65536  # floats taken at a time: the three passes over them run in the L2 cache

    def __init__(self, alpha):
        self.alpha = alpha
        self.shadow = []  # one float32 array per parameter array; empty before the first update
        self.part = np.empty(self.BLOCK, np.float32)  # (1 - D_n) w, one block at a time

    def decay(self, n):
        """D_n, the decay after update n (counted from 1)."""
        return min(self.alpha, (1 + n) / (10 + n))

    def factors(self, n):
        """D_n and 1 - D_n in float32, as the move of update n multiplies by them."""
        d = self.decay(n)
        return np.float32(d), np.float32(1 - d)

    def moves(self, net, n):
        """The moves of update n an optimizer may fold into its pass: {id(w): (s, D_n, 1 - D_n)} for
        each float32 parameter array w and its shadow s; none before the first update (`update`
        copies the weights then)."""
        if not self.shadow:
            return {}
        D, rest = self.factors(n)
        return {id(w): (s, D, rest) for s, w in zip(self.shadow, parameter_arrays(net)) if w.dtype == s.dtype}

    def update(self, net, n, moved=frozenset()):
        """Move the shadows towards the network's weights after update n, but those of the arrays
        whose ids are in `moved` (the optimizer's pass moved them)."""
        arrays = parameter_arrays(net)
        if not self.shadow:
            self.shadow = [a.astype(np.float32, copy=True) for a in arrays]
            return
        D, rest = self.factors(n)
        for s, w in zip(self.shadow, arrays):
            if id(w) in moved:
                continue
            s, w = s.reshape(-1), w.reshape(-1)
            for i in range(0, s.size, self.BLOCK):
                block, part = s[i:i + self.BLOCK], self.part[:min(self.BLOCK, s.size - i)]
                np.multiply(w[i:i + self.BLOCK], rest, out=part)
                block *= D
                block += part

    def load(self, shadow):
        """Continue from saved shadows (a checkpoint's); none saved: start at the next update."""
        self.shadow = [np.array(s, np.float32) for s in shadow]

    @contextlib.contextmanager
    def applied(self, net):
        """The average in the network's weights for the block; yields the trained weights (copies),
        which are put back after it, bit for bit. Before any update the weights are their own average."""
        arrays = parameter_arrays(net)
        trained = [a.copy() for a in arrays]
        try:
            for a, s in zip(arrays, self.shadow):
                a[...] = s
            net.refresh()
            yield trained
        finally:
            for a, t in zip(arrays, trained):
                a[...] = t
            net.refresh()
