"""Small world models shipped with the package (see each folder's COMMAND.txt for how they were made)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent

MODEL_FOLDERS: dict[str, str] = {
    "HalfCheetah-v4": "HalfCheetah-v4",
    "HalfCheetah-v5": "HalfCheetah-v4",
    "Hopper-v4": "Hopper-v4",
    "Hopper-v5": "Hopper-v4",
    "Walker2d-v4": "Walker2d-v4",
    "Walker2d-v5": "Walker2d-v5",
}
"""Each imagined task id -> the folder of the model that serves it, named after the task it was built on.

HalfCheetah v4 and v5 step bit-identically (states, observations, rewards) from the same state. Hopper v4
and v5 share dynamics and observations, but only v4 pays the healthy reward on the step that terminates an
episode: their rewards differ by 1 on that one step. Walker2d v5 changed the feet's friction, so each
version has its own model."""


def serves(model_task: str, env_id: str) -> bool:
    """Whether a world model fitted on `model_task` may imagine `env_id`: the same task, or two tasks that
    share a folder in MODEL_FOLDERS."""
    return model_task == env_id or (model_task in MODEL_FOLDERS
                                    and MODEL_FOLDERS[model_task] == MODEL_FOLDERS.get(env_id))


def pretrained_paths(env_id: str) -> tuple[Path, Path]:
    """(world_model.pt, start_states.npy) shipped for `env_id`; ValueError if none ships."""
    folder = MODEL_FOLDERS.get(env_id)
    if folder is None or not _ships(folder):
        shipped = sorted(task for task, name in MODEL_FOLDERS.items() if _ships(name))
        where = f"its folder {folder} is not in the package; " if folder else ""
        raise ValueError(f"no pretrained world model ships for {env_id!r} ({where}shipped: "
                         f"{shipped or 'none'}); "
                         "pass world_model=<file> and start_states=<file>, "
                         "or train one with `imagined-env train`")
    return _HERE / folder / "world_model.pt", _HERE / folder / "start_states.npy"


def _ships(folder: str) -> bool:
    return (_HERE / folder / "world_model.pt").is_file() and (_HERE / folder / "start_states.npy").is_file()


def data_record(env_id: str) -> dict[str, Any] | None:
    """What the real data behind `env_id`'s shipped model holds (its folder's data.json: where it came
    from, real steps collected (a data run's evaluation episodes not counted), episodes, transitions and
    returns of each part, and the best policy behind it with its real return), or None without one."""
    folder = MODEL_FOLDERS.get(env_id)
    path = _HERE / folder / "data.json" if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None
