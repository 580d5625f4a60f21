"""`dropconnect=P` on [rnn], [gru], [lstm] (darknetpy's key, issue 32): DropConnect on the
hidden-to-hidden weights, one Bernoulli(1-P) mask M per update, the steps run on W⊙M/(1-P).

The reference for a masked update is a net without the key whose recurrent W is set to W⊙M/(1-P):
the same cost, and its gradient times M/(1-P) is the masked net's; float64 finite differences
check every parameter's gradient with the mask fixed. Inference reads W itself.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from darknetpy.network import Network
from test_gradients import check_gradients, data, head, random_net
from test_kernels import check_training_step_with_and_without_kernels
from test_mpi import CFG, MPIEXEC, SGD, max_diff, needs_mpi
from test_train import TEXT, ok, write_cfg as train_cfg

P = 0.4
# kind -> (the section's body, the Darknet names of its recurrent sub-layers, its recurrent Denses)
KINDS = {
    "rnn": ("[rnn]\noutput=4\nactivation=tanh\n", ["self_layer"]),
    "gru": ("[gru]\noutput=4\ntanh=1\n", ["wz", "wr", "wh"]),
    "lstm": ("[lstm]\noutput=4\n", ["wi", "wf", "wo", "wg"]),
}


def small(kind, bn, dropconnect=None, streams=3):
    body, _ = KINDS[kind]
    key = "" if dropconnect is None else f"dropconnect={dropconnect}\n"
    return f"[net]\ninputs=5\nbatch={streams}\ntime_steps=4\n{body}batch_normalize={bn}\n{key}" + head()


def recurrent_denses(layer):
    return [getattr(layer, name) for name in layer.recurrent]


def fix_masks(layer, seed=7, p=P):
    """Fixed masks M/(1-p) for the layer's recurrent Denses (drawn here, not by the layer); returns them."""
    rng = np.random.default_rng(seed)
    layer.keep = [(rng.random(d.W.shape) >= p) / (1 - p) for d in recurrent_denses(layer)]
    return layer.keep


def copy_weights(src, dst):
    for key, value in src.params().items():
        dst.params()[key][...] = value


@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_masked_update_against_masked_weights_and_finite_differences(kind, bn, write_cfg):
    """With M fixed: the masked net's cost is the cost of a plain net with W' = W⊙M/(1-P), its
    gradient of each recurrent W is that net's gradient of W' times M/(1-P) (zero where M is),
    every other gradient that net's; and every gradient equals float64 finite differences."""
    net = random_net(write_cfg, small(kind, bn, P))
    layer = net.layers[0]
    masks = fix_masks(layer)
    assert all(0.2 < (m == 0).mean() < 0.6 for m in masks)
    x, y = data(net)
    check_gradients(net, x, y)

    plain = Network(write_cfg(small(kind, bn), "plain.cfg"), seed=0, dtype=np.float64)
    copy_weights(net, plain)
    for d, m in zip(recurrent_denses(plain.layers[0]), masks):
        d.W *= m
    for n in (net, plain):
        for v in n.params(updates=True).values():
            v[...] = 0
        n.reset_state()
    cost, want = net.accumulate(x, y), plain.accumulate(x, y)
    assert cost == pytest.approx(want, rel=1e-12)
    got, ref = net.params(updates=True), plain.params(updates=True)
    scale = {}
    for d, m in zip(recurrent_denses(layer), masks):  # each recurrent sub-layer's block of M, Darknet's shape
        for j, name in enumerate(d.names):
            scale[f"layer0.{name}.weights"] = m[:, j * d.outputs:(j + 1) * d.outputs].T
    for key in ref:
        expected = ref[key] * scale[key] if key in scale else ref[key]
        np.testing.assert_allclose(got[key], expected, rtol=1e-10, atol=1e-13, err_msg=key)
    # the mask matters: the unmasked weights give another cost
    unmasked = Network(write_cfg(small(kind, bn), "unmasked.cfg"), seed=0, dtype=np.float64)
    copy_weights(net, unmasked)
    unmasked.reset_state()
    assert unmasked.accumulate(x, y) != pytest.approx(cost, rel=1e-9, abs=0)


@pytest.mark.parametrize("kind", KINDS)
def test_one_mask_per_update_shared_by_every_step_and_stream(kind, write_cfg):
    """The mask a training update draws: values 0 and 1/(1-P), about P of them 0, the same for
    every step and stream of the update (a plain net on W⊙M/(1-P) gives the same cost), kept
    through the update's forward and backward, and a new one after the update."""
    net = Network(write_cfg(small(kind, 0, P, streams=6)), seed=3, dtype=np.float64)
    layer = net.layers[0]
    x, y = data(net, seed=1)
    assert layer.keep is None
    cost = net.accumulate(x, y)
    masks = [m.copy() for m in layer.keep]
    zeros = np.concatenate([(m == 0).ravel() for m in masks])
    assert abs(zeros.mean() - P) < 0.2
    plain = Network(write_cfg(small(kind, 0, streams=6), "plain.cfg"), seed=3, dtype=np.float64)
    copy_weights(net, plain)
    for d, m in zip(recurrent_denses(plain.layers[0]), masks):
        d.W *= (m != 0) / (1 - P)
    assert plain.accumulate(x, y) == pytest.approx(cost, rel=1e-12)
    for m in masks:
        values = np.unique(m)
        assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / (1 - P), rel=1e-7)
    net.update()
    net.accumulate(x, y)
    assert any((a != b).any() for a, b in zip(masks, layer.keep))


def train_updates(cfg, datums, seed=4, **kw):
    """A float32 net from `cfg` after train_step on each datum (the state reset before each)."""
    net = Network(cfg, seed=seed, **kw)
    for x, y in datums:
        net.reset_state()
        net.train_step(x, y)
    return net


def char_datums(count, streams, seed=2):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 9, (4, streams)), rng.integers(0, 9, (4, streams))) for _ in range(count)]


def tiny(kind, key, subdivisions=1, batch=4, net_extra="", dropout="[dropout]\nprobability=0.2\n"):
    body, _ = KINDS[kind]
    return (f"[net]\ninputs=9\nbatch={batch}\nsubdivisions={subdivisions}\ntime_steps=4\nlearning_rate=0.5\n"
            f"momentum=0.5\n{net_extra}{body}{key}{dropout}{body}{key}"
            "[connected]\noutput=9\nactivation=linear\n[softmax]\n")


@pytest.mark.parametrize("kind", KINDS)
def test_zero_is_no_key(kind, write_cfg):
    """dropconnect=0 trains bit for bit as no key (the C kernels, float32, dropout drawing from the
    same rng)."""
    datums = char_datums(3, 4)
    a = train_updates(write_cfg(tiny(kind, "dropconnect=0\n"), "a.cfg"), datums)
    b = train_updates(write_cfg(tiny(kind, ""), "b.cfg"), datums)
    c = train_updates(write_cfg(tiny(kind, "dropconnect=0.5\n"), "c.cfg"), datums)
    for key, value in b.params().items():
        assert a.params()[key].tobytes() == value.tobytes(), key
    assert any(c.params()[key].tobytes() != value.tobytes() for key, value in b.params().items())


def test_inference_reads_the_unmasked_weights(write_cfg):
    """A trained dropconnect net scores, predicts and generates the same bits as a net without the
    key holding the same weights."""
    datums = char_datums(4, 4)
    net = train_updates(write_cfg(tiny("gru", "dropconnect=0.5\n"), "dc.cfg"), datums)
    plain = Network(write_cfg(tiny("gru", ""), "plain.cfg"), seed=9)
    copy_weights(net, plain)
    text = bytes(np.random.default_rng(5).integers(0, 9, 300).astype(np.uint8))
    assert net.score(text, seed=b"\x01") == plain.score(text, seed=b"\x01")
    ids = np.random.default_rng(6).integers(0, 9, (5, 4))
    for n in (net, plain):
        n.reset_state()
    assert net.forward(ids).tobytes() == plain.forward(ids).tobytes()
    opts = dict(length=60, temperature=0.8, srand=3)
    assert net.generate(b"\x02\x03", **opts) == plain.generate(b"\x02\x03", **opts)


@pytest.mark.parametrize("kind", KINDS)
def test_subdivisions_draw_one_mask_per_update(kind, write_cfg):
    """batch=8 in one datum and the same 8 streams as 2 subdivisions of 4 make the same two updates
    (to float32 summation): one mask per update, not one per subdivision, and the same rng after.
    (No [dropout] here: it draws its masks per datum, for the datum's streams.)"""
    datums = char_datums(2, 8)
    dc = "dropconnect=0.4\n"
    whole = train_updates(write_cfg(tiny(kind, dc, batch=8, dropout=""), "whole.cfg"), datums)
    halves = [(np.ascontiguousarray(x[:, h]), np.ascontiguousarray(y[:, h])) for x, y in datums
              for h in (slice(0, 4), slice(4, 8))]
    split = train_updates(write_cfg(tiny(kind, dc, subdivisions=2, batch=8, dropout=""), "split.cfg"), halves)
    assert whole.batch_num == split.batch_num == 2
    for key, value in whole.params().items():
        np.testing.assert_allclose(split.params()[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert split.rng.bit_generator.state == whole.rng.bit_generator.state
    per_datum = train_updates(write_cfg(tiny(kind, dc, batch=4, dropout=""), "per.cfg"), halves)
    assert max(np.abs(per_datum.params()[k] - v).max() for k, v in whole.params().items()) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bn", [0, 1])
def test_c_and_numpy_kernels_agree(kind, bn, write_cfg):
    """check_training_step_with_and_without_kernels with dropconnect: both nets draw the same mask."""
    body, _ = KINDS[kind]
    cfg = write_cfg(f"[net]\nbatch=3\ntime_steps=4\ninputs=9\n{body}batch_normalize={bn}\ndropconnect=0.5\n"
                    "[connected]\noutput=9\nactivation=linear\n[softmax]\n")
    rng = np.random.default_rng(3)
    datums = [(rng.uniform(-1, 1, (4, 3, 9)).astype(np.float32), rng.integers(0, 9, (4, 3))) for _ in range(2)]
    check_training_step_with_and_without_kernels(cfg, datums, bn)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bf16(kind, write_cfg):
    """precision=bf16 (AMX where the module has it, else numpy's reference): the same mask as float32,
    the recurrent gradient exactly zero where the mask is, and within bf16's rounding of float32's."""
    updates = []
    for precision in ("fp32", "bf16"):
        net = Network(write_cfg(tiny(kind, "dropconnect=0.5\n", net_extra=f"precision={precision}\n"), f"{precision}.cfg"),
                      seed=4, bf16_reference=True)
        assert net.bf16 == (precision == "bf16")
        x, y = char_datums(1, 4)[0]
        net.accumulate(x, y)
        layer = net.layers[0]
        for d, m in zip(recurrent_denses(layer), layer.keep):
            assert (d.dW[m == 0] == 0).all() and (d.dW[m != 0] != 0).mean() > 0.5
        updates.append(({k: v.copy() for k, v in net.params(updates=True).items()}, [m.copy() for m in layer.keep]))
    (want, want_masks), (got, got_masks) = updates
    assert all((a == b).all() for a, b in zip(want_masks, got_masks))
    for key in want:
        error = np.abs(got[key] - want[key]).max() / np.abs(want[key]).max()
        assert error < 0.05, key


def test_resume_is_bit_exact(tmp_path):
    """A run of 12 updates against 5, saved, then resumed to 12 (two subdivisions, dropout too): the
    same final weights, so the masks after a resume are the ones the whole run drew."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT * 30)
    cfg = train_cfg(tmp_path, layer="gru", batch=16, subdivisions=2, layers_extra="dropconnect=0.3\n[dropout]\nprobability=0.2\n",
                    opt="adam=1\nlearning_rate=0.01")
    ok(cfg, corpus, "--srand", 5, "--max-batches", 12, "--backup", tmp_path / "whole")
    ok(cfg, corpus, "--srand", 5, "--max-batches", 5, "--backup", tmp_path / "part")
    whole = (tmp_path / "whole" / "tiny_final.weights").read_bytes()
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() != whole
    ok("--resume", tmp_path / "part" / "tiny.yaml", "--max-batches", 12)
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() == whole
    plain = train_cfg(tmp_path, name="plain", layer="gru", batch=16, subdivisions=2,
                      layers_extra="[dropout]\nprobability=0.2\n", opt="adam=1\nlearning_rate=0.01")
    ok(plain, corpus, "--srand", 5, "--max-batches", 12, "--backup", tmp_path / "plain")
    assert (tmp_path / "plain" / "plain_final.weights").read_bytes() != whole


@needs_mpi
def test_two_mpi_ranks_draw_the_masks_one_process_draws(tmp_path):
    """Two ranks, each training its block of the streams (two subdivisions), make the updates one
    process makes: every rank draws the same mask, once per update."""
    (tmp_path / "corpus.txt").write_bytes(TEXT * 30)
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(CFG.format(layer="gru", subdivisions=2, opt=SGD, lr=0.05, dropout="dropconnect=0.3\n"))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    for updates, tolerance in ((1, 1e-6), (6, 1e-4)):
        for k in (1, 2):
            cmd = [sys.executable, "-m", "darknetpy", "train", str(cfg), "corpus.txt", "--srand", "7", "--valid-every", "0",
                   "--backup", f"b{k}_{updates}", "--max-batches", str(updates)]
            r = subprocess.run([MPIEXEC, "-n", "2", *cmd] if k > 1 else cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        assert max_diff(cfg, tmp_path / f"b1_{updates}/tiny_final.weights", tmp_path / f"b2_{updates}/tiny_final.weights") < tolerance
    assert max_diff(cfg, tmp_path / "b1_1/tiny_final.weights", tmp_path / "b1_6/tiny_final.weights") > 1e-3


@pytest.mark.parametrize("section,value,message", [
    ("[gru]\noutput=4\n", "1", "dropconnect must be in [0, 1)"),
    ("[lstm]\noutput=4\n", "-0.1", "dropconnect must be in [0, 1)"),
    ("[rnn]\noutput=4\n", "half", "'dropconnect=half' is not a number"),
    ("[sru]\noutput=4\n", "0.3", "[sru] has no recurrent (hidden-to-hidden) matrix"),
    ("[sru]\noutput=4\n", "0", "[sru] has no recurrent (hidden-to-hidden) matrix"),
])
def test_bad_input(section, value, message, write_cfg):
    cfg = write_cfg(f"[net]\ninputs=5\nbatch=2\ntime_steps=3\n{section}dropconnect={value}\n" + head())
    assert_one_line_error(run_cli("info", cfg), f"{cfg}:7:", message)
