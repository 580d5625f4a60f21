"""Learning-rate policies and update rules, against DESIGN.md's formulas written out here.

Rates are compared to 1e-12 relative (they are computed in double). Updates on float32 arrays are
compared to a float64 reference to rtol 2e-6 (float32 arithmetic); the network-level checks run
float64 nets and compare to 1e-6 relative (the update coefficients are float32 as in Darknet).
"""
import math

import numpy as np
import pytest

from darknetpy.errors import DarknetpyError
from darknetpy.network import Network
from darknetpy.optim import SGD, Adam

# batch=2, time_steps=3: update n is seen / 6.
NET = "[net]\ninputs=3\nbatch=2\ntime_steps=3\nlearning_rate={lr}\n{extra}\n[connected]\noutput=3\n[softmax]\n"


def rates(write_cfg, extra, ns, lr=0.1):
    net = Network(write_cfg(NET.format(lr=lr, extra=extra)))
    out = []
    for n in ns:
        net.seen = 6 * n
        assert net.batch_num == n
        out.append(net.learning_rate())
    return out


def close(got, want):
    assert len(got) == len(want)
    for n, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-12, abs=1e-300), f"entry {n}: {g} != {w}"


N = list(range(0, 13))


def test_constant(write_cfg):
    close(rates(write_cfg, "policy=constant", N), [0.1] * len(N))
    close(rates(write_cfg, "", N), [0.1] * len(N))  # the default policy


def test_step(write_cfg):
    close(rates(write_cfg, "policy=step\nstep=3\nscale=0.5", N), [0.1 * 0.5 ** (n // 3) for n in N])


def test_steps_scale_applies_at_the_step(write_cfg):
    got = rates(write_cfg, "policy=steps\nsteps=2,4,7\nscales=0.5,0.1,10", N, lr=0.2)
    want = []
    for n in N:
        r = 0.2
        for step, scale in ((2, 0.5), (4, 0.1), (7, 10)):
            if n >= step:
                r *= scale
        want.append(r)
    close(got, want)
    assert got[1] == pytest.approx(0.2) and got[2] == pytest.approx(0.1)  # n == step: scaled already
    assert got[4] == pytest.approx(0.01) and got[7] == pytest.approx(0.1)


def test_exp(write_cfg):
    close(rates(write_cfg, "policy=exp\ngamma=0.9", N), [0.1 * 0.9 ** n for n in N])


def test_poly(write_cfg):
    ns = list(range(0, 11))
    close(rates(write_cfg, "policy=poly\npower=2\nmax_batches=10", ns), [0.1 * (1 - n / 10) ** 2 for n in ns])
    close(rates(write_cfg, "policy=poly\nmax_batches=10", ns), [0.1 * (1 - n / 10) ** 4 for n in ns])  # power=4


def test_sigmoid_is_the_real_formula(write_cfg):
    got = rates(write_cfg, "policy=sigmoid\ngamma=2\nstep=4", N)
    close(got, [0.1 / (1 + math.exp(2 * (n - 4))) for n in N])
    assert all(r > 0.09 for r in got[:3])  # Darknet's unsigned n - step would give 0 here
    assert got[4] == pytest.approx(0.05)


@pytest.mark.parametrize("power", [None, 2, 1])
def test_burn_in(power, write_cfg):
    extra = "burn_in=5\n" + (f"power={power}\n" if power is not None else "")
    p = 4 if power is None else power
    close(rates(write_cfg, extra, N), [0.1 * (n / 5) ** p if n < 5 else 0.1 for n in N])


def test_burn_in_then_steps(write_cfg):
    got = rates(write_cfg, "burn_in=3\npower=2\npolicy=steps\nsteps=1,5\nscales=0.5,0.5", N)
    close(got, [0.1 * (n / 3) ** 2 if n < 3 else 0.1 * 0.5 * (0.5 if n >= 5 else 1) for n in N])


def test_random_policy_is_bounded(write_cfg):
    got = rates(write_cfg, "policy=random\npower=1", list(range(1, 50)))
    assert all(0 <= r <= 0.1 for r in got)
    assert len(set(got)) > 40


def test_policy_errors(write_cfg):
    for extra, line in (("policy=poly", 6), ("policy=sigmoidal", 6)):
        path = write_cfg(NET.format(lr=0.1, extra=extra))
        with pytest.raises(DarknetpyError) as err:
            Network(path)
        assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)


# ---- update arithmetic on small arrays -------------------------------------------------------------

def small_slots(rng, bn=True):
    kinds = ["biases", "weights"] + (["scales"] if bn else [])
    shapes = {"biases": (3,), "weights": (2, 3), "scales": (3,)}
    return [(rng.uniform(-1, 1, shapes[k]).astype(np.float32), np.zeros(shapes[k], np.float32), k) for k in kinds]


def test_sgd_update():
    rng = np.random.default_rng(0)
    slots = small_slots(rng)
    ref = [(p.astype(np.float64), u.astype(np.float64), k) for p, u, k in slots]
    opt = SGD(momentum=0.8, decay=0.01)
    lr, B = 0.3, 6
    for step in range(3):
        for (p, u, k), (rp, ru, _) in zip(slots, ref):
            g = rng.normal(size=p.shape)
            u += g.astype(np.float32)
            ru += g.astype(np.float32)
            # DESIGN.md: biases and scales: p += lr/B*u; u *= momentum (no decay);
            # weights: u += -decay*B*w; w += lr/B*u; u *= momentum.
            if k == "weights":
                ru += -0.01 * B * rp
            rp += lr / B * ru
            ru *= 0.8
        opt.step(slots, lr, B)
        for (p, u, k), (rp, ru, _) in zip(slots, ref):
            np.testing.assert_allclose(p, rp, rtol=2e-6, atol=1e-7, err_msg=f"{k} after update {step + 1}")
            np.testing.assert_allclose(u, ru, rtol=2e-6, atol=1e-7, err_msg=f"{k} momentum after {step + 1}")


def test_adam_update():
    rng = np.random.default_rng(1)
    slots = small_slots(rng)
    ref = [(p.astype(np.float64), k) for p, _, k in slots]
    m = [np.zeros(p.shape) for p, _, _ in slots]
    v = [np.zeros(p.shape) for p, _, _ in slots]
    B1, B2, eps, decay, lr, B = 0.85, 0.99, 1e-7, 0.02, 0.01, 8
    opt = Adam(B1=B1, B2=B2, eps=eps, decay=decay)
    for t in range(1, 4):
        for i, ((p, u, k), (rp, _)) in enumerate(zip(slots, ref)):
            g = rng.normal(size=p.shape).astype(np.float32)
            u += g
            # DESIGN.md Adam, t from 1, decay on every kind (biases and scales too), lr not / B.
            upd = g.astype(np.float64) - decay * B * rp
            m[i] = B1 * m[i] + (1 - B1) * upd
            v[i] = B2 * v[i] + (1 - B2) * upd * upd
            rp += lr * (m[i] / (1 - B1 ** t)) / (np.sqrt(v[i] / (1 - B2 ** t)) + eps)
        opt.step(slots, lr, B)
        for (p, u, k), (rp, _) in zip(slots, ref):
            np.testing.assert_allclose(p, rp, rtol=2e-6, atol=1e-7, err_msg=f"{k} after update {t}")
            assert np.all(u == 0), k


def test_adam_first_step_size_is_lr():
    """With bias correction at t = 1 every entry moves by ~lr·sign(update), whatever B is."""
    p = np.array([0.5, -0.25, 2.0], np.float32)
    u = np.array([3.0, -0.001, 40.0], np.float32)
    Adam(decay=0).step([(p, u, "biases")], 0.01, 1000)
    np.testing.assert_allclose(p, [0.51, -0.26, 2.01], rtol=0, atol=1e-6)


@pytest.mark.parametrize("adam", [False, True])
def test_clip_scales_the_update_when_the_mean_gradient_norm_is_large(adam):
    rng = np.random.default_rng(2)
    B, lr, clip = 4, 0.1, 0.5
    base = small_slots(rng)
    grads = [rng.normal(size=p.shape).astype(np.float32) * 5 for p, _, _ in base]
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)) / B
    assert norm > clip

    def run(clip_value, scale):
        slots = [(p.copy(), (g * np.float32(scale)).astype(np.float32), k) for (p, _, k), g in zip(base, grads)]
        opt = Adam(decay=0.001, clip=clip_value) if adam else SGD(momentum=0.5, decay=0.001, clip=clip_value)
        opt.step(slots, lr, B)
        return slots

    clipped, reference = run(clip, 1.0), run(0.0, clip / norm)
    for (p, u, k), (rp, ru, _) in zip(clipped, reference):
        np.testing.assert_allclose(p, rp, rtol=1e-5, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(u, ru, rtol=1e-5, atol=1e-7, err_msg=k)
    # Below the bound nothing changes.
    for (p, _, k), (rp, _, _) in zip(run(norm * 1.01, 1.0), run(0.0, 1.0)):
        np.testing.assert_array_equal(p, rp, err_msg=k)


def test_clip_and_adam_keys_are_read_from_net(write_cfg):
    net = Network(write_cfg(NET.format(lr=0.1, extra="clip=2.5\nadam=1\nB1=0.8\nB2=0.95\neps=0.001")))
    o = net.optimizer
    assert isinstance(o, Adam) and (o.clip, o.B1, o.B2, o.eps) == (2.5, 0.8, 0.95, 0.001)
    path = write_cfg(NET.format(lr=0.1, extra="clip=-1"))
    with pytest.raises(DarknetpyError) as err:
        Network(path)
    assert str(err.value).startswith(f"{path}:6: ")


# ---- updates through the network ------------------------------------------------------------------

TRAIN = ("[net]\ninputs=4\nbatch={batch}\nsubdivisions={subdivisions}\ntime_steps=3\nlearning_rate=0.5\n"
         "momentum=0.7\ndecay=0.01\npolicy=exp\ngamma=0.5\n{extra}\n"
         "[rnn]\noutput=3\nactivation=tanh\n[connected]\noutput=5\nactivation=linear\n[softmax]\n")


def twins(write_cfg, batch, subdivisions, extra=""):
    """The net under test and a twin with the same parameters used to measure gradients."""
    text = TRAIN.format(batch=batch, subdivisions=subdivisions, extra=extra)
    net = Network(write_cfg(text, "a.cfg"), seed=3, dtype=np.float64)
    twin = Network(write_cfg(text, "b.cfg"), seed=4, dtype=np.float64)
    rng = np.random.default_rng(8)
    for key, v in net.params().items():
        v[...] = rng.uniform(-0.8, 0.8, v.shape)
        twin.params()[key][...] = v
    return net, twin


def params_of(net):
    return {k: np.array(v, copy=True) for k, v in net.params().items()}


def gradient(twin, x, y):
    """The negative gradient of one datum at the twin's parameters, its state carried."""
    for v in twin.params(updates=True).values():
        v[...] = 0
    cost = float(twin.accumulate(x, y))
    return cost, {k: np.array(v, copy=True) for k, v in twin.params(updates=True).items()}


def datum(net, seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (net.time_steps, net.streams, net.inputs)),
            rng.integers(0, net.outputs, (net.time_steps, net.streams)))


def sgd_reference(theta, upd, lr, B, momentum=0.7, decay=0.01):
    new, left = {}, {}
    for key, p in theta.items():
        u = upd[key].copy()
        if key.endswith("weights"):
            u += -decay * B * p
        new[key] = p + lr / B * u
        left[key] = u * momentum
    return new, left


def assert_dicts(got, want, rtol=1e-6, atol=1e-9, what=""):
    assert set(got) >= set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=f"{what} {key}")


def test_subdivisions_update_every_second_datum(write_cfg):
    """batch=4, subdivisions=2: 2 streams per datum, an update after every 2nd datum, divided by
    B = batch * time_steps = 12, using the sum of both datums' gradients; the rate uses n = 1."""
    net, twin = twins(write_cfg, batch=4, subdivisions=2)
    assert net.streams == 2
    theta0 = params_of(net)
    (x1, y1), (x2, y2), (x3, y3) = datum(net, 1), datum(net, 2), datum(net, 3)
    c1, g1 = gradient(twin, x1, y1)
    c2, g2 = gradient(twin, x2, y2)

    assert float(net.train_step(x1, y1)) == pytest.approx(c1, rel=1e-12)
    assert net.seen == 6 and net.batch_num == 0
    assert_dicts(params_of(net), theta0, rtol=0, atol=0, what="no update after datum 1:")
    assert_dicts(net.params(updates=True), g1, rtol=1e-12, what="gradient of datum 1:")

    assert float(net.train_step(x2, y2)) == pytest.approx(c2, rel=1e-12)
    assert net.seen == 12 and net.batch_num == 1
    assert net.learning_rate() == pytest.approx(0.25)
    theta1, left = sgd_reference(theta0, {k: g1[k] + g2[k] for k in g1}, lr=0.25, B=12)
    assert_dicts(params_of(net), theta1, what="after update 1:")
    assert_dicts(net.params(updates=True), left, what="momentum left after update 1:")

    # Datum 3: no update; its gradient adds to what momentum left.
    theta1, left = params_of(net), {k: np.array(v, copy=True) for k, v in net.params(updates=True).items()}
    for key, v in twin.params().items():
        v[...] = theta1[key]
    c3, g3 = gradient(twin, x3, y3)
    assert float(net.train_step(x3, y3)) == pytest.approx(c3, rel=1e-12)
    assert_dicts(params_of(net), theta1, rtol=0, atol=0, what="no update after datum 3:")
    assert_dicts(net.params(updates=True), {k: left[k] + g3[k] for k in g3}, rtol=1e-12,
                 what="accumulated after datum 3:")


def test_sgd_two_updates_through_the_network(write_cfg):
    """subdivisions=1: momentum leftovers carry into the next update; decay only on weights."""
    net, twin = twins(write_cfg, batch=2, subdivisions=1)
    theta = params_of(net)
    left = {k: np.zeros_like(v) for k, v in net.params(updates=True).items()}
    for i, lr in ((1, 0.25), (2, 0.125)):
        x, y = datum(net, 10 + i)
        for key, v in twin.params().items():
            v[...] = theta[key]
        _, g = gradient(twin, x, y)
        net.train_step(x, y)
        theta, left = sgd_reference(theta, {k: left[k] + g[k] for k in g}, lr=lr, B=6)
        assert_dicts(params_of(net), theta, what=f"after update {i}:")
        assert_dicts(net.params(updates=True), left, what=f"momentum after update {i}:")
        # Continue from the net's own values (float32 coefficients would otherwise drift the reference).
        theta = params_of(net)
        left = {k: np.array(v, copy=True) for k, v in net.params(updates=True).items()}


def test_adam_through_the_network(write_cfg):
    """adam=1: t counts updates from 1; decay reaches biases; lr is not divided by B."""
    net, twin = twins(write_cfg, batch=2, subdivisions=1, extra="adam=1\nB1=0.8\nB2=0.9\neps=1e-6")
    theta = params_of(net)
    trainable = list(net.params(updates=True))
    m = {k: 0.0 for k in trainable}
    v = {k: 0.0 for k in trainable}
    B = 6
    for t, lr in ((1, 0.25), (2, 0.125), (3, 0.0625)):
        x, y = datum(net, 20 + t)
        for key, p in twin.params().items():
            p[...] = theta[key]
        _, g = gradient(twin, x, y)
        net.train_step(x, y)
        for k in trainable:
            u = g[k] - 0.01 * B * theta[k]
            m[k] = 0.8 * m[k] + 0.2 * u
            v[k] = 0.9 * v[k] + 0.1 * u * u
            theta[k] = theta[k] + lr * (m[k] / (1 - 0.8 ** t)) / (np.sqrt(v[k] / (1 - 0.9 ** t)) + 1e-6)
        assert_dicts(params_of(net), theta, rtol=1e-6, atol=1e-9, what=f"after Adam update {t}:")
        theta = params_of(net)
        for k in trainable:
            assert np.all(net.params(updates=True)[k] == 0), k


@pytest.mark.parametrize("extra, text_chars, decays", [
    ("", 0, (0.3, 0.3, 0.3)),
    # weight_decay_epochs=E: W·P/E once the schedule plans P > E passes over the training text
    # (6 chars an update, so max_batches=40 over 60 chars is P = 4; the third update's end is moved
    # to 100 first, P = 10, as --time-budget's refit moves it)
    ("max_batches=40\nweight_decay_epochs=1", 60, (1.2, 1.2, 3.0)),
    ("max_batches=40\nweight_decay_epochs=8", 60, (0.3, 0.3, 0.375)),
    ("max_batches=40\nweight_decay_epochs=1", 0, (0.3, 0.3, 0.3)),  # the text's length not known
])
def test_adamw_decays_the_weights_outside_the_moments(write_cfg, extra, text_chars, decays):
    """weight_decay=W with adam=1 (AdamW): weights shrink by lr·W before Adam's step, which sees
    the gradient alone (decay defaults to 0); biases are not decayed. With weight_decay_epochs=E
    the shrink is lr·W·P/E for a schedule planning P > E passes. Written out in float64."""
    text = TRAIN.replace("decay=0.01\n", "")
    net = Network(write_cfg(text.format(batch=2, subdivisions=1,
                                        extra="adam=1\nB1=0.8\nB2=0.9\neps=1e-6\nweight_decay=0.3\n" + extra), "a.cfg"),
                  seed=3, dtype=np.float64)
    net.text_chars = text_chars
    twin = Network(write_cfg(text.format(batch=2, subdivisions=1, extra="adam=1"), "b.cfg"), seed=4, dtype=np.float64)
    assert net.optimizer.name == "adamw" and net.optimizer.decay == 0 and net.optimizer.weight_decay == 0.3
    rng = np.random.default_rng(8)
    for key, v in net.params().items():
        v[...] = rng.uniform(-0.8, 0.8, v.shape)
    theta = params_of(net)
    trainable = list(net.params(updates=True))
    m = {k: 0.0 for k in trainable}
    v = {k: 0.0 for k in trainable}
    for t, lr, W in zip((1, 2, 3), (0.25, 0.125, 0.0625), decays):
        x, y = datum(net, 30 + t)
        for key, p in twin.params().items():
            p[...] = theta[key]
        _, g = gradient(twin, x, y)
        if t == 3:
            net.hp = dict(net.hp, max_batches=100)
        net.train_step(x, y)
        for k in trainable:
            decayed = theta[k] * (1 - lr * W) if k.endswith("weights") else theta[k]
            m[k] = 0.8 * m[k] + 0.2 * g[k]
            v[k] = 0.9 * v[k] + 0.1 * g[k] * g[k]
            theta[k] = decayed + lr * (m[k] / (1 - 0.8 ** t)) / (np.sqrt(v[k] / (1 - 0.9 ** t)) + 1e-6)
        assert_dicts(params_of(net), theta, rtol=1e-6, atol=1e-9, what=f"after AdamW update {t}:")
        theta = params_of(net)


@pytest.mark.parametrize("extra, key, says", [
    ("weight_decay=0.1", "weight_decay", "needs adam=1"),
    ("adam=1\nweight_decay=-0.1", "weight_decay", "must be >= 0"),
    ("adam=1\nweight_decay=0.1\ndecay=0.0005", "decay", "set decay=0"),
    ("adam=1\nweight_decay_epochs=16", "weight_decay_epochs", "needs weight_decay"),
    ("adam=1\nweight_decay=0.1\nweight_decay_epochs=-5", "weight_decay_epochs", "must be >= 0"),
])
def test_weight_decay_refused_where_it_means_nothing(write_cfg, extra, key, says):
    path = write_cfg(NET.format(lr=0.1, extra=extra))
    with pytest.raises(DarknetpyError) as err:
        Network(path)
    line = 6 + extra.split("\n").index(next(e for e in extra.split("\n") if e.startswith(key + "=")))
    assert str(err.value).startswith(f"{path}:{line}: ") and says in str(err.value)
