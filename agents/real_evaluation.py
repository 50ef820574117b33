"""Real-task evaluation of SB3 learners as they see the task (frozen VecNormalize statistics), real envs
made without MuJoCo's model-loading notice, and a tqdm progress bar for `learn` (SB3's own bar needs
`rich`, which is not a dependency)."""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize, sync_envs_normalization
from tqdm.auto import tqdm

from agents.vec_normalize_stats import frozen_vec_normalize

LEARNERS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C}


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (fd 2) inside the block; a no-op when fd 2 is closed."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


_REISSUED: set[tuple[str, type[Warning]]] = set()
"""Warnings `make_quietly` has issued again: each once per process, as Python's "default" action does."""


def make_quietly(env_id: str, **kwargs: Any) -> gym.Env:
    """`gym.make` without the compiler notice MuJoCo prints on loading some task models (HalfCheetah's),
    which says nothing about the run. Python warnings raised meanwhile are issued again once stderr is
    back, under the caller's filters."""
    with warnings.catch_warnings(record=True) as caught, quiet_stderr():
        env = gym.make(env_id, **kwargs)
    for w in caught:
        if (str(w.message), w.category) not in _REISSUED:
            _REISSUED.add((str(w.message), w.category))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return env


def real_env(env_id: str, seed: int, max_episode_steps: int | None = None) -> DummyVecEnv:
    """One real env with episode statistics, seeded, as SB3 expects (time limit: the task's by default)."""
    venv = DummyVecEnv([lambda: Monitor(make_quietly(env_id, max_episode_steps=max_episode_steps))])
    venv.seed(seed)
    return venv


def frozen_eval_env(env_id: str, seed: int, training_env: VecEnv | None = None,
                    max_episode_steps: int | None = None) -> VecEnv:
    """A real env seen as the policy sees it: when `training_env` is a VecNormalize, its observation
    statistics (copied, frozen), and raw rewards so that returns are the task's."""
    venv: VecEnv = real_env(env_id, seed, max_episode_steps)
    if isinstance(training_env, VecNormalize):
        venv = VecNormalize(venv, training=False, norm_reward=False)
        sync_envs_normalization(training_env, venv)
    return venv


def evaluate_real(model: BaseAlgorithm, env_id: str, n_episodes: int, seed: int,
                  training_env: VecEnv | None = None,
                  max_episode_steps: int | None = None) -> tuple[float, float]:
    """Mean and std of the real-task return over `n_episodes` deterministic episodes."""
    env = frozen_eval_env(env_id, seed, training_env, max_episode_steps)
    try:
        # without return_episode_rewards, the mean and std (SB3 types both of its return forms)
        mean, std = cast(tuple[float, float], evaluate_policy(model, env, n_eval_episodes=n_episodes,
                                                              deterministic=True, warn=False))
    finally:
        env.close()
    return float(mean), float(std)


def load_learner(model_path: str | Path, algo: str, env_id: str, seed: int,
                 vecnormalize_path: str | Path | None = None) -> tuple[BaseAlgorithm, VecEnv | None]:
    """A saved PPO/A2C `.zip` (plain or imagination) and, if given, its VecNormalize statistics
    (`frozen_statistics`). SB3 unpickles the .zip (and a .pkl): load only trusted files; a run folder's
    learner is read without unpickling by `agents.saved_run.read_learner`."""
    model = LEARNERS[algo].load(model_path, device="cpu")
    if vecnormalize_path is None:
        return model, None
    return model, frozen_statistics(vecnormalize_path, env_id, seed)


def frozen_statistics(path: str | Path, env_id: str, seed: int) -> VecNormalize:
    """VecNormalize statistics (a run's vec_normalize.npz, or SB3's pickled .pkl) over the real task,
    frozen: the VecEnv to pass to `evaluate_real` as `training_env`."""
    if Path(path).suffix == ".npz":
        return frozen_vec_normalize(Path(path), real_env(env_id, seed))
    stats = VecNormalize.load(str(path), real_env(env_id, seed))
    stats.training, stats.norm_reward = False, False
    return stats


class TqdmProgress(BaseCallback):
    """A tqdm bar over `total` environment steps of `learn` (real or imagined, as `unit` says)."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True):
        super().__init__()
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.bar: tqdm | None = None
        self.start = 0

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, disable=not self.enabled,
                        leave=False, dynamic_ncols=True)
        self.start = self.num_timesteps

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(min(self.num_timesteps - self.start, self.total) - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
