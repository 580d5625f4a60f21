"""darknetpy: Darknet's recurrent networks (rnn, gru, lstm) in numpy — same .cfg, same .weights."""
from .network import Network, load_network

__all__ = ["Network", "load_network"]
