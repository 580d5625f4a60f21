"""[dropout]'s masks: a fresh mask per step by default, one per stream for the whole datum with
darknetpy's `variational=1`; either way the kept units are scaled by 1/(1-p), the gradient takes the
same mask, and the masks do not depend on how a datum's streams are split between processes."""
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from darknetpy.network import Network
from test_kernels import K

T, S, N = 12, 6, 40


def dropout_net(write_cfg, p, variational):
    key = f"variational={variational}\n" if variational is not None else ""
    return Network(write_cfg(f"[net]\ninputs={N}\nbatch={S}\ntime_steps={T}\n\n"
                             f"[dropout]\nprobability={p}\n{key}\n[softmax]\n"), seed=3)


def train_forward(net, x, block=None):
    return net.layers[0].forward(x, True, None, block)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_variational_keeps_one_mask_per_stream_across_the_steps(write_cfg, p):
    net = dropout_net(write_cfg, p, 1)
    x = np.random.default_rng(0).uniform(1, 2, (T, S, N)).astype(np.float32)  # no zeros of its own
    y = train_forward(net, x)
    kept = y != 0
    assert (kept == kept[:1]).all(), "a unit dropped at one step of a stream must be dropped at all of them"
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert 0 < kept[0].mean() < 1  # some of the S*N units kept, some dropped


def test_the_default_draws_a_fresh_mask_every_step(write_cfg):
    for variational in (None, 0):
        net = dropout_net(write_cfg, 0.5, variational)
        x = np.ones((T, S, N), np.float32)
        kept = train_forward(net, x) != 0
        # with p = 0.5 and S*N = 240 units, equal masks at two steps would be a 2^-240 accident
        assert not (kept[1:] == kept[:1]).all(axis=(1, 2)).any()


@pytest.mark.parametrize("variational", [0, 1])
def test_the_gradient_takes_the_forward_mask(write_cfg, variational):
    """y = x * m elementwise, so dL/dx = dL/dy * m with m read off the outputs (y / x)."""
    net = dropout_net(write_cfg, 0.3, variational)
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 2, (T, S, N)).astype(np.float32)
    y = train_forward(net, x)
    dy = rng.normal(size=(T, S, N)).astype(np.float32)
    np.testing.assert_allclose(net.layers[0].backward(dy, True), dy * (y / x), rtol=1e-6)


@pytest.mark.parametrize("variational", [0, 1])
def test_the_masks_do_not_depend_on_how_the_streams_are_split(write_cfg, variational):
    """Two processes holding streams 0-1 and 2-5 of a datum drop what one process holding all 6 does."""
    x = np.ones((T, S, N), np.float32)
    whole = train_forward(dropout_net(write_cfg, 0.4, variational), x)
    parts = [train_forward(dropout_net(write_cfg, 0.4, variational), x[:, lo:hi], (lo, S))
             for lo, hi in ((0, 2), (2, S))]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_inference_is_the_identity(write_cfg):
    net = dropout_net(write_cfg, 0.5, 1)
    x = np.ones((T, S, N), np.float32)
    np.testing.assert_array_equal(net.layers[0].forward(x, False, None), x)


def test_a_bad_variational_value_is_one_line_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\ninputs=256\nbatch=2\ntime_steps=4\n\n[gru]\noutput=8\n\n"
                   "[dropout]\nprobability=0.2\nvariational=2\n\n[connected]\noutput=256\n\n[softmax]\n")
    assert_one_line_error(run_cli("info", cfg), f"{cfg}:11:", "variational must be 0 or 1")


def test_a_misspelt_variational_is_a_typo_not_darknets_unused_field(tmp_path):
    cfg = tmp_path / "typo.cfg"
    cfg.write_text("[net]\ninputs=4\nbatch=2\ntime_steps=2\n\n[rnn]\noutput=3\n\n"
                   "[dropout]\nprobability=0.2\nvariatonal=1\n\n[softmax]\n")
    assert_one_line_error(run_cli("info", cfg), f"{cfg}:11:", "unknown key 'variatonal' in [dropout]",
                          "did you mean 'variational'?")


def test_a_unit_drops_with_the_probability_taken_to_sixteen_bits(write_cfg):
    """Over 64 x 16 x 384 units (the demo's layer) a unit drops with round(p 65536) / 65536 (0.2 as
    13107 / 65536), within 5 standard deviations, every step and stream alike, the kept ones scaled
    by exactly float32(1 / (1 - p)); neighbouring units (which share a 64-bit draw) drop independently."""
    p, shape = 0.2, (64, 16, 384)
    net = Network(write_cfg(f"[net]\ninputs={shape[2]}\nbatch={shape[1]}\ntime_steps={shape[0]}\n\n"
                            f"[dropout]\nprobability={p}\n\n[softmax]\n"), seed=5)
    dropped = train_forward(net, np.ones(shape, np.float32)) == 0
    q, units = 13107 / 65536, dropped.size
    assert abs(dropped.mean() - q) < 5 * np.sqrt(q * (1 - q) / units)
    for axis in (0, 1, 2):  # per step, per stream, per unit: 24,576, 24,576 and 1,024 units each
        share = dropped.mean(axis=tuple(a for a in range(3) if a != axis))
        assert np.abs(share - q).max() < 5 * np.sqrt(q * (1 - q) / (units / shape[axis]))
    both = (dropped[..., 0::2] & dropped[..., 1::2]).mean()  # pairs within one draw
    assert abs(both - q * q) < 5 * np.sqrt(q * q * (1 - q * q) / (units / 2))
    np.testing.assert_array_equal(np.unique(train_forward(net, np.ones(shape, np.float32))),
                                  [0, np.float32(1 / (1 - p))])


needs_team = pytest.mark.skipif(K is None or not hasattr(K, "loop_threads"),
                                reason="the step loops' thread team (_loop.h) is not built on this CPU")


@needs_team
@pytest.mark.parametrize("variational", [0, 1])
def test_the_c_masks_give_the_references_bits_on_any_number_of_threads(variational):
    """dropout (_head.h), the forward's and the backward's multiply by the masks, on 1, 2 and 3 threads
    of the team: the bits of the numpy reference, for a mask per step and for one over all steps (a
    step's mask read for another, a share skipped or a wrong threshold would not be)."""
    from darknetpy.layers.dropout import dropout
    rng = np.random.default_rng(variational)
    x = rng.normal(0, 1, (37, 29, 101)).astype(np.float32)  # above the team's size, shares ragged
    bits = rng.integers(0, 65536, (1 if variational else 37, 29, 101), dtype=np.uint16)
    want = np.empty_like(x)
    dropout(want, x, bits, 19661, 1 / (1 - 0.3))
    assert 0.25 < (want == 0).mean() < 0.35
    wanted, runs = K.loop_threads(0), []
    try:
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            out = np.full_like(x, np.nan)
            K.dropout(out, x, bits, 19661, 1 / (1 - 0.3))
            runs.append(out)
    finally:
        K.loop_threads(wanted)
    for out in runs:
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))  # -0.0 for a dropped x < 0 too


@needs_team
def test_the_c_masks_check_their_arguments():
    x, out = np.zeros((4, 3, 5), np.float32), np.zeros((4, 3, 5), np.float32)
    bits = np.zeros((4, 3, 5), np.uint16)
    with pytest.raises(ValueError, match="dropout"):
        K.dropout(out, x, np.zeros((2, 3, 5), np.uint16), 1, 2.0)
    with pytest.raises(ValueError, match="dropout"):
        K.dropout(out, x, bits.astype(np.int16), 1, 2.0)
    with pytest.raises(ValueError, match="dropout"):
        K.dropout(out[:2], x, bits, 1, 2.0)
    with pytest.raises(TypeError):
        K.dropout(out, x, bits, 1)
