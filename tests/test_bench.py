"""`darknetpy bench` (a subprocess): it runs on a tiny cfg and prints the chars/s figures (no timing
asserted); measure.py's FLOP model against a count by hand."""
import re

import pytest

from conftest import assert_one_line_error, run_cli
from darknetpy.measure import flops_per_char
from darknetpy.network import Network

LAYERS = {
    "lstm": "[lstm]\noutput=8\n",
    "gru": "[gru]\noutput=8\n",
    "rnn": "[rnn]\noutput=8\nactivation=leaky\nbatch_normalize=1\n",
}


def tiny_cfg(tmp_path, kind):
    path = tmp_path / f"tiny-{kind}.cfg"
    path.write_text("[net]\ninputs=16\nbatch=2\ntime_steps=3\nlearning_rate=0.01\n\n"
                    f"{LAYERS[kind]}\n{LAYERS[kind]}\n[connected]\noutput=16\nactivation=linear\n\n[softmax]\n")
    return path


def bench(*args):
    """`darknetpy bench ARGS` in a subprocess: (exit code, stdout as text)."""
    r = run_cli("bench", *args)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_bench_prints_chars_per_second(tmp_path, kind):
    code, out = bench(tiny_cfg(tmp_path, kind), "--iterations", "1", "--warmup", "0", "--gen-chars", "5")
    assert code == 0, out
    for label in ("train chars/s", "train GFLOP/s", "generate chars/s", "peak RSS", "matmul peak GFLOP/s"):
        assert re.search(rf"^{re.escape(label)}\s+[\d,.]+", out, re.M), out
    assert "BLAS:" in out


def test_bench_skips_parts(tmp_path):
    cfg = tiny_cfg(tmp_path, "lstm")
    code, out = bench(cfg, "--iterations", "1", "--no-generate")
    assert code == 0, out
    assert "train chars/s" in out and "generate chars/s" not in out
    code, out = bench(cfg, "--gen-chars", "5", "--no-train")
    assert code == 0, out
    assert "generate chars/s" in out and "train chars/s" not in out


@pytest.mark.parametrize("coretype", ["Haswell", None])
def test_bench_says_when_openblas_kernels_are_forced(tmp_path, monkeypatch, coretype):
    if coretype:
        monkeypatch.setenv("OPENBLAS_CORETYPE", coretype)
    else:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    code, out = bench(tiny_cfg(tmp_path, "gru"), "--no-train", "--gen-chars", "5")
    assert code == 0, out
    assert ("OPENBLAS_CORETYPE=Haswell is set" in out) == bool(coretype)


def test_flop_model_counts_by_hand(tmp_path):
    net = Network(tiny_cfg(tmp_path, "lstm"))
    T, n, o = 3, 8, 16
    # layer 0: input gather (0 forward, scatter-add 4n back, no input delta); recurrent w n->4n
    # layer 1: u n->4n and w n->4n; connected n->o
    p0w, p1u, p1w, pc = 2 * n * 4 * n, 2 * n * 4 * n, 2 * n * 4 * n, 2 * n * o
    fwd = p0w + p1u + p1w + pc
    bwd = 4 * n + p0w * (1 + (T - 1) / T) + 2 * p1u + p1w * (1 + (T - 1) / T) + 2 * pc
    assert flops_per_char(net) == pytest.approx((fwd, bwd))


def test_bench_refuses_a_missing_cfg(tmp_path):
    assert_one_line_error(run_cli("bench", tmp_path / "nope.cfg"), "nope.cfg")


def test_bench_reports_a_bad_cfg_in_one_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\ninputs=16\n\n[lstm]\noutput=zero\n")
    assert_one_line_error(run_cli("bench", cfg), f"{cfg}:5:")


def test_bench_reports_a_net_that_cannot_generate_in_one_line(tmp_path):
    cfg = tmp_path / "wide.cfg"
    cfg.write_text("[net]\ninputs=16\nbatch=2\ntime_steps=3\n\n[connected]\noutput=32\nactivation=linear\n\n[softmax]\n")
    assert_one_line_error(run_cli("bench", cfg, "--no-train"), str(cfg), "32 outputs and 16 inputs")
