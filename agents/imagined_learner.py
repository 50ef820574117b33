"""The learner of a run and the imagined env it trains in, built fresh or from a checkpoint's learner.zip."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.config import IMAGINATION_LEARNERS, CoordinatorConfig, _learner_kwargs
from agents.learning_rate import RunLearningRate
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.replay import ReplayConfig
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import WorldModel


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
        learner = algo.load(checkpoint / "learner.zip", env=venv, device=config.device,
                            custom_objects={"learning_rate": learning_rate})
    learner.set_logger(logger)
    return ImaginedLearner(imagined, learner, vec_normalize)


def run_learning_rate(config: CoordinatorConfig, current: float | None = None) -> RunLearningRate:
    """The run's learning-rate schedule, starting from the rate of `config`'s learner settings."""
    return RunLearningRate(config.learner.learning_rate, current)
