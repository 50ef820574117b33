"""SB3's VecEnv contract over the gymnasium `ImaginedVectorEnv` (SB3 refuses gymnasium VectorEnvs).

Conversion happens here only: `terminal_observation` and `TimeLimit.truncated` in per-env info
dicts, `dones = terminated | truncated`, seeds from `VecEnv.seed`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from imagined_env.vector_env import ImaginedVectorEnv


class ImaginedSB3VecEnv(VecEnv):
    """SB3 view of an `ImaginedVectorEnv`; `imagined` is the wrapped env."""

    def __init__(self, imagined: ImaginedVectorEnv):
        if imagined.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"SB3 needs each finished episode's last observation in the same step: "
                             f"build the imagined env with autoreset_mode=AutoresetMode.SAME_STEP, not "
                             f"{imagined.autoreset_mode} (agents.make_imagined_vec_env does)")
        self.imagined = imagined
        super().__init__(imagined.num_envs, imagined.single_observation_space, imagined.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        seed = self._seeds[0]
        obs, _ = self.imagined.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return obs.astype(np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        obs, rewards, terminated, truncated, info = self.imagined.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = np.asarray(info["final_obs"][i], np.float32)
            infos[i]["TimeLimit.truncated"] = bool(truncated[i])
        return obs.astype(np.float32), rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.imagined.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.imagined, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.imagined, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.imagined, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
