"""The run folder's files: the atomically replaced checkpoint directory, the SB3 progress log that a
resumed run continues, and small CSV/RNG helpers. No training logic here."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import CSVOutputFormat, Logger, configure

from imagined_env.utils import atomic_path

CHECKPOINT_VERSION = 1
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


def make_logger(run_dir: Path, keep_until: int | None) -> Logger:
    """SB3 logger (csv, tensorboard) in `run_dir`. A resumed run (`keep_until` = its checkpoint's real
    steps) keeps the progress.csv rows up to there; the killed run's later rows are dropped, as those
    steps are run again."""
    path = run_dir / "progress.csv"
    kept = _read_rows(path, keep_until) if keep_until is not None and path.is_file() else []
    logger = configure(str(run_dir), ["csv", "tensorboard"])
    csv_format = next(f for f in logger.output_formats if isinstance(f, CSVOutputFormat))
    for row in kept:
        csv_format.write(row, {})
    return logger


def _read_rows(path: Path, keep_until: int) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]
    return [row for row in rows if row.get("time/real_steps", math.inf) <= keep_until]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite a whole CSV atomically (columns: every key, in order of appearance)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def rng_states() -> dict[str, Any]:
    """The global python, numpy and torch RNG states (what SB3's `set_random_seed` seeds)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
