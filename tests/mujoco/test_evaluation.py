"""Open-loop world-model error against the simulator, with imaginations whose error is known."""
from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from imagined_env.data.collect import buffer_for_env, collect_episodes, set_mujoco_state
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.schedule import ScheduleConfig
from imagined_env.evaluation import action_sensitivity, open_loop_error, real_start_obs
from imagined_env.training import spec_from_env
from imagined_env.world_model import Imagination, WorldModel, WorldModelConfig

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]
H = 6


def real_states(env_id: str, n: int = 5):
    env = gym.make(env_id)
    buffer = buffer_for_env(env, env_id)
    collect_episodes(env, buffer, 200, seed=0)
    _, qpos, qvel = buffer.start_states(np.random.default_rng(0), n)
    return env, buffer, qpos, qvel


def exact_imagination(env, qpos, qvel, actions) -> Imagination:
    """What a perfect model would generate: the simulator's own trajectory under clip(actions)."""
    batch = len(qpos)
    obs = np.zeros((batch, H + 1, env.observation_space.shape[0]), np.float32)
    rewards, terms = np.zeros((batch, H), np.float32), np.zeros((batch, H), bool)
    for b in range(batch):
        obs[b, 0] = set_mujoco_state(env, qpos[b], qvel[b])
        for k in range(H):
            step = env.unwrapped.step(np.clip(actions[b, k], -1, 1))
            obs[b, k + 1], rewards[b, k], terms[b, k] = step[:3]
            if terms[b, k]:
                terms[b, k:] = True
                break
    return Imagination(*(torch.as_tensor(v) for v in (obs, actions, rewards, terms)), spread=float("nan"))


def test_a_perfect_imagination_has_zero_error_and_an_offset_its_square():
    env, _, qpos, qvel = real_states("HalfCheetah-v4")
    actions = np.random.default_rng(1).normal(scale=2.0, size=(5, H, 6)).astype(np.float32)  # often > 1
    perfect = exact_imagination(env, qpos, qvel, actions)
    error = open_loop_error(env, perfect, qpos, qvel)
    assert error.obs_mse.shape == error.reward_mse.shape == (H,)
    np.testing.assert_allclose(error.obs_mse, 0.0, atol=1e-8)
    np.testing.assert_allclose(error.reward_mse, 0.0, atol=1e-8)
    assert np.all(error.n_valid == 5)
    shifted = perfect.observations.clone()
    shifted[:, 1:] += 0.5
    offset = open_loop_error(env, Imagination(shifted, perfect.actions, perfect.rewards + 2.0,
                                              perfect.terminations, float("nan")), qpos, qvel)
    np.testing.assert_allclose(offset.obs_mse, 0.25, rtol=1e-4)
    np.testing.assert_allclose(offset.reward_mse, 4.0, rtol=1e-4)


def test_steps_after_a_termination_are_not_compared():
    env, _, qpos, qvel = real_states("Hopper-v4", n=3)
    perfect = exact_imagination(env, qpos, qvel, np.zeros((3, H, 3), np.float32))
    terms = perfect.terminations.clone()
    terms[0, 2:] = True                                  # the model ends trajectory 0 after step 2
    garbage = perfect.observations.clone()
    garbage[0, 4:] = 1e6                                 # padding: must not count
    imagination = Imagination(garbage, perfect.actions, perfect.rewards, terms, 0.0)
    error = open_loop_error(env, imagination, qpos, qvel)
    np.testing.assert_array_equal(error.n_valid, [3, 3, 3, 2, 2, 2])
    np.testing.assert_allclose(error.obs_mse, 0.0, atol=1e-8)
    still = perfect.observations[:, :1].expand_as(perfect.observations).clone()
    still[0, 4:] = np.inf                                # diverged padding: must not count either
    no_motion = open_loop_error(env, Imagination(still, perfect.actions, perfect.rewards, terms, 0.0), qpos, qvel)
    np.testing.assert_allclose(no_motion.obs_mse, error.no_motion_mse, rtol=1e-6)
    real = perfect.observations.numpy()
    by_hand = ((real[:, 1:] - real[:, :1]) ** 2).mean(axis=2)
    np.testing.assert_allclose(error.no_motion_mse, [by_hand[:, k].mean() if k < 3 else by_hand[1:, k].mean()
                                                     for k in range(H)], rtol=1e-6)


def fixed_gaussian(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(len(states), 6), torch.full((len(states), 6), 0.3)


def test_a_world_model_is_measured_without_touching_its_guidance():
    env, buffer, qpos, qvel = real_states("HalfCheetah-v4", n=4)
    spec = spec_from_env(env, "HalfCheetah-v4")
    config = WorldModelConfig(horizon=H, denoiser=DenoiserConfig(width=32, depth=1, time_dim=8),
                              schedule=ScheduleConfig(n_steps=8))
    model = WorldModel(spec, config, Normaliser.fit(buffer, -1.0, 1.0), "cpu")
    scale = model.guidance_scale
    error = open_loop_error(env, model, qpos, qvel, policy=fixed_gaussian, n_sample_steps=2,
                            generator=torch.Generator().manual_seed(0))
    assert model.guidance_scale == scale
    assert np.all(np.isfinite(error.obs_mse)) and np.all(error.obs_mse > 0)
    with pytest.raises(ValueError, match="does not start from"):
        imagination = model.imagine(real_start_obs(env, qpos, qvel) + 1.0, n_sample_steps=2)
        open_loop_error(env, imagination, qpos, qvel)


class _ReplayingModel:
    """Stands in for a WorldModel in `action_sensitivity`: replays given actions through `generate`."""

    horizon = H
    spec = SimpleNamespace(act_dim=6)

    def __init__(self, generate):
        self.generate = generate

    def imagine(self, starts, *, actions, generator=None, n_sample_steps=None):
        return self.generate(np.asarray(actions))


def test_action_sensitivity_of_the_simulator_itself_is_one_and_of_an_action_blind_model_near_zero():
    env, _, qpos, qvel = real_states("HalfCheetah-v4", n=64)
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (64, H, 6)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.5, a.shape), -1, 1).astype(np.float32)
    other = gym.make("HalfCheetah-v4")
    oracle = _ReplayingModel(lambda actions: exact_imagination(other, qpos, qvel, actions))
    exact = action_sensitivity(env, oracle, qpos, qvel, a, b)
    assert exact.correlation == pytest.approx(1.0, abs=1e-6) and exact.n == 64
    assert exact.real_std == pytest.approx(exact.imagined_std, rel=1e-5) and exact.real_std > 0.1

    def blind(actions):  # right states, rewards that ignore the actions
        out = exact_imagination(other, qpos, qvel, actions)
        noise = torch.as_tensor(rng.normal(size=out.rewards.shape), dtype=torch.float32)
        return Imagination(out.observations, out.actions, noise, out.terminations, out.spread)

    assert abs(action_sensitivity(env, _ReplayingModel(blind), qpos, qvel, a, b).correlation) < 0.3
    with pytest.raises(ValueError, match=r"action sequences must have shape \(64, 6, 6\)"):
        action_sensitivity(env, oracle, qpos, qvel, a[:, :2], b)
