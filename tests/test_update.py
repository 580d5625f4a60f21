"""The optimizer update in one pass (issue 32, bfstep): `adam_ema` (_optim.h) does AdamW's shrink,
Adam's step and the EMA's move of each slot's average in one pass over its elements, on the step
loops' team. It must give the bits of the sequence it replaced, each step by its own code: the
weights shrunk by numpy, then kernels.adam (the numpy reference), then optim.EMA.update's numpy
passes; on 1, 2 and 3 threads, in every kernel mode, for the kernel alone and for a network's
updates (so a resumed run and every earlier checkpoint stay bit for bit what they were).
"""
import types

import numpy as np
import pytest

from darknetpy import kernels, optim
from darknetpy.network import Network
from test_head import needs_team, on_threads
from test_kernels import K

f = np.float32
B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 0.004
SIZE = 3 * 65536 + 4096 * 5 + 777  # past the EMA's 65536-float blocks, the team's shares; the last short


def slot(seed):
    """p, u, m, v, s of one slot, as they are after some updates (v >= 0)."""
    rng = np.random.default_rng(seed)
    p, u, m, s = (rng.normal(0, 1, SIZE).astype(np.float32) for _ in range(4))
    v = np.abs(rng.normal(0, 1e-3, SIZE)).astype(np.float32)
    u[::97] = 0  # no gradient at some elements
    return p, u, m, v, s


def sequence(arrays, shrink, decay, t, n, average):
    """The update before bfstep, each step by its own code: p *= shrink (optim.AdamW's loop),
    kernels.adam, then optim.EMA.update (its blocks of numpy passes) on a network of one array."""
    p, u, m, v, s = arrays
    if shrink != 1:
        p *= shrink
    kernels.adam(p, u, m, v, decay, f(B1), f(1 - B1), f(B2), f(1 - B2), f(1 - B1 ** t), f(1 - B2 ** t), f(LR), f(EPS))
    if average:
        ema = optim.EMA(0.9995)
        ema.shadow = [s]
        ema.update(types.SimpleNamespace(params=lambda: {"w": p}), n)


def fused(adam_ema, arrays, shrink, decay, t, n, average):
    p, u, m, v, s = arrays
    D, rest = optim.EMA(0.9995).factors(n)
    adam_ema(p, u, m, v, s if average else None, shrink, decay, f(B1), f(1 - B1), f(B2), f(1 - B2),
             f(1 - B1 ** t), f(1 - B2 ** t), f(LR), f(EPS), D, rest)


CASES = [  # shrink (AdamW's weights; 1: none), decay (Darknet's L2 through the gradient), the average or not
    (f(1 - LR * 0.02), f(0), True),
    (f(1), f(-0.0005 * 1024), True),
    (f(1 - LR * 0.3), f(0), False),
    (f(1), f(0), False),
]


@pytest.mark.parametrize("shrink, decay, average", CASES)
def test_the_numpy_reference_is_the_sequence(shrink, decay, average):
    """kernels.adam_ema (the reference the C form is held to) against the three steps' own code."""
    want, got = slot(1), slot(1)
    sequence(want, shrink, decay, 7, 5000, average)
    fused(kernels.adam_ema, got, shrink, decay, 7, 5000, average)
    for a, b, name in zip(got, want, "p u m v s".split()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@needs_team
@pytest.mark.parametrize("shrink, decay, average", CASES)
def test_the_c_pass_gives_the_bits_of_the_sequence_on_any_number_of_threads(shrink, decay, average):
    """The C adam_ema on 1, 2 and 3 threads: p, u (zeroed), m, v and the average s, every element,
    the bits of the sequence (a share skipped, a moment or the average not written back, the shrink
    or the move applied twice or in another order would not be). n = 5 is in the EMA's warm-up
    (D = 0.4), n = 50,000 past its cap."""
    for t, n in ((1, 5), (300, 50_000)):
        want = slot(t)
        sequence(want, shrink, decay, t, n, average)

        def run():
            arrays = slot(t)
            fused(K.adam_ema, arrays, shrink, decay, t, n, average)
            return arrays
        for got in on_threads(run):
            for a, b, name in zip(got, want, "p u m v s".split()):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}, update {n}")


@needs_team
def test_the_c_pass_checks_its_arguments():
    p, u, m, v, s = slot(2)
    scalars = [f(1)] * 12
    with pytest.raises(ValueError, match="floats"):
        K.adam_ema(p, u, m[:-1].copy(), v, s, *scalars)
    with pytest.raises(ValueError, match="floats"):
        K.adam_ema(p, u, m, v, s[:-1].copy(), *scalars)
    with pytest.raises(TypeError):
        K.adam_ema(p, u, m, v, s, *scalars[:-1])
    with pytest.raises(TypeError):
        K.adam_ema(p.astype(np.float64), u, m, v, s, *scalars)


CFG = """[net]
inputs=256
batch=8
time_steps=8
learning_rate=0.01
{opt}

[gru]
output=64
tanh=1

[dropout]
probability=0.25

[connected]
output=256
activation=linear
batch_normalize=1

[softmax]
"""


class ThreePasses(optim.AdamW):
    """The update before bfstep: the weights shrunk by numpy, the adam op per slot, and no move of
    the average (EMA.update makes it after, in its numpy passes, as the trainer called it)."""

    def update(self, slots, lr, B, moves):
        if not self.m:
            self.m = [np.zeros_like(p) for p, _, _ in slots]
            self.v = [np.zeros_like(p) for p, _, _ in slots]
        c1, c2 = f(1 - self.B1 ** self.t), f(1 - self.B2 ** self.t)
        for (p, u, kind), m, v in zip(slots, self.m, self.v):
            if kind == "weights" and self.weight_decay:
                p *= f(1 - lr * self.weight_decay)
            kernels.adam(p, u, m, v, f(-self.decay * B), f(self.B1), f(1 - self.B1), f(self.B2), f(1 - self.B2),
                         c1, c2, f(lr), f(self.eps))
        return set()


@pytest.mark.usefixtures("kernels_mode")
@pytest.mark.parametrize("opt", ["adam=1\nweight_decay=0.05\nclip=1", "adam=1\ndecay=0.001",
                                 "momentum=0.9\ndecay=0.001"])
def test_a_networks_updates_with_the_average_are_the_sequences_bits(write_cfg, opt):
    """Six updates of a [gru] + [dropout] + batchnorm [connected] network with ema_alpha, the
    average handed to train_step (as the trainer does): its weights, moments and averages (the
    rolling statistics' moved by the EMA, the slots' by Adam's pass) are the bits of a twin updated
    by the sequence (ThreePasses, SGD unchanged) with EMA.update called after each update."""
    cfg = write_cfg(CFG.format(opt=opt + "\nema_alpha=0.8"))
    nets = [Network(cfg, seed=3) for _ in range(2)]
    new, old = nets
    if new.optimizer.name != "sgd":
        o = new.optimizer
        old.optimizer = ThreePasses(getattr(o, "weight_decay", 0.0), B1=o.B1, B2=o.B2, eps=o.eps, decay=o.decay,
                                    clip=o.clip)
    averages = [optim.EMA(new.ema_alpha) for _ in nets]
    rng = np.random.default_rng(4)
    for _ in range(6):
        x, y = rng.integers(0, 256, (2, 8, 8))
        new.train_step(x, y, average=averages[0])
        old.train_step(x, y)
        averages[1].update(old, old.batch_num)
    for a, b in zip(optim.parameter_arrays(new), optim.parameter_arrays(old)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(*(e.shadow for e in averages)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(averages[0].shadow[0], optim.parameter_arrays(new)[0])  # the average moved apart
    for name in new.optimizer.buffers:
        for a, b in zip(getattr(new.optimizer, name), getattr(old.optimizer, name)):
            np.testing.assert_array_equal(a, b, err_msg=name)
    for (_, a, _), (_, b, _) in zip(new.slots(), old.slots()):
        np.testing.assert_array_equal(a, b)


CHILD = """
import numpy as np
from darknetpy import _kernels as K, kernels
import test_update as t
assert K.isa == {isa!r}, K.isa
for shrink, decay, average in t.CASES:
    want, got = t.slot(3), t.slot(3)
    t.sequence(want, shrink, decay, 9, 40, average)
    t.fused(K.adam_ema, got, shrink, decay, 9, 40, average)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
print("same bits")
"""


@needs_team
@pytest.mark.parametrize("mode, isa", [("avx2", "avx2+fma"), ("1", "avx512f")])
def test_the_baseline_and_the_avx512_builds_of_the_pass_give_the_same_bits(mode, isa):
    """The pass has two builds, the module's baseline one and an AVX-512 one, which the module picks
    at import (DARKNETPY_KERNELS=avx2 makes it the baseline's, as on a CPU without AVX-512): each,
    in a process of its own, gives the bits of the sequence."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    if mode == "1" and K.isa != "avx512f":
        pytest.skip("this CPU has no AVX-512")
    env = dict(os.environ, DARKNETPY_KERNELS=mode,
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ["PYTHONPATH"]]))
    r = subprocess.run([sys.executable, "-c", CHILD.format(isa=isa)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "same bits", r.stderr
