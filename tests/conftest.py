"""Shared fixtures for the core tests: the Darknet oracle folder, small cfg files, .weights helpers,
and `kernels_mode`, which runs a test once per way the kernels can run on this machine.

The oracles live in ../shared/oracle next to the repository root. Tests that need them skip (with
the reason) only when that folder is absent; everything else runs everywhere.
"""
import functools
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import darknetpy

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"

# Every child a test starts (`python -m darknetpy`, `python -c`) imports the darknetpy this process
# tests. Without this a child run from a clean clone's root (CI: the package installed, pytest run
# there) imports the source tree beside it, which has no built extension, and silently runs numpy.
os.environ["PYTHONSAFEPATH"] = "1"  # Python 3.11+: no working directory at the head of sys.path
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(darknetpy.__file__).resolve().parents[1])] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))


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


# ---- the ways the kernels run (issue 28 point 6: every fast path has a fallback) ----------------

@functools.cache
def avx512_only():
    """The names the C module has here but not on a CPU without AVX-512 (the panel kernel, the step
    loops, the one-stream sample loop): this module against the one a child imports with
    DARKNETPY_KERNELS=avx2, which _kernels.c builds as such a CPU gets it."""
    from darknetpy import kernels
    if kernels.C is None:
        return frozenset()
    env = dict(os.environ, DARKNETPY_KERNELS="avx2")
    child = subprocess.run([sys.executable, "-c", "import darknetpy._kernels as k; print(*dir(k))"],
                           env=env, capture_output=True, text=True, check=True)
    return frozenset(dir(kernels._c)) - set(child.stdout.split())


def kernel_modes():
    """The distinct ways the kernels can run in this process: "c" (everything this CPU has), "avx2"
    (the C kernels without the AVX-512 ones), "numpy" (DARKNETPY_KERNELS=0). Only numpy when the C
    backend is not built or is turned off; no "avx2" on a CPU without AVX-512 ("c" is that already)."""
    from darknetpy import kernels
    if kernels.C is None or os.environ.get("DARKNETPY_KERNELS") == "0":
        return ["numpy"]
    if os.environ.get("DARKNETPY_KERNELS") == "avx2" or not avx512_only():
        return ["c", "numpy"]
    return ["c", "avx2", "numpy"]


def pytest_generate_tests(metafunc):
    if "kernels_mode" in metafunc.fixturenames:
        metafunc.parametrize("kernels_mode", kernel_modes(), indirect=True, ids=lambda mode: f"kernels={mode}")


@pytest.fixture
def kernels_mode(request, monkeypatch):
    """Run the test with the kernels as `request.param` says, in this process (the backends in use;
    for "avx2" the C module and column without their AVX-512 functions, as _kernels.c leaves them
    out on such a CPU) and in the children it starts (DARKNETPY_KERNELS). Ask for it with
    `@pytest.mark.usefixtures("kernels_mode")`: the test runs once per mode of kernel_modes()."""
    from darknetpy import kernels
    mode = request.param
    if mode == "numpy":
        monkeypatch.setenv("DARKNETPY_KERNELS", "0")
        with kernels.use("numpy"):
            yield mode
        return
    if mode == "avx2":
        monkeypatch.setenv("DARKNETPY_KERNELS", "avx2")
        for name in avx512_only():
            monkeypatch.delattr(kernels._c, name)
            if name in kernels.C.ops:
                monkeypatch.delitem(kernels.C.ops, name)
    with kernels.use("c"):
        yield mode
