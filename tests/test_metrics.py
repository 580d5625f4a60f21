"""The metrics log, samples while training, the best checkpoint, --patience and --time-budget."""
import csv
import json
import math

import numpy as np
import pytest
import yaml

from darknetpy import evaluate, load_network
from darknetpy import optim
from darknetpy import train as trainmod
from darknetpy.network import Network
from test_train import TEXT, cli, header_seen, ok, one_line_error, write_cfg


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT * 30)
    return path


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_rows_columns_and_values(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=30)
    ok(cfg, corpus, "--srand", 1, "--backup", tmp_path / "b", "--log-every", 5, "--valid-every", 10)
    log = rows(tmp_path / "b" / "tiny.metrics.csv")
    assert list(log[0]) == ["iteration", "seconds", "epoch", "loss", "avg_loss", "learning_rate",
                            "chars_per_s", "valid_bpc"]
    assert [int(r["iteration"]) for r in log] == [5, 10, 15, 20, 25, 30]
    assert [bool(r["valid_bpc"]) for r in log] == [False, True, False, True, False, True]
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    train_chars = record["hyperparameters"]["train_chars"]
    for r in log:
        assert float(r["epoch"]) == pytest.approx(int(r["iteration"]) * 64 / train_chars, rel=1e-5)
        assert float(r["learning_rate"]) == 0.05 and float(r["chars_per_s"]) > 0
    seconds = [float(r["seconds"]) for r in log]
    assert seconds == sorted(seconds)
    last = log[-1]
    assert float(last["loss"]) == pytest.approx(record["progress"]["train_loss"], rel=1e-5)
    assert float(last["valid_bpc"]) == pytest.approx(record["progress"]["valid_bpc"], rel=1e-5)
    assert float(last["avg_loss"]) == pytest.approx(record["progress"]["avg_loss"], rel=1e-5)
    assert record["metrics"] == "tiny.metrics.csv"  # relative to the record's folder


def test_a_resumed_run_appends_and_drops_rows_past_its_checkpoint(tmp_path, corpus):
    """Run to 30 with a numbered checkpoint at 20, then continue from the one at 20 to 40 in the same
    BACKUP: the rows 25 and 30 of the first attempt are dropped, every iteration appears once, and
    the continued rows are those of an uninterrupted run (the resume is exact)."""
    cfg = write_cfg(tmp_path, max_batches=40)
    ok(cfg, corpus, "--srand", 4, "--backup", tmp_path / "whole", "--log-every", 5)
    b = tmp_path / "b"
    ok(cfg, corpus, "--srand", 4, "--backup", b, "--log-every", 5, "--max-batches", 30, "--save-every", 20)
    first = rows(b / "tiny.metrics.csv")
    assert [int(r["iteration"]) for r in first] == [5, 10, 15, 20, 25, 30]
    ok(cfg, corpus, "--weights", b / "tiny_20.weights", "--backup", b, "--log-every", 5, "--max-batches", 40)
    log = rows(b / "tiny.metrics.csv")
    assert [int(r["iteration"]) for r in log] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert log[:4] == first[:4]  # kept as they were
    whole = rows(tmp_path / "whole" / "tiny.metrics.csv")
    for got, want in zip(log[4:], whole[4:]):
        assert (got["iteration"], got["loss"], got["avg_loss"]) == (want["iteration"], want["loss"], want["avg_loss"])
    assert float(log[4]["seconds"]) > float(log[3]["seconds"])  # wall time goes on from the checkpoint's


def test_the_log_is_written_while_training(tmp_path, corpus, monkeypatch):
    """Rows are flushed as they come: at iteration 26 the file already holds rows 5 to 25."""
    cfg = write_cfg(tmp_path, max_batches=30)
    seen_rows = []
    real = Network.train_step

    def spy(self, *args):
        if self.seen == 26 * 64 - 64:
            seen_rows.append([int(r["iteration"]) for r in rows(tmp_path / "b" / "tiny.metrics.csv")])
        return real(self, *args)
    monkeypatch.setattr(Network, "train_step", spy)
    trainmod.train(cfg, corpus, backup=tmp_path / "b", srand=1, progress=False, log_every=5)
    assert seen_rows == [[5, 10, 15, 20, 25]]


def test_samples_do_not_change_training(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=24, opt="adam=1\nlearning_rate=0.01")
    plain = ok(cfg, corpus, "--srand", 3, "--backup", tmp_path / "plain", "--valid-every", 8)
    sampled = ok(cfg, corpus, "--srand", 3, "--backup", tmp_path / "sampled", "--valid-every", 8,
                 "--sample-every", 6, "--sample-len", 40)
    for name in ("tiny_final.weights", "tiny_best.weights"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "sampled" / name).read_bytes(), name
    with np.load(tmp_path / "plain" / "tiny_final.weights.state.npz") as a, \
            np.load(tmp_path / "sampled" / "tiny_final.weights.state.npz") as b:
        assert a.files == b.files
        for key in a.files:  # optimizer, data walk, rng, carried state: all the same (but the wall time)
            if key == "meta":
                ma, mb = json.loads(str(a[key])), json.loads(str(b[key]))
                ma.pop("seconds"), mb.pop("seconds")
                assert ma == mb
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    lines = sampled.stderr.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("sample at iteration ")]
    assert [lines[i] for i in heads] == [f"sample at iteration {n}:" for n in (6, 12, 18, 24)]
    assert "sample at" not in plain.stderr
    text = "\n".join(line for line in lines[heads[0] + 1:heads[1]] if not line.startswith(("valid:", "iteration ")))
    assert 0 < len(text) <= 40, text  # --sample-len characters (a newline in them splits the line)


def test_best_checkpoint_and_record(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=60, opt="adam=1\nlearning_rate=0.02")
    r = ok(cfg, corpus, "--srand", 2, "--backup", tmp_path / "b", "--valid-every", 10)
    log = [row for row in rows(tmp_path / "b" / "tiny.metrics.csv") if row["valid_bpc"]]
    best = min(log, key=lambda row: float(row["valid_bpc"]))
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    assert record["best"]["weights"] == "tiny_best.weights"  # relative to the record's folder
    assert record["best"]["iteration"] == int(best["iteration"])
    assert record["best"]["valid_bpc"] == pytest.approx(float(best["valid_bpc"]), rel=1e-5)
    assert header_seen(tmp_path / "b" / "tiny_best.weights") == int(best["iteration"]) * 64
    assert (tmp_path / "b" / "tiny_best.weights.state.npz").exists()
    ids = np.frombuffer(corpus.read_bytes(), np.uint8)
    held = ids[len(ids) - int(len(ids) * record["options"]["valid_frac"]):]
    again = evaluate.Estimate(held, list(b"\n\n"))(load_network(cfg, tmp_path / "b" / "tiny_best.weights"))
    assert again == pytest.approx(record["best"]["valid_bpc"], rel=1e-9)
    assert f"best valid {record['best']['valid_bpc']:.4f} bpc at iteration {best['iteration']}" in r.stderr.splitlines()[-1]


def test_patience_ends_the_run_normally(tmp_path, corpus):
    """learning_rate=0: the held-out bpc never improves after the first validation."""
    cfg = write_cfg(tmp_path, max_batches=100, opt="learning_rate=0\nmomentum=0.9\ndecay=0")
    r = ok(cfg, corpus, "--srand", 2, "--backup", tmp_path / "b", "--valid-every", 5, "--patience", 2)
    assert header_seen(tmp_path / "b" / "tiny_final.weights") == 15 * 64  # best at 5, no better at 10, 15
    last = r.stderr.splitlines()[-1]
    assert last.startswith("finished: iteration 15,") and "--patience 2" in last, last
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    assert record["status"] == "finished" and record["best"]["iteration"] == 5
    assert "--patience 2" in record["stop_reason"]


def test_stretch_policy():
    hp = {"policy": "steps", "learning_rate": 0.1, "burn_in": 0, "power": 4.0, "max_batches": 100,
          "steps": [50, 80], "scales": [0.1, 0.1]}
    s = optim.stretch_policy(hp, 1000)
    assert s["steps"] == [500, 800] and s["max_batches"] == 1000 and hp["steps"] == [50, 80]
    e = optim.stretch_policy(dict(hp, policy="exp", gamma=0.99), 300)
    assert math.isclose(e["gamma"] ** 300, 0.99 ** 100, rel_tol=1e-12)
    p = optim.stretch_policy(dict(hp, policy="poly"), 40)
    assert optim.learning_rate(p, 40) == 0 and optim.learning_rate(p, 20) == pytest.approx(0.1 * 0.5 ** 4)


def test_time_budget_sets_max_batches_and_records_why(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=100000, opt="learning_rate=0.05\npolicy=poly\npower=1")
    r = ok(cfg, corpus, "--srand", 1, "--backup", tmp_path / "b", "--time-budget", "2s", "--valid-every", 0)
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    chosen = record["time_budget"]["max_batches"]
    assert 3 < chosen < 100000 and record["options"]["max_batches"] == chosen
    assert record["hyperparameters"]["max_batches"] == chosen and record["options"]["stretch_schedule"]
    assert "updates took" in record["time_budget"]["why"] and record["status"] == "finished"
    updates = record["progress"]["updates"]
    assert updates == chosen or "time budget" in record["stop_reason"], (updates, chosen)
    if updates == chosen:  # poly ran its course: the last update's rate is 0.05 * (1 - n/max_batches) = 0
        assert float(rows(tmp_path / "b" / "tiny.metrics.csv")[-1]["learning_rate"]) == 0
    assert f"max_batches {chosen}" in r.stderr.splitlines()[-1]


@pytest.mark.parametrize("args,fragments", [
    (("--patience", 0), ("--patience 0", ">= 1")),
    (("--time-budget", "ten minutes"), ("--time-budget ten minutes", "10m")),
    (("--time-budget", "-5"), ("--time-budget -5", "not a duration")),
])
def test_bad_options_are_one_line(tmp_path, corpus, args, fragments):
    cfg = write_cfg(tmp_path)
    one_line_error(cli(cfg, corpus, "--backup", tmp_path / "b", *args), *fragments)
    assert not (tmp_path / "b").exists()


def test_samples_of_a_tokenized_corpus_are_ids(tmp_path):
    cfg = write_cfg(tmp_path, inputs=10, time_steps=4, batch=4, max_batches=12)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(" ".join(str(i % 10) for i in range(2000)))
    r = ok(cfg, tokens, "--tokenized", "--backup", tmp_path / "b", "--sample-every", 6, "--sample-len", 10)
    lines = r.stderr.splitlines()
    for n in (6, 12):
        ids = lines[lines.index(f"sample at iteration {n}:") + 1].split()
        assert len(ids) == 10 and all(0 <= int(i) < 10 for i in ids), ids
