"""`imagined-env demo`: the package's main job on embedded defaults, kept short by a time limit.

Loads the pretrained HalfCheetah-v4 world model (or, when none ships, fits a tiny one on a few
thousand random real steps), trains SB3 PPO purely in imagination exactly as the README snippet does
(`ImaginationPPO`'s defaults on 256 imagined envs, 50k imagined steps), and reports the real-task return
of the deterministic policy before and after, beside random actions' return and the best policy in the
model's data.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from agents.env_factory import make_imagined_vec_env
from agents.plan_following import ImaginationPPO
from agents.real_evaluation import TqdmProgress, evaluate_real, make_quietly
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, collect_episodes
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.sampler import SamplerConfig
from imagined_env.pretrained import data_record, pretrained_paths
from imagined_env.training import TrainConfig, fit_world_model, spec_from_env
from imagined_env.world_model import WorldModel, WorldModelConfig


@dataclass(frozen=True)
class DemoConfig:
    """Embedded defaults of the demo; its PPO phase never runs much over `time_limit_s`."""

    env_id: str = "HalfCheetah-v4"
    """Real task; HalfCheetah, Hopper and Walker2d (v4, v5) have a world model shipped in the package."""
    imagined_steps: int = 50_000
    """Imagined transitions PPO learns from, rounded up to whole rollouts of n_envs x H (the time limit may
    stop it earlier): the README snippet's `learn(50_000)`. How far longer training in a frozen model
    goes depends on the model (benchmarks/shipped_envs.py measures it); the coordinator refits its model
    on real data as it goes."""
    episode_steps: int | None = None
    """Imagined steps per episode (None: the registered ids' length, a new plan every H steps)."""
    time_limit_s: float = 300.0
    """Wall-clock cap of the PPO phase, so the demo stays short on a slow or busy machine."""
    n_envs: int = 256
    """Imagined trajectories per rollout, generated in one batched call (the README snippet's default)."""
    eval_episodes: int = 3
    """Deterministic real episodes before and after training."""
    seed: int = 0
    """Seeds the learner, the imagined env and the fallback data; evaluation uses seed + 10000."""
    fallback_real_steps: int = 4_000
    """Uniform-random real steps for the tiny fallback model (only when no pretrained model ships)."""
    fallback_train_steps: int = 300
    """Gradient steps of the tiny fallback model."""

    def __post_init__(self) -> None:
        positive = {k: getattr(self, k) for k in ("imagined_steps", "time_limit_s", "n_envs", "eval_episodes",
                                                   "fallback_real_steps", "fallback_train_steps")}
        bad = {k: v for k, v in positive.items() if v <= 0}
        if self.episode_steps is not None and self.episode_steps <= 0:
            bad["episode_steps"] = self.episode_steps
        if bad:
            raise ValueError(f"demo settings must be > 0 (episode_steps: > 0 or None): {bad}")


SAME_BUDGET: dict[str, tuple[str, int, str]] = {
    "HalfCheetah-v4": ("preset cpu-v7", 50_000,
                       "RL-Zoo-tuned PPO, model-free, 1708.3; the coordinator (preset cpu-v7, refitting its "
                       "model as it collects), 2769.5 (IQMs of 16 seeds)")}
"""Stored results of learners given as many real steps as the shipped model's data holds: for data whose
origin names this text and that many real steps, what they reached."""


class TimeLimit(BaseCallback):
    """Stops `learn` after `seconds` of wall-clock time."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.deadline = 0.0
        self.hit = False

    def _on_training_start(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def _on_step(self) -> bool:
        self.hit = time.monotonic() > self.deadline
        return not self.hit


def data_policy(env_id: str) -> str:
    """The best policy behind the shipped model's data, as a reference for the learner's return."""
    record = data_record(env_id)
    reference = record.get("reference") if record else None
    if not reference:
        return ""
    return f"; the data's best policy ({reference['policy']}): {reference['mean_return']:.1f}"


def same_budget(env_id: str) -> str:
    """What learners reach with the real steps behind the shipped model, when that is on record."""
    record, stored = data_record(env_id), SAME_BUDGET.get(env_id)
    if not record or not stored:
        return ""
    origin, steps, results = stored
    if origin not in record["origin"] or record["real_steps_collected"] != steps:
        return ""
    return f"\nwith the {steps:,} real steps behind the model's data: {results}"


def world_model_and_starts(config: DemoConfig, log: Callable[[str], None],
                           progress: bool) -> tuple[WorldModel, EpisodeBuffer | Path]:
    """The shipped model and start states, else a tiny model fitted now (with a clear warning)."""
    try:
        model_path, starts_path = pretrained_paths(config.env_id)
    except ValueError as err:
        log(f"NOTE: {err}\n      Falling back to a tiny world model fitted on {config.fallback_real_steps} "
            "uniform-random real steps: expect little or no improvement; the demo only shows the mechanics.")
        return fit_fallback(config, progress)
    model = WorldModel.load(model_path, device="cpu", env_id=config.env_id)
    record = data_record(config.env_id)
    data = (f", fitted on {record['transitions_kept']:,} real transitions from {record['origin']}"
            if record else "")
    log(f"world model: the one shipped for {config.env_id}, plans of {model.horizon} imagined steps{data}")
    return model, starts_path


def fit_fallback(config: DemoConfig, progress: bool) -> tuple[WorldModel, EpisodeBuffer]:
    """A small model (width 256, 2 blocks, 8-step chain) on uniform-random real data."""
    env = make_quietly(config.env_id)
    buffer = buffer_for_env(env, config.env_id)
    collect_episodes(env, buffer, config.fallback_real_steps, seed=config.seed)
    wm_config = WorldModelConfig(horizon=10, denoiser=DenoiserConfig(width=256, depth=2),
                                 sampler=SamplerConfig(n_sample_steps=8))
    spec, train = spec_from_env(env, config.env_id), TrainConfig(lr=1e-3, seed=config.seed)
    model, _ = fit_world_model(buffer, spec, config.fallback_train_steps, wm_config, train, device="cpu",
                               progress=progress)
    env.close()
    return model, buffer


def random_return(env_id: str, n_episodes: int, seed: int) -> float:
    """Mean real return of uniform-random actions over the evaluation's episodes (same reset seeds)."""
    env = make_quietly(env_id)
    env.action_space.seed(seed)
    returns = []
    for episode in range(n_episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def run_demo(config: DemoConfig = DemoConfig(), log: Callable[[str], None] = print,
             progress: bool = True) -> dict[str, float]:
    """Before/after real-task returns (mean, std over deterministic episodes) and the imagined steps used."""
    with warnings.catch_warnings():
        # The shipped model and the stored results it is compared with are of the v4 task, whose make()
        # Gymnasium flags as out of date; that notice says nothing about this run.
        warnings.filterwarnings("ignore",
                                message=rf".*The environment (Imagined-)?{re.escape(config.env_id)} "
                                "is out of date", category=DeprecationWarning)
        return _run_demo(config, log, progress)


def _run_demo(config: DemoConfig, log: Callable[[str], None], progress: bool) -> dict[str, float]:
    start = time.perf_counter()
    episodes, eval_seed = config.eval_episodes, config.seed + 10_000
    log(f"PPO learns {config.env_id} purely in imagination, inside a learned world model: this run takes no "
        f"real step.\nReturns below are on the real task ({episodes} episodes of the deterministic policy).")
    model, starts = world_model_and_starts(config, log, progress)
    length = {} if config.episode_steps is None else {"episode_steps": config.episode_steps}
    env = make_imagined_vec_env(config.env_id, config.n_envs, world_model=model, start_states=starts,
                                **length)
    learner = ImaginationPPO("MlpPolicy", env, seed=config.seed, device="cpu")  # the README snippet's PPO
    before = evaluate_real(learner, config.env_id, episodes, eval_seed)
    log(f"real return before: {before[0]:8.1f} +- {before[1]:.1f}")
    rollout = learner.n_steps * learner.n_envs
    total = math.ceil(config.imagined_steps / rollout) * rollout  # learn() runs whole rollouts
    limit = TimeLimit(config.time_limit_s)
    bar = TqdmProgress(total, "PPO in imagination", "imagined step", progress)
    learner.learn(config.imagined_steps, callback=CallbackList([bar, limit]))
    if limit.hit:
        log(f"(stopped at the {config.time_limit_s:.0f} s time limit)")
    after = evaluate_real(learner, config.env_id, episodes, eval_seed)
    log(f"real return after:  {after[0]:8.1f} +- {after[1]:.1f} "
        f"after {learner.num_timesteps:,} imagined steps "
        f"({time.perf_counter() - start:.0f} s in all)")
    random = random_return(config.env_id, episodes, eval_seed)
    log(f"for scale: random actions {random:.1f} on the same episodes{data_policy(config.env_id)}"
        f"{same_budget(config.env_id)}")
    env.close()
    return {"before_mean": before[0], "before_std": before[1], "after_mean": after[0],
            "after_std": after[1], "imagined_steps": float(learner.num_timesteps), "random_mean": random}
