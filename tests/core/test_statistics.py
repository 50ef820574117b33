"""IQM and its bootstrap interval against hand computations, an exact enumeration and (when it imports)
rliable."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from agents.statistics import (
    MIN_SEEDS_FOR_CLAIM,
    SeedSummary,
    bootstrap_ci,
    difference_ci,
    iqm,
    not_a_claim_note,
    summarise,
)


def test_iqm_by_hand():
    # 8 values: the 2 lowest and 2 highest go, the mean of 3, 4, 5, 6 stays
    assert iqm([100, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)
    # 5 values: floor(5/4) = 1 goes at each end: (3 + 7 + 10) / 3
    assert iqm([10, 0, 1000, 3, 7]) == pytest.approx(20 / 3)
    # fewer than 4 values: nothing is trimmed
    assert iqm([1, 2, 9]) == pytest.approx(4.0)


def test_iqm_matches_rliable_when_installed():
    metrics = pytest.importorskip("rliable.metrics")
    values = np.random.default_rng(3).normal(size=11)
    assert iqm(values) == pytest.approx(float(metrics.aggregate_iqm(values[:, None])))


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    values = np.array([0.0, 1.0, 3.0, 7.0, 20.0])
    exact = np.array([iqm(values[list(idx)]) for idx in itertools.product(range(5), repeat=5)])
    low, high = bootstrap_ci(values, seed=1)
    # the Monte-Carlo percentiles lie where the exact distribution puts 2.5% and 97.5% (+- 1%)
    assert np.quantile(exact, 0.015) <= low <= np.quantile(exact, 0.035)
    assert np.quantile(exact, 0.965) <= high <= np.quantile(exact, 0.985)
    assert low < iqm(values) < high


def test_bootstrap_matches_rliable_when_it_imports():
    try:
        from rliable import library, metrics
    except (ImportError, TypeError):  # its bootstrap needs `arch`, which fails to import with some pandas
        pytest.skip("rliable's bootstrap is not importable here")
    values = np.random.default_rng(0).normal(size=8)
    intervals = library.get_interval_estimates({"m": values[:, None]},
                                               lambda s: np.array([metrics.aggregate_iqm(s)]), reps=20_000)[1]
    low, high = bootstrap_ci(values, n_resamples=20_000)
    assert (low, high) == pytest.approx(tuple(intervals["m"][:, 0]), abs=0.05)


def test_bootstrap_is_seeded_and_checks_its_input():
    values = np.random.default_rng(5).normal(size=10)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    assert bootstrap_ci([2.5]) == (2.5, 2.5)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        iqm([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(values, confidence=95)


def test_summary_and_the_claim_line():
    s = summarise([1.0, 2.0, 3.0, 4.0])
    assert (s.seeds, s.mean, s.iqm) == (4, 2.5, 2.5) and s.std == pytest.approx(np.std([1, 2, 3, 4]))
    assert s.iqm_low <= s.iqm <= s.iqm_high and not s.is_claim
    assert "IQM 2.5 [95% CI" in s.describe() and s.describe().endswith("over 4 seeds")
    assert SeedSummary(MIN_SEEDS_FOR_CLAIM, 0, 0, 0, 0, 0).is_claim
    assert not_a_claim_note([MIN_SEEDS_FOR_CLAIM, MIN_SEEDS_FOR_CLAIM + 2]) is None
    note = not_a_claim_note([MIN_SEEDS_FOR_CLAIM, 3])
    assert note is not None and "not a claim" in note and "\n" not in note


def test_difference_interval_against_the_exact_bootstrap_distribution():
    """Two seeds each: every resample of a and of b is equally likely, so the difference of means takes
    each value of mean(resampled a) - mean(resampled b) with known probability; a fine bootstrap's
    quantiles approach the exact ones."""
    a, b = np.array([10.0, 30.0]), np.array([1.0, 5.0])
    exact = np.array([np.mean(ra) - np.mean(rb) for ra in itertools.product(a, repeat=2)
                      for rb in itertools.product(b, repeat=2)])      # 16 equally likely outcomes
    diff, low, high = difference_ci(a, b, statistic="mean", n_resamples=200_000)
    assert diff == pytest.approx(17.0)
    assert (low, high) == pytest.approx(tuple(np.quantile(exact, [0.025, 0.975], method="inverted_cdf")))
    same, lo, hi = difference_ci([3.0, 3.0, 3.0], [1.0, 1.0], statistic="iqm")
    assert (same, lo, hi) == (2.0, 2.0, 2.0)                          # no spread, no interval


def test_difference_interval_checks_its_input():
    with pytest.raises(ValueError, match="statistic"):
        difference_ci([1.0], [2.0], statistic="median")
    with pytest.raises(ValueError, match="n_resamples"):
        difference_ci([1.0], [2.0], n_resamples=0)
