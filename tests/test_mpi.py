"""Data-parallel training under a real `mpiexec -n 2` (the extra darknetpy[mpi]): the same updates
as one process, checkpoints that resume across rank counts, the uneven-split refusal, Ctrl-C.

The reference is always a one-process run of the same command; tiny cfgs, each run well under a
second of training.
"""
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from darknetpy import launcher, load_network

from test_train import TEXT

HAVE_MPI = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(not (HAVE_MPI and MPIEXEC),
                               reason='mpi4py (or its mpiexec) is not installed: pip install ".[mpi]"')

CFG = """[net]
inputs=256
batch=8
subdivisions={subdivisions}
time_steps=8
max_batches=12
learning_rate={lr}
{opt}

[{layer}]
output=16
{dropout}
[{layer}]
output=16

[connected]
output=256
activation=linear

[softmax]
"""
SGD = "momentum=0.9\ndecay=0.0005\nclip=0.5"
# Adam's step divides by sqrt(v) + eps: where a summed gradient lies within eps of zero, the ~1e-9
# float-order difference of the two sums moves that weight by up to lr * 1e-9 / eps. With Darknet's
# eps = 1e-7 that is 1e-4 at lr = 0.01 (seen here on one of 19136 GRU weights); eps = 1e-4 bounds it
# at 1e-7, so the comparison tests the data split and the sums, not that amplification.
ADAM = "adam=1\ndecay=0.0005\neps=0.0001"


@pytest.fixture
def run(tmp_path):
    """run(k, *args) -> CompletedProcess of `darknetpy train` on k ranks (k = 1: no mpiexec)."""
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")

    def run(k, *args, **popen):
        cmd = [sys.executable, "-m", "darknetpy", "train", *map(str, args), "--valid-every", "0"]
        if k > 1:
            cmd = [MPIEXEC, "-n", str(k), *cmd]
        if popen:
            return subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, **popen)
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    return run


def write(tmp_path, layer="lstm", subdivisions=2, opt=SGD, lr=0.05, dropout=0):
    path = tmp_path / "tiny.cfg"
    dropout = f"[dropout]\nprobability={dropout}\n" if dropout else ""
    path.write_text(CFG.format(layer=layer, subdivisions=subdivisions, opt=opt, lr=lr, dropout=dropout))
    return path


def weights(cfg, path):
    return load_network(cfg, path).params()


def max_diff(cfg, a, b):
    wa, wb = weights(cfg, a), weights(cfg, b)
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


@needs_mpi
@pytest.mark.parametrize("layer, subdivisions, opt, dropout", [("lstm", 2, SGD, 0), ("gru", 1, ADAM, 0),
                                                               ("gru", 2, SGD, 0.3)])
def test_two_ranks_make_one_process_updates(tmp_path, run, layer, subdivisions, opt, dropout):
    """Also with [dropout]: each rank keeps its block of the masks one process draws."""
    cfg = write(tmp_path, layer, subdivisions, opt, lr=0.01 if opt == ADAM else 0.05, dropout=dropout)
    for updates, tolerance in ((1, 1e-6), (12, 1e-4)):
        for k in (1, 2):
            r = run(k, cfg, "corpus.txt", "--srand", 7, "--backup", f"b{k}_{updates}", "--max-batches", updates)
            assert r.returncode == 0, r.stderr
        diff = max_diff(cfg, tmp_path / f"b1_{updates}/tiny_final.weights",
                        tmp_path / f"b2_{updates}/tiny_final.weights")
        assert diff < tolerance, (updates, diff)
    # the weights did move: the comparison above is not between two untouched initializations
    assert max_diff(cfg, tmp_path / "b1_1/tiny_final.weights", tmp_path / "b1_12/tiny_final.weights") > 1e-3
    record = yaml.safe_load((tmp_path / "b2_12/tiny.yaml").read_text())
    assert record["ranks"] == 2 and record["streams_per_rank"] == 8 // subdivisions // 2
    assert record["progress"]["seen"] == 12 * 8 * 8


@needs_mpi
def test_two_ranks_keep_one_process_average(tmp_path, run):
    """[net] ema_alpha: every rank holds the same weights after the sum, so the same average; rank
    0 writes it as the final weights, those of one process."""
    cfg = write(tmp_path, "gru", 1, ADAM + "\nema_alpha=0.8", lr=0.01)
    for k in (1, 2):
        r = run(k, cfg, "corpus.txt", "--srand", 7, "--backup", f"b{k}", "--max-batches", 12)
        assert r.returncode == 0, r.stderr
    assert max_diff(cfg, tmp_path / "b1/tiny_final.weights", tmp_path / "b2/tiny_final.weights") < 1e-4
    assert max_diff(cfg, tmp_path / "b2/tiny.backup", tmp_path / "b2/tiny_final.weights") > 1e-3  # the average


@needs_mpi
def test_rank_zero_alone_prints(tmp_path, run):
    cfg = write(tmp_path)
    r = run(2, cfg, "corpus.txt", "--srand", 7, "--backup", "b", "--max-batches", 2)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("finished: iteration 4") == 1 and r.stdout == ""


@needs_mpi
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_across_rank_counts(tmp_path, run, first, then):
    cfg = write(tmp_path)
    r = run(1, cfg, "corpus.txt", "--srand", 7, "--backup", "straight", "--max-batches", 12)
    assert r.returncode == 0, r.stderr
    r = run(first, cfg, "corpus.txt", "--srand", 7, "--backup", "split", "--max-batches", 6)
    assert r.returncode == 0, r.stderr
    r = run(then, "--resume", "split/tiny.yaml", "--max-batches", 12)
    assert r.returncode == 0, r.stderr
    assert max_diff(cfg, tmp_path / "straight/tiny_final.weights", tmp_path / "split/tiny_final.weights") < 1e-4


@needs_mpi
def test_uneven_split_is_refused_once(tmp_path, run):
    cfg = write(tmp_path)  # 8 / 2 = 4 streams over 3 ranks
    r = run(3, cfg, "corpus.txt", "--srand", 7, "--backup", "b")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("darknetpy:")]
    assert lines == [f"darknetpy: {cfg}: the cfg's 4 streams (batch/subdivisions) do not split evenly "
                     "over 3 ranks; run with a rank count that divides 4, or change batch"], r.stderr
    assert not (tmp_path / "b" / "tiny.backup").exists()


@needs_mpi
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_mpiexec_checkpoints_once(tmp_path, run, signum):
    cfg = write(tmp_path)
    p = run(2, cfg, "corpus.txt", "--srand", 7, "--backup", "b", "--max-batches", 10**6, stdout=subprocess.DEVNULL)
    record = tmp_path / "b" / "tiny.yaml"
    while not record.exists():  # the first checkpoint (iteration 100): training is under way
        assert p.poll() is None, p.stderr.read()
    p.send_signal(signum)
    err = p.communicate()[1].decode()
    assert p.returncode == 128 + signum, err  # as one process: 130 after Ctrl-C, 143 after SIGTERM
    saved = yaml.safe_load(record.read_text())
    assert saved["status"] == "interrupted" and err.count("interrupted: iteration") == 1, err
    net = load_network(cfg, tmp_path / "b" / saved["checkpoints"]["latest"])  # named relative to the record
    assert net.seen == saved["progress"]["seen"]


def test_without_a_launcher_mpi4py_is_never_imported(tmp_path):
    write(tmp_path)
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI_", "PMIX"))}
    code = ("import sys; from darknetpy.train import train; "
            "train('tiny.cfg', 'corpus.txt', srand=1, max_batches=1, progress=False, valid_every=0); "
            "print('mpi4py' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "False\n", r.stderr


def test_launched_without_mpi4py_says_so_in_one_line(tmp_path):
    cfg = write(tmp_path)
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    code = "import sys; sys.modules['mpi4py'] = None; from darknetpy.cli import main; main()"
    for rank, expected in (("0", 1), ("1", 0)):
        env = dict(os.environ, PMI_SIZE="2", PMI_RANK=rank)
        r = subprocess.run([sys.executable, "-c", code, "train", str(cfg), "corpus.txt"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.count('pip install "darknetpy[mpi]"') == expected and len(r.stderr.splitlines()) == expected


@needs_mpi
@pytest.mark.parametrize("stop", [
    {"time_budget": "3s", "max_batches": 0},
    {"patience": 1, "valid_every": 4, "valid_frac": 0.2, "max_batches": 1000},
], ids=["time_budget", "patience"])
def test_stops_on_rank_zero_information_end_every_rank_at_one_iteration(tmp_path, stop):
    """A time budget (rank 0's clock) and patience (rank 0's validation) end both ranks on the same
    iteration: each rank writes where its run ended. learning_rate=0 never improves the held-out
    loss, so patience 1 stops at the second validation, iteration 8."""
    write(tmp_path, lr=0.0 if "patience" in stop else 0.05)
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    code = ("import sys, json; from darknetpy.train import train; "
            f"s = train('tiny.cfg', 'corpus.txt', srand=7, progress=False, **{stop!r}); "
            "from darknetpy import parallel; "
            "rank = parallel.launched()[0]; "
            "open(f'end{rank}.json', 'w').write(json.dumps([rank, s['iteration'], s['updates'], s['reason']]))")
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code], cwd=tmp_path,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ends = [yaml.safe_load((tmp_path / f"end{rank}.json").read_text()) for rank in (0, 1)]  # each rank's
    assert [e[0] for e in ends] == [0, 1], ends
    assert ends[0][1:] == ends[1][1:], r.stdout
    if "patience" in stop:
        assert ends[0][1] == 8 and "--patience 1" in ends[0][3], r.stdout
    else:  # the horizon was set from rank 0's clock (or the deadline came first)
        record = yaml.safe_load((tmp_path / "backup" / "tiny.yaml").read_text())
        assert "time_budget" in record or "time budget" in (ends[0][3] or ""), r.stdout


@needs_mpi
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_between_two_updates_across_rank_counts(tmp_path, run, first, then):
    """subdivisions=3: the checkpoint at iteration 100 falls inside update 34, so it holds
    gradients of an unfinished batch; summed over the ranks, they resume as one process's. With
    [dropout], whose masks continue from the saved rng as one process's would."""
    cfg = write(tmp_path, "gru", subdivisions=3, dropout=0.2)
    cfg.write_text(cfg.read_text().replace("batch=8", "batch=12"))
    r = run(1, cfg, "corpus.txt", "--srand", 7, "--backup", "straight", "--max-batches", 40)
    assert r.returncode == 0, r.stderr
    r = run(first, cfg, "corpus.txt", "--srand", 7, "--backup", "split", "--max-batches", 40, "--save-every", 50)
    assert r.returncode == 0, r.stderr
    r = run(then, cfg, "corpus.txt", "--weights", "split/tiny_100.weights", "--srand", 7, "--backup", "again",
            "--max-batches", 40)
    assert r.returncode == 0, r.stderr
    assert max_diff(cfg, tmp_path / "straight/tiny_final.weights", tmp_path / "again/tiny_final.weights") < 1e-4


FULL_DISK_ON_RANK_ZERO = """if True:
    import errno, sys, time
    from darknetpy import cli, metrics, parallel
    rows = [0]
    real = metrics.MetricsLog.row

    def row(self, **values):  # the disk fills up under rank 0's metrics log at its 11th row
        rows[0] += 1
        if rows[0] == 11:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, **values)
    if parallel.launched()[0] == 0:
        metrics.MetricsLog.row = row
        told = parallel.Ranks.tell_others

        def tell_others(self, message):  # and rank 0 is descheduled right after telling the others,
            told(self, message)          # as on a loaded machine: it still prints its line
            time.sleep(1)
        parallel.Ranks.tell_others = tell_others
    sys.argv = ["darknetpy", "train", "tiny.cfg", "corpus.txt", "--valid-every", "0", "--srand", "3"]
    cli.main()
"""


@pytest.mark.parametrize("k", [1, pytest.param(2, marks=needs_mpi)])
def test_a_full_disk_on_rank_zero_stops_every_rank_at_once(tmp_path, k):
    """Rank 0 alone writes the metrics rows. When its disk fills, it prints one line naming the log
    (exit 2, no traceback), the checkpoint of iteration 100 stays whole, and with two ranks the
    other stops with it at once instead of waiting DARKNETPY_MPI_TIMEOUT (set to 600 s here) in
    the next gradient sum: after it, rank 1 would print a line of its own, and the run would
    outlast the 300 s the subprocess is given (no clock is read: a loaded machine is slow)."""
    cfg = write(tmp_path, opt=SGD)
    cfg.write_text(cfg.read_text().replace("max_batches=12", "max_batches=100000"))
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    cmd = [sys.executable, "-c", FULL_DISK_ON_RANK_ZERO]
    if k == 2:
        cmd = [MPIEXEC, "-n", "2", *cmd]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", DARKNETPY_MPI_TIMEOUT="600")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.startswith("darknetpy:")]
    assert len(lines) == 1, r.stderr
    assert "tiny.metrics.csv: cannot write a metrics row (No space left on device)" in lines[0], lines
    assert "iteration 110" in lines[0], lines
    others = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("darknetpy:", "iteration "))]
    assert not others, r.stderr  # no traceback, no MPI noise: the line and the progress bar
    rows = (tmp_path / "backup" / "tiny.metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [str(i) for i in range(10, 101, 10)]
    # iteration 100s: 100 datums of 4 streams (batch 8 / subdivisions 2) x 8 steps
    assert load_network(cfg, tmp_path / "backup" / "tiny.backup").seen == 100 * 4 * 8


@pytest.mark.parametrize("k", [1, pytest.param(2, marks=needs_mpi)])
def test_batchnorm_with_one_stream_per_rank_is_refused_once(tmp_path, run, k):
    """Recurrent batchnorm normalizes each step over the streams: one stream (per rank) is refused."""
    cfg = write(tmp_path)
    cfg.write_text(cfg.read_text().replace("batch=8", f"batch={k}").replace("subdivisions=2", "subdivisions=1")
                   .replace("[lstm]\noutput=16\n", "[lstm]\noutput=16\nbatch_normalize=1\n", 1))
    r = run(k, cfg, "corpus.txt", "--srand", 7, "--backup", "b")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("darknetpy:")]
    fix = "run fewer ranks, or raise batch" if k > 1 else "raise batch (or lower subdivisions)"
    where = " on each rank" if k > 1 else ""
    assert lines == [f"darknetpy: {cfg}:12: training [lstm] with batch_normalize needs at least 2 streams "
                     f"per datum{where}; {fix}"], r.stderr
    assert "Traceback" not in r.stderr


def rank_pid(rank, marker):
    """The pid of MPI rank `rank` of the darknetpy run whose command line holds `marker` (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and b"darknetpy" in cmdline and f"PMI_RANK={rank}".encode() in environ:
            return int(pid)
    return None


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds rank 1's process in /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGSTOP, signal.SIGKILL])
def test_a_rank_that_hangs_or_dies_stops_every_rank(tmp_path, signum):
    """Rank 1 stopped (a hang): rank 0 gives up after DARKNETPY_MPI_TIMEOUT (2 s here) with one line,
    exit 2. Rank 1 killed: mpiexec ends the job at once, with its own message. Either way no rank
    waits forever and the last checkpoint stays whole."""
    cfg = write(tmp_path)
    cfg.write_text(cfg.read_text().replace("max_batches=12", "max_batches=1000000"))
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    backup = tmp_path / "b"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", DARKNETPY_MPI_TIMEOUT="2")
    p = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "darknetpy", "train", str(cfg), "corpus.txt",
                          "--valid-every", "0", "--srand", "7", "--backup", str(backup)],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = None
    try:
        while not (backup / "tiny.yaml").exists():  # the first checkpoint (iteration 100): training is under way
            assert p.poll() is None, p.communicate()
            time.sleep(0.05)
        pid = rank_pid(1, str(backup))
        assert pid is not None
        os.kill(pid, signum)
        out, err = p.communicate(timeout=120)
    finally:
        if pid is not None and signum == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.kill()
    assert "Traceback" not in err, err
    if signum == signal.SIGSTOP:
        assert p.returncode == 2, err
        lines = [line for line in err.splitlines() if line.startswith("darknetpy:")]
        assert len(lines) == 1 and "rank 0 of 2: no answer from the other ranks for 2 s" in lines[0], err
    else:
        assert p.returncode != 0 and "darknetpy:" not in err, (p.returncode, err)
    assert load_network(cfg, backup / "tiny.backup").seen % (4 * 8) == 0


DRIFT_ON_RANK_ONE = """if True:
    import sys
    import numpy as np
    from darknetpy import cli, parallel
    from darknetpy.network import Network
    real, updates = Network.update, [0]

    def update(self, *args):  # one weight of rank 1 moves by one float32 step after its 20th update
        real(self, *args)
        updates[0] += 1
        if updates[0] == 20:
            W = self.layers[0].denses[0].W
            W.flat[0] = np.nextafter(W.flat[0], np.float32(np.inf))
    if parallel.launched()[0] == 1:
        Network.update = update
    sys.argv = ["darknetpy", "train", "tiny.cfg", "corpus.txt", "--valid-every", "0", "--srand", "3",
                "--max-batches", "100"]
    cli.main()
"""


@needs_mpi
def test_weights_that_drift_apart_stop_every_rank(tmp_path):
    """The ranks compare a checksum of their weights every 16 updates: one weight of rank 1 one ulp
    off after update 20 stops both at the check of update 32, with one line, exit 2; the checkpoint
    of iteration 100 (update 50: 2 datums per update) is never written from drifted weights."""
    write(tmp_path)  # tiny.cfg
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", DRIFT_ON_RANK_ONE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("darknetpy:")]
    assert lines == ["darknetpy: the ranks' weights differ at update 32 (their checksums disagree); training "
                     "stopped, the last checkpoint is intact; please report this with the cfg"], r.stderr
    assert "Traceback" not in r.stderr
    assert not [f for f in os.listdir(tmp_path / "backup") if f.endswith((".weights", ".backup"))]


@needs_mpi
def test_each_rank_takes_its_share_of_the_cores(tmp_path):
    """Under mpiexec with no BLAS thread count set, `import darknetpy` gives each rank its share of
    the cores before numpy loads OpenBLAS (2 ranks of all-core BLAS on 2 cores train 4x slower); a
    count the user set stays, and without a launcher nothing is set."""
    code = ("import os, darknetpy; from darknetpy import kernels; "  # a file per rank: mpiexec interleaves stdout
            "open('threads' + os.environ.get('PMI_RANK', ''), 'w').write("
            "f\"{os.environ.get('OPENBLAS_NUM_THREADS')} {kernels.threads()}\")")
    env = {k: v for k, v in os.environ.items() if k not in launcher.THREAD_VARS}
    share = max(1, len(os.sched_getaffinity(0)) // 2)

    def run(*launcher, **extra):
        for old in tmp_path.glob("threads*"):
            old.unlink()
        out = subprocess.run([*launcher, sys.executable, "-c", code], cwd=tmp_path, env=dict(env, **extra),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [p.read_text() for p in sorted(tmp_path.glob("threads*"))]
    assert run(MPIEXEC, "-n", "2") == [f"{share} {share}"] * 2
    assert run(MPIEXEC, "-n", "2", OPENBLAS_NUM_THREADS="3") == ["3 3"] * 2
    assert run() == [f"None {len(os.sched_getaffinity(0))}"]


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds rank 0's process in /proc (Linux)")
def test_the_ranks_hold_the_folder_through_rank_0(tmp_path, run):
    """A training on 2 ranks holds its folder: a second training, on one process or on 2 ranks,
    is refused in one line naming rank 0's process; once the first is gone, a third is accepted."""
    cfg = write(tmp_path)
    backup = tmp_path / "b"
    p = run(2, cfg, "corpus.txt", "--srand", 7, "--backup", backup, "--max-batches", 10**6, stdout=subprocess.DEVNULL)
    try:
        while not (backup / "tiny.yaml").exists():  # the first checkpoint (iteration 100): training is under way
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.05)
        holder = rank_pid(0, str(backup))
        for k, args in ((1, ("--resume", backup / "tiny.yaml", "--max-batches", 1)),
                        (2, (cfg, "corpus.txt", "--backup", backup, "--overwrite", "--max-batches", 3))):
            r = run(k, *args)
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert f"pid {holder} " in lines[0] and "a training is still writing into this folder" in lines[0], lines
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate()
    assert p.returncode == 130
    r = run(2, "--resume", backup / "tiny.yaml", "--max-batches", yaml.safe_load((backup / "tiny.yaml").read_text())["progress"]["updates"] + 2)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not HAVE_MPI, reason="mpi4py is not installed (pip install '.[mpi]')")
def test_a_signal_landing_while_the_ranks_agree_is_kept_for_the_next_agreement():
    """The ranks agree on a stop every iteration (an allreduce whose wait runs Python, so a signal's
    handler can run inside it, after this rank's value went out). Such a signal must neither be
    lost (the agreement answering 0 after it) nor stop this rank alone: it is agreed on next time.
    A lost one left a 2-rank training running after mpiexec's Ctrl-C."""
    from darknetpy.parallel import Ranks
    from darknetpy.train import _Interrupt
    ranks = Ranks(None)
    ranks.comm = object()  # several ranks, as far as agree_interrupt asks
    sent = []

    def allreduce(buf, op, what, timeout=None):  # one rank's view: the others sent 0
        sent.append(int(buf[0]))
        if len(sent) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # lands inside the first agreement's wait
        return buf

    ranks.allreduce = allreduce
    with _Interrupt(agreed=True) as interrupt:
        ranks.agree_interrupt(interrupt)
        assert not interrupt.flag  # the others did not see it: no rank stops alone
        ranks.agree_interrupt(interrupt)
    assert sent == [0, signal.SIGINT]
    assert interrupt.flag and interrupt.signum == signal.SIGINT
