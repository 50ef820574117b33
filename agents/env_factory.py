"""One call from a task id to an SB3-ready imagined VecEnv."""
from __future__ import annotations

from typing import Any

import gymnasium as gym

import imagined_env  # noqa: F401  (registers the Imagined-* ids)
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.registration import imagined_id


def make_imagined_vec_env(env_id: str, n_envs: int = 64, **kwargs: Any) -> ImaginedSB3VecEnv:
    """`env_id` may be the real task ("HalfCheetah-v4") or the imagined id; kwargs go to the env
    (world_model=, start_states=, replay=, device=)."""
    if not env_id.startswith("Imagined-"):
        env_id = imagined_id(env_id)
    return ImaginedSB3VecEnv(gym.make_vec(env_id, num_envs=n_envs, **kwargs))
