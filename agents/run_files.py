"""A run's checkpoint: the run state (progress counters, history and the trained parts) with
`state_dict()` / `load_state_dict()`, and the atomically replaced checkpoint directory it is written to.

A checkpoint holds state.json (config and progress, written last: its presence marks the directory
complete), run_state.pt (tensors and plain values only: world-model optimiser, RNG states, observation
and reward statistics; read with `torch.load(weights_only=True)`), world_model.pt, buffer.npz, and
SB3's learner.zip (+ vec_normalize.pkl when observations are normalised) for SB3's own tools.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from agents.learning_rate import RunLearningRate
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.training import WorldModelTrainer
from imagined_env.world_model import WorldModel

CHECKPOINT_VERSION = 2
"""Version 2: tensors in run_state.pt (version 1 pickled them in trainer.pt and cannot be resumed)."""
CHECKPOINT_DIR = "checkpoint"
OLD_CHECKPOINT = ".checkpoint-old"
TMP_PREFIX = ".checkpoint-tmp-"


def check_writable(run_dir: Path, what: str = "run_dir") -> None:
    """Create `run_dir` and a file in it (permissions alone lie for root), or raise ValueError naming
    the directory as `what`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{what} {run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ValueError(f"{what} {run_dir} is not writable: {err.strerror or err}") from None


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


def write_state(checkpoint: Path, state: dict[str, Any]) -> None:
    """Write state.json, the last file of a checkpoint (its presence marks the directory complete)."""
    payload = {"format_version": CHECKPOINT_VERSION, **state}
    (checkpoint / "state.json").write_text(json.dumps(payload, indent=2))


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {checkpoint} is unreadable: {err}") from None
    version = state.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {checkpoint} has format {version!r}; this code reads up to "
                         f"{CHECKPOINT_VERSION}")
    return state


def existing_checkpoint_message(run_dir: Path, state: dict[str, Any], env_id: str) -> str:
    if state["env_id"] != env_id:
        return (f"run_dir {run_dir} holds a checkpoint of another task ({state['env_id']!r}, not "
                f"{env_id!r}); choose another run_dir")
    return (f"run_dir {run_dir} already holds a checkpoint at {state['real_steps']} real steps; continue it "
            "with Coordinator.resume(run_dir) or choose an empty run_dir")


RUN_STATE = "run_state.pt"


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

    def state_dict(self) -> dict[str, Any]:
        """Progress (JSON values), world-model optimiser, global RNG states and normalisation
        statistics: plain values and tensors only."""
        progress = {"budget": self.budget, "real_steps": self.real_steps,
                    "policy_updates": self.policy_updates, "learning_rate": self.learning_rate.current,
                    "elapsed_s": self.elapsed(), "history": self.history}
        stats = None if self.vec_normalize is None else normalization_stats(self.vec_normalize)
        return {"progress": progress, "trainer": self.trainer.state_dict(), "rng": rng_state(),
                "normalization": stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore over the rebuilt trained parts; the global RNGs last."""
        progress = state["progress"]
        self.budget, self.history = progress["budget"], progress["history"]
        self.real_steps, self.policy_updates = progress["real_steps"], progress["policy_updates"]
        self.learning_rate.current = progress["learning_rate"]
        self.elapsed_before = progress["elapsed_s"]
        self.trainer.load_state_dict(state["trainer"])
        if (state["normalization"] is None) != (self.vec_normalize is None):
            raise ValueError("the checkpoint's observation normalisation does not match the run's config")
        if self.vec_normalize is not None:
            load_normalization_stats(self.vec_normalize, state["normalization"])
        set_rng_state(state["rng"])

    def save(self, directory: Path, config: dict[str, Any]) -> None:
        """All files of a checkpoint into the empty `directory`; state.json last."""
        self.learner.save(directory / "learner.zip", exclude=["imagined"])
        if self.vec_normalize is not None:
            self.vec_normalize.save(str(directory / "vec_normalize.pkl"))
        self.world_model.save(directory / "world_model.pt")
        self.buffer.save(directory / "buffer.npz")
        state = self.state_dict()
        torch.save({key: value for key, value in state.items() if key != "progress"}, directory / RUN_STATE)
        write_state(directory, {"env_id": config["env_id"], "config": config, **state["progress"],
                                "world_model_steps": self.trainer.steps,
                                "guidance_scale": self.world_model.guidance_scale})


def read_run_state(checkpoint: Path) -> dict[str, Any]:
    """The state dict of a checkpoint (for `RunState.load_state_dict`), read without unpickling."""
    state = read_state(checkpoint)
    if state["format_version"] < CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {checkpoint} has format {state['format_version']}, written by an older "
                         f"version of this code; it can be evaluated, not resumed (resuming needs format "
                         f"{CHECKPOINT_VERSION})")
    tensors = torch.load(checkpoint / RUN_STATE, map_location="cpu", weights_only=True)
    progress = {key: state[key] for key in ("budget", "real_steps", "policy_updates", "learning_rate",
                                            "elapsed_s", "history")}
    return {"progress": progress, **tensors}


def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch RNG states (what SB3's `set_random_seed` seeds), as tensors."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def normalization_stats(vec_normalize: VecNormalize) -> dict[str, dict[str, Any]]:
    """VecNormalize's running observation and return statistics as float64 tensors."""
    return {name: {"mean": torch.as_tensor(np.asarray(rms.mean, np.float64)),
                   "var": torch.as_tensor(np.asarray(rms.var, np.float64)), "count": float(rms.count)}
            for name, rms in (("obs", vec_normalize.obs_rms), ("return", vec_normalize.ret_rms))}


def load_normalization_stats(vec_normalize: VecNormalize, stats: dict[str, dict[str, Any]]) -> None:
    """Give `vec_normalize` the statistics of `normalization_stats` (as SB3's `sync_envs_normalization`
    hands statistics from one VecNormalize to another)."""
    running = []
    for name in ("obs", "return"):
        rms = RunningMeanStd(shape=tuple(stats[name]["mean"].shape))
        rms.mean, rms.var = stats[name]["mean"].numpy(), stats[name]["var"].numpy()
        rms.count = stats[name]["count"]
        running.append(rms)
    vec_normalize.obs_rms, vec_normalize.ret_rms = running
