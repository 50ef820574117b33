"""What `compare` and `merge` report over seeds: mean +- std, IQM and its 95% bootstrap interval per
method and evaluation step, in the summary table, the JSON and the console."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from agents.compare import (
    CompareSpec,
    EvalPoint,
    final_statistics,
    oracle_fractions,
    step_statistics,
    summary_lines,
    write_outputs,
)
from agents.config import CoordinatorConfig
from agents.statistics import MIN_SEEDS_FOR_CLAIM


def synthetic(methods=("ppo", "imagination-ppo"), seeds=(0, 1), steps=(0, 500, 1000)) -> list[EvalPoint]:
    return [EvalPoint(m, s, t, mean_return=100.0 * i + 10 * s + t / 100, std_return=1.0 + s)
            for i, m in enumerate(methods) for s in seeds for t in steps]


def test_two_seeds_per_step_give_their_mean_and_the_min_max_interval():
    # with two seeds a resample's IQM is one of them or their mean: the 2.5% / 97.5% points are min / max
    rows = step_statistics(synthetic()[::-1])["ppo"]
    assert [step for step, _ in rows] == [0, 500, 1000]
    assert [(s.mean, s.iqm, s.iqm_low, s.iqm_high, s.seeds) for _, s in rows] == [
        (5.0, 5.0, 0.0, 10.0, 2), (10.0, 10.0, 5.0, 15.0, 2), (15.0, 15.0, 10.0, 20.0, 2)]


def test_final_statistics_are_over_each_seeds_last_evaluation():
    points = synthetic(seeds=(0,)) + synthetic(seeds=(1,), steps=(0, 500))  # seed 1 stopped early
    finals = final_statistics(points[::-1])
    assert (finals["ppo"].mean, finals["ppo"].std, finals["ppo"].seeds) == (12.5, 2.5, 2)
    assert finals["imagination-ppo"].mean == 112.5


def test_an_outlying_seed_moves_the_mean_but_not_the_iqm():
    returns = [1000.0, 1010.0, 990.0, 1005.0, 995.0, 1002.0, 998.0, -3000.0]
    points = [EvalPoint("ppo", s, 100, r, 0.0) for s, r in enumerate(returns)]
    final = final_statistics(points)["ppo"]
    assert final.mean == pytest.approx(np.mean(returns))
    assert final.iqm == pytest.approx(np.mean([995.0, 998.0, 1000.0, 1002.0]))  # 2 dropped at each end
    assert final.iqm_low <= final.iqm <= final.iqm_high <= 1010.0
    assert summary_lines(points) == [f"{'ppo':>16}: final real return {final.describe()}"]


def test_summary_lines_say_when_the_seeds_are_too_few():
    lines = summary_lines(synthetic())
    assert len(lines) == 3 and "final real return" in lines[0] and "IQM" in lines[0] and "95% CI" in lines[0]
    assert "not a claim" in lines[-1] and f"fewer than {MIN_SEEDS_FOR_CLAIM} seeds" in lines[-1]


def test_summary_table_and_json(tmp_path):
    spec = CompareSpec("HalfCheetah-v4", ("ppo", "imagination-ppo"), (0, 1), 1000, 500, 2,
                       CoordinatorConfig(), "cpu-v7")
    write_outputs(synthetic(), spec, tmp_path)
    with open(tmp_path / "compare_summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["method", "real_steps", "seeds", "mean", "std", "iqm", "iqm_low", "iqm_high"]
    assert [(r["method"], int(r["real_steps"])) for r in rows] == [
        (m, t) for m in ("ppo", "imagination-ppo") for t in (0, 500, 1000)]
    assert float(rows[-1]["iqm_high"]) == 120.0 and float(rows[-1]["std"]) == 5.0
    summary = json.loads((tmp_path / "compare.json").read_text())["summary"]
    assert summary["ppo"][0] == {"real_steps": 0, "seeds": 2, "mean": 5.0, "std": 5.0, "iqm": 5.0,
                                 "iqm_low": 0.0, "iqm_high": 10.0}


def test_fraction_of_the_oracle_reached():
    points = synthetic(methods=("oracle-ppo", "ppo"))  # final IQMs: oracle 15, ppo 115
    fractions = oracle_fractions(step_statistics(points))
    assert fractions == {"ppo": pytest.approx(115 / 15)}
    below_zero = [replace(p, mean_return=-1.0) if p.method == "oracle-ppo" else p for p in points]
    assert oracle_fractions(step_statistics(below_zero)) == {}
    assert oracle_fractions(step_statistics(synthetic())) == {}
