"""A single imagined episode as a plain `gymnasium.Env` (no autoreset), for `gym.make`."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from imagined_env.vector_env import ImaginedVectorEnv


class ImaginedEnv(gym.Env):
    """One imagined env; `info["planned_action"]` is the action that keeps to the generated plan."""

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's)

    def __init__(self, **kwargs: Any):
        self.vec = ImaginedVectorEnv(num_envs=1, **kwargs)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self.render_mode = None

    def set_policy(self, policy) -> None:
        self.vec.set_policy(policy)

    def planned_action(self) -> np.ndarray:
        """The action that keeps to the plan, as in `info["planned_action"]`; through wrappers:
        `env.get_wrapper_attr("planned_action")()`."""
        return self.vec.planned_actions()[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, _ = self.vec.reset(seed=None if seed is None else int(self.np_random.integers(2 ** 31)))
        return obs[0], {"planned_action": self.vec.planned_actions()[0]}

    def step(self, action: np.ndarray):
        arr = np.asarray(action)
        if arr.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {arr.shape}")
        obs, reward, terminated, truncated, info = self.vec.advance(arr[None])
        out_info: dict[str, Any] = {"off_plan": bool(info["off_plan"][0])}
        if not (terminated[0] or truncated[0]):
            out_info["planned_action"] = self.vec.planned_actions()[0]
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), out_info

    def render(self) -> None:
        return None

    def close(self) -> None:
        if not self.vec.closed:
            self.vec.close()
