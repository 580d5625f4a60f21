"""`python -m darknetpy` is the `darknetpy` command."""
from .entry import main

main()
