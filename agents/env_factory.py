"""One call from a task id to an SB3-ready imagined VecEnv."""
from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecMonitor

import imagined_env  # noqa: F401  (registers the Imagined-* ids)
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.registration import imagined_id
from imagined_env.vector_env import ImaginedVectorEnv

DEFAULT_N_ENVS = 256
"""Imagined envs generated per batched call when not given: large enough to amortise a generation, and
n_envs x H a multiple of PPO's default mini-batch (64) for any horizon H."""


def make_imagined_vec_env(env_id: str, n_envs: int = DEFAULT_N_ENVS, **kwargs: Any) -> VecMonitor:
    """`env_id` may be the real task ("HalfCheetah-v4") or the imagined id; kwargs go to the env
    (world_model=, start_states=, pessimism=, replay=, torch_threads=, device=). Wrapped in VecMonitor, as
    SB3's make_vec_env wraps in Monitor, so `rollout/ep_rew_mean` reports imagined returns."""
    if not env_id.startswith("Imagined-"):
        env_id = imagined_id(env_id)
    kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP, "planned_action_info": False, **kwargs}
    # the imagined ids' vector entry point builds an ImaginedVectorEnv, unwrapped
    imagined = cast(ImaginedVectorEnv, gym.make_vec(env_id, num_envs=n_envs, **kwargs))
    return VecMonitor(ImaginedSB3VecEnv(imagined))
