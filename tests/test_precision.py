"""`[net] precision=bf16` (darknetpy's key): training's large products take bf16-rounded inputs and
sum in float32; everything else, and all of inference, stays float32.

Where no compiled matmul_bf16 runs (this machine before the AMX kernel), the network is built
with `bf16_reference=True`, which runs the products on kernels.matmul_bf16's numpy reference. The
reference for the numbers is a float64 network (its maths checked against finite differences in
test_gradients.py) whose products' operands are rounded to bf16 by `bf16_round` below, written
here from frexp, not from kernels.bf16.
"""
import contextlib
import functools
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from darknetpy import kernels
from darknetpy.network import Network
from test_train import TEXT
from test_train import write_cfg as tiny_cfg

f64 = np.float64


def bf16_round(v):
    """v rounded to 8 significant bits, to nearest, ties to even (bfloat16's rounding), in float64:
    v = m 2^e with 0.5 <= |m| < 1, so m 2^8 is rounded to an integer (np.rint: ties to even)."""
    m, e = np.frexp(np.asarray(v, f64))
    return np.ldexp(np.rint(m * 256), e - 8)


def stack(kind, inputs=6, hidden=12, precision="fp32", extra=""):
    """Two [kind] layers on float rows, a [connected] and a [softmax]."""
    second = "[connected]\noutput=5\nactivation=leaky" if kind == "connected" else f"[{kind}]\noutput=10"
    return f"""[net]
inputs={inputs}
batch=3
time_steps=4
precision={precision}
{extra}

[{kind}]
output={hidden}

{second}

[connected]
output=7
activation=linear

[softmax]
"""


KINDS = ("connected", "rnn", "gru", "lstm", "sru")
# The Dense sub-layers whose W feeds the per-step products in the step loops: float32 there, never
# rounded. Every other Dense's W only meets the bf16 products in training. The GRU's and LSTM's loops
# (wzr, wh; w) take bf16 operands too (amxl): the reference runs its numpy loops with bf16
# (base.loop_product), through the Dense that LOOP_FLAG names.
IN_LOOPS = {"rnn": ("self_layer",)}
LOOP_FLAG = {"gru": "wzr", "lstm": "w"}


def rounded_reference(net32, path):
    """The float64 network with net32's weights, its products' operands rounded by bf16_round: the
    rows into every Dense's matmul, weight gradient and input delta, and the layer input of each
    recurrent projection; every W outside the step loops rounded once."""
    ref = Network(path, dtype=f64)
    for a, b in zip(ref.params().values(), net32.params().values()):
        a[...] = b
    for layer, section in zip(ref.layers, ref.sections):
        loops = [getattr(layer, name) for name in IN_LOOPS.get(section.type, ())]
        for d in layer.denses:
            if not any(d is x for x in loops):
                d.W[...] = bf16_round(d.W)
            matmul, accumulate, back = d.matmul, d.accumulate, d.back
            d.matmul = lambda x, out=None, train=False, f=matmul: f(bf16_round(x) if train else x, out, train)
            d.accumulate = lambda x, dz, f=accumulate: f(bf16_round(x), bf16_round(dz))
            d.back = lambda dz, out=None, f=back: f(bf16_round(dz), out)
        if section.type in LOOP_FLAG:
            getattr(layer, LOOP_FLAG[section.type]).bf16 = True
        if hasattr(layer, "project_steps"):
            layer.project_steps = functools.partial(
                lambda f, dense, x, *a, **k: f(dense, bf16_round(x) if x.dtype.kind == "f" else x, *a, **k), layer.project_steps)
    return ref


def gradients(net, x, y):
    """(cost, {name: accumulated negative gradient}) of one training forward + backward."""
    for v in net.params(updates=True).values():
        v[...] = 0
    cost = net.accumulate(x, y)
    return f64(cost), {k: np.array(v, f64) for k, v in net.params(updates=True).items()}


def far(a, b):
    """The largest difference relative to b's largest magnitude."""
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("backend", ["numpy", "compiled"])
@pytest.mark.parametrize("kind", KINDS)
def test_training_products_are_bf16_and_nothing_else(kind, backend, write_cfg):
    """Cost and every gradient of a bf16 training pass equal the rounded float64 reference to float32
    accuracy (the cost to 5e-7, each gradient to 5e-6 of its array's largest entry); the plain
    float32 pass is more than 20 times further off in the cost and in every gradient. On the numpy
    reference of every op, and on the compiled kernels where matmul_bf16 has a compiled form."""
    if backend == "compiled" and not kernels.compiled("matmul_bf16"):
        pytest.skip("matmul_bf16 has no compiled form here (it needs AMX-BF16 and the C kernels)")
    path = write_cfg(stack(kind, precision="bf16"))
    rng = np.random.default_rng(3)
    with kernels.use("numpy") if backend == "numpy" else contextlib.nullcontext():
        bf = Network(path, seed=1, bf16_reference=backend == "numpy")
        assert bf.bf16 and all(d.bf16 for d in bf.denses)
        for v in bf.params().values():
            v[...] = rng.uniform(-0.7, 0.7, v.shape)
        fp = Network(write_cfg(stack(kind), "fp.cfg"), seed=1)
        for a, b in zip(fp.params().values(), bf.params().values()):
            a[...] = b
        ref = rounded_reference(bf, path)
        x = rng.normal(0, 1, (4, 3, 6)).astype(np.float32)
        y = rng.integers(0, 7, (4, 3))
        (c_bf, g_bf), (c_fp, g_fp), (c_ref, g_ref) = (gradients(n, x, y) for n in (bf, fp, ref))
    assert abs(c_bf - c_ref) <= 5e-7 * abs(c_ref), (c_bf, c_ref)
    assert abs(c_fp - c_ref) > 20 * 5e-7 * abs(c_ref), (c_fp, c_ref)
    for name in g_ref:
        assert far(g_bf[name], g_ref[name]) <= 5e-6, (name, far(g_bf[name], g_ref[name]))
        assert far(g_fp[name], g_ref[name]) > 20 * 5e-6, (name, far(g_fp[name], g_ref[name]))


@pytest.mark.parametrize("kind", KINDS)
def test_inference_is_bit_identical_to_fp32(kind, write_cfg):
    """forward(train=False) on float rows and on ids, and the stepper, the same bits with bf16 as
    with fp32 on the same weights (both nets also trained one step first, so their weights are
    those of a bf16 net and the carried states are fresh for both)."""
    bf = Network(write_cfg(stack(kind, inputs=9, precision="bf16")), seed=2, bf16_reference=True)
    fp = Network(write_cfg(stack(kind, inputs=9), "fp.cfg"), seed=2)
    rng = np.random.default_rng(4)
    bf.train_step(rng.normal(0, 1, (4, 3, 9)).astype(np.float32), rng.integers(0, 7, (4, 3)))
    for a, b in zip(fp.params().values(), bf.params().values()):
        a[...] = b
    bf.reset_state(), fp.reset_state()
    x = rng.normal(0, 1, (4, 3, 9)).astype(np.float32)
    ids = rng.integers(0, 9, (4, 3))
    for inp in (x, ids):
        assert np.array_equal(bf.forward(inp), fp.forward(inp))
    sb, sf = bf.stepper(streams=3), fp.stepper(streams=3)
    for t in range(4):
        assert np.array_equal(sb(ids[t]), sf(ids[t]))


def test_the_key_default_and_values(write_cfg):
    assert Network(write_cfg(stack("gru", extra=""))).precision == "fp32"
    net = Network(write_cfg(stack("gru").replace("precision=fp32\n", "")))
    assert net.precision == "fp32" and not net.bf16 and net.precision_label == "fp32"
    net = Network(write_cfg(stack("gru", precision="bf16")))
    assert net.precision == "bf16"
    assert net.bf16 == kernels.compiled("matmul_bf16") == all(d.bf16 for d in net.denses)
    assert not Network(write_cfg(stack("gru", precision="bf16")), dtype=f64, bf16_reference=True).bf16


@pytest.mark.parametrize("value", ["fp16", "BF16", "", "32"])
def test_a_bad_value_is_one_line(value, write_cfg, tmp_path):
    path = write_cfg(stack("gru", precision=value))
    line = path.read_text().splitlines().index(f"precision={value}") + 1
    r = run_cli("info", path)
    assert_one_line_error(r, f"{path}:{line}: precision must be fp32 or bf16")
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(TEXT)
    r = run_cli("train", path, corpus, "--backup", tmp_path / "b", "--max-batches", 1)
    assert_one_line_error(r, f"{path}:{line}: precision must be fp32 or bf16")
    assert not (tmp_path / "b").exists()


NOTICE = "darknetpy: precision=bf16 needs a CPU with AMX-BF16 and the C kernels; training in float32"


def test_without_the_kernel_train_says_it_trains_in_float32(tmp_path, monkeypatch):
    """Under DARKNETPY_KERNELS=0 no compiled product runs: one line at the start, once, and the run
    is the fp32 run's, byte for byte."""
    monkeypatch.setenv("DARKNETPY_KERNELS", "0")
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(TEXT * 10)
    finals = {}
    for precision in ("bf16", "fp32"):
        cfg = tiny_cfg(tmp_path, name=precision, layer="gru", net_extra=f"precision={precision}", max_batches=3)
        r = run_cli("train", cfg, corpus, "--backup", tmp_path / precision, "--srand", 1, "--valid-every", 0)
        err = r.stderr.decode()
        assert r.returncode == 0, err
        assert err.count(NOTICE) == (precision == "bf16"), err
        if precision == "bf16":
            assert err.splitlines()[0] == NOTICE, err
        finals[precision] = (tmp_path / precision / f"{precision}_final.weights").read_bytes()
    assert finals["bf16"] == finals["fp32"]


def batches(data, T, S, rng):
    """A datum of S random windows of T + 1 bytes: ids x (T, S) and the next bytes y."""
    starts = rng.integers(0, data.size - T - 1, S)
    w = np.stack([data[s:s + T + 1] for s in starts], axis=1)
    return w[:-1], w[1:]


def test_a_short_run_learns_as_fp32_does(write_cfg):
    """200 Adam updates of a [gru] 48 on a small corpus, same seed and data: the bf16 run's mean
    loss over its last 40 updates is within 2% of the fp32 run's (both well below the first)."""
    text = np.frombuffer(TEXT * 4, np.uint8).astype(np.int64)
    cfg = """[net]
inputs=256
batch=8
time_steps=16
learning_rate=0.01
adam=1
precision={}

[gru]
output=48

[connected]
output=256
activation=linear

[softmax]
"""
    losses = {}
    for precision in ("bf16", "fp32"):
        net = Network(write_cfg(cfg.format(precision), f"{precision}.cfg"), seed=7, bf16_reference=True)
        assert net.bf16 == (precision == "bf16")
        rng = np.random.default_rng(8)
        losses[precision] = [net.train_step(*batches(text, 16, 8, rng)) / (16 * 8) for _ in range(200)]
    first, bf, fp = np.mean(losses["fp32"][:10]), np.mean(losses["bf16"][-40:]), np.mean(losses["fp32"][-40:])
    assert fp < 0.6 * first and bf < 0.6 * first, (first, fp, bf)
    assert abs(bf - fp) <= 0.02 * fp, (bf, fp)
    assert losses["bf16"] != losses["fp32"]


RUN = ("import functools, sys; import darknetpy.train as t; from darknetpy.network import Network; "
       "t.Network = functools.partial(Network, bf16_reference=True); "
       "t.train(sys.argv[1], sys.argv[2], backup=sys.argv[3], srand=5, valid_every=0, max_batches=int(sys.argv[4]), "
       "weights=sys.argv[5] or None)")


def test_resume_is_bit_exact(tmp_path):
    """12 updates in one run against 5 then 7 from the 5's checkpoint (weights and Adam's state), both
    with the bf16 products on (the trainer's Network built with bf16_reference): the same bytes."""
    cfg = tiny_cfg(tmp_path, layer="gru", net_extra="precision=bf16", max_batches=12,
                    opt="learning_rate=0.01\nadam=1")
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(TEXT * 10)

    def train(backup, n, weights=""):
        r = subprocess.run([sys.executable, "-c", RUN, cfg, corpus, tmp_path / backup, str(n), str(weights)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert NOTICE not in r.stderr
        return (tmp_path / backup / "tiny_final.weights").read_bytes()

    whole = train("whole", 12)
    part = train("part", 5)
    assert part != whole
    assert train("rest", 12, tmp_path / "part" / "tiny_final.weights") == whole
    fp32 = tmp_path / "fp32.cfg"
    fp32.write_text(cfg.read_text().replace("precision=bf16", "precision=fp32"))
    r = run_cli("train", fp32, corpus, "--backup", tmp_path / "fp", "--srand", 5, "--valid-every", 0)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "fp" / "fp32_final.weights").read_bytes() != whole


@pytest.mark.parametrize("precision, kernels_env, label", [
    ("fp32", None, "fp32"),
    ("bf16", "0", "fp32 (precision=bf16 needs the compiled AMX kernel)"),
])
def test_bench_names_the_precision(precision, kernels_env, label, write_cfg, monkeypatch):
    if kernels_env is None:
        monkeypatch.delenv("DARKNETPY_KERNELS", raising=False)
    else:
        monkeypatch.setenv("DARKNETPY_KERNELS", kernels_env)
    cfg = write_cfg(stack("gru", inputs=16, precision=precision))
    r = run_cli("bench", cfg, "--iterations", "1", "--warmup", "0", "--no-generate")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert re.search(rf"^train precision\s+{re.escape(label)}\s", out, re.M), out


def test_bench_names_bf16_where_it_runs(write_cfg):
    if not kernels.compiled("matmul_bf16"):
        pytest.skip("matmul_bf16 has no compiled form here (it needs AMX-BF16 and the C kernels)")
    cfg = write_cfg(stack("gru", inputs=16, precision="bf16"))
    r = run_cli("bench", cfg, "--iterations", "1", "--warmup", "0", "--no-generate")
    assert r.returncode == 0, r.stderr.decode()
    assert re.search(r"^train precision\s+bf16 \(compiled matmul_bf16\)\s", r.stdout.decode(), re.M), r.stdout.decode()
