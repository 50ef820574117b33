"""The frozen-env diagnostic's count of why plans end, against a hand count."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "frozen_env_ends.py"


@pytest.fixture
def ends(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))   # the script imports a sibling benchmark
    spec = importlib.util.spec_from_file_location("frozen_env_ends", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plans_are_counted_by_their_first_end(ends):
    counter = ends.EndCounter(SimpleNamespace(config=SimpleNamespace(disagreement_limit=0.3), horizon=3))
    u = torch.tensor([[0.1, 0.5, 0.1],     # past the limit at step 1: ends unsure
                      [0.1, 0.1, 0.1],     # a task end at step 0
                      [0.5, 0.1, 0.1],     # unsure at 0 comes before the task end at 2
                      [0.2, 0.1, 0.1]])    # runs to the end
    task = torch.tensor([[False, False, False], [True, False, False], [False, False, True],
                         [False, False, False]])
    counter.count(u, task | (u > 0.3))         # as shipped: unsure ends are terminations too
    assert counter.horizon == 3                # anything else is the model's
    shares = counter.take()
    assert shares == pytest.approx({"plans": 4, "ended_unsure_first": 2 / 4, "ended_task_first": 1 / 4,
                                    "first_disagreement": (0.1 + 0.1 + 0.5 + 0.2) / 4, "limit": 0.3})
    assert counter.take() == {"plans": 0}       # counted since the last take


def test_the_counter_can_be_copied(ends):
    import copy

    counter = ends.EndCounter(SimpleNamespace(config=SimpleNamespace(disagreement_limit=0.3), horizon=3))
    assert copy.copy(counter).horizon == 3
