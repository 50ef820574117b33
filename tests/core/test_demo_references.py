"""The demo quotes stored same-budget results only for the data they were measured against, and silences
MuJoCo's model-loading notice without losing stderr."""
from __future__ import annotations

import os
import sys
import warnings

import pytest

from agents import demo, real_evaluation
from agents.real_evaluation import make_quietly, quiet_stderr
from imagined_env.pretrained import data_record


def test_same_budget_results_only_where_the_models_data_matches(monkeypatch):
    run = "a training run in imagination (preset cpu-v7, 50000 real steps, seed 8)"
    monkeypatch.setattr(demo, "data_record", lambda env_id: {"origin": run, "real_steps_collected": 50_000})
    assert "RL-Zoo-tuned PPO, model-free, 1708.3" in demo.same_budget("HalfCheetah-v4")
    assert demo.same_budget("Hopper-v4") == ""                     # nothing on record for Hopper
    monkeypatch.setattr(demo, "data_record", lambda env_id: {"origin": run, "real_steps_collected": 100_000})
    assert demo.same_budget("HalfCheetah-v4") == ""                # another budget: not comparable
    monkeypatch.setattr(demo, "data_record", lambda env_id: {"origin": "RL Zoo PPO and random data",
                                                             "real_steps_collected": 50_000})
    assert demo.same_budget("HalfCheetah-v4") == ""                # another origin: not comparable
    monkeypatch.setattr(demo, "data_record", lambda env_id: None)  # no shipped record
    assert demo.same_budget("HalfCheetah-v4") == ""


def test_the_shipped_halfcheetah_data_is_the_one_the_stored_results_describe():
    origin, steps, _ = demo.SAME_BUDGET["HalfCheetah-v4"]
    record = data_record("HalfCheetah-v4")
    assert origin in record["origin"] and record["real_steps_collected"] == steps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd")
def test_quiet_stderr_silences_fd_2_only_inside_and_restores_it_after_an_error(capfd):
    fds = len(os.listdir("/proc/self/fd"))
    with quiet_stderr():
        os.write(2, b"inside\n")
    with pytest.raises(RuntimeError), quiet_stderr():
        raise RuntimeError("raised inside")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert len(os.listdir("/proc/self/fd")) == fds                  # no descriptor left open


def test_bad_demo_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="episode_steps"):
        demo.DemoConfig(episode_steps=0)
    with pytest.raises(ValueError, match="n_envs"):
        demo.DemoConfig(n_envs=0)


def test_make_quietly_drops_the_c_notice_but_keeps_python_warnings(monkeypatch, capfd):
    def noisy_make(env_id, **kwargs):
        os.write(2, b"C-level notice\n")
        warnings.warn(f"python warning of {env_id}", UserWarning)
        return "env"

    monkeypatch.setattr(real_evaluation.gym, "make", noisy_make)
    with pytest.warns(UserWarning, match="python warning of Task-v0"):
        assert make_quietly("Task-v0") == "env"
    assert "C-level notice" not in capfd.readouterr().err
