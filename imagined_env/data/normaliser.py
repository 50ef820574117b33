"""Per-dimension z-scoring of observations, actions, rewards and terminals for the world model.

Statistics come from real transitions only (window padding never enters them). Refit and retrain
together: a model trained under one normaliser is wrong under another.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from imagined_env.data.buffer import EpisodeBuffer

_STATS = ("obs", "action", "reward", "terminal")
START_STATE_LIMIT = 1e3
"""Start states further than this many stds from the training data's mean (per dimension) are refused:
the model has never seen anything like them and answers with non-finite values."""
_KEYS = tuple(f"{name}_{part}" for name in _STATS for part in ("mean", "std"))


def _stats(values: np.ndarray, min_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and floored std over axis 0 of [N, D] values, computed in float64 and stored as float32."""
    mean, std = values.mean(axis=0, dtype=np.float64), values.std(axis=0, dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, min_std).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Normaliser:
    """Per-dimension mean/std (float32): obs [obs_dim], action [act_dim], reward [1], terminal [1].

    The torch helpers accept tensors on any device and of any float dtype; statistics are moved once
    per (device, dtype) and cached.
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    reward_mean: np.ndarray
    reward_std: np.ndarray
    terminal_mean: np.ndarray
    terminal_std: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for key in _KEYS:
            value = np.array(getattr(self, key), dtype=np.float32)
            if value.ndim != 1 or not np.isfinite(value).all():
                raise ValueError(f"{key} must be a finite 1-d array, got {value!r}")
            if key.endswith("_std") and (value <= 0).any():
                raise ValueError(f"{key} must be positive, got {value!r}")
            value.flags.writeable = False
            object.__setattr__(self, key, value)
        for name in _STATS:
            mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
            if mean.shape != std.shape:
                raise ValueError(f"{name}_mean has shape {mean.shape} but {name}_std has {std.shape}")
        for name in ("reward", "terminal"):
            if getattr(self, f"{name}_mean").shape != (1,):
                raise ValueError(f"{name} statistics must have shape (1,)")

    @classmethod
    def fit(
        cls,
        buffer: EpisodeBuffer,
        action_low: np.ndarray | float,
        action_high: np.ndarray | float,
        min_std: float = 1e-2,
    ) -> Normaliser:
        """Fit z-score statistics on every real transition of `buffer`; stds are floored at `min_std`.

        Actions are clipped to [action_low, action_high] first: the world model is conditioned on the
        action the simulator executes, not the unbounded sample a Gaussian policy recorded.
        """
        if buffer.n_transitions == 0:
            raise ValueError("cannot fit a normaliser on an empty episode buffer")
        data = buffer.transitions()
        actions = np.clip(data.actions, action_low, action_high)
        obs_mean, obs_std = _stats(buffer.observations(), min_std)
        action_mean, action_std = _stats(actions, min_std)
        reward_mean, reward_std = _stats(data.rewards[:, None], min_std)
        terminal_mean, terminal_std = _stats(data.terminals[:, None], min_std)
        return cls(
            obs_mean, obs_std, action_mean, action_std, reward_mean, reward_std, terminal_mean, terminal_std
        )

    def _torch(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (name, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                torch.tensor(getattr(self, f"{name}_{part}"), device=like.device, dtype=like.dtype)
                for part in ("mean", "std")
            )
        return self._cache[key]

    def _normalise(self, name: str, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._torch(name, x)
        return (x - mean) / std

    def _unnormalise(self, name: str, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._torch(name, x)
        return x * std + mean

    def normalise_obs(self, x: torch.Tensor) -> torch.Tensor:
        """[..., obs] -> [..., obs]."""
        return self._normalise("obs", x)

    def unnormalise_obs(self, x: torch.Tensor) -> torch.Tensor:
        """[..., obs] -> [..., obs]."""
        return self._unnormalise("obs", x)

    def normalise_action(self, x: torch.Tensor) -> torch.Tensor:
        """[..., act] -> [..., act]."""
        return self._normalise("action", x)

    def unnormalise_action(self, x: torch.Tensor) -> torch.Tensor:
        """[..., act] -> [..., act]."""
        return self._unnormalise("action", x)

    def normalise_rows(
        self, states: torch.Tensor, rewards: torch.Tensor, terminals: torch.Tensor
    ) -> torch.Tensor:
        """Pack states [..., obs], rewards [...], terminals [...] into normalised rows [..., obs+2]."""
        return torch.cat(
            [
                self._normalise("obs", states),
                self._normalise("reward", rewards.unsqueeze(-1)),
                self._normalise("terminal", terminals.unsqueeze(-1)),
            ],
            dim=-1,
        )

    def unnormalise_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split normalised rows [..., obs+2] into states [..., obs], rewards [...], terminals [...]."""
        states, reward, terminal = x.split([x.shape[-1] - 2, 1, 1], dim=-1)
        return (
            self._unnormalise("obs", states),
            self._unnormalise("reward", reward).squeeze(-1),
            self._unnormalise("terminal", terminal).squeeze(-1),
        )

    def check_start_states(self, observations: np.ndarray, limit: float = START_STATE_LIMIT) -> None:
        """ValueError naming the first row and dimension of `observations` [n, obs] that is not finite or
        lies more than `limit` stds from the mean the model was trained on."""
        obs = np.asarray(observations, np.float64)
        if obs.ndim != 2 or obs.shape[1] != len(self.obs_mean):
            raise ValueError(f"start states must have shape [n, {len(self.obs_mean)}], got {obs.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.abs((obs - self.obs_mean) / self.obs_std)
        bad = ~(z <= limit)  # NaN compares False
        if bad.any():
            row, dim = (int(i) for i in np.argwhere(bad)[0])
            value = obs[row, dim]
            what = ("is not finite" if not np.isfinite(value)
                    else f"lies {z[row, dim]:.3g} stds from the model's mean")
            raise ValueError(f"start state {row}, dimension {dim}: {value!r} {what} (training data: mean "
                             f"{self.obs_mean[dim]:.4g}, std {self.obs_std[dim]:.4g}; at most {limit:g} stds "
                             "are accepted)")

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, so a torch checkpoint holding them loads with `weights_only=True`."""
        return {key: getattr(self, key).tolist() for key in _KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Normaliser:
        """Inverse of `to_dict`."""
        if set(data) != set(_KEYS):
            raise ValueError(f"normaliser dict has keys {sorted(data)}, expected {sorted(_KEYS)}")
        return cls(**{key: np.asarray(value, np.float32) for key, value in data.items()})
