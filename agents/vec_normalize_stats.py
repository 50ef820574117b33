"""SB3 VecNormalize statistics and settings as a plain `.npz` (numbers only, read with
`allow_pickle=False`), so a run's normalisation is restored and evaluated without unpickling anything."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from imagined_env.utils import atomic_path

STATS_FILE = "vec_normalize.npz"
FORMAT_VERSION = 1
_RUNNING = ("obs", "return")
_SETTINGS = ("clip_obs", "clip_reward", "gamma", "epsilon")
_FLAGS = ("norm_obs", "norm_reward")


def normalization_stats(vec_normalize: VecNormalize) -> dict[str, np.ndarray | np.generic]:
    """Running observation and return statistics (float64) and the settings that use them."""
    stats: dict[str, np.ndarray | np.generic] = {"format_version": np.int64(FORMAT_VERSION)}
    # SB3 types obs_rms as a dict too (Dict observation spaces); ours are arrays, so one RunningMeanStd
    for name, rms in zip(_RUNNING, (cast(RunningMeanStd, vec_normalize.obs_rms), vec_normalize.ret_rms)):
        stats[f"{name}_mean"] = np.array(rms.mean, np.float64)
        stats[f"{name}_var"] = np.array(rms.var, np.float64)
        stats[f"{name}_count"] = np.float64(rms.count)
    stats.update({key: np.float64(getattr(vec_normalize, key)) for key in _SETTINGS})
    stats.update({key: np.bool_(getattr(vec_normalize, key)) for key in _FLAGS})
    return stats


def save_stats(vec_normalize: VecNormalize, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **cast(dict[str, Any], normalization_stats(vec_normalize)))


def read_stats(path: Path) -> dict[str, np.ndarray]:
    """The statistics `save_stats` wrote; a missing, truncated or inconsistent file is a ValueError
    naming it."""
    name = f"VecNormalize statistics file {path}"
    if not path.is_file():
        raise ValueError(f"{name} is missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stats = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{name} is truncated or corrupt: {err}") from None
    expected = {"format_version", *_SETTINGS, *_FLAGS,
                *(f"{n}_{part}" for n in _RUNNING for part in ("mean", "var", "count"))}
    if set(stats) != expected:
        raise ValueError(f"{name} holds {sorted(stats)}, expected {sorted(expected)}")
    if stats["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{name} has format {stats['format_version']}, this code reads {FORMAT_VERSION}")
    for key, value in stats.items():
        if key in _FLAGS:
            continue
        if value.dtype.kind not in "fi" or not np.isfinite(value).all():
            raise ValueError(f"{name}: {key} must hold finite numbers, got {value!r}")
        if key.endswith(("_var", "_count")) and (value < 0).any():
            raise ValueError(f"{name}: {key} must be >= 0, got {value!r}")
    if stats["return_mean"].size != 1:
        raise ValueError(f"{name}: return_mean must hold one number, got shape {stats['return_mean'].shape}")
    for part in ("mean", "var"):
        if stats[f"obs_{part}"].ndim != 1:
            raise ValueError(f"{name}: obs_{part} must be 1-d, got shape {stats[f'obs_{part}'].shape}")
    return stats


def load_normalization_stats(vec_normalize: VecNormalize, stats: dict[str, Any]) -> None:
    """Give `vec_normalize` the running statistics of `normalization_stats` (its own settings stay)."""
    width = vec_normalize.observation_space.shape
    if stats["obs_mean"].shape != width or stats["obs_var"].shape != width:
        raise ValueError(f"the VecNormalize statistics are of observations {stats['obs_mean'].shape}, the "
                         f"env's are {width}")
    running = []
    for name in _RUNNING:
        rms = RunningMeanStd(shape=np.shape(stats[f"{name}_mean"]))
        rms.mean = np.array(stats[f"{name}_mean"], np.float64)
        rms.var = np.array(stats[f"{name}_var"], np.float64)
        rms.count = float(stats[f"{name}_count"])
        running.append(rms)
    # SB3's own __init__ needs the same ignore: it infers obs_rms from its Dict-space branch
    vec_normalize.obs_rms, vec_normalize.ret_rms = running  # type: ignore[assignment]


def frozen_vec_normalize(path: Path, venv: VecEnv) -> VecNormalize:
    """`venv` seen through the saved statistics of `path`, frozen, with raw rewards (for evaluation)."""
    stats = read_stats(path)
    normalized = VecNormalize(venv, training=False, norm_obs=bool(stats["norm_obs"]), norm_reward=False,
                              clip_obs=float(stats["clip_obs"]), clip_reward=float(stats["clip_reward"]),
                              gamma=float(stats["gamma"]), epsilon=float(stats["epsilon"]))
    try:
        load_normalization_stats(normalized, stats)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return normalized
