"""[dropout]'s masks: a fresh mask per step by default, one per stream for the whole datum with
darknetpy's `variational=1`; either way the kept units are scaled by 1/(1-p), the gradient takes the
same mask, and the masks do not depend on how a datum's streams are split between processes."""
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from darknetpy.network import Network

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
