"""The learner of a run and the imagined env it trains in, built from the run's config (with a
checkpoint's parameters when resumed), and the check of the learner settings and device before any real
step. A learner.zip is only read for its tensors (SB3's `set_parameters`, `torch.load(weights_only=True)`
of its .pth members); its pickled "data" member is never opened."""
from __future__ import annotations

import pickle
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
from agents.run_files import LEARNER_FILE
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
    """The run's learner, built from `config` as a new run builds it, with the parameters and optimiser
    state of `checkpoint`'s learner.zip when given. Counters are the run state's (`RunState`); SB3's
    own `train/n_updates` restarts at a resume. The learning rate is the run's schedule; the learner logs
    to `logger`."""
    imagined = ImaginedVectorEnv(world_model, config.n_imagined_envs, env_id=config.env_id,
                                 start_states=start_states,
                                 replay=ReplayConfig(n_sample_steps=config.n_sample_steps),
                                 torch_threads=None)  # the process's setting (the CLI's --threads) holds
    venv: VecEnv = ImaginedSB3VecEnv(imagined)
    kwargs = {**_learner_kwargs(config), "learning_rate": learning_rate}
    vec_normalize = None
    if config.normalize:
        venv = vec_normalize = VecNormalize(venv, gamma=kwargs.get("gamma", 0.99))
    algo = IMAGINATION_LEARNERS[config.algo]
    learner = algo("MlpPolicy", venv, seed=config.seed, device=config.device, verbose=0, **kwargs)
    if checkpoint is not None:
        load_parameters(learner, checkpoint / LEARNER_FILE)
    learner.set_logger(logger)
    return ImaginedLearner(imagined, learner, vec_normalize)


def load_parameters(learner: OnPolicyAlgorithm, path: Path) -> None:
    """The policy and optimiser state of the learner file `path` into `learner`, read as tensors only
    (its pickled data member is never opened); ValueError naming the file when they do not load or fit."""
    try:
        learner.set_parameters(str(path), exact_match=True, device=learner.device)
    except pickle.UnpicklingError:
        raise ValueError(f"learner file {path} holds pickled objects, not only tensors: refused, as loading "
                         "them could run code (the run folder is damaged or tampered with)") from None
    except Exception as err:  # noqa: BLE001  (zipfile, torch and SB3 raise many types for damaged files)
        raise ValueError(f"learner file {path} does not load or does not fit the run's learner settings "
                         f"(the run folder is damaged): {err}") from None


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
    try:
        _stand_in_learner(config, spec, config.device)
    except (AssertionError, ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"the learner settings are refused by "
                         f"{IMAGINATION_LEARNERS[config.algo].__name__}: {err}") from None


def saved_learner(config: CoordinatorConfig, spec: EnvSpec, path: Path) -> OnPolicyAlgorithm:
    """The learner of a run of `config` with the parameters of its learner file `path`, on CPU, for
    predicting actions (it has no env to step). Global RNGs are seeded (by SB3)."""
    learner = _stand_in_learner(config, spec, "cpu")
    load_parameters(learner, path)
    return learner


def _stand_in_learner(config: CoordinatorConfig, spec: EnvSpec, device: str) -> OnPolicyAlgorithm:
    observations = spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
    actions = spaces.Box(np.array(spec.action_low, np.float32), np.array(spec.action_high, np.float32))
    with warnings.catch_warnings():  # about the settings: a run's real build warns, once
        warnings.simplefilter("ignore")
        return IMAGINATION_LEARNERS[config.algo](
            "MlpPolicy", _SpacesOnly(config.n_imagined_envs, observations, actions), seed=config.seed,
            device=device, verbose=0, **_learner_kwargs(config))
