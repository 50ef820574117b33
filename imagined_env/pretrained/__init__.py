"""Small world models shipped with the package (see each folder's COMMAND.txt for how they were made)."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def pretrained_paths(env_id: str) -> tuple[Path, Path]:
    """(world_model.pt, start_states.npz) shipped for `env_id`; ValueError if none ships."""
    folder = _HERE / env_id
    model, starts = folder / "world_model.pt", folder / "start_states.npz"
    if not (model.is_file() and starts.is_file()):
        shipped = sorted(p.name for p in _HERE.iterdir() if (p / "world_model.pt").is_file())
        raise ValueError(f"no pretrained world model ships for {env_id!r} (shipped: {shipped or 'none'}); "
                         "pass world_model=<file> and start_states=<file>, "
                         "or train one with `imagined-env train`")
    return model, starts
