"""The environment of a benchmark's timed command.

Some machines set OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE to dodge bugs of old OpenBLAS builds. On a
current build they make OpenBLAS run kernels for an older CPU: on this one (AVX-512),
OPENBLAS_CORETYPE=Haswell halves numpy's matmul peak. The benchmarks time what OpenBLAS picks for
the CPU, as where they are not set, so they run their timed commands without them.
"""
import os

MACHINE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def timed_env(**extra):
    """os.environ without MACHINE_VARS, with `extra` (e.g. OPENBLAS_NUM_THREADS="1") set."""
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_VARS}
    env.update(extra)
    return env
