"""Gymnasium ids `Imagined-<Task>-v4/v5`: `gym.make` gives one env, `gym.make_vec` the batched one.

Each id imagines on the model shipped for it (`imagined_env.pretrained.MODEL_FOLDERS`): HalfCheetah v4 and v5
share one, as do Hopper v4 and v5, whose rewards differ only on the step that terminates an episode (v4 pays
the healthy reward of 1 there, v5 does not); Walker2d v4 and v5 have one each. Keywords go to the env, e.g.
`pessimism=False` imagines without the model's disagreement penalty and limit. Their episodes last
`EPISODE_STEPS` imagined steps (a new plan from the episode's own state every H steps) unless
`episode_steps=` (or Gymnasium's `max_episode_steps=`) says otherwise: episodes of one plan from fixed start
states never show the learner the states its own policy reaches later, and PPO trained on them falls on the
real task even with the simulator in place of the model.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym

EPISODE_STEPS = 200
"""Imagined steps per episode of the registered ids (40 plans of H = 5)."""
TASKS = ("HalfCheetah", "Hopper", "Walker2d")
VERSIONS = ("v4", "v5")


def imagined_id(env_id: str) -> str:
    return f"Imagined-{env_id}"


def make_single(env_id: str, **kwargs: Any) -> gym.Env:
    from imagined_env.single_env import ImaginedEnv

    return ImaginedEnv(env_id=env_id, **kwargs)


def _episode_steps(kwargs: dict[str, Any]) -> None:
    """Gymnasium's `max_episode_steps`, when given, is the imagined episode length."""
    steps = kwargs.pop("max_episode_steps", None)
    if steps is not None:
        kwargs["episode_steps"] = steps


def make_vector(env_id: str, num_envs: int = 1, **kwargs: Any) -> gym.vector.VectorEnv:
    """`gym.make_vec`: Gymnasium's conventions by default, so that its vector wrappers work: NEXT_STEP
    autoreset and each env's next planned action in `info["planned_action"]` (both keywords override)."""
    from gymnasium.vector import AutoresetMode

    from imagined_env.vector_env import ImaginedVectorEnv

    _episode_steps(kwargs)
    kwargs.setdefault("autoreset_mode", AutoresetMode.NEXT_STEP)
    kwargs.setdefault("planned_action_info", True)
    return ImaginedVectorEnv(num_envs=num_envs, env_id=env_id, **kwargs)


def register_envs() -> None:
    """Register every imagined task id (idempotent)."""
    for task in TASKS:
        for version in VERSIONS:
            env_id = f"{task}-{version}"
            if imagined_id(env_id) in gym.registry:
                continue
            gym.register(
                id=imagined_id(env_id),
                entry_point="imagined_env.registration:make_single",
                vector_entry_point="imagined_env.registration:make_vector",
                kwargs={"env_id": env_id, "episode_steps": EPISODE_STEPS},
                disable_env_checker=False,
            )
