"""The registered ids on the shipped pretrained model: spaces equal the real task's, checkers pass."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import imagined_env  # noqa: F401
from imagined_env.vector_env import ImaginedVectorEnv

pytestmark = pytest.mark.mujoco


def test_make_vec_default_is_the_pretrained_model_and_spaces_match_the_real_task():
    venv = gym.make_vec("Imagined-HalfCheetah-v4", num_envs=3, device="cpu")
    assert isinstance(venv, ImaginedVectorEnv)
    real = gym.make("HalfCheetah-v4")
    assert venv.single_observation_space == real.observation_space
    assert venv.single_action_space == real.action_space
    obs, _ = venv.reset(seed=0)
    obs2, rew, term, trunc, info = venv.step(np.clip(venv.planned_actions(), -1, 1))
    assert obs2.shape == (3, 17) and rew.shape == (3,) and not info["off_plan"].any()
    venv.close()


def test_single_env_passes_gymnasium_and_sb3_checks():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("Imagined-HalfCheetah-v4", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    obs, info = env.reset(seed=1)
    obs, r, term, trunc, info = env.step(np.clip(info["planned_action"], -1, 1))
    assert not info["off_plan"] and np.isfinite(obs).all()


def test_sb3_learners_accept_the_imagined_id():
    # SB3 builds gym.make(id, render_mode="rgb_array"), falls back on TypeError, wraps in a DummyVecEnv
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv
    from agents import ImaginationPPO

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)       # following the plan: never off-plan
        model = ImaginationPPO("MlpPolicy", "Imagined-HalfCheetah-v4", n_steps=8, batch_size=8, n_epochs=1, seed=0)
        assert model.imagined is model.env.envs[0].unwrapped.vec
        model.learn(16)
    assert np.isfinite(model.imagined.model.guidance_scale)
    PPO("MlpPolicy", "Imagined-HalfCheetah-v4", n_steps=8, batch_size=8, n_epochs=1, seed=0).learn(8)
    many = DummyVecEnv([lambda: gym.make("Imagined-HalfCheetah-v4", device="cpu")] * 2)
    with pytest.raises(ValueError, match="make_imagined_vec_env"):
        ImaginationPPO("MlpPolicy", many, n_steps=8, batch_size=8)
