"""Ctrl-C at any moment of any command: one line, exit 130, never a traceback (or a normal exit 0
when the command finished first). Real subprocesses, real SIGINTs, at a spread of delays from the
moment darknetpy's own code runs (its imports) to the middle of the command's work.

"The moment darknetpy's own code runs" is when numpy's library appears in the process's memory
map: the entry point installs its handler before importing anything heavy. Before that the
interpreter starts itself (site, the editable install's finder), and a Ctrl-C there is Python's,
before any line of darknetpy can run.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from darknetpy import load_network
from test_train import TEXT, write_cfg

DELAYS = (0.0, 0.005, 0.02, 0.08, 0.3, 1.0)  # seconds after numpy starts loading
CLOSING = {"tokenize": "(in [net]", "plot": "wrote "}  # the stderr line of a finished command
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc"), reason="times the signal from /proc/PID/maps (Linux)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run (cfg, weights, record) and a corpus: what every command needs."""
    folder = tmp_path_factory.mktemp("run")
    cfg = write_cfg(folder, hidden=64, batch=8, time_steps=16, max_batches=3)
    corpus = folder / "corpus.txt"
    corpus.write_bytes(TEXT * 200)  # 30 kB: valid and vec take about a second on it
    r = subprocess.run([sys.executable, "-m", "darknetpy", "train", cfg, corpus, "--backup", folder / "b"],
                       capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    return {"cfg": cfg, "corpus": corpus, "weights": folder / "b" / "tiny_final.weights",
            "record": folder / "b" / "tiny.yaml", "folder": folder}


def arguments(command, run, out):
    cfg, weights, corpus = run["cfg"], run["weights"], run["corpus"]
    return {"generate": ["generate", cfg, weights, "--len", 20000],
            "valid": ["valid", cfg, weights, corpus],
            "vec": ["vec", cfg, weights, corpus],
            "info": ["info", cfg, weights],
            "train": ["train", cfg, corpus, "--backup", out / "b", "--max-batches", 100000],
            "tokenize": ["tokenize", corpus, "-o", out / "tok" / "t"],
            "plot": ["plot", run["record"], "-o", out / "p.png"],
            "bench": ["bench", cfg, "--iterations", 20],
            "export": ["export", cfg, weights, "-o", out / "m.onnx"],
            "overlap": ["overlap", cfg, corpus]}[command]


def numpy_mapped(pid):
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "numpy" in f.read()
    except FileNotFoundError:  # the process has ended
        return True


def interrupt(args, delay):
    """Start `python -m darknetpy ARGS`, send SIGINT `delay` s after numpy begins to load: (exit
    code, stderr lines)."""
    p = subprocess.Popen([sys.executable, "-m", "darknetpy", *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while p.poll() is None and not numpy_mapped(p.pid):
        time.sleep(0.0005)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    err = p.stderr.read().decode()
    return p.wait(), err


def assert_whole(cfg, backup):
    """An interrupted train leaves no temporary file, and every file it wrote is whole."""
    if not backup.exists():
        return
    names = os.listdir(backup)
    assert not [n for n in names if n.startswith(".") or n.endswith((".pending", ".tmp"))], names
    for name in names:
        if name.endswith((".weights", ".backup")):
            load_network(cfg, backup / name)
        elif name.endswith(".yaml"):
            assert isinstance(yaml.safe_load((backup / name).read_text()), dict), name


@needs_proc
@pytest.mark.parametrize("command", ["generate", "valid", "vec", "info", "train", "tokenize", "plot", "bench",
                                     "export", "overlap"])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(command, run, tmp_path):
    outcomes = [None] * len(DELAYS)

    def one(i):  # the delays run side by side: each is timed from its own process's start
        out = tmp_path / str(i)
        out.mkdir()
        outcomes[i] = interrupt(arguments(command, run, out), DELAYS[i])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(DELAYS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    interrupted = 0
    for delay, (code, err) in zip(DELAYS, outcomes):
        lines = err.splitlines()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        assert code in (0, 130), (delay, code, err)
        said = [line for line in lines if line.startswith(("darknetpy: interrupted", "interrupted: iteration"))]
        if code == 130:
            interrupted += 1
            assert said == lines[-1:], (delay, err)  # one line, the last
            if command != "train":  # train prints progress; the others only their closing line
                assert all(line.startswith(CLOSING.get(command, "\0")) for line in lines[:-1]), (delay, err)
        else:
            assert said == [], (delay, err)
        if command == "train":
            assert_whole(run["cfg"], tmp_path / str(DELAYS.index(delay)) / "b")
    assert interrupted >= 2, outcomes  # the spread did reach running commands


@needs_proc
def test_the_console_script_is_the_quiet_entry_point(run, tmp_path):
    """The `darknetpy` script pip writes runs entry.main, as `python -m darknetpy` does."""
    script = os.path.join(os.path.dirname(sys.executable), "darknetpy")
    if not os.path.exists(script):
        pytest.skip(f"no console script at {script}: darknetpy is not pip-installed in this environment")
    p = subprocess.Popen([script, "generate", run["cfg"], run["weights"], "--len", "20000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while p.poll() is None and not numpy_mapped(p.pid):
        time.sleep(0.0005)
    p.send_signal(signal.SIGINT)
    assert p.wait() == 130
    assert p.stderr.read().decode() == "darknetpy: interrupted\n"


def test_importing_the_library_leaves_ctrl_c_alone():
    """A library installs no signal handler: under `import darknetpy` and its use, Ctrl-C is still
    Python's KeyboardInterrupt; the names load on first use."""
    code = ("import signal, darknetpy\n"
            "from darknetpy import Network, load_network\n"
            "assert darknetpy.Network is Network and darknetpy.cfg.parse_cfg\n"
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
            "try:\n    darknetpy.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    # The child starts with Ctrl-C's default, as from a terminal: Python installs no handler for a
    # SIGINT it inherits ignored, as under a test run started in the background (`pytest &`).
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "module 'darknetpy' has no attribute 'no_such_name'\n"


MID_IMPORT = """if True:
    import signal, sys, time
    from darknetpy import entry
    signal.signal(signal.SIGINT, entry._on_sigint)  # as entry.main installs it
    entry._installed = True
    sys.path.insert(0, sys.argv[1])
    try:
        with entry.running():  # a command's body
            import interrupted_mid_import
            print("after the import", flush=True)
            time.sleep(60)
            print("never interrupted")
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
"""


def test_ctrl_c_while_a_module_loads_comes_after_the_import(tmp_path):
    """A Ctrl-C that lands while a command's body imports a module (export's lazy `import onnx`,
    whose pybind11 module runs Python code as it initializes) is raised once the import is over,
    not inside it: raised there, it aborted the process or crashed it at exit (SIGABRT, SIGSEGV).
    The module here sends itself the signal and runs on."""
    (tmp_path / "interrupted_mid_import.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nsum(range(1000))\n"
        "print('the import finished', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", MID_IMPORT, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the import finished\nafter the import\nKeyboardInterrupt\n", r.stdout


CTRL_C_AS_THE_RUN_STARTS = """if True:
    import os, signal, sys
    from darknetpy import entry, train
    bar = train._Progress

    def progress(*args, **kwargs):  # the Ctrl-C lands as run() makes its progress bar
        os.kill(os.getpid(), signal.SIGINT)
        return bar(*args, **kwargs)
    train._Progress = progress
    sys.argv[0] = "darknetpy"
    entry.main()
"""


def test_ctrl_c_between_the_set_up_and_the_run_leaves_no_lock_file(run, tmp_path):
    """The trainer takes the folder's lock as it sets up; a Ctrl-C that lands before the run's own
    cleanups stand (the full suite's Ctrl-C test caught one in a loaded run) still removes the
    lock file on the way out."""
    args = ["train", run["cfg"], run["corpus"], "--backup", tmp_path / "b", "--max-batches", 100000]
    r = subprocess.run([sys.executable, "-c", CTRL_C_AS_THE_RUN_STARTS, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 130, r.stderr
    assert r.stderr == "darknetpy: interrupted\n"
    assert sorted(os.listdir(tmp_path / "b")) == ["tiny.vocab"]
