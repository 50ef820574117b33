"""The CLI end to end on HalfCheetah-v4 with everything shrunk: compare, train -> evaluate -> resume, demo."""
from __future__ import annotations

import csv
import json
import re

import pytest

from agents.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]
TINY_COORDINATOR = [
    "--prefill-steps", "500", "--initial-world-model-steps", "20",
    "--world-model-steps-per-real-step", "0.05",
    "--policy-every", "250", "--n-imagined-envs", "32", "--n-sample-steps", "4", "--open-loop-states", "0",
    "--world-model.denoiser.width", "64", "--world-model.denoiser.depth", "1", "--train.batch-size", "64",
    "--learner.batch-size", "64", "--device", "cpu",
]


def test_tiny_compare_writes_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--env", "HalfCheetah-v4", "--algos", "ppo,imagination-ppo", "--seeds", "0,1",
                 "--steps", "1500", "--eval-every", "500", "--eval-episodes", "1",
                 "--max-episode-steps", "300",
                 "--out", str(out), "--no-progress", "--checkpoint-every", "100000", *TINY_COORDINATOR])
    assert code == 0
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = {(m, s): [int(r["real_steps"]) for r in rows if (r["method"], r["seed"]) == (m, s)]
             for m in ("ppo", "imagination-ppo") for s in ("0", "1")}
    assert steps[("ppo", "0")] == steps[("ppo", "1")] == [0, 500, 1000, 1500]  # stopped at the budget exactly
    assert all(s and s[-1] == 1500 for (m, _), s in steps.items() if m == "imagination-ppo")
    data = json.loads((out / "compare.json").read_text())
    assert set(data["results"]) == {"ppo", "imagination-ppo"} and data["budget"] == 1500
    imagination = data["imagination_config"]
    assert imagination["n_imagined_envs"] == 32 and imagination["eval_every"] == 500
    png = (out / "compare.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 20_000
    assert "final real return" in capsys.readouterr().out


def test_train_evaluate_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--env", "HalfCheetah-v4", "--steps", "750", "--run-dir", str(run), "--no-progress",
                 "--verbose", "0", "--eval-every", "250", "--eval-episodes", "1",
                 "--eval-max-episode-steps", "100",
                 "--checkpoint-every", "250", *TINY_COORDINATOR]) == 0
    assert json.loads((run / "config.json").read_text())["world_model"]["denoiser"]["width"] == 64
    assert main(["evaluate", str(run), "--episodes", "2", "--max-episode-steps", "100", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"HalfCheetah-v4: mean return -?\d+\.\d \+- \d+\.\d over 2 deterministic episodes", out)
    assert "frozen VecNormalize statistics" in out  # the cpu preset trains under VecNormalize
    assert main(["train", "--resume", str(run), "--steps", "1000", "--no-progress", "--verbose", "0"]) == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["real_steps"] == 1000


def test_demo_runs_on_the_shipped_model(capsys):
    assert main(["demo", "--imagined-steps", "2560", "--eval-episodes", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"real return before: +-?\d+\.\d", out)
    assert re.search(r"real return after: +-?\d+\.\d", out)
