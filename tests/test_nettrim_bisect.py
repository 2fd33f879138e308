"""The gain search behind Net-Trim's target_sparsity (``bisect_gain``), on synthetic
sparsity-versus-gain curves where the answer is known."""

from __future__ import annotations

import math

import numpy as np

from layertrim.solvers.nettrim_rules import bisect_gain, within

D = 1000  # weights in the synthetic W (one row)


def w_with(sparsity: float) -> np.ndarray:
    W = np.ones((1, D))
    W[0, : int(round(sparsity * D))] = 0.0
    return W


def smooth(g: float) -> float:  # a logistic curve in log(gain), as the l1 path roughly is
    return 1.0 / (1.0 + math.exp(-1.3 * (math.log(g) + 2.0)))


def two_kinds(kinds: list, bias: float = 0.0):
    """(solve_at, search_at) on the smooth curve that log which kind ran; the cheap search's
    sparsity is off by ``bias``."""

    def solve_at(g):
        kinds.append("accurate")
        return w_with(smooth(g))

    def search_at(g):
        kinds.append("search")
        return w_with(min(smooth(g) + bias, 1.0)), False

    return solve_at, search_at


def test_secant_search_hits_the_band_in_few_steps():
    calls = []

    def solve_at(g):
        calls.append(g)
        return w_with(smooth(g))

    for target in (0.3, 0.5, 0.7, 0.9):
        calls.clear()
        out, g, steps = bisect_gain(solve_at, 0.05, target, 30, D)
        sp = 1 - np.count_nonzero(out) / D
        assert within(sp, target) and abs(smooth(g) - sp) <= 1e-3
        assert len(calls) <= 7, (target, len(calls))  # halving [1e-4, 1] takes ~10-12


def test_cheap_search_is_confirmed_by_an_accurate_solve():
    """A biased cheap solve (+0.015 of sparsity) is confirmed; the miss sends the search on
    with accurate solves, and the result is an accurate one inside the band."""
    kinds: list = []
    solve_at, search_at = two_kinds(kinds, bias=0.015)
    out, g, steps = bisect_gain(solve_at, 0.05, 0.6, 30, D, search_at=search_at)
    assert within(1 - np.count_nonzero(out) / D, 0.6)
    assert steps[-1]["accurate"] and kinds[-1] == "accurate" and "search" in kinds


def test_a_jump_over_the_band_returns_the_closest_accurate_solve():
    """The fraction jumps from 0.45 to 0.58 at gain 0.2: the band 0.49-0.51 is out of reach;
    the search narrows onto the jump and returns the closer side."""

    def solve_at(g):
        return w_with(0.45 if g < 0.2 else 0.58)

    out, g, steps = bisect_gain(solve_at, 0.05, 0.5, 60, D)
    assert np.count_nonzero(out) == 550 and g < 0.2
    assert 0.2 - g <= 1e-3 * 0.2  # it found the jump


def test_a_floor_on_the_gain_stops_the_search():
    """Below min_gain the radius does not change (the cascade floor): a target sparser than
    the floor's solution is out of reach, and the search stops at once."""
    calls = []

    def solve_at(g):
        calls.append(g)
        return w_with(max(smooth(g), smooth(0.3)))

    out, g, steps = bisect_gain(solve_at, 0.05, 0.2, 30, D, min_gain=0.3)
    assert calls == [0.3] and g == 0.3


def test_steps_running_out_in_the_cheap_search_end_with_an_accurate_solve():
    """max_bisect spent on cheap solves: the result is still an accurate solve."""
    kinds: list = []
    solve_at, search_at = two_kinds(kinds)
    out, g, steps = bisect_gain(solve_at, 0.05, 0.9, 2, D, search_at=search_at)
    assert kinds == ["search", "search", "accurate"] and steps[-1]["accurate"]
    assert g == steps[1]["gain"] and np.array_equal(out, w_with(smooth(g)))


def test_a_sparsity_on_the_band_edge_is_within_it():
    assert within(1.0, 0.99) and within(0.51, 0.5) and within(0.49, 0.5)
    assert not within(0.5101, 0.5) and not within(0.4899, 0.5)


def test_a_tentative_end_on_the_wrong_side_is_solved_accurately():
    """Tentative points (capped solves that did not converge, trusted for their side when far
    from the target) read ``bias`` off the curve; one that lands on the wrong side becomes an
    end nothing inside the bracket contradicts, and the search used to close onto it and miss
    the band (5 of these 12 cases). Now it is solved accurately, and every case ends in it."""
    for target in (0.3, 0.5, 0.7):
        for bias in (-0.12, -0.08, 0.08, 0.12):
            kinds: list = []

            def solve_at(g, kinds=kinds):
                kinds.append("accurate")
                return w_with(smooth(g))

            def search_at(g, kinds=kinds, target=target, bias=bias):
                seen = min(max(smooth(g) + bias, 0.0), 1.0)
                if abs(seen - target) > 0.05:
                    kinds.append("tentative")
                    return w_with(seen), False, True
                kinds.append("accurate")  # near the band: run on to the accurate stop
                return w_with(smooth(g)), True

            out, g, steps = bisect_gain(solve_at, 0.05, target, 30, D, search_at=search_at)
            sp = 1 - np.count_nonzero(out) / D
            assert within(sp, target) and steps[-1]["accurate"], (target, bias, sp, steps)
            assert abs(smooth(g) - sp) <= 1e-3 and "tentative" in kinds
