"""Collecting real MuJoCo episodes: episode splitting, stored simulator states, action clipping."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.sb3_sampling import sb3_sampler
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import (
    buffer_for_env,
    collect_episodes,
    mujoco_state,
    set_mujoco_state,
)

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]


class RecordActions(gym.Wrapper):
    """Remembers the actions the simulator actually received."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.sent: list[np.ndarray] = []

    def step(self, action):
        self.sent.append(np.array(action))
        return self.env.step(action)


def assert_states_reproduce_observations(env: gym.Env, buffer: EpisodeBuffer) -> None:
    for episode in buffer.episodes:
        for obs, qpos, qvel in zip(episode.observations, episode.qpos, episode.qvel):
            np.testing.assert_array_equal(set_mujoco_state(env, qpos, qvel).astype(np.float32), obs)


def test_halfcheetah_budget_cut_episode_and_state_round_trip():
    env = gym.make("HalfCheetah-v4")
    buffer = buffer_for_env(env, "HalfCheetah-v4")
    dims = (buffer.obs_dim, buffer.act_dim, buffer.nq, buffer.nv, buffer.env_id)
    assert dims == (17, 6, 9, 9, "HalfCheetah-v4")
    stats = collect_episodes(env, buffer, 200, seed=0)
    assert len(buffer) == 1 and buffer.n_transitions == 200
    assert not buffer.episodes[0].terminated
    assert stats["steps"] == 200 and stats["episodes_ended"] == 0 and np.isnan(stats["mean_return"])
    assert_states_reproduce_observations(env, buffer)

    again = buffer_for_env(env)
    collect_episodes(env, again, 200, seed=0)
    np.testing.assert_array_equal(again.episodes[0].actions, buffer.episodes[0].actions)
    np.testing.assert_array_equal(again.episodes[0].observations, buffer.episodes[0].observations)
    env.close()


def test_time_limit_splits_episodes_as_not_terminated():
    env = gym.make("HalfCheetah-v4", max_episode_steps=50)
    buffer = buffer_for_env(env)
    stats = collect_episodes(env, buffer, 120, seed=1)
    assert [e.length for e in buffer.episodes] == [50, 50, 20]
    assert not any(e.terminated for e in buffer.episodes)
    assert stats["episodes_ended"] == 2 and stats["episodes_terminated"] == 0 and stats["mean_length"] == 50
    returns = [float(np.sum(e.rewards, dtype=np.float64)) for e in buffer.episodes[:2]]
    assert stats["mean_return"] == pytest.approx(np.mean(returns), rel=1e-5)
    env.close()


def test_hopper_stores_terminations_and_exact_simulator_states():
    env = gym.make("Hopper-v4")
    buffer = buffer_for_env(env, "Hopper-v4")
    stats = collect_episodes(env, buffer, 300, seed=0)
    episodes = list(buffer.episodes)
    assert buffer.n_transitions == 300 and sum(e.length for e in episodes) == 300
    assert all(e.terminated for e in episodes[:-1]) and stats["episodes_terminated"] == len(episodes) - 1 >= 2
    for episode in episodes[:-1]:  # Hopper's own health test must agree with the stored final state
        set_mujoco_state(env, episode.qpos[-1], episode.qvel[-1])
        assert not env.unwrapped.is_healthy
        set_mujoco_state(env, episode.qpos[-2], episode.qvel[-2])
        assert env.unwrapped.is_healthy
    assert_states_reproduce_observations(env, buffer)
    windows = buffer.sample_windows(64, 10, np.random.default_rng(0))
    assert (~windows.valid).any()  # terminations make padded windows possible
    env.close()


def test_stored_actions_are_unclipped_samples_and_the_env_gets_clipped_ones():
    env = RecordActions(gym.make("Hopper-v4"))
    buffer = buffer_for_env(env)
    rng = np.random.default_rng(0)
    sampled: list[np.ndarray] = []

    def wide_policy(obs: np.ndarray) -> np.ndarray:
        assert obs.shape == (11,)
        sampled.append(3.0 * rng.standard_normal(3).astype(np.float32))
        return sampled[-1]

    collect_episodes(env, buffer, 100, policy=wide_policy, seed=0)
    stored = np.concatenate([e.actions for e in buffer.episodes])
    np.testing.assert_array_equal(stored, np.stack(sampled))
    assert (np.abs(stored) > 1.0).any()
    np.testing.assert_array_equal(np.stack(env.sent), np.clip(stored, -1.0, 1.0))
    env.close()


def test_sb3_sampler_matches_ppo_rollout_sampling():
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    env = gym.make("HalfCheetah-v4")
    model = PPO("MlpPolicy", env, policy_kwargs=dict(log_std_init=1.0), device="cpu", seed=0)
    sample = sb3_sampler(model)
    obs, _ = env.reset(seed=0)
    torch.manual_seed(5)
    ours = sample(obs)
    torch.manual_seed(5)
    with torch.no_grad():
        theirs, _, _ = model.policy(obs_as_tensor(obs[None], model.device))  # what PPO's rollout stores
    assert ours.shape == (6,)
    np.testing.assert_allclose(ours, theirs.numpy()[0], rtol=1e-6)

    buffer = buffer_for_env(env)
    collect_episodes(env, buffer, 30, policy=sample, seed=0)
    assert (np.abs(buffer.episodes[0].actions) > 1.0).any()  # std e^1: clipping would show
    env.close()


def test_sb3_sampler_extra_noise_widens_the_policy_gaussian():
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    env = gym.make("HalfCheetah-v4")
    model = PPO("MlpPolicy", env, policy_kwargs=dict(log_std_init=np.log(0.3)), device="cpu", seed=0)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        mean = model.policy.get_distribution(
            obs_as_tensor(obs[None], model.device)).distribution.mean.numpy()[0]
    sample = sb3_sampler(model, extra_noise_std=0.4)
    torch.manual_seed(0)
    draws = np.stack([sample(obs) for _ in range(4000)])
    # independent Gaussians add variances: sqrt(0.3^2 + 0.4^2) = 0.5; the std error of 4000 draws is ~1%
    np.testing.assert_allclose(draws.std(axis=0), 0.5, rtol=0.05)
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.03)
    env.close()


@pytest.mark.parametrize("use_sde", [False, True])
def test_sb3_sampler_std_scale_narrows_the_policy_noise_from_the_same_draws(use_sde):
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    env = gym.make("HalfCheetah-v4")
    model = PPO("MlpPolicy", env, use_sde=use_sde, device="cpu", seed=0)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        mean = model.policy.get_distribution(
            obs_as_tensor(obs[None], model.device)).distribution.mean.numpy()[0]
    torch.manual_seed(3)
    full = sb3_sampler(model)(obs)
    torch.manual_seed(3)
    narrow = sb3_sampler(model, std_scale=0.2)(obs)
    assert np.abs(full - mean).min() > 1e-4
    np.testing.assert_allclose(narrow - mean, 0.2 * (full - mean), rtol=1e-4, atol=1e-6)
    torch.manual_seed(3)
    np.testing.assert_allclose(sb3_sampler(model, std_scale=0.0)(obs), mean, atol=1e-6)
    env.close()


def test_sb3_sampler_applies_observation_normalisation():
    from stable_baselines3 import PPO

    env = gym.make("Hopper-v4")
    model = PPO("MlpPolicy", env, device="cpu", seed=0)
    seen: list[np.ndarray] = []

    def normalize(obs: np.ndarray) -> np.ndarray:
        seen.append(obs)
        return obs / 10.0

    obs, _ = env.reset(seed=0)
    sb3_sampler(model, normalize_obs=normalize)(obs)
    np.testing.assert_array_equal(seen[0], obs)
    env.close()


def test_mujoco_state_helpers_round_trip():
    env = gym.make("HalfCheetah-v4")
    env.reset(seed=3)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    qpos, qvel = mujoco_state(env)
    env.reset(seed=4)
    np.testing.assert_array_equal(set_mujoco_state(env, qpos, qvel), obs)
    np.testing.assert_array_equal(mujoco_state(env)[0], qpos)
    env.close()


def test_dimension_mismatch_is_refused():
    env = gym.make("Hopper-v4")
    with pytest.raises(ValueError, match="do not match"):
        collect_episodes(env, EpisodeBuffer(17, 6, 9, 9), 10)
    env.close()


def test_importing_the_data_layer_does_not_import_sb3():
    code = "import sys, imagined_env.data.collect; print('stable_baselines3' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.stdout.strip() == "False", result.stderr
