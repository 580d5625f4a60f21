"""Run folders you can trust: a copied or moved BACKUP folder is a run of its own, one training at
a time writes into a folder, --resume trains more with the learning-rate schedule continued, and
the commands darknetpy prints can be pasted. Real subprocesses and real folders throughout."""
import csv
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import read_weights
from conftest import run_cli as run
from darknetpy.train import parse_duration
from test_train import TEXT, one_line_error, write_cfg

ROWS = 8 * 8  # characters per iteration of test_train's tiny cfg (batch 8, time_steps 8)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT * 30)  # ~5 KB
    return path


def ok(*args):
    r = run("train", *args)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"" and b"Traceback" not in r.stderr
    return r


def seen(path):
    return read_weights(path)[3]


def record(folder, name="tiny"):
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def rates(folder):
    """(iteration, learning_rate) of every row of the metrics log."""
    with open(folder / "tiny.metrics.csv", newline="") as f:
        return [(int(r["iteration"]), float(r["learning_rate"])) for r in csv.DictReader(f)]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def pasted(message):
    """The command between backquotes in a message, as a shell would split it (darknetpy dropped)."""
    words = shlex.split(message.split("`")[1])
    assert words[:2] == ["darknetpy", "train"], words
    return words[2:]


# ---- 1. a run folder is self-contained and relocatable --------------------------------------------
def test_a_copied_folder_resumes_its_own_run_and_leaves_the_original_alone(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)
    a, b = tmp_path / "A", tmp_path / "B"
    ok(cfg, corpus, "--backup", a, "--max-batches", 20, "--srand", 3, "--valid-every", 0)
    shutil.copytree(a, b)
    ok("--resume", a / "tiny.yaml", "--max-batches", 60)
    kept = snapshot(a)
    (b / "tiny.cfg").unlink()  # its copy of the cfg gone: the record names where it came from
    ok("--resume", b / "tiny.yaml", "--max-batches", 40)
    assert (b / "tiny.cfg").read_bytes() == cfg.read_bytes()
    assert snapshot(a) == kept  # B wrote nothing into A
    assert seen(a / "tiny_final.weights") == 60 * ROWS
    assert seen(b / "tiny_final.weights") == 40 * ROWS  # from B's own checkpoint at 20, not A's at 60
    # B's run is the same as one run to 40 (so it did start from its own iteration 20, exactly)
    ok(cfg, corpus, "--backup", tmp_path / "C", "--max-batches", 40, "--srand", 3, "--valid-every", 0)
    assert (b / "tiny_final.weights").read_bytes() == (tmp_path / "C" / "tiny_final.weights").read_bytes()
    names = record(b)
    assert names["checkpoints"]["latest"] == "tiny_final.weights" and names["metrics"] == "tiny.metrics.csv"
    assert names["cfg"] == "tiny.cfg" and names["started_from"]["weights"] == "tiny_final.weights"


def test_a_moved_folder_resumes_without_its_cfg_and_plots(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)
    a, moved = tmp_path / "A", tmp_path / "runs of mine" / "moved A"
    ok(cfg, corpus, "--backup", a, "--max-batches", 20, "--srand", 4, "--valid-every", 10)
    moved.parent.mkdir()
    shutil.move(str(a), str(moved))
    cfg.unlink()  # the folder keeps its own copy of the cfg: all of the run but the corpus
    ok("--resume", moved / "tiny.yaml", "--max-batches", 30)
    assert seen(moved / "tiny_final.weights") == 30 * ROWS and not a.exists()
    assert record(moved)["best"]["weights"] == "tiny_best.weights"
    r = run("plot", moved / "tiny.yaml", "-o", tmp_path / "curves.png")  # reads the metrics the record names
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_old_record_with_absolute_paths_resumes_and_a_missing_checkpoint_says_the_way_out(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)
    a = tmp_path / "A"
    ok(cfg, corpus, "--backup", a, "--max-batches", 20, "--srand", 5, "--valid-every", 0)
    old = record(a)  # as records were written before names were relative
    old["cfg"], old["metrics"] = str(cfg), str(a / old["metrics"])
    old["checkpoints"] = {k: (str(a / v) if isinstance(v, str) else [str(a / p) for p in v] if v else v)
                          for k, v in old["checkpoints"].items()}
    (a / "tiny.yaml").write_text(yaml.safe_dump(old))
    (a / "tiny.cfg").unlink()
    ok("--resume", a / "tiny.yaml", "--max-batches", 25)
    assert seen(a / "tiny_final.weights") == 25 * ROWS
    assert record(a)["cfg"] == "tiny.cfg" and (a / "tiny.cfg").read_bytes() == cfg.read_bytes()
    # its latest checkpoint gone: one line naming it and a command that continues from another
    (a / "tiny_final.weights").unlink()
    r = run("train", "--resume", a / "tiny.yaml", "--max-batches", 30)
    line = one_line_error(r, str(a / "tiny_final.weights"), "does not exist", "--weights")
    ok(*pasted(line), "--max-batches", 30)
    assert seen(a / "tiny_final.weights") == 30 * ROWS


# ---- 2. one writer per folder ---------------------------------------------------------------------
def test_a_live_training_holds_its_folder(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)
    a = tmp_path / "A"
    first = subprocess.Popen([sys.executable, "-m", "darknetpy", "train", str(cfg), str(corpus), "--backup", str(a),
                              "--max-batches", str(10**7), "--valid-every", "0", "--save-every", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (a / "tiny.yaml").exists():  # the first checkpoint (iteration 100): it is training
            assert first.poll() is None
            time.sleep(0.05)
        for args in ((cfg, corpus, "--backup", a), (cfg, corpus, "--backup", a, "--overwrite"),
                     ("--resume", a / "tiny.yaml"), ("--resume", a / "tiny.yaml", "--max-batches", 1)):
            line = one_line_error(run("train", *args), f"pid {first.pid}", "darknetpy train", str(a))
            assert "--resume" not in line.split("(")[0] and "resume" not in line.split(")")[-1]
        # reading commands never lock
        for args in (("info", a / "tiny.cfg", a / "tiny.backup"), ("generate", a / "tiny.cfg", a / "tiny.backup", "--len", 5),
                     ("valid", a / "tiny.cfg", a / "tiny.backup", corpus), ("plot", a / "tiny.yaml", "-o", tmp_path / "p.png")):
            r = run(*args)
            assert r.returncode == 0, (args, r.stderr.decode())
        assert first.poll() is None
    finally:
        first.kill()  # SIGKILL: no handler runs, the OS releases the lock
        first.wait()
    assert first.returncode == -signal.SIGKILL
    ok("--resume", a / "tiny.yaml", "--max-batches", record(a)["progress"]["updates"] + 5)
    ok(cfg, corpus, "--backup", a, "--overwrite", "--max-batches", 3)


# ---- 3. train more -------------------------------------------------------------------------------
def test_resume_of_a_finished_run_with_a_time_budget_trains_more(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)
    a = tmp_path / "A"
    ok(cfg, corpus, "--backup", a, "--max-batches", 6, "--valid-every", 0)
    r = ok("--resume", a / "tiny.yaml", "--time-budget", "1")
    done = record(a)
    assert done["status"] == "finished" and done["progress"]["updates"] > 6, r.stderr.decode()
    assert seen(a / "tiny_final.weights") == done["progress"]["updates"] * ROWS


def test_a_finished_poly_schedule_starts_again_when_trained_more(tmp_path, corpus):
    """Poly's rate is 0 at its end: trained to 20 updates more, the rate restarts at learning_rate
    and falls to 0 over them (rate at update n = 0.05 * (1 - (n - 10) / 20)), not 0 throughout."""
    cfg = write_cfg(tmp_path, max_batches=10, opt="learning_rate=0.05\npolicy=poly\npower=1")
    a = tmp_path / "A"
    ok(cfg, corpus, "--backup", a, "--valid-every", 0, "--log-every", 1)
    assert rates(a)[-1] == (10, 0.0)
    ok("--resume", a / "tiny.yaml", "--max-batches", 30, "--log-every", 1)
    after = [(n, lr) for n, lr in rates(a) if n > 10]
    assert [n for n, _ in after] == list(range(11, 31))
    for n, lr in after:
        assert lr == pytest.approx(0.05 * (1 - (n - 10) / 20), rel=1e-5, abs=1e-9), n


def test_a_time_budgeted_run_resumed_with_max_batches_goes_on_from_its_rate(tmp_path, corpus):
    """Interrupted at update n0 of a budget's horizon H, resumed with --max-batches M: the rate goes
    on from 0.05 * (1 - n0 / H) and falls to 0 at M, u(n) = u0 + (n - n0) / (M - n0) * (1 - u0)."""
    cfg = write_cfg(tmp_path, max_batches=10, opt="learning_rate=0.05\npolicy=poly\npower=1")
    a = tmp_path / "A"
    p = subprocess.Popen([sys.executable, "-m", "darknetpy", "train", str(cfg), str(corpus), "--backup", str(a),
                          "--time-budget", "60", "--valid-every", "0", "--log-every", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while "time_budget" not in (record(a) if (a / "tiny.yaml").exists() else {}):
        assert p.poll() is None, p.stderr.read().decode()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    assert p.wait() == 130, p.stderr.read().decode()
    stopped = record(a)
    n0, horizon = stopped["progress"]["updates"], stopped["options"]["max_batches"]
    assert 100 <= n0 < horizon and stopped["checkpoints"]["latest"] == "tiny.backup"
    end = n0 + 20
    ok("--resume", a / "tiny.yaml", "--max-batches", end, "--log-every", 1)
    u0 = n0 / horizon
    after = [(n, lr) for n, lr in rates(a) if n > n0]
    assert [n for n, _ in after] == list(range(n0 + 1, end + 1))
    for n, lr in after:
        u = u0 + (n - n0) / (end - n0) * (1 - u0)
        assert lr == pytest.approx(0.05 * (1 - u), rel=1e-5, abs=1e-9), n  # the log keeps 6 digits
    assert after[0][1] == pytest.approx(0.05 * (1 - u0), rel=0.06)  # no jump at the resume


def test_learning_rate_overrides_the_cfg_and_is_kept_by_resume(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)  # learning_rate=0.05, constant
    a = tmp_path / "A"
    ok(cfg, corpus, "--backup", a, "--max-batches", 5, "--learning-rate", 0.02, "--valid-every", 0, "--log-every", 1)
    assert record(a)["options"]["learning_rate"] == 0.02 and record(a)["hyperparameters"]["learning_rate"] == 0.02
    ok("--resume", a / "tiny.yaml", "--max-batches", 8, "--log-every", 1)
    assert rates(a) == [(n, 0.02) for n in range(1, 9)]
    one_line_error(run("train", cfg, corpus, "--backup", tmp_path / "B", "--learning-rate", -1), "--learning-rate -1")


# ---- 4. small ones -------------------------------------------------------------------------------
def test_printed_commands_paste_into_a_shell(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100)
    a = tmp_path / "my runs" / "it's A"
    ok(cfg, corpus, "--backup", a, "--max-batches", 5, "--valid-every", 0)
    line = one_line_error(run("train", cfg, corpus, "--backup", a), "an earlier run")
    ok(*pasted(line), "--max-batches", 7)
    assert seen(a / "tiny_final.weights") == 7 * ROWS
    p = subprocess.Popen([sys.executable, "-m", "darknetpy", "train", "--resume", str(a / "tiny.yaml"),
                          "--max-batches", str(10**7)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while record(a)["status"] != "running":
        assert p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    err = p.communicate()[1].decode()
    assert p.returncode == 130, err
    ok(*pasted(err.splitlines()[-1]), "--max-batches", record(a)["progress"]["updates"] + 1)


@pytest.mark.parametrize("text,seconds", [("600", 600), ("90s", 90), ("10m", 600), ("10min", 600), ("2h", 7200),
                                          ("1h30m", 5400), ("1.5h", 5400), ("1h 30min", 5400), ("45 sec", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "1m2h", "1h30", "0", "-5", "m", "nan"])
def test_bad_durations_are_one_line(tmp_path, corpus, text):
    cfg = write_cfg(tmp_path)
    one_line_error(run("train", cfg, corpus, "--backup", tmp_path / "b", "--time-budget", text),
                   f"--time-budget {text}", "1h30m")
    assert not (tmp_path / "b").exists()
