"""The demo quotes stored same-budget results only for the data budget they were measured at."""
from __future__ import annotations

from agents import demo


def test_same_budget_results_only_where_the_models_data_has_that_budget(monkeypatch):
    monkeypatch.setattr(demo, "data_record", lambda env_id: {"real_steps_collected": 50_000})
    assert "RL-Zoo-tuned PPO, model-free, 1708.3" in demo.same_budget("HalfCheetah-v4")
    assert demo.same_budget("Hopper-v4") == ""                     # nothing on record for Hopper
    monkeypatch.setattr(demo, "data_record", lambda env_id: {"real_steps_collected": 100_000})
    assert demo.same_budget("HalfCheetah-v4") == ""                # another budget: not comparable
    monkeypatch.setattr(demo, "data_record", lambda env_id: None)  # no shipped record
    assert demo.same_budget("HalfCheetah-v4") == ""
