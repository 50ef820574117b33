"""The checkpoint diagnostic `benchmarks/advantage_ranking.py` on a tiny coordinator run: it reads the last
checkpoint, ranks at every sigma asked for, writes its JSON, and refuses a folder without a checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agents.coordinator import Coordinator
from tests.benchmark_scripts import load_benchmark
from tests.integration.test_coordinator import TINY

pytestmark = [pytest.mark.slow, pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*settotalmass")]


def test_ranks_a_checkpoint_by_return_and_by_the_learners_advantage(tmp_path, one_torch_thread, monkeypatch):
    bench = load_benchmark("advantage_ranking", monkeypatch)
    Coordinator(TINY, tmp_path / "run", verbose=0).learn(400, progress_bar=False).close()
    report = bench.main([str(tmp_path / "run"), "--states", "8", "--sigmas", "0.3,1", "--out",
                         str(tmp_path / "out.json")])
    row = report[str(tmp_path / "run")]
    assert row["real_steps"] == 400 and row["states"] == 8
    assert row["obs_mse"] > 0 and row["reward_mse"] > 0  # the open-loop error of the same states is reported
    for figures in (row["ranking"], row["ranking_common"], row["advantage_ranking"],
                    row["advantage_ranking_without_critic"]):
        assert list(figures) == [0.3, 1.0] and all(np.isfinite(v) and -1 <= v <= 1 for v in figures.values())
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["sigmas"] == [0.3, 1.0] and saved["runs"][str(tmp_path / "run")]["states"] == 8
    assert row["advantage_ranking"] != row["advantage_ranking_without_critic"]  # the critic is read
    for bad in ([str(tmp_path)], [str(tmp_path / "run"), "--sigmas", "0.3,-1"]):  # no checkpoint; sigma < 0
        with pytest.raises(SystemExit):
            bench.main(bad)
