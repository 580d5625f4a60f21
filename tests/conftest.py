"""Shared fixtures for the core tests: the Darknet oracle folder, small cfg files, .weights helpers.

The oracles live in ../shared/oracle next to the repository root. Tests that need them skip (with
the reason) only when that folder is absent; everything else runs everywhere.
"""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"


def oracle_case(name):
    """The folder of oracle case `name`; skips the test when ../shared is absent."""
    folder = ORACLE / name
    if not ORACLE.parent.is_dir():
        pytest.skip(f"oracle fixtures not present: {ORACLE.parent} does not exist (../shared is absent)")
    if not folder.is_dir():
        # ../shared exists but the case does not: that is a broken fixture set, not a reason to skip.
        raise FileNotFoundError(f"oracle case {name} missing from {ORACLE}")
    return folder


@pytest.fixture
def write_cfg(tmp_path):
    """write_cfg(text, name="net.cfg") -> Path of a cfg file in tmp_path holding exactly `text`."""
    def write(text, name="net.cfg"):
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def onehot(index, n=256, dtype=np.float32):
    v = np.zeros(n, dtype)
    v[index] = 1
    return v


def read_weights(path):
    """(major, minor, revision, seen, header_bytes, payload float32 array) of a Darknet .weights file,
    parsed here from the documented format (not with darknetpy's reader)."""
    data = Path(path).read_bytes()
    major, minor, revision = struct.unpack_from("<3i", data)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        (seen,) = struct.unpack_from("<Q", data, 12)
        head = 20
    else:
        (seen,) = struct.unpack_from("<i", data, 12)
        head = 16
    return major, minor, revision, seen, head, np.frombuffer(data, "<f4", offset=head)


def flat_params(net):
    """Every parameter of `net` in save order as one float64 vector (the .weights payload order)."""
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in net.params().values()])


def peaked_model(folder, text, name="net", seed=5, wide="layer2", scale=0.6):
    """(cfg, weights) of a random byte model saved in `folder`: every parameter normal(0, 0.4),
    those of the layer `wide` (its output layer) normal(0, scale), so that its distributions are
    peaked, not uniform, and sampling rules differ visibly."""
    import darknetpy
    cfg = folder / f"{name}.cfg"
    cfg.write_text(text)
    net = darknetpy.load_network(cfg)
    rng = np.random.default_rng(seed)
    for key, value in net.params().items():
        value[...] = rng.normal(0, scale if key.startswith(wide + ".") else 0.4, value.shape)
    weights = folder / f"{name}.weights"
    net.save_weights(weights)
    return cfg, weights


def run_cli(*args, stdin=None):
    """`python -m darknetpy ARGS...` in a subprocess, as a user runs it: the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "darknetpy", *map(str, args)], input=stdin,
                          capture_output=True, timeout=600)


def assert_one_line_error(result, *fragments):
    """Bad input's contract: exit 2, one stderr line holding every fragment, no traceback, no stdout."""
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    assert result.stdout == b""
