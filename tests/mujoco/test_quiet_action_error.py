"""benchmarks/quiet_action_error.py: chained plans from reset states, imagined beside MuJoCo. With the
simulator itself as the model, the imagined and real rewards must agree plan by plan: the chaining of
plans (each from the last imagined state) and the real envs' steps line up."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.simulator_model import SimulatorModel
from tests.benchmark_scripts import load_benchmark

pytestmark = [pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*is out of date")]


@pytest.fixture
def chained(monkeypatch):
    return load_benchmark("quiet_action_error", monkeypatch).chained


@pytest.mark.parametrize("width", [0.0, 0.3])
def test_the_simulator_as_the_model_imagines_the_real_rewards_plan_by_plan(chained, width):
    model = SimulatorModel("HalfCheetah-v4", horizon=4)
    row = chained(model, "HalfCheetah-v4", width, n_envs=3, n_plans=5, seed=2)
    assert len(row["imagined_reward"]) == len(row["real_reward"]) == 5
    np.testing.assert_allclose(row["imagined_reward"], row["real_reward"], rtol=0, atol=1e-3)
    assert row["disagreement"] == [] and row["alive_at_end"] == 1.0
    if width:    # a wider draw moves the cheetah: the rewards are not all the same
        assert np.ptp(row["real_reward"]) > 1e-3


def test_a_terminating_task_counts_only_envs_alive_in_both(chained):
    model = SimulatorModel("Hopper-v4", horizon=5)
    row = chained(model, "Hopper-v4", 1.0, n_envs=4, n_plans=30, seed=0)
    assert row["alive_at_end"] < 1.0               # random Hopper falls within 150 steps
    assert row["alive"][0] == 1.0 and row["alive"] == sorted(row["alive"], reverse=True)
    np.testing.assert_allclose(row["imagined_reward"], row["real_reward"], rtol=0, atol=1e-3)


def test_steps_after_an_imagined_end_are_not_counted(chained):
    """A stand-in that is MuJoCo except that it ends env 0's episode at step 1 and pads it with reward
    100: only env 0's steps 0-1 and the other envs' steps count, and env 0 counts no more after."""
    sim = SimulatorModel("HalfCheetah-v4", horizon=4)

    class EndsEarly:
        horizon, spec = sim.horizon, sim.spec

        def imagine(self, state, actions):
            out = sim.imagine(state, actions=actions)
            ended, rewards = out.terminations.clone(), out.rewards.clone()
            ended[0, 1] = True
            rewards[0, 2:] = 100.0
            return dataclasses.replace(out, terminations=ended, rewards=rewards)

    row = chained(EndsEarly(), "HalfCheetah-v4", 0.3, n_envs=3, n_plans=3, seed=2)
    np.testing.assert_allclose(row["imagined_reward"], row["real_reward"], rtol=0, atol=1e-3)
    assert row["alive"] == [1.0, 2 / 3, 2 / 3] and row["alive_at_end"] == 2 / 3
