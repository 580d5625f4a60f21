"""Learning-rate policies and Darknet's update rules (SGD with momentum and decay, Adam).

The accumulated updates (`upd`, Darknet's *_updates) hold NEGATIVE gradients summed over the
B = batch * time_steps rows of one update; SGD keeps what momentum leaves in them, Adam zeroes them.
"""
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


def learning_rate(hp, n, rng=None):
    """The rate for update number n (n = seen / (batch * time_steps), the first update has n = 1)."""
    lr = hp["learning_rate"]
    if n < hp["burn_in"]:
        return lr * (n / hp["burn_in"]) ** hp["power"]
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


class Optimizer:
    """Darknet's update_connected_layer (SGD) and adam_update, applied to (param, upd, kind) slots."""

    def __init__(self, momentum, decay, adam=False, B1=0.9, B2=0.999, eps=1e-7, clip=0.0):
        self.momentum, self.decay, self.adam = momentum, decay, adam
        self.B1, self.B2, self.eps, self.clip = B1, B2, eps, clip
        self.t = 0           # updates so far (Adam's bias correction)
        self.m, self.v = [], []  # Adam moments, one per slot

    def step(self, slots, lr, B):
        """One update with rate lr and divisor B = batch * time_steps."""
        self.t += 1
        f = np.float32
        if self.clip > 0:  # darknetpy's `clip`: bound the global L2 norm of the mean gradient
            norm = math.sqrt(sum(float(np.dot(u.ravel(), u.ravel())) for _, u, _ in slots)) / B
            if norm > self.clip:
                for _, u, _ in slots:
                    u *= f(self.clip / norm)
        if self.adam:
            if not self.m:
                self.m = [np.zeros_like(p) for p, _, _ in slots]
                self.v = [np.zeros_like(p) for p, _, _ in slots]
            c1, c2 = f(1 - self.B1 ** self.t), f(1 - self.B2 ** self.t)
            for (p, u, _), m, v in zip(slots, self.m, self.v):  # Darknet's Adam decays biases and scales too
                kernels.get("adam", p, u, m, v)(p, u, m, v, f(-self.decay * B), f(self.B1), f(1 - self.B1), f(self.B2), f(1 - self.B2),
                     c1, c2, f(lr), f(self.eps))
            return
        for p, u, kind in slots:
            kernels.get("sgd", p, u)(p, u, f(-self.decay * B) if kind == "weights" else f(0), f(lr / B), f(self.momentum))

    def state(self):
        """Everything besides the slots' own upd arrays that a resumed run needs."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def set_state(self, state):
        self.t, self.m, self.v = int(state["t"]), list(state["m"]), list(state["v"])
