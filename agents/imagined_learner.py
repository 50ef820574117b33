"""The learner of a run and the imagined env it trains in, built fresh or from a checkpoint's learner.zip,
and the check of the learner settings and device before any real step."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.config import IMAGINATION_LEARNERS, CoordinatorConfig, _learner_kwargs
from agents.learning_rate import RunLearningRate
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.replay import ReplayConfig
from imagined_env.utils import resolve_device
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import EnvSpec, WorldModel


@dataclass
class ImaginedLearner:
    """An SB3 learner wired to an imagined env over the run's world model (built once, so the world
    model's training and refits are seen by it)."""

    imagined: ImaginedVectorEnv
    learner: OnPolicyAlgorithm
    vec_normalize: VecNormalize | None


def build_learner(config: CoordinatorConfig, world_model: WorldModel, start_states: np.ndarray,
                  learning_rate: RunLearningRate, logger: Logger, checkpoint: Path | None) -> ImaginedLearner:
    """A new learner, or the one of `checkpoint` (its parameters; normalisation statistics are the run
    state's). The learning rate is the run's schedule; the learner logs to `logger`."""
    imagined = ImaginedVectorEnv(world_model, config.n_imagined_envs, env_id=config.env_id,
                                 start_states=start_states,
                                 replay=ReplayConfig(n_sample_steps=config.n_sample_steps))
    venv: VecEnv = ImaginedSB3VecEnv(imagined)
    kwargs = {**_learner_kwargs(config), "learning_rate": learning_rate}
    vec_normalize = None
    if config.normalize:
        venv = vec_normalize = VecNormalize(venv, gamma=kwargs.get("gamma", 0.99))
    algo = IMAGINATION_LEARNERS[config.algo]
    if checkpoint is None:
        learner = algo("MlpPolicy", venv, seed=config.seed, device=config.device, verbose=0, **kwargs)
    else:  # SB3's load resets the new imagined env at the next update (its force_reset)
        path = checkpoint / "learner.zip"
        try:
            learner = algo.load(path, env=venv, device=config.device,
                                custom_objects={"learning_rate": learning_rate})
        except Exception as err:  # noqa: BLE001  (SB3 raises many types for damaged or foreign files)
            raise ValueError(f"learner file {path} does not load "
                             f"(the run folder is damaged): {err}") from None
    learner.set_logger(logger)
    return ImaginedLearner(imagined, learner, vec_normalize)


def run_learning_rate(config: CoordinatorConfig, current: float | None = None) -> RunLearningRate:
    """The run's learning-rate schedule, starting from the rate of `config`'s learner settings."""
    return RunLearningRate(config.learner.learning_rate, current)


class _SpacesOnly(VecEnv):
    """A VecEnv with the imagined env's spaces and nothing else: enough for SB3 to build and check a
    learner, not to step."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [None] * self.num_envs  # render_mode, asked by VecEnv itself

    def _unused(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a stand-in env for checking settings")

    reset = step_async = step_wait = close = set_attr = env_method = env_is_wrapped = _unused


def check_device(device: str) -> torch.device:
    """The torch device of `device`, or ValueError when this machine has none such."""
    try:
        resolved = resolve_device(device)
        torch.empty(1, device=resolved)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"device {device!r} is not available on this machine: {err}") from None
    return resolved


def check_learner_settings(config: CoordinatorConfig, spec: EnvSpec) -> None:
    """Build the run's learner on a stand-in env of the task's spaces, so that anything SB3 refuses
    (settings, device) is a ValueError before the first real step. Global RNGs are seeded (by SB3)."""
    check_device(config.device)
    observations = spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
    actions = spaces.Box(np.array(spec.action_low, np.float32), np.array(spec.action_high, np.float32))
    algo = IMAGINATION_LEARNERS[config.algo]
    try:
        with warnings.catch_warnings():  # the real build warns again, once
            warnings.simplefilter("ignore")
            algo("MlpPolicy", _SpacesOnly(config.n_imagined_envs, observations, actions), seed=config.seed,
                 device=config.device, verbose=0, **_learner_kwargs(config))
    except (AssertionError, ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"the learner settings are refused by {algo.__name__}: {err}") from None
