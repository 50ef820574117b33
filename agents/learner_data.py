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

from agents.broad_data import DataReport, RecordedEpisode, record_steps
from agents.plan_following import ImaginationPPO
from imagined_env.world_model import WorldModel

LEARNER_RESET_SEED = 30_000
"""The real episodes of round r, learner seed s reset with seeds drawn by a generator keyed
(LEARNER_RESET_SEED, r, s)."""


@dataclass(frozen=True)
class LearnerDataConfig:
    """Rounds of learner data: train the snippet's PPO in the built model, record it on the real task,
    refit."""

    rounds: int = 0
    """Rounds of learner data and refitting (0: none)."""
    seeds: tuple[int, ...] = (1000, 1001, 1002, 1003)
    """Seeds of the learners trained in each round; the defaults are apart from the seeds the benchmarks
    evaluate the shipped envs on (0-15)."""
    imagined_steps: int = 200_000
    """Imagined steps each learner trains for."""
    checkpoints: int = 4
    """Evenly spaced points of its training at which the learner's policy is recorded on the real task; at
    least one PPO rollout (n_envs x horizon imagined steps) apart."""
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

    def marks(self) -> np.ndarray:
        """The imagined-step counts at which the policy is recorded."""
        return np.linspace(0, self.imagined_steps, self.checkpoints + 1).round().astype(int)[1:]


def collect_learner_data(env_id: str, model: WorldModel, starts: np.ndarray, config: LearnerDataConfig,
                         round_: int, log: Callable[[str], None] = print
                         ) -> tuple[list[RecordedEpisode], DataReport]:
    """Round `round_`'s real episodes: for each seed, the snippet's PPO trained (on the CPU, so that a
    build does not depend on the machine) in an imagined env of `model` (its pessimism set as it ships,
    started from `starts`), recorded `real_steps` real steps at each of `checkpoints` points of its
    training. ValueError, before any training, when the points are closer than one PPO rollout (a
    learner would be recorded twice without learning between)."""
    report, episodes = DataReport(), []
    marks = config.marks()
    for seed in config.seeds:
        learner = ImaginationPPO("MlpPolicy", env_id, seed=seed, verbose=0, device="cpu",
                                 env_kwargs={"world_model": model, "start_states": starts, "device": "cpu"})
        env = learner.get_env()
        assert env is not None
        rng = np.random.default_rng([LEARNER_RESET_SEED, round_, seed])
        part: list[RecordedEpisode] = []
        try:
            rollout = learner.n_steps * learner.n_envs
            if int(np.diff(marks, prepend=0).min()) < rollout:
                raise ValueError(f"learner_data checkpoints must be at least one PPO rollout ({rollout} "
                                 f"imagined steps) apart: imagined_steps {config.imagined_steps} / "
                                 f"checkpoints {config.checkpoints} is less")
            for mark in marks:
                learner.learn(int(mark) - learner.num_timesteps, reset_num_timesteps=False)
                part.extend(record_steps(env_id, lambda obs, _space: learner.predict(obs)[0],
                                         config.real_steps, int(rng.integers(2**31))))
        finally:
            env.close()
        returns = [e.episode_return for e in part]
        log(f"learner round {round_}, seed {seed}: {len(part)} real episodes, return mean "
            f"{np.mean(returns):.1f}, max {np.max(returns):.1f}")
        report.add(f"learner in the model, round {round_}, seed {seed}", part)
        episodes.extend(part)
    return episodes, report
