"""The frozen-env diagnostic's count of why plans end, against a hand count."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


@pytest.fixture
def ends(monkeypatch):
    return load_benchmark("frozen_env_ends", monkeypatch)


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


@pytest.mark.mujoco
@pytest.mark.filterwarnings("ignore:.*is out of date")
def test_episodes_from_reset_states_count_their_first_end_over_the_chained_plans(ends, monkeypatch):
    """A stand-in model: start 0 goes past the limit in the second plan, start 1 has a task end in the
    first and goes past the limit in the second (a task end first), starts 2 and 3 run through; it steps
    zero actions, which keep the real Hopper up for 10 steps."""
    import numpy as np

    from imagined_env.world_model import Imagination

    calls = []

    def imagine(state, policy, generator=None):
        plan = len(calls)
        calls.append(state.clone())
        u = torch.full((4, 5), 0.1)
        ended = torch.zeros(4, 5, dtype=torch.bool)
        if plan == 1:
            u[0, 2] = u[1, 0] = 0.5
            ended[0, 2] = ended[1, 0] = True  # as shipped: the unsure end terminates
        if plan == 0:
            ended[1, 3] = True
        obs = state[:, None].repeat(1, 6, 1) + plan + 1
        return Imagination(observations=obs, actions=torch.zeros(4, 5, 3), rewards=torch.zeros(4, 5),
                           terminations=ended, spread=1.0, disagreement=u)

    model = SimpleNamespace(config=SimpleNamespace(disagreement_limit=0.3), imagine=imagine)
    monkeypatch.setattr(ends, "sb3_guide", lambda policy, vec_normalize: None)
    shares = ends.from_resets(SimpleNamespace(policy=None), model, "Hopper-v4", n_starts=4, n_plans=2)
    assert shares == {"reset_ended_unsure_first": 0.25, "reset_ended_task_first": 0.25,
                      "reset_real_ended": 0.0}
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], calls[0] + 1)     # the second plan starts at the first's last state
    assert float(calls[0][:, 0].min()) > 1.2              # reset states: the hopper stands
