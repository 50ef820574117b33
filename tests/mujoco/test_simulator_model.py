"""MuJoCo behind the world model's interface: on-policy rollouts, the oracle model (an exact model by
construction: zero open-loop error, perfect ranking, no leak), the run's diagnostics measured on it, and
the oracle loop end to end."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from agents.compare import CompareSpec
from agents.config import CoordinatorConfig
from agents.diagnostics import record_evaluation, world_model_errors
from agents.oracle import OracleCoordinator
from agents.simulator_model import SimulatorModel, policy_rollout
from imagined_env.data.collect import set_mujoco_state
from imagined_env.evaluation import action_ranking, open_loop_error
from tests.mujoco.real_states import real_states as shared_real_states

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]
H = 5


def real_states(env_id: str, n: int = 6):
    return shared_real_states(env_id, n, steps=300)


def state_policy(std: float, act_dim: int = 6):
    """mean = 0.8 tanh(first obs entries): the action depends on the state it is drawn at."""
    def moments(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = 0.8 * torch.tanh(states[:, :act_dim].float())
        return mean, torch.full_like(mean, std)
    return moments


def replay(env, qpos, qvel, actions):
    obs = np.zeros((len(qpos), actions.shape[1] + 1, env.observation_space.shape[0]))
    rewards = np.zeros(actions.shape[:2])
    for b in range(len(qpos)):
        obs[b, 0] = set_mujoco_state(env, qpos[b], qvel[b])
        for k in range(actions.shape[1]):
            obs[b, k + 1], rewards[b, k], *_ = env.unwrapped.step(np.clip(actions[b, k], -1, 1))
    return obs, rewards


def test_rollout_draws_each_action_at_the_state_the_previous_ones_reached():
    env, _, qpos, qvel = real_states("HalfCheetah-v4")
    out = policy_rollout(env, qpos, qvel, H, state_policy(1e-7), torch.Generator().manual_seed(0))
    obs, actions = out.observations.numpy(), out.actions.numpy()
    np.testing.assert_allclose(actions, 0.8 * np.tanh(obs[:, :H, :6]), atol=1e-5)  # row k: at s_k, not s_0
    assert np.abs(actions[:, -1] - actions[:, 0]).max() > 0.05
    real_obs, real_rewards = replay(env, qpos, qvel, actions)
    np.testing.assert_allclose(obs, real_obs, atol=1e-5)
    np.testing.assert_allclose(out.rewards.numpy(), real_rewards, atol=1e-5)
    noisy = [policy_rollout(env, qpos, qvel, H, state_policy(1.0), torch.Generator().manual_seed(s)).actions
             for s in (1, 1, 2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])  # seeded by the generator


def test_rollout_pads_after_a_termination():
    env, _, qpos, qvel = real_states("Hopper-v4", n=2)
    qpos = qpos.copy()
    qpos[0, 1] = 0.5                     # below Hopper's healthy height: ends at the first step
    out = policy_rollout(env, qpos, qvel, H, state_policy(0.1, 3), torch.Generator().manual_seed(0))
    assert out.terminations[0].all() and not out.terminations[1].any()
    assert torch.all(out.observations[0, 2:] == out.observations[0, 1]) and torch.all(out.rewards[0, 1:] == 0)


def test_the_oracle_is_an_exact_model_from_observations():
    env, _, qpos, qvel = real_states("HalfCheetah-v4")
    oracle = SimulatorModel("HalfCheetah-v4", H)
    error = open_loop_error(env, oracle, qpos, qvel, policy=state_policy(0.3),
                            generator=torch.Generator().manual_seed(0))
    assert (np.all(error.obs_mse < 1e-8) and np.all(error.reward_mse < 1e-8)
            and np.all(error.no_motion_mse > 0))
    actions = np.random.default_rng(0).uniform(-1, 1, (6, H, 6)).astype(np.float32)
    ranking = action_ranking(env, oracle, qpos, qvel, actions, np.random.default_rng(1))
    assert all(r == pytest.approx(1.0, abs=1e-6) for r in (*ranking.ranking_independent.values(),
                                                           *ranking.ranking_common.values()))
    assert (ranking.leak == pytest.approx(0.0, abs=1e-6)
            and ranking.noise_to_signal == pytest.approx(0, abs=1e-6))
    with pytest.raises(ValueError, match="give a policy"):
        oracle.imagine(np.zeros((2, 17)), actions=np.zeros((2, 2, 6)))
    oracle.close()


def test_walker2d_has_no_oracle():
    with pytest.raises(ValueError, match="does not determine the simulator state"):
        SimulatorModel("Walker2d-v4", H)
    with pytest.raises(ValueError, match="oracle tasks: HalfCheetah, Hopper"):
        CompareSpec("Walker2d-v4", ("ppo", "oracle-ppo"), (0,), 1000, 500, 1, CoordinatorConfig())


def test_diagnostics_rank_on_policy_sequences_and_log_them():
    env, buffer, _, _ = real_states("HalfCheetah-v4")
    errors = world_model_errors(env, SimulatorModel("HalfCheetah-v4", H), buffer, state_policy(0.3), 6, None,
                                seed=(0, 100))
    assert errors.ranking is not None and errors.ranking.n == 6
    assert errors.ranking.ranking_independent[0.1] == pytest.approx(1.0, abs=1e-6)
    logger = Logger(None, [])
    row = record_evaluation(logger, {"mean_return": 1.0, "std_return": 0.0}, errors)
    assert row["ranking_0.1"] == pytest.approx(1.0, abs=1e-6) and row["leak"] == pytest.approx(0.0, abs=1e-6)
    assert {"ranking_0.3_common", "noise_to_signal", "open_loop_mse", "return_difference_corr"} <= set(row)
    assert logger.name_to_value["world_model/ranking_0.1"] == row["ranking_0.1"]
    assert world_model_errors(env, SimulatorModel("HalfCheetah-v4", H), buffer, state_policy(0.3), 1, None,
                              seed=(0, 100)).ranking is None  # a correlation needs two states


@pytest.mark.slow
def test_oracle_loop_end_to_end(tmp_path):
    from tests.integration.test_coordinator import TINY

    config = replace(TINY, checkpoint_every=200)
    coordinator = OracleCoordinator(config, tmp_path, verbose=0).learn(600, progress_bar=False)
    assert [row["real_steps"] for row in coordinator.history] == [400, 600]
    assert coordinator.policy_updates == 3 and coordinator.trainer.steps == 0
    last = coordinator.history[-1]
    assert last["open_loop_mse"] < 1e-8 and last["ranking_0.1"] == pytest.approx(1.0, abs=1e-6)
    assert last["advantage_ranking_0.1"] == pytest.approx(1.0, abs=1e-6)  # through the learner's own critic
    assert not (tmp_path / "checkpoint").exists() and (tmp_path / "evaluations.csv").is_file()
    coordinator.close()
