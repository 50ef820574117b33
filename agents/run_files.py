"""A run's checkpoint: the run state (progress counters, history and the trained parts) with
`state_dict()` / `load_state_dict()`, and the atomically replaced checkpoint directory it is written to.

A checkpoint holds state.json (config and progress, written last: its presence marks the directory
complete), run_state.pt (tensors and plain values only: world-model optimiser and RNG states; read with
`torch.load(weights_only=True)`), world_model.pt, buffer.npz, vec_normalize.npz (VecNormalize's
statistics as numbers, when observations are normalised) and SB3's learner.zip. Nothing in it is
unpickled: of learner.zip only the tensors are read (`torch.load(weights_only=True)`), into a learner
built from the config.

A killed writer leaves temporary files (`.*.tmp`, `.checkpoint-tmp-*`): `sweep_litter` removes them at
the start of a run and on resume. A failed write raises `WriteFailed` naming the file. `agents.saved_run`
reads a checkpoint back.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from agents.learning_rate import RunLearningRate
from agents.rng_state import rng_state, set_rng_state
from agents.safe_writes import WriteFailed, writing
from agents.vec_normalize_stats import STATS_FILE, load_normalization_stats, normalization_stats, save_stats
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.training import WorldModelTrainer
from imagined_env.world_model import WorldModel

CHECKPOINT_VERSION = 3
"""Version 3: VecNormalize statistics in vec_normalize.npz (version 2 pickled them in vec_normalize.pkl,
version 1 also the trainer state in trainer.pt); older checkpoints cannot be resumed."""
CHECKPOINT_DIR = "checkpoint"
OLD_CHECKPOINT = ".checkpoint-old"
TMP_PREFIX = ".checkpoint-tmp-"
RUN_STATE = "run_state.pt"
LEARNER_FILE = "learner.zip"


RUN_FOLDER_FILES = ("config.json", "progress.csv", "evaluations.csv", "world_model.pt")
"""Files a run writes atomically at the top of its folder."""


def sweep_litter(run_dir: Path) -> list[Path]:
    """Remove what killed writers leave in `run_dir`: the temp files of the run's own atomic writes
    (`.<name>.*.tmp`), unfinished checkpoint directories, and the previous checkpoint once the current one
    is complete. Other files in the folder are never touched."""
    temps = [p for name in RUN_FOLDER_FILES for p in run_dir.glob(f".{name}.*.tmp") if p.is_file()]
    litter = temps + list(run_dir.glob(f"{TMP_PREFIX}*"))
    if (run_dir / CHECKPOINT_DIR / "state.json").is_file() and (run_dir / OLD_CHECKPOINT).exists():
        litter.append(run_dir / OLD_CHECKPOINT)
    for path in litter:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return litter


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint in `run_dir` (the previous one if a swap was interrupted), or None."""
    for name in (CHECKPOINT_DIR, OLD_CHECKPOINT):
        candidate = Path(run_dir) / name
        if (candidate / "state.json").is_file():
            return candidate
    return None


def new_checkpoint_dir(run_dir: Path) -> Path:
    """An empty directory beside the checkpoint to write the next one into; leftovers of killed writers
    are removed first."""
    for stale in run_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=run_dir))


def swap_in(new: Path, run_dir: Path) -> Path:
    """Make the complete directory `new` the checkpoint of `run_dir`. At every instant either the
    checkpoint or the previous copy is complete, so a kill never leaves only a half-written one."""
    target, old = run_dir / CHECKPOINT_DIR, run_dir / OLD_CHECKPOINT
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_checkpoint(state: RunState, run_dir: Path, config: dict[str, Any]) -> Path:
    """`state` as the checkpoint of `run_dir`, swapped in complete; a failed write leaves the previous
    checkpoint and no half-written directory."""
    with writing(run_dir / CHECKPOINT_DIR):
        tmp = new_checkpoint_dir(run_dir)
    try:
        state.save(tmp, config)
        with writing(run_dir / CHECKPOINT_DIR):
            return swap_in(tmp, run_dir)
    except WriteFailed as err:
        if err.path.parent == tmp:  # named as the file it was to become
            raise WriteFailed(run_dir / CHECKPOINT_DIR / err.path.name, err.reason) from err.__cause__
        raise
    finally:  # no half-written directory stays; after the swap, tmp is gone
        shutil.rmtree(tmp, ignore_errors=True)


def write_state(checkpoint: Path, state: dict[str, Any]) -> None:
    """Write state.json, the last file of a checkpoint (its presence marks the directory complete)."""
    payload = {"format_version": CHECKPOINT_VERSION, **state}
    with writing(checkpoint / "state.json"):
        (checkpoint / "state.json").write_text(json.dumps(payload, indent=2))


_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "env_id": (str,), "config": (dict,), "budget": (int, type(None)), "real_steps": (int,),
    "policy_updates": (int,), "learning_rate": (float, int, type(None)), "elapsed_s": (float, int),
    "history": (list,), "world_model_steps": (int,), "guidance_scale": (float, int)}


def read_state(checkpoint: Path) -> dict[str, Any]:
    """state.json of `checkpoint`, its fields type-checked; a damaged file is a ValueError naming it."""
    path = checkpoint / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint file {path} is unreadable (the run folder is damaged): {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint file {path} holds no JSON object (the run folder is damaged)")  # noqa: TRY004
    version = state.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint file {path} has format {version!r}; this code reads 1 to "
                         f"{CHECKPOINT_VERSION}")
    if version < CHECKPOINT_VERSION:
        return state  # older layouts: only `config` and `env_id` are read (for evaluation and messages)
    for name, kinds in _STATE_FIELDS.items():
        if name not in state:
            raise ValueError(f"checkpoint file {path} lacks the field {name!r} (the run folder is damaged)")
        value = state[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"checkpoint file {path}: field {name!r} has the wrong type ({value!r}); the "
                             "run folder is damaged")
    return state


def saved_config(checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The config dict of a checkpoint of any version, or ValueError naming state.json."""
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("env_id"), str):
        raise ValueError(f"checkpoint file {checkpoint / 'state.json'} lacks its config (the run folder is "  # noqa: TRY004
                         "damaged)")
    return config


def existing_checkpoint_message(run_dir: Path, state: dict[str, Any], env_id: str) -> str:
    if state["env_id"] != env_id:
        return (f"run_dir {run_dir} holds a checkpoint of another task ({state['env_id']!r}, not "
                f"{env_id!r}); choose another run_dir")
    return (f"run_dir {run_dir} already holds a checkpoint at {state.get('real_steps')} real steps; "
            "continue it with Coordinator.resume(run_dir) or choose an empty run_dir")


@dataclass
class RunState:
    """Everything a run has learnt and counted. The trained parts are None until the prefill has built
    them; a resumed run rebuilds them from their files, then loads `state_dict()` over them."""

    buffer: EpisodeBuffer
    learning_rate: RunLearningRate
    real_steps: int = 0
    policy_updates: int = 0
    budget: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    world_model: WorldModel | None = None
    trainer: WorldModelTrainer | None = None
    learner: OnPolicyAlgorithm | None = None
    vec_normalize: VecNormalize | None = None
    elapsed_before: float = 0.0
    opened_at: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds of training in this run folder, resumed runs included."""
        return self.elapsed_before + time.monotonic() - self.opened_at

    def checked_budget(self, total: int | None, prefill_steps: int) -> int:
        """The budget a `learn(total)` call runs to (None: the run's own), or ValueError."""
        if total is None:
            if self.budget is None:
                raise ValueError("give total_real_steps: this run has no budget yet")
            return self.budget
        if not isinstance(total, (int, np.integer)) or total < prefill_steps:
            raise ValueError(f"total_real_steps ({total}) must be an integer >= prefill_steps "
                             f"({prefill_steps})")
        if total < self.real_steps:
            raise ValueError(f"total_real_steps ({total}) is below the {self.real_steps} real steps "
                             "already taken")
        return int(total)

    def _trained(self) -> tuple[WorldModel, WorldModelTrainer, OnPolicyAlgorithm]:
        """The trained parts: the state is only saved or loaded once they are built (or rebuilt)."""
        assert self.world_model is not None and self.trainer is not None and self.learner is not None
        return self.world_model, self.trainer, self.learner

    def state_dict(self) -> dict[str, Any]:
        """Progress (JSON values), world-model optimiser, global RNG states and VecNormalize statistics:
        plain values, tensors and arrays only."""
        _, trainer, _ = self._trained()
        progress = {"budget": self.budget, "real_steps": self.real_steps,
                    "policy_updates": self.policy_updates, "learning_rate": self.learning_rate.current,
                    "elapsed_s": self.elapsed(), "history": self.history}
        stats = None if self.vec_normalize is None else normalization_stats(self.vec_normalize)
        return {"progress": progress, "trainer": trainer.state_dict(), "rng": rng_state(),
                "normalization": stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore over the rebuilt trained parts; the global RNGs last."""
        _, trainer, learner = self._trained()
        progress = state["progress"]
        self.budget, self.history = progress["budget"], progress["history"]
        self.real_steps, self.policy_updates = progress["real_steps"], progress["policy_updates"]
        # each policy update learns on one rollout of n_steps x n_envs imagined steps
        learner.num_timesteps = self.policy_updates * learner.n_steps * learner.n_envs
        self.learning_rate.current = progress["learning_rate"]
        self.elapsed_before = progress["elapsed_s"]
        trainer.load_state_dict(state["trainer"])
        if (state["normalization"] is None) != (self.vec_normalize is None):
            raise ValueError("the checkpoint's observation normalisation does not match the run's config")
        if self.vec_normalize is not None:
            load_normalization_stats(self.vec_normalize, state["normalization"])
        set_rng_state(state["rng"])

    def save(self, directory: Path, config: dict[str, Any]) -> None:
        """All files of a checkpoint into the empty `directory`; state.json last."""
        world_model, trainer, learner = self._trained()
        with writing(directory / LEARNER_FILE):
            learner.save(directory / LEARNER_FILE, exclude=["imagined"])
        if self.vec_normalize is not None:
            with writing(directory / STATS_FILE):
                save_stats(self.vec_normalize, directory / STATS_FILE)
        with writing(directory / "world_model.pt"):
            world_model.save(directory / "world_model.pt")
        with writing(directory / "buffer.npz"):
            self.buffer.save(directory / "buffer.npz")
        state = self.state_dict()
        with writing(directory / RUN_STATE):
            torch.save({"trainer": state["trainer"], "rng": state["rng"]}, directory / RUN_STATE)
        write_state(directory, {"env_id": config["env_id"], "config": config, **state["progress"],
                                "world_model_steps": trainer.steps,
                                "guidance_scale": world_model.guidance_scale})
