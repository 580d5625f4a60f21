"""Each sampling rule against distributions computed by hand."""
import itertools

import numpy as np
import pytest

from darknetpy import sampling


def test_top_k_edges_and_ties():
    p = np.array([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(sampling.top_k(p, 2), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(sampling.top_k(p, 1), [0, 1, 0, 0])
    np.testing.assert_allclose(sampling.top_k(p, 4), p)
    np.testing.assert_allclose(sampling.top_k(p, 99), p)
    np.testing.assert_allclose(sampling.top_k([0.4, 0.2, 0.2, 0.2], 2), [0.4, 0.2, 0.2, 0.2])  # ties kept


def test_top_p_edges_and_ties():
    p = np.array([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(sampling.top_p(p, 0.4), [0, 1, 0, 0])        # 0.4 reaches 0.4
    np.testing.assert_allclose(sampling.top_p(p, 0.41), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(sampling.top_p(p, 0.85), [0, 4 / 9, 2 / 9, 3 / 9])
    np.testing.assert_allclose(sampling.top_p([0.125, 0.5, 0.25, 0.125], 0.75), [0, 2 / 3, 1 / 3, 0])  # exact edge
    np.testing.assert_allclose(sampling.top_p(p, 1.0), p)
    np.testing.assert_allclose(sampling.top_p([0.2, 0.4, 0.2, 0.2], 0.5), [0.2, 0.4, 0.2, 0.2])  # tie group kept
    rows = sampling.top_p(np.array([[0.1, 0.9], [0.6, 0.4]]), 0.5)
    np.testing.assert_allclose(rows, [[0, 1], [1, 0]])


def test_greedy_and_draw():
    assert sampling.greedy(np.array([[0.1, 0.5, 0.5], [0.7, 0.2, 0.1]])).tolist() == [1, 0]
    p = np.array([0.0, 0.25, 0.0, 0.75, 0.0])
    assert sampling.draw(p, np.array(0.0)) == 1 and sampling.draw(p, np.array(0.2499)) == 1
    assert sampling.draw(p, np.array(0.25)) == 3 and sampling.draw(p, np.array(0.999999)) == 3


def beam_search(logp0, advance, width, length):
    """sampling.beam_steps driven to its end, as generation.Sample drives it: the `length`-symbol
    continuation of highest total log-probability a beam of `width` finds.

    logp0 (V,) scores the first symbol; advance(parents, symbols) makes beam j the state of beam
    parents[j] fed symbols[j] and returns the next log-probabilities (width, V). The greedy path is
    kept in the beam (it replaces the last pick when it would drop out), so the result is never
    less likely than greedy; width 1 is greedy. Returns (symbols, total log-probability).
    """
    search = sampling.beam_steps(logp0, width, length)
    try:
        parents, symbols = next(search)
        while True:
            parents, symbols = search.send(advance(parents, symbols))
    except StopIteration as done:
        return done.value


class Toy:
    """A model over 3 symbols whose next distribution depends on the last two symbols."""

    def __init__(self, seed=0):
        self.table = np.log(np.random.default_rng(seed).dirichlet(np.ones(3) * 0.5, size=(4, 4)))
        self.hist = None

    def logp(self, h):
        a, b = (h[-2] if len(h) > 1 else 3), (h[-1] if h else 3)
        return self.table[a, b]

    def search(self, width, length):
        self.hist = [[] for _ in range(width)]

        def advance(parents, symbols):
            self.hist = [self.hist[j] + [int(s)] for j, s in zip(parents, symbols)]
            return np.array([self.logp(h) for h in self.hist])
        return beam_search(self.logp([]), advance, width, length)

    def total(self, seq):
        return sum(self.logp(list(seq[:i]))[s] for i, s in enumerate(seq))


@pytest.mark.parametrize("seed", range(5))
def test_beam_against_exhaustive_and_greedy(seed):
    toy = Toy(seed)
    best = max(itertools.product(range(3), repeat=4), key=toy.total)
    seq, score = toy.search(27, 4)                       # width 3^3 holds every prefix: exhaustive
    assert tuple(seq) == best and score == pytest.approx(toy.total(best))
    g = []
    for _ in range(4):
        g.append(int(np.argmax(toy.logp(g))))
    assert toy.search(1, 4)[0] == g                      # width 1 is greedy
    for w in (2, 3):
        seq, score = toy.search(w, 4)
        assert score == pytest.approx(toy.total(seq)) and score >= toy.total(g) - 1e-12


def test_beam_keeps_the_greedy_path():
    """Greedy 'a' then a flat step lets two 'b' paths push it out of a width-2 beam; then 'a' pays off."""
    L = np.log
    tables = {(): [0.4, 0.3, 0.3], (0,): [0.34, 0.33, 0.33], (1,): [0.5, 0.5, 0.0], (2,): [0.1, 0.1, 0.8]}

    def logp(h):
        key = tuple(h[:1]) if len(h) == 1 else ()
        if len(h) == 2:
            return L([1.0, 1e-9, 1e-9]) if h[0] == 0 else L([0.1, 0.1, 0.8])
        with np.errstate(divide="ignore"):
            return L(np.array(tables[key]))
    hist = [[] for _ in range(2)]

    def advance(parents, symbols):
        hist[:] = [hist[j] + [int(s)] for j, s in zip(parents, symbols)]
        return np.array([logp(h) for h in hist])
    seq, score = beam_search(logp([]), advance, 2, 3)
    assert score >= np.log(0.4 * 0.34 * 1.0) - 1e-12 and seq == [0, 0, 0]


def test_every_filter_is_a_generation_option_that_keeps_every_symbol_at_its_default():
    """sampling.FILTERS and GenerationOptions' `filter` fields name the same rules, and each rule at
    the field's default leaves p as it is: generation.chooser applies only the filters given, and
    takes Darknet's sampler when none is."""
    import dataclasses

    from darknetpy.options import GenerationOptions
    fields = {f.name: f.default for f in dataclasses.fields(GenerationOptions) if f.metadata["filter"]}
    assert set(fields) == set(sampling.FILTERS) and list(fields) == list(sampling.FILTERS)
    p = np.random.default_rng(0).dirichlet(np.ones(7), size=3)
    for name, rule in sampling.FILTERS.items():
        np.testing.assert_allclose(rule(p, fields[name]), p, rtol=1e-12, err_msg=name)
    assert GenerationOptions().filtering() == [] and GenerationOptions(top_p=0.5).filtering() == ["top_p"]
