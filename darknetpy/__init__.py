"""darknetpy: Darknet's recurrent networks (rnn, gru, lstm) in numpy — same .cfg, same .weights."""
import importlib

from .launcher import quiet_blas_workers, share_cores

share_cores()  # under mpiexec: each rank's share of the cores, before numpy loads its BLAS
quiet_blas_workers()  # OpenBLAS's idle workers off the cores the step loops' threads need

__all__ = ["Network", "load_network"]


def __getattr__(name):
    """`darknetpy.Network`, `darknetpy.load_network` and the submodules load on first use, so that
    the `darknetpy` command installs its Ctrl-C handler before numpy loads (entry.py)."""
    if name in __all__:
        return getattr(importlib.import_module(".network" if name == "Network" else ".checkpoint", __name__), name)
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
