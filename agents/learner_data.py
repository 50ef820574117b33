"""Real episodes of the policies a learner reaches in a frozen imagined env, to refit its model on.

A learner trained only in a frozen model moves to states and actions the data never held. Where the
ensemble's members agree on a wrong prediction there (a Hopper imagined to stand on while the real one
falls), neither the disagreement penalty nor the limit can see it; only data can. So a build trains the
learner a user would run (the README snippet's `ImaginationPPO`) in the model it made, records real
episodes of its policy at checkpoints along the way, with the policy's own exploration noise, and refits
on the data with them added. Each round repeats this on the refitted model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agents.broad_data import DataReport, EpisodeRecorder, RecordedEpisode
from agents.plan_following import ImaginationPPO
from agents.real_evaluation import make_quietly
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.world_model import WorldModel

LEARNER_RESET_SEED = 30_000
"""Real episodes of round r, learner seed s start from reset seeds drawn from (LEARNER_RESET_SEED, r, s):
apart from the seeds evaluations (10_000 and up) and shipped reset start states (20_000 and up) use."""


@dataclass(frozen=True)
class LearnerDataConfig:
    """Rounds of learner data: train the snippet's PPO in the built model, record it on the real task,
    refit."""

    rounds: int = 0
    """Rounds of learner data and refitting (0: none)."""
    seeds: tuple[int, ...] = (1000, 1001, 1002, 1003)
    """Seeds of the learners trained in each round, apart from the seeds benchmarks evaluate (0 and up)."""
    imagined_steps: int = 200_000
    """Imagined steps each learner trains for."""
    checkpoints: int = 4
    """Evenly spaced points of its training at which the learner's policy is recorded on the real task."""
    real_steps: int = 2_000
    """Real steps recorded at each checkpoint (the last episode cut short), with the policy's own noise."""

    def __post_init__(self) -> None:
        counts = {"rounds": self.rounds, "checkpoints": self.checkpoints}
        counts |= {"imagined_steps": self.imagined_steps, "real_steps": self.real_steps}
        for name, value in counts.items():
            low = 0 if name == "rounds" else 1
            if isinstance(value, bool) or not (isinstance(value, int) and value >= low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        seeds = self.seeds
        if not (isinstance(seeds, tuple) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                          and s >= 0 for s in seeds)
                and len(set(seeds)) == len(seeds)):
            raise ValueError(f"seeds must be a non-empty tuple of distinct ints >= 0, got {seeds!r}")
        if self.imagined_steps < self.checkpoints:
            raise ValueError(f"imagined_steps ({self.imagined_steps}) must be at least checkpoints "
                             f"({self.checkpoints})")


def collect_learner_data(env_id: str, model: WorldModel, starts: np.ndarray, config: LearnerDataConfig,
                         round_: int, log: Callable[[str], None] = print
                         ) -> tuple[list[RecordedEpisode], DataReport]:
    """Round `round_`'s real episodes: for each seed, the snippet's PPO trained in an imagined env of
    `model` (as it ships: its pessimism, started from `starts`), recorded `real_steps` real steps at each
    of `checkpoints` points of its training."""
    report, episodes = DataReport(), []
    marks = np.linspace(0, config.imagined_steps, config.checkpoints + 1).round().astype(int)[1:]
    for seed in config.seeds:
        learner = ImaginationPPO("MlpPolicy", env_id, seed=seed, verbose=0,
                                 env_kwargs={"world_model": model, "start_states": starts})
        env = learner.get_env()
        assert env is not None
        rng = np.random.default_rng([LEARNER_RESET_SEED, round_, seed])
        part: list[RecordedEpisode] = []
        try:
            for mark in marks:
                learner.learn(int(mark) - learner.num_timesteps, reset_num_timesteps=False)
                part.extend(record_policy(learner, env_id, config.real_steps, int(rng.integers(2**31))))
        finally:
            env.close()
        returns = [e.episode_return for e in part]
        log(f"learner round {round_}, seed {seed}: {len(part)} real episodes, return mean "
            f"{np.mean(returns):.1f}, max {np.max(returns):.1f}")
        report.add(f"learner in the model, round {round_}, seed {seed}", part)
        episodes.extend(part)
    return episodes, report


def record_policy(learner: ImaginationPPO, env_id: str, steps: int, reset_seed: int) -> list[RecordedEpisode]:
    """`steps` real steps of `learner`'s stochastic policy (episodes reset from `reset_seed`, the last cut
    short)."""
    episodes: list[RecordedEpisode] = []
    env = EpisodeRecorder(make_quietly(env_id), episodes.append)
    try:
        obs, _ = env.reset(seed=reset_seed)
        for _ in range(steps):
            action, _ = learner.predict(obs, deterministic=False)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
        env.flush()
    finally:
        env.close()
    return episodes


def joined(first: EpisodeBuffer, second: EpisodeBuffer) -> EpisodeBuffer:
    """A new buffer holding `first`'s episodes, then `second`'s (of the same task)."""
    out = EpisodeBuffer(first.obs_dim, first.act_dim, first.nq, first.nv, env_id=first.env_id)
    for buffer in (first, second):
        for e in buffer.episodes:
            out.add_episode(e.observations, e.actions, e.rewards, e.terminated, e.qpos, e.qvel)
    return out
