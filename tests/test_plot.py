"""`darknetpy plot`: a real PNG from a real run's metrics, the data it reads, and its bad input."""
import csv
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from darknetpy import plot as plotmod
from darknetpy.cli import main
from test_train import TEXT, ok, one_line_error, write_cfg

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    corpus = tmp / "corpus.txt"
    corpus.write_bytes(TEXT * 30)
    for name, lr in (("a", 0.02), ("b", 0.005)):
        cfg = write_cfg(tmp, name=name, max_batches=40, opt=f"adam=1\nlearning_rate={lr}")
        ok(cfg, corpus, "--srand", 1, "--backup", tmp / "b", "--valid-every", 10, "--log-every", 5)
    return tmp / "b"


def plot(*args):
    return CliRunner().invoke(main, ["plot", *map(str, args)], catch_exceptions=False)


def test_plot_writes_a_png_beside_the_record(runs):
    r = plot(runs / "a.yaml")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and r.stderr.strip() == f"wrote {runs / 'a.png'}"
    data = (runs / "a.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10000
    width, height = np.frombuffer(data[16:24], ">u4")
    assert (width, height) == (1320, 528)  # 12 x 4.8 inches at 110 dpi


def test_plot_overlays_several_runs(runs, tmp_path):
    out = tmp_path / "both.png"
    r = plot(runs / "a.yaml", runs / "b.metrics.csv", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes().startswith(PNG)


def test_the_data_it_reads(runs):
    label, m = plotmod.run_metrics(runs / "a.yaml")
    with open(runs / "a.metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert label == "a"
    assert m["iteration"].tolist() == [int(row["iteration"]) for row in table] == list(range(5, 45, 5))
    valid = {int(row["iteration"]): float(row["valid_bpc"]) for row in table if row["valid_bpc"]}
    assert sorted(valid) == [10, 20, 30, 40]
    assert np.isnan(m["valid_bpc"][0]) and m["valid_bpc"][1] == valid[10]
    it, seconds, bpc = plotmod.best_point(m)
    assert (it, bpc) == min(((k, v) for k, v in valid.items()), key=lambda kv: kv[1])
    assert seconds == float(next(row["seconds"] for row in table if int(row["iteration"]) == it))


def test_bad_runs_are_one_line(runs, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("just some text\n")
    one_line_error(plot(other), str(other), "neither a run record nor a metrics CSV")
    empty = tmp_path / "empty.metrics.csv"
    empty.write_text((runs / "a.metrics.csv").read_text().splitlines()[0] + "\n")
    one_line_error(plot(empty), str(empty), "no rows")
    one_line_error(plot(tmp_path / "missing.yaml"), "missing.yaml", "cannot read")
    assert not list(tmp_path.glob("*.png"))


def test_without_matplotlib_it_says_how_to_get_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    one_line_error(plot(runs / "a.yaml", "-o", tmp_path / "x.png"), 'pip install "darknetpy[plot]"')
    assert not (tmp_path / "x.png").exists()
