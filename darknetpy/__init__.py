"""darknetpy: Darknet's recurrent networks (rnn, gru, lstm) in numpy — same .cfg, same .weights."""
from .launcher import share_cores

share_cores()  # under mpiexec: each rank's share of the cores, before numpy loads its BLAS
from .network import Network, load_network  # noqa: E402

__all__ = ["Network", "load_network"]
