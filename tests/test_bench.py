"""`darknetpy bench`: it runs on a tiny cfg and prints the chars/s figures (no timing asserted)."""
import re

import pytest
from click.testing import CliRunner

from darknetpy.bench import bench, flops_per_char
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


def command():
    """`darknetpy bench` as registered in the CLI group, or the command object until it is."""
    from darknetpy.cli import main
    return (main, ["bench"]) if "bench" in getattr(main, "commands", {}) else (bench, [])


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_bench_prints_chars_per_second(tmp_path, kind):
    cmd, prefix = command()
    cfg = tiny_cfg(tmp_path, kind)
    result = CliRunner().invoke(cmd, [*prefix, str(cfg), "--iterations", "1", "--warmup", "0", "--gen-chars", "5"])
    assert result.exit_code == 0, result.output
    out = result.output
    for label in ("train chars/s", "train GFLOP/s", "generate chars/s", "peak RSS", "matmul peak GFLOP/s"):
        assert re.search(rf"^{re.escape(label)}\s+[\d,.]+", out, re.M), out
    assert "BLAS:" in out


def test_bench_skips_parts(tmp_path):
    cmd, prefix = command()
    cfg = tiny_cfg(tmp_path, "lstm")
    result = CliRunner().invoke(cmd, [*prefix, str(cfg), "--iterations", "1", "--no-generate"])
    assert result.exit_code == 0, result.output
    assert "train chars/s" in result.output and "generate chars/s" not in result.output
    result = CliRunner().invoke(cmd, [*prefix, str(cfg), "--gen-chars", "5", "--no-train"])
    assert result.exit_code == 0, result.output
    assert "generate chars/s" in result.output and "train chars/s" not in result.output


@pytest.mark.parametrize("coretype", ["Haswell", None])
def test_bench_says_when_openblas_kernels_are_forced(tmp_path, monkeypatch, coretype):
    cmd, prefix = command()
    if coretype:
        monkeypatch.setenv("OPENBLAS_CORETYPE", coretype)
    else:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    result = CliRunner().invoke(cmd, [*prefix, str(tiny_cfg(tmp_path, "gru")), "--no-train", "--gen-chars", "5"])
    assert result.exit_code == 0, result.output
    assert ("OPENBLAS_CORETYPE=Haswell is set" in result.output) == bool(coretype)


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
    result = CliRunner().invoke(bench, [str(tmp_path / "nope.cfg")])
    assert result.exit_code == 2


def test_bench_reports_a_bad_cfg_in_one_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\ninputs=16\n\n[lstm]\noutput=zero\n")
    result = CliRunner().invoke(bench, [str(cfg)])
    assert result.exit_code == 2
    assert f"{cfg}:5:" in result.output and "Traceback" not in result.output
