"""Statistics over seeds that hold up with few runs: the interquartile mean (IQM) and its percentile-bootstrap
confidence interval, as recommended for deep-RL evaluation (Agarwal et al., 2021, "Deep RL at the edge of
the statistical precipice"). Pure numpy and seeded: the same returns give the same interval.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_SEEDS_FOR_CLAIM = 8
"""Fewer seeds than this make a first look, not a result to claim."""
CONFIDENCE = 0.95
N_RESAMPLES = 10_000


def _checked(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"need a flat, non-empty list of per-seed values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"per-seed values must be finite, got {arr.tolist()}")
    return arr


def iqm_rows(samples: np.ndarray) -> np.ndarray:
    """IQM of each row of samples [R, n]: the mean of the sorted row without its floor(n/4) lowest and
    floor(n/4) highest values (scipy's trim_mean(x, 0.25), the IQM of rliable)."""
    n = samples.shape[-1]
    cut = n // 4
    return np.sort(samples, axis=-1)[..., cut:n - cut].mean(axis=-1)


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean of per-seed values (see `iqm_rows`); robust to one outlying seed in four."""
    return float(iqm_rows(_checked(values)[None])[0])


def _check_bootstrap(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the IQM: the seeds are resampled with replacement `n_resamples`
    times (numpy generator seeded by `seed`), and the interval is the central `confidence` share of the
    resampled IQMs. With one seed the interval is that value: one run says nothing of the spread."""
    arr = _checked(values)
    _check_bootstrap(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    resampled = iqm_rows(arr[rng.integers(len(arr), size=(n_resamples, len(arr)))])
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return float(low), float(high)


def difference_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, statistic: str = "iqm",
                  confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                  seed: int = 0) -> tuple[float, float, float]:
    """statistic(a) - statistic(b) ("iqm" or "mean") and its percentile-bootstrap interval: the seeds of
    `a` and of `b` are resampled independently, `a`'s draws first, from one generator seeded by `seed`."""
    x, y = _checked(a), _checked(b)
    if statistic not in ("iqm", "mean"):
        raise ValueError(f"statistic must be 'iqm' or 'mean', got {statistic!r}")
    _check_bootstrap(confidence, n_resamples)
    stat = iqm_rows if statistic == "iqm" else (lambda rows: rows.mean(axis=-1))
    rng = np.random.default_rng(seed)
    x_rows = x[rng.integers(len(x), size=(n_resamples, len(x)))]
    y_rows = y[rng.integers(len(y), size=(n_resamples, len(y)))]
    tail = (1 - confidence) / 2
    low, high = np.quantile(stat(x_rows) - stat(y_rows), [tail, 1 - tail])
    return float(stat(x[None])[0] - stat(y[None])[0]), float(low), float(high)


@dataclass(frozen=True)
class SeedSummary:
    """One method at one evaluation step over its seeds: mean and std (numpy's, ddof 0), IQM and the
    IQM's 95% percentile-bootstrap interval [iqm_low, iqm_high]."""

    seeds: int
    mean: float
    std: float
    iqm: float
    iqm_low: float
    iqm_high: float

    @property
    def is_claim(self) -> bool:
        """Enough seeds to state a result (`MIN_SEEDS_FOR_CLAIM`)."""
        return self.seeds >= MIN_SEEDS_FOR_CLAIM

    def describe(self) -> str:
        """"1234.5 +- 100.2 (mean +- std), IQM 1200.0 [95% CI 1100.0, 1300.0] over 8 seeds"."""
        plural = "s" if self.seeds != 1 else ""
        return (f"{self.mean:.1f} +- {self.std:.1f} (mean +- std), IQM {self.iqm:.1f} "
                f"[95% CI {self.iqm_low:.1f}, {self.iqm_high:.1f}] over {self.seeds} seed{plural}")


def summarise(values: Sequence[float] | np.ndarray, seed: int = 0) -> SeedSummary:
    """The `SeedSummary` of per-seed values (the bootstrap seeded by `seed`)."""
    arr = _checked(values)
    low, high = bootstrap_ci(arr, seed=seed)
    return SeedSummary(seeds=len(arr), mean=float(arr.mean()), std=float(arr.std()), iqm=iqm(arr),
                       iqm_low=low, iqm_high=high)


def not_a_claim_note(seed_counts: Sequence[int]) -> str | None:
    """The one line a summary adds when any method ran on fewer than `MIN_SEEDS_FOR_CLAIM` seeds."""
    if not seed_counts or min(seed_counts) >= MIN_SEEDS_FOR_CLAIM:
        return None
    return (f"fewer than {MIN_SEEDS_FOR_CLAIM} seeds ({min(seed_counts)}): a first look, not a claim; "
            f"compare IQMs and their 95% CIs on {MIN_SEEDS_FOR_CLAIM} or more")
