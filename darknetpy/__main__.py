"""`python -m darknetpy` is the `darknetpy` command."""
from .cli import main

main(prog_name="darknetpy")
