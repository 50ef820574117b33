"""Real MuJoCo start states for tests: a short uniform-random collection and a seeded draw from it."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from imagined_env.data.collect import buffer_for_env, collect_episodes


def real_states(env_id: str, n: int, steps: int):
    """(env, buffer of `steps` random real steps, qpos [n, nq], qvel [n, nv] drawn from it)."""
    env = gym.make(env_id)
    buffer = buffer_for_env(env, env_id)
    collect_episodes(env, buffer, steps, seed=0)
    _, qpos, qvel = buffer.start_states(np.random.default_rng(0), n)
    return env, buffer, qpos, qvel
