"""A checkpoint read back to resume its run or evaluate its learner: every file loaded and checked (named
when missing, damaged or foreign) before the run folder is written to, and what a failed write leaves to
resume from."""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from agents.config import CoordinatorConfig
from agents.imagined_learner import saved_learner
from agents.real_evaluation import make_quietly
from agents.run_files import (
    CHECKPOINT_VERSION,
    LEARNER_FILE,
    RUN_STATE,
    find_checkpoint,
    read_state,
    saved_config,
)
from agents.safe_writes import WriteFailed, failure_reason
from agents.vec_normalize_stats import STATS_FILE, read_stats
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.training import spec_from_env
from imagined_env.world_model import WorldModel


def read_config(checkpoint: Path) -> CoordinatorConfig:
    """The run config of `checkpoint`, or ValueError naming its state.json."""
    raw = saved_config(checkpoint, read_state(checkpoint))
    try:
        return CoordinatorConfig.from_dict(raw)
    except ValueError as err:
        raise ValueError(f"checkpoint file {checkpoint / 'state.json'}: {err}") from None


def read_run_state(checkpoint: Path, normalize: bool) -> dict[str, Any]:
    """The state dict of a checkpoint (for `RunState.load_state_dict`), read without unpickling;
    ValueError naming the file for an older layout or a missing, truncated or foreign file."""
    state = read_state(checkpoint)
    if state["format_version"] < CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {checkpoint} has format {state['format_version']}, written by an older "
                         f"version of this code; it cannot be resumed (resuming needs format "
                         f"{CHECKPOINT_VERSION})")
    path = checkpoint / RUN_STATE
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} is missing (the run folder is damaged)")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"checkpoint file {path} holds pickled objects, not only tensors: refused, as "
                         "loading them could run code (the run folder is damaged or tampered with)") from None
    except Exception as err:  # noqa: BLE001  (torch raises many types for truncated or foreign files)
        raise ValueError(f"checkpoint file {path} is truncated or corrupt (the run folder is damaged): "
                         f"{failure_reason(err)}") from None
    if not isinstance(tensors, dict) or set(tensors) != {"trainer", "rng"}:
        raise ValueError(f"checkpoint file {path} does not hold a run state (the run folder is damaged)")
    progress = {key: state[key] for key in ("budget", "real_steps", "policy_updates", "learning_rate",
                                            "elapsed_s", "history")}
    if normalize and not (checkpoint / STATS_FILE).is_file():
        raise ValueError(f"checkpoint file {checkpoint / STATS_FILE} is missing (the run folder is damaged)")
    stats = read_stats(checkpoint / STATS_FILE) if normalize else None
    return {"progress": progress, **tensors, "normalization": stats}


@dataclass
class SavedRun:
    """A checkpoint's contents besides the learner, every file read and checked before the run folder
    is written to."""

    checkpoint: Path
    state: dict[str, Any]
    """For `RunState.load_state_dict`."""
    buffer: EpisodeBuffer
    world_model: WorldModel


def read_checkpoint(checkpoint: Path, config: CoordinatorConfig) -> SavedRun:
    """Every file of `checkpoint`, for a run of `config`; ValueError naming a missing, damaged or
    inconsistent one."""
    saved = read_run_state(checkpoint, config.normalize)
    check_learner_file(checkpoint / LEARNER_FILE)
    buffer = EpisodeBuffer.load(checkpoint / "buffer.npz")
    real_steps = saved["progress"]["real_steps"]
    if buffer.env_id != config.env_id or buffer.n_transitions != real_steps:
        raise ValueError(f"checkpoint {checkpoint} is inconsistent: its buffer holds {buffer.n_transitions} "
                         f"steps of {buffer.env_id!r}, the run {real_steps} of {config.env_id!r}")
    world_model = WorldModel.load(checkpoint / "world_model.pt", device=config.device, env_id=config.env_id)
    return SavedRun(checkpoint, saved, buffer, world_model)


def read_learner(checkpoint: Path, config: CoordinatorConfig) -> OnPolicyAlgorithm:
    """The learner of `checkpoint`, for predicting actions on CPU: built from the run's `config`, with
    only the parameters of its learner.zip (nothing unpickled); ValueError naming a damaged file."""
    path = checkpoint / LEARNER_FILE
    check_learner_file(path)
    env = make_quietly(config.env_id)
    try:
        spec = spec_from_env(env, config.env_id)
    finally:
        env.close()
    return saved_learner(config, spec, path)


def check_learner_file(path: Path) -> None:
    """The learner's .zip exists and every member's checksum holds (SB3's own errors for a truncated file
    name neither the file nor the fault)."""
    if not path.is_file():
        raise ValueError(f"learner file {path} is missing (the run folder is damaged)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise ValueError(f"learner file {path} is truncated or corrupt: {err}") from None
    if bad is not None or "policy.pth" not in names:
        raise ValueError(f"learner file {path} is truncated or corrupt (member {bad or 'policy.pth'})")


def resume_note(run_dir: Path) -> str:
    """What survives a failed write: the last complete checkpoint, if any."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        return "no checkpoint was written yet: start the run again"
    return (f"the last checkpoint ({read_state(checkpoint).get('real_steps')} real steps, {checkpoint}) is "
            f"intact: `imagined-env train --resume {run_dir}` continues the run")


@contextmanager
def resumable_failures(run_dir: Path) -> Iterator[None]:
    """Write failures inside become a `WriteFailed` that also says which checkpoint survives them."""
    try:
        yield
    except WriteFailed as err:
        raise WriteFailed(err.path, err.reason, resume_note(run_dir)) from None
    except OSError as err:  # a write outside the named ones (e.g. a log's)
        raise WriteFailed(err.filename or run_dir, failure_reason(err), resume_note(run_dir)) from None
