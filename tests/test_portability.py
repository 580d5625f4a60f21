"""Issue 28 point 6: every fast path has a fallback, and the tests run both ways. conftest's
`kernels_mode` runs the Darknet oracles, resume bit-exactness and Darknet's generation once per way
the kernels can run on this machine: "c" (all this CPU has), "avx2" (the C kernels without the
AVX-512 ones, as on a CPU without AVX-512) and "numpy" (DARKNETPY_KERNELS=0). These check that each
mode runs what it says, in this process and in the children a test starts.
"""
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from darknetpy import kernels
from conftest import avx512_only

importlib.import_module("darknetpy.layers")  # the kinds register their step loops

REPORT = ("import darknetpy.layers, numpy as np\nfrom darknetpy import kernels\n"
          "x = np.zeros((4, 8), np.float32)\n"
          "print(kernels.get('transpose', x.T.copy(), x) is kernels.NUMPY.ops['transpose'],"
          " kernels.compiled('panel_matmul'), kernels.compiled('lstm_loop'), kernels.sample_loop() is not None)")


def what_runs():
    """(transpose is numpy's, the panel kernel is in use, the LSTM's C step loop is, the C sample loop is)."""
    x = np.zeros((4, 8), np.float32)
    return (kernels.get("transpose", x.T.copy(), x) is kernels.NUMPY.ops["transpose"],
            kernels.compiled("panel_matmul"), kernels.compiled("lstm_loop"), kernels.sample_loop() is not None)


def test_each_mode_runs_what_it_says_here_and_in_a_child(kernels_mode):
    avx512 = kernels.C is not None and "panel_matmul" in avx512_only()
    expected = {"numpy": (True, False, False, False), "avx2": (False, False, False, False),
                "c": (False, avx512, avx512, avx512)}[kernels_mode]
    assert what_runs() == expected
    child = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, check=True)
    assert child.stdout.split() == [str(v) for v in expected], child.stderr


def test_avx512_only_names_the_fast_paths_this_cpu_has():
    """On an AVX-512 CPU the C module brings the panel kernel, the step loops and the sample loop,
    and DARKNETPY_KERNELS=avx2 leaves out those and nothing else; elsewhere there is nothing to
    leave out."""
    if kernels.C is None or not hasattr(kernels._c, "panel_matmul"):
        assert avx512_only() == frozenset()
        return
    assert {"panel_matmul", "panel_matmul_t", "lstm_loop", "lstm_loop_back", "gru_loop", "gru_loop_back",
            "rnn_loop", "rnn_loop_back", "sample_run"} <= avx512_only()
    assert not avx512_only() & {"lstm_step", "gru_step", "rnn_step", "softmax_rows", "transpose", "isa"}


def test_children_import_the_darknetpy_under_test():
    """A child started in the repository's root imports the package this process tests, not the
    source tree there (which, in a clean clone with the package installed, has no built extension):
    conftest's PYTHONSAFEPATH and PYTHONPATH."""
    import darknetpy
    child = subprocess.run([sys.executable, "-c", "import darknetpy; print(darknetpy.__file__)"],
                           cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    assert Path(child.stdout.strip()).resolve() == Path(darknetpy.__file__).resolve()
