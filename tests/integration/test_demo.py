"""The demo as a newcomer sees it: what it does, references for its returns, a true progress bar, no
warnings."""
from __future__ import annotations

import warnings

import pytest

from agents import demo
from agents.demo import DemoConfig, run_demo
from imagined_env.pretrained import data_record

pytestmark = [pytest.mark.slow, pytest.mark.mujoco]


def test_demo_output_references_progress_total_and_no_warnings(monkeypatch, capfd):
    totals = []

    class RecordingBar(demo.TqdmProgress):
        def __init__(self, total, *args, **kwargs):
            totals.append(total)
            super().__init__(total, *args, **kwargs)

    monkeypatch.setattr(demo, "TqdmProgress", RecordingBar)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # none caused by the demo's own settings
        result = run_demo(DemoConfig(imagined_steps=700, eval_episodes=1), log=lines.append, progress=False)
    out = "\n".join(lines)
    assert "settotalmass" not in capfd.readouterr().err     # MuJoCo's notice on loading HalfCheetah
    assert totals == [result["imagined_steps"]] == [256 * 5]  # whole rollouts of 256 envs x H = 5
    assert "purely in imagination" in out and "no real step" in out
    assert sum(line.startswith("world model:") for line in lines) == 1
    assert "/" not in out.replace("+-", "") and "COMMAND" not in out and "imagined-env" not in out
    assert f"random actions {result['random_mean']:.1f}" in out and result["random_mean"] < 0
    record = data_record("HalfCheetah-v4")
    reference = record["reference"]
    assert f"the data's best policy ({reference['policy']}): {reference['mean_return']:.1f}" in out
    assert f"fitted on {record['transitions_kept']:,} real transitions from {record['origin']}" in out
    assert record["real_steps_collected"] == 50_000 and "with the 50,000 real steps behind" in out
