"""Generation and validation: glibc rand() emulation, Darknet's float32 sampling, and the oracles."""
import ctypes
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import darknetpy
from darknetpy import kernels
from darknetpy.errors import DarknetpyError
from darknetpy.generation import events, generate
from darknetpy.evaluate import format_valid_line, valid_steps, validate
from darknetpy.darknet_sampler import GlibcRand, NumpyRand, sample_index
from darknetpy.options import GenerationOptions

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
INFER_CASES = sorted(p.name for p in ORACLE.glob("infer_*")) if ORACLE.is_dir() else []
needs_oracle = pytest.mark.skipif(not INFER_CASES, reason=f"oracle fixtures not found at {ORACLE}")


def _glibc():
    """Whether the C library is glibc (the rand() Darknet's sampler draws from here)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return True


def _libc_draws(seed, skip, count):
    """glibc's rand() after srand(seed) and `skip` draws: the next `count` draws. In a fresh process,
    because rand()'s state is the whole process's: a draw by any other thread of the test process
    would shift it (it did, once, in a full run)."""
    code = ("import ctypes, sys; c = ctypes.CDLL('libc.so.6'); s, n, k = map(int, sys.argv[1:]); "
            "c.srand(ctypes.c_uint(s & 0xFFFFFFFF)); [c.rand() for _ in range(n)]; "
            "print(*[c.rand() for _ in range(k)])")
    out = subprocess.run([sys.executable, "-c", code, str(seed), str(skip), str(count)],
                         capture_output=True, text=True, check=True).stdout
    return [int(v) for v in out.split()]


needs_glibc = pytest.mark.skipif(not _glibc(), reason="the C library is not glibc: nothing to cross-check against")


# ---------------------------------------------------------------- glibc rand()

def test_glibc_reference_values():
    rng = GlibcRand(7)
    assert [rng.rand() for _ in range(5)] == [1045618677, 1863967299, 1272579899, 461085871, 21961325]
    rng = GlibcRand(42)
    assert [rng.rand() for _ in range(3)] == [71876166, 708592740, 1483128881]


def test_seed_zero_is_seed_one_and_negative_seeds_wrap():
    a, b = GlibcRand(0), GlibcRand(1)
    assert [a.rand() for _ in range(50)] == [b.rand() for _ in range(50)]
    a, b = GlibcRand(-5), GlibcRand(2**32 - 5)
    assert [a.rand() for _ in range(50)] == [b.rand() for _ in range(50)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 29, 30, 31, 32, 33, 34, 61, 62, 63, 100, 310, 1000, 4567])
def test_skip_equals_repeated_draws(n):
    stepped, jumped = GlibcRand(7), GlibcRand(7)
    for _ in range(n):
        stepped.rand()
    jumped.skip(n)
    assert [jumped.rand() for _ in range(70)] == [stepped.rand() for _ in range(70)]


def test_skips_compose():
    a, b = GlibcRand(3), GlibcRand(3)
    a.skip(12345)
    a.rand()
    a.skip(678)
    b.skip(12345 + 1 + 678)
    assert [a.rand() for _ in range(40)] == [b.rand() for _ in range(40)]


def test_skips_of_a_trillion_compose():
    # O(log n): draw by draw this would not finish
    a, b = GlibcRand(7), GlibcRand(7)
    a.skip(10**12)
    b.skip(4 * 10**11)
    b.skip(6 * 10**11)
    assert [a.rand() for _ in range(40)] == [b.rand() for _ in range(40)]


@needs_glibc
@pytest.mark.parametrize("seed", [0, 1, 7, 42, -1, -123, 2**31 - 1, 2**31, 2**32 - 1, 987654321])
def test_matches_libc(seed):
    rng = GlibcRand(seed)
    assert [rng.rand() for _ in range(200)] == _libc_draws(seed, 0, 200)


@needs_glibc
def test_large_skip_matches_libc():
    n = 3_000_017
    rng = GlibcRand(7)
    rng.skip(n)
    assert [rng.rand() for _ in range(50)] == _libc_draws(7, n, 50)


def test_uniform_is_float32_rand_over_two_to_31():
    a, b = GlibcRand(11), GlibcRand(11)
    for _ in range(100):
        u = a.uniform()
        assert u.dtype == np.float32
        assert u == np.float32(b.rand()) / np.float32(2**31)
    # rand() near 2^31 rounds up to 2^31 in float: Darknet's r can be exactly 1.0
    assert np.float32(2**31 - 1) / np.float32(2**31) == 1.0


def test_numpy_rand_is_float32_in_unit_interval():
    rng = NumpyRand(0)
    draws = [rng.uniform() for _ in range(1000)]
    assert all(d.dtype == np.float32 and 0 <= d < 1 for d in draws)


# ---------------------------------------------------------------- sample_index

class FixedDraws:
    """An rng whose uniform() returns given values."""

    def __init__(self, *draws):
        self.draws = [np.float32(d) for d in draws]

    def uniform(self):
        return self.draws.pop(0)


def c_sample(p, r):
    """Darknet's generate step as its C reads, one float32 scalar operation at a time."""
    p = [np.float32(0) if float(v) < 0.0001 else np.float32(v) for v in p]
    total = np.float32(0)
    for v in p:
        total = np.float32(total + v)
    scale = np.float32(1.0 / float(total))
    p = [np.float32(v * scale) for v in p]
    r = np.float32(r)
    for i, v in enumerate(p):
        r = np.float32(r - v)
        if r <= 0:
            return i
    return len(p) - 1


def test_cutoff_compares_against_double_0_0001():
    # float32(1e-4) is just below the double 0.0001, so Darknet cuts it; a float32 comparison would not
    p = np.array([1e-4, 0.5, 0.5], dtype=np.float32)
    assert sample_index(p, FixedDraws(1e-9)) == 1
    assert sample_index(np.array([1.0001e-4, 0.5, 0.5], np.float32), FixedDraws(1e-9)) == 0


@pytest.mark.parametrize(
    "p, r, expected",
    [  # cases where walking the normalized distribution in float64 picks a different index
        ([0.0007082655, 0.20046614, 0.16418916, 0.5166534, 0.117983], 0.882017, 3),
        ([0.0066685705, 0.16165705, 0.011190041, 0.38210806, 0.43837628], 0.17951566, 3),
        ([0.00016541463, 0.5487779, 0.42207104, 0.016628774, 0.012356925], 0.5489433, 1),
    ],
)
def test_float32_walk_on_boundaries(p, r, expected):
    p = np.array(p, dtype=np.float32)
    assert c_sample(p, r) == expected
    assert sample_index(p, FixedDraws(r)) == expected
    q = np.where(p < 1e-4, 0, p).astype(np.float64)
    assert np.argmax(float(np.float32(r)) - np.cumsum(q / q.sum()) <= 0) != expected  # the float64 walk differs


def test_walk_edges():
    assert sample_index(np.array([0.5, 0.5], np.float32), FixedDraws(0.0)) == 0  # r <= 0 at once
    assert sample_index(np.array([0.25, 0.25, 0.5, 0.0], np.float32), FixedDraws(1.0)) == 2  # first r <= 0
    # everything cut: Darknet's 1/0 scale makes NaNs, r never compares <= 0, the last index is taken
    assert sample_index(np.full(4, 5e-5, np.float32), FixedDraws(0.5)) == 3


def test_matches_scalar_c_on_boundary_draws():
    """256-way distributions (where np.sum's pairwise order differs) with draws on and next to every boundary."""
    gen = np.random.default_rng(5)
    for _ in range(30):
        logits = gen.normal(0, 3, 256)
        p = (np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()).astype(np.float32)
        q = np.where(p.astype(np.float64) < 1e-4, 0, p).astype(np.float32)
        scaled = q * np.float32(1.0 / float(np.cumsum(q, dtype=np.float32)[-1]))
        bounds = np.cumsum(scaled, dtype=np.float32)[gen.choice(256, 12, replace=False)]
        for b in bounds:
            for r in (np.nextafter(b, np.float32(0)), b, np.nextafter(b, np.float32(2))):
                assert sample_index(p, FixedDraws(r)) == c_sample(p, r)


# ---------------------------------------------------------------- generate with a fake network

class FakeNet:
    """A stateful stand-in: the distribution depends on the last id fed; records every call."""

    def __init__(self, n=8, init_rand_draws=0):
        self.inputs = self.outputs = n
        self.init_rand_draws, self.vocab = init_rand_draws, None
        self.fed, self.temps = [], []
        gen = np.random.default_rng(0)
        self.table = gen.dirichlet(np.ones(n), size=n).astype(np.float32)

    def stepper(self, streams=1, private=False, temperature=None, invariant=False):
        # generation never runs on the network's own state, and runs batch-invariant
        assert streams == 1 and private and invariant
        return FakeStepper(self, temperature)


class FakeStepper:
    """FakeNet's stepper: records each id fed and the temperature in force at that step."""

    def __init__(self, net, temperature):
        self.net, self.temperature = net, temperature

    def __call__(self, ids):
        assert len(ids) == 1
        self.net.fed.append(int(ids[0]))
        self.net.temps.append(float(self.temperature[0]))
        return self.net.table[ids[0]][None].copy()

    def arrays(self):
        return []


def test_generate_echoes_seed_then_samples():
    net = FakeNet(n=128, init_rand_draws=1000)
    out = generate(net, GenerationOptions(seed=b"ab", length=5, temperature=0.5, srand=7))
    assert set(net.temps) == {0.5}
    rng = GlibcRand(7)
    rng.skip(1000)
    c, expected = ord("b"), [ord("b")]
    for _ in range(5):
        c = sample_index(net.table[c], rng)
        expected.append(c)
    assert out == b"a" + bytes(expected) + b"\n"
    assert net.fed == [ord("a")] + expected[:-1]  # the last sample is printed, never fed


def test_generate_empty_seed_prints_and_feeds_nul():
    net = FakeNet()
    out = generate(net, GenerationOptions(seed=b"", length=3, srand=1))
    assert out[:1] == b"\x00" and len(out) == 5 and out[-1:] == b"\n"
    assert net.fed[0] == 0 and len(net.fed) == 3


def test_generate_streams_pieces_and_prints_tokens():
    net = FakeNet(n=4)
    tokens = ["zero", "<NEWLINE>", "two", "three"]
    pieces = [piece for _, piece, _ in events(net, GenerationOptions(seed=bytes([2]), length=20, srand=3), tokens=tokens)]
    out = generate(FakeNet(n=4), GenerationOptions(seed=bytes([2]), length=20, srand=3), tokens=tokens)
    assert b"".join(pieces) == out and len(pieces) == 22
    assert pieces[0] == b"two " and pieces[-1] == b"\n"
    assert set(pieces[1:-1]) <= {b"zero ", b"\n ", b"two ", b"three "}


def test_generate_without_srand_uses_numpy_stream():
    out = generate(FakeNet(), GenerationOptions(seed=b"\x01", length=50))
    assert len(out) == 52 and max(out[:-1]) < 8


def test_generate_refuses_out_of_range_seed_and_short_token_list():
    with pytest.raises(DarknetpyError, match="offset 1"):
        generate(FakeNet(n=8), GenerationOptions(seed=b"\x01\x09", length=1, srand=1))
    with pytest.raises(DarknetpyError, match="3 tokens"):
        generate(FakeNet(n=4), GenerationOptions(seed=b"\x01", length=1, srand=1), tokens=["a", "b", "c"])


# ---------------------------------------------------------------- validate

class ReplayNet:
    """Replays recorded per-step probabilities, whatever is fed."""

    def __init__(self, probs, inputs=256):
        self.probs, self.inputs, self.outputs, self.t = probs, inputs, probs.shape[1], 0

    def stepper(self, streams=1, private=False):
        assert private and streams == 1  # valid: one stream from a zero state, the network's own left alone
        self.t = 0

        def step(ids):
            self.t += 1
            return self.probs[self.t - 1 : self.t]
        return step


def test_validate_arithmetic():
    probs = np.full((3, 256), 1 / 256, np.float32)
    probs[:, 32] = 0.5
    count, bpc, perp, wordperp = validate(ReplayNet(probs), b"a  b", seed=b"")
    assert count == 3 and bpc == pytest.approx((1 + 1 + 8) / 3, rel=1e-6)
    assert perp == pytest.approx(2 ** bpc) and wordperp == pytest.approx(2 ** (10 / 3), rel=1e-6)  # words = 1 + 2


def test_validate_divides_by_float_ln2():
    probs = np.full((1, 256), 0.001, np.float32)
    probs[0, ord("B")] = 0.592414
    _, bpc, _, _ = validate(ReplayNet(probs), b"AB", seed=b"")
    assert bpc == float(np.float32(0.7553223))  # dividing by the double ln 2 would round to 0.75532234


def test_format_valid_line():
    line = format_valid_line(299, 11.6064, 3118.0083, 22168138924206862336.0)
    assert line == "299 BPC: 11.6064   Perplexity: 3118.0083    Word Perplexity: 22168138924206862336.0000"
    assert format_valid_line(1, 0.03125, 1.0, float("inf")) == "1 BPC: 0.0312   Perplexity: 1.0000    Word Perplexity: inf"


def test_validate_refuses_out_of_range_bytes_and_short_text():
    net = ReplayNet(np.full((5, 16), 1 / 16, np.float32), inputs=16)
    with pytest.raises(DarknetpyError, match="offset 2"):
        validate(net, b"\x01\x02\x10\x03", seed=b"")
    with pytest.raises(DarknetpyError, match="seed"):
        validate(net, b"\x01\x02", seed=b"\xff")
    with pytest.raises(DarknetpyError, match="2 bytes"):
        validate(net, b"\x01", seed=b"")


def test_byte_255_is_an_ordinary_byte():
    count, bpc, _, _ = validate(ReplayNet(np.full((2, 256), 1 / 256, np.float32)), b"\xff\xff\x00", seed=b"")
    assert count == 2 and bpc == pytest.approx(8.0)


# ---------------------------------------------------------------- the Darknet oracles

def _case(name):
    return ORACLE / name, json.loads((ORACLE / name / "case.json").read_text())


@needs_oracle
@pytest.mark.parametrize("case", INFER_CASES)
def test_valid_lines_exact_from_darknet_probs(case):
    """Fed Darknet's own probabilities, every printed line matches `darknet rnn valid -seed ""`."""
    folder, _ = _case(case)
    text = (folder / "input.txt").read_bytes()
    lines = [format_valid_line(*step) for step in valid_steps(ReplayNet(np.load(folder / "probs.npy")), text, b"")]
    assert lines == (folder / "valid_stdout.txt").read_text().splitlines()


def _load(folder):
    from darknetpy import load_network

    return load_network(str(folder / "model.cfg"), str(folder / "model.weights"), batch=1, time_steps=1)


@pytest.mark.usefixtures("kernels_mode")
@needs_oracle
@pytest.mark.parametrize("case", INFER_CASES)
def test_generate_matches_darknet(case):
    folder, info = _case(case)
    for name, cmd in info["expected"]["generate"].items():
        net = _load(folder)
        assert net.init_rand_draws == info["expected"]["rand_calls_consumed_by_network_construction"]
        out = net.generate(seed=cmd["seed"].encode(), length=cmd["len"], temperature=cmd["temp"], srand=cmd["srand"])
        assert out == (folder / name).read_bytes(), name


def _parse_line(line):
    count, rest = line.split(" BPC: ")
    bpc, rest = rest.split("   Perplexity: ")
    perp, wordperp = rest.split("    Word Perplexity: ")
    return int(count), float(bpc), float(perp), float(wordperp)


@pytest.mark.usefixtures("kernels_mode")
@needs_oracle
@pytest.mark.parametrize("case", INFER_CASES)
@pytest.mark.parametrize("seed, key, stdout", [(b"", "valid_empty_seed", "valid_stdout.txt"),
                                               (b"\n\n", "valid_default_seed", "valid_default_seed_stdout.txt")])
def test_valid_matches_darknet(case, seed, key, stdout):
    """Through our own network: the BPC to Darknet's printed precision. The perplexities print so many
    digits that they hang on the last float32 bit of the sum (pinned above with Darknet's probs)."""
    folder, info = _case(case)
    count, bpc, perp, wordperp = validate(_load(folder), (folder / "input.txt").read_bytes(), seed=seed)
    assert bpc == pytest.approx(info["expected"][key]["final_bpc"], abs=1e-3)
    last = (folder / stdout).read_text().splitlines()[-1]
    expected = _parse_line(last)
    assert count == expected[0]
    assert (perp, wordperp) == pytest.approx(expected[2:], rel=1e-3)


# ---------------------------------------------------------------- Network.stepper (generation's fast path)

STEPPER_BODIES = {
    "lstm_stack_bn": "[lstm]\noutput=12\nbatch_normalize=1\n[lstm]\noutput=10\nbatch_normalize=1\n",
    "lstm_stack": "[lstm]\noutput=12\n[dropout]\nprobability=0.3\n[lstm]\noutput=10\n",
    "gru_logistic_bn": "[gru]\noutput=12\nbatch_normalize=1\n[gru]\noutput=9\n",
    "gru_tanh": "[gru]\noutput=12\ntanh=1\n[gru]\noutput=9\ntanh=1\nbatch_normalize=1\n",
    "rnn_leaky_bn_shortcut": "[rnn]\noutput=12\nactivation=leaky\nbatch_normalize=1\nshortcut=1\n"
                             "[rnn]\noutput=12\nactivation=tanh\n",
    "connected_first_bn": "[connected]\noutput=14\nactivation=tanh\nbatch_normalize=1\n[rnn]\noutput=8\nactivation=relu\n",
    # wide enough (256 x 1024 weights and up) for one stream's transposed GEMV (layers.times)
    "lstm_wide": "[lstm]\noutput=256\n",
    "gru_rnn_wide": "[connected]\noutput=512\nactivation=tanh\n[gru]\noutput=512\n[rnn]\noutput=512\nactivation=tanh\n",
}


@pytest.mark.parametrize("private", [False, True])
@pytest.mark.parametrize("streams, panel", [(1, True), (2, True), (9, True), (32, True), (32, False)])
@pytest.mark.parametrize("name", sorted(STEPPER_BODIES))
def test_stepper_equals_the_general_forward(name, streams, panel, private, write_cfg, monkeypatch):
    """The folded one-step path gives the probabilities and carried state of `predict_ids` (the
    general forward, batchnorm unfolded) to float32 rounding, for every layer kind and option,
    with one stream (generate's case) and with 2, 9 and 32 (the many-stream panel kernel: 8-row
    tiles and a remainder; 32 streams are one panel in place), on the network's state (predict's
    case) and on a private one (generation's; private many-stream steppers run BLAS's products). panel=False:
    numpy's matmuls in its place, as on a CPU without AVX-512."""
    if not panel:
        real = kernels.compiled
        monkeypatch.setattr(kernels, "compiled", lambda name: name != "panel_matmul" and real(name))
    cfg = write_cfg(f"[net]\ninputs=20\nbatch={streams}\ntime_steps=1\n" + STEPPER_BODIES[name]
                    + "[connected]\noutput=20\nactivation=linear\n[softmax]\ntemperature=0.8\n")
    rng = np.random.default_rng(1)
    fast, slow = (darknetpy.load_network(cfg) for _ in range(2))
    for key, value in fast.params().items():  # non-trivial scales and rolling statistics
        value[...] = rng.uniform(0.5, 1.5, value.shape) if "variance" in key else rng.normal(0, 0.5, value.shape)
        if key.endswith("weights") and value.shape[1] > 20:  # (out, in): a wide layer's sums O(1)
            value *= np.sqrt(2 / value.shape[1])  # and its recurrence contracting (no chaos in 30 steps)
        slow.params()[key][...] = value
    step = fast.stepper(streams=streams, private=private)
    for ids in rng.integers(0, 20, (30, streams)):
        # 512-term sums round more than 20-term ones: 5e-6 for the wide nets, 2e-6 for the rest
        np.testing.assert_allclose(step(ids), slow.predict_ids(ids), rtol=0, atol=5e-6 if "wide" in name else 2e-6)
    want = list(slow.states.values())
    assert len(step.arrays()) == len(want)
    for got, ref in zip(step.arrays(), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # shortcut states grow
