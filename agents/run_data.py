"""Real data from a training run in imagination: the states a learner passes through on its way from
random actions to skill, densely.

A learner trained in a frozen world model starts from scratch, so it spends its time where a learner from
scratch goes: from random flailing through every intermediate gait. A coordinator run (`agents.coordinator`)
collects exactly that: a uniform-random prefill, then the improving policy's episodes with the exploration
noise of its stochastic policy. RL-Zoo PPO (`agents.broad_data`) passes the intermediate skill levels in a
small share of its steps, so a model fitted on its data knows them less well.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.config_flags import leaf_values
from agents.presets import build_preset, resolve
from agents.run_files import find_checkpoint, read_state
from agents.saved_run import read_config
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.world_model import check_terminations


@dataclass(frozen=True)
class RunDataConfig:
    """The training run in imagination whose real buffer becomes the data."""

    steps: int = 50_000
    """Real steps of the run, its uniform-random prefill included."""
    preset: str = "cpu"
    """The run's coordinator preset."""
    terminations: str = "task"
    """Where the run's imagined episodes terminate ("task": also the task's healthy check, where it has
    one), so the run learns to stay up and its data holds the states of standing gaits."""
    seed: int = 0
    """Seeds the run."""
    skill_parts: int = 4
    """The data's report splits the run's policy episodes into this many consecutive parts."""

    def __post_init__(self) -> None:
        for name in ("steps", "skill_parts"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"run_data.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"run_data.seed must be an int >= 0, got {self.seed!r}")
        resolve(self.preset)
        check_terminations(self.terminations)


def collect_run_data(env_id: str, config: RunDataConfig, run_dir: Path, log: Callable[[str], None],
                     progress: bool = True) -> tuple[EpisodeBuffer, dict[str, dict[str, float]]]:
    """Run (or resume, from its last checkpoint in `run_dir`) the coordinator to `config.steps` real
    steps; returns its real buffer and what each part of it holds (the prefill, then the policy's
    episodes in `skill_parts` consecutive parts)."""
    from agents.coordinator import Coordinator  # the coordinator pulls in SB3 and the learner

    run_config = build_preset(config.preset, env_id, {"seed": config.seed,
                                                      "world_model.terminations": config.terminations})
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is not None:                  # checked before the resume touches the folder
        stored, asked = leaf_values(read_config(checkpoint)), leaf_values(run_config)
        changed = sorted(k for k in stored.keys() | asked.keys() if stored.get(k) != asked.get(k))
        if changed:
            raise ValueError(f"{run_dir} holds a run whose config differs from the one asked for in "
                             f"{', '.join(changed)}: use another work folder or delete it")
        taken = read_state(checkpoint)["real_steps"]
        if taken > config.steps:
            raise ValueError(f"{run_dir} holds a run of {taken} real steps, more than the run_data.steps "
                             f"{config.steps} asked for: use another work folder or ask for {taken} or more")
        log(f"resuming the data run in {run_dir}")
        coordinator = Coordinator.resume(run_dir, env_id=env_id, verbose=0)
    else:
        coordinator = Coordinator(run_config, run_dir, verbose=0)
    try:
        coordinator.learn(config.steps, progress_bar=progress)
        buffer, prefill = coordinator.buffer, coordinator.config.prefill_steps
    finally:
        coordinator.close()
    log(f"data run: real return {final_return(run_dir):.1f} after {config.steps} real steps")
    return buffer, skill_report(buffer, prefill, config.skill_parts)


def final_return(run_dir: Path) -> float:
    """The mean return of the last real evaluation of the run in `run_dir` (deterministic policy)."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} holds no checkpoint (expected {run_dir}/checkpoint/state.json)")
    return float(read_state(checkpoint)["history"][-1]["mean_return"])


def skill_report(buffer: EpisodeBuffer, prefill_steps: int,
                 n_parts: int) -> dict[str, dict[str, float]]:
    """Episodes, transitions, mean and max return of the episodes that start within the prefill, then of
    the later ones in `n_parts` parts of nearly equal episode counts (in collection order). The buffer's
    episodes are as the run stored them: one cut by a checkpoint counts as two."""
    starts = np.cumsum([0] + [e.length for e in buffer.episodes])[:-1]
    episodes = list(buffer.episodes)
    prefill = [e for e, s in zip(episodes, starts) if s < prefill_steps]
    policy = episodes[len(prefill):]
    parts = {"uniform random prefill": prefill}
    for i, chunk in enumerate(np.array_split(np.arange(len(policy)), n_parts)):
        if len(chunk):
            parts[f"policy in training, part {i + 1} of {n_parts}"] = [policy[j] for j in chunk]
    return {name: {"episodes": len(eps), "transitions": sum(e.length for e in eps),
                   "mean_return": float(np.mean([e.rewards.sum() for e in eps])) if eps else float("nan"),
                   "max_return": float(np.max([e.rewards.sum() for e in eps])) if eps else float("nan")}
            for name, eps in parts.items()}
