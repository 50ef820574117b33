"""`benchmarks/world_model_generalisation.py` at a few Adam steps: every model gets every error at every
measurement, an ensemble size is honoured, and bad arguments stop it before any data is collected."""
from __future__ import annotations

import json
import math

import pytest

from tests.benchmark_scripts import load_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*settotalmass"),
              pytest.mark.filterwarnings("ignore:.*out of date")]


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as patch:
        yield load_benchmark("world_model_generalisation", patch)


def test_every_model_is_measured_on_rollouts_and_recorded_windows(bench, tmp_path, one_torch_thread):
    report = bench.main(["--denoiser", "causal-mlp:8x1", "--members", "2", "--dropout", "0.2", "--steps", "4",
                         "--every", "2", "--out", str(tmp_path / "out.json")])
    rows = report["results"]
    assert list(rows) == ["cpu-v7 causal-mlp:8x1 x 2 members, dropout 0.2, read-out mean",
                          "MLP ensemble, elite mean"]
    keys = [f"{where}{kind}_obs_mse" for where in ("held_out", "training") for kind in ("", "_windows")]
    for series in rows.values():
        assert [r["steps"] for r in series] == [2, 4]
        assert all(math.isfinite(r[k]) and r[k] > 0 for r in series for k in keys)
    assert json.loads((tmp_path / "out.json").read_text())["results"] == rows


@pytest.mark.parametrize("bad", [["--members", "0"], ["--dropout", "1"], ["--every", "0"],
                                 ["--steps", "1", "--every", "2"]])
def test_bad_arguments_are_refused(bench, bad, tmp_path):
    with pytest.raises(SystemExit):
        bench.main([*bad, "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()
