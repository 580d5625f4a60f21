"""The `darknetpy` command's entry point (the console script and `python -m darknetpy`): Ctrl-C at
any moment is one line, `darknetpy: interrupted`, and exit 130, never a traceback.

Python's own SIGINT handler raises KeyboardInterrupt wherever the program happens to be: inside
`import numpy`, in click's argument parsing, while printing, at exit. So this module, which loads
nothing heavy, installs its own handler before the command loads, and the handler does what the
moment allows:
- before a command's body (imports, parsing): exit at once, one line; nothing is written yet;
- inside the body (`running()`, which cli.friendly holds around every command): KeyboardInterrupt,
  as usual, so the command's cleanups run (temporary files go, train saves a checkpoint), and
  friendly turns it into the one line; a second Ctrl-C during those cleanups exits at once; but
  not while a module loads (a body's lazy `import onnx` or `matplotlib`): their compiled modules
  run Python code as they initialize (pybind11's enums), and a KeyboardInterrupt raised there
  aborts the process or leaves it to crash at exit, so the signal comes again every 10 ms until
  the import is over;
- after the body: ignored; its product is written and the process is leaving with its exit code.
The library installs no handler: `import darknetpy` leaves signals alone, and `running()` changes
nothing unless `main` installed the handler.
"""
import contextlib
import os
import signal
import threading

MESSAGE = "darknetpy: interrupted"
_installed = False  # main() installed the handler (not a library caller, not click's CliRunner)
_raising = False    # inside a command's body


def _importing(frame):
    """Whether the interrupted code runs inside an import (importlib's frames below it)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    global _raising
    if _raising and _importing(frame):
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
        return
    if _raising:
        _raising = False  # a second Ctrl-C does not wait for the cleanups
        raise KeyboardInterrupt
    os.write(2, (MESSAGE + "\n").encode())  # not sys.stderr: the handler may cut into its write
    os._exit(130)


@contextlib.contextmanager
def running():
    """A command's body: Ctrl-C raises KeyboardInterrupt in it; once it ends, Ctrl-C is ignored."""
    global _raising
    _raising = True
    try:
        yield
    finally:
        _raising = False
        if _installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def main():
    """Install the handler, then load and run the click command."""
    global _installed
    signal.signal(signal.SIGINT, _on_sigint)
    _installed = True
    from .cli import main as command
    command(prog_name="darknetpy")
