"""Real-environment episodes, the H+1-row training windows drawn from them, and real start states.

All episodes live in flat, append-only arrays (observations row-aligned with qpos/qvel, transitions
row-aligned with actions/rewards) so sampling is index arithmetic over a few numpy gathers.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

import numpy as np

from imagined_env.utils import atomic_path

FORMAT_VERSION = 1
"""Version of the `.npz` layout written by `EpisodeBuffer.save`; bump on any incompatible change."""


@dataclass(frozen=True)
class Episode:
    """One stored episode; arrays are read-only.

    observations [L+1, obs] float32, actions [L, act] float32 (as sampled by the policy, possibly out
    of bounds), rewards [L] float32, qpos [L+1, nq] / qvel [L+1, nv] float64 (the simulator state of
    every observation). `terminated` is a true MDP termination at the last step; a time-limit or
    budget cut is False.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    qpos: np.ndarray
    qvel: np.ndarray

    @property
    def length(self) -> int:
        """Number of transitions L."""
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class Windows:
    """A batch of world-model training windows of H+1 rows (rows 0..H: H transitions + final state).

    states [B, H+1, obs] (s_0..s_H), actions [B, H+1, act] (a_0..a_H), rewards [B, H+1] (r_t of
    (s_t, a_t)), terminals [B, H+1] (1.0 on the transition that truly terminated and on every padded
    row after it), valid [B, H+1] bool (False on padded rows past an episode's end).
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    valid: np.ndarray


class Transitions(NamedTuple):
    """All real transitions, flat.

    obs [N, obs], actions [N, act] (as sampled), rewards [N], terminals [N], next_obs [N, obs].
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    next_obs: np.ndarray


class _Rows:
    """Append-only rows with amortised O(1) appends (capacity doubles).

    Views handed out stay valid after a reallocation: old storage is never written again.
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: type) -> None:
        self._data: np.ndarray = np.empty((0, *row_shape), dtype=dtype)
        self._size = 0

    def append(self, rows: np.ndarray) -> None:
        need = self._size + len(rows)
        if need > len(self._data):
            grown = np.empty((max(need, 2 * len(self._data), 1024), *self._data.shape[1:]), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : need] = rows
        self._size = need

    @property
    def view(self) -> np.ndarray:
        view = self._data[: self._size]
        view.flags.writeable = False
        return view


class _EpisodeView(Sequence[Episode]):
    """Lazy read-only sequence of `Episode`s backed by the buffer's flat arrays (no copies)."""

    def __init__(self, buffer: EpisodeBuffer) -> None:
        self._buffer = buffer

    def __len__(self) -> int:
        return len(self._buffer)

    @overload
    def __getitem__(self, index: int) -> Episode: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Episode, ...]: ...

    def __getitem__(self, index: int | slice) -> Episode | tuple[Episode, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        return self._buffer._episode(range(len(self))[index])


def _as_float_array(name: str, value: object, dtype: type, ndim: int) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):  # overflow becomes inf and is reported below
            array: np.ndarray = np.array(value, dtype=dtype)  # copies: the caller may reuse its arrays
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} is not convertible to {np.dtype(dtype).name}: {err}") from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    bad = ~np.isfinite(array)
    bad_rows = np.flatnonzero(bad.any(axis=1) if ndim == 2 else bad)
    if len(bad_rows):
        raise ValueError(
            f"{name} has a non-finite value (NaN or inf, after conversion to {np.dtype(dtype).name}) "
            f"in row {bad_rows[0]}"
        )
    return array


def _draw(counts: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw n (item, local index) pairs uniformly over all sum(counts) slots; item i has counts[i]."""
    ends = np.cumsum(counts)
    flat = rng.integers(ends[-1], size=n)
    item = np.searchsorted(ends, flat, side="right")
    return item, flat - (ends[item] - counts[item])


class EpisodeBuffer:
    """Growing store of real episodes with simulator states; never forgets.

    `obs_dim`, `act_dim`, `nq`, `nv` fix the row widths; `env_id` is carried through save/load so a
    file can be checked against the environment it came from.
    """

    def __init__(self, obs_dim: int, act_dim: int, nq: int, nv: int, env_id: str | None = None) -> None:
        if obs_dim < 1 or act_dim < 1 or nq < 0 or nv < 0:
            raise ValueError(
                f"need obs_dim >= 1, act_dim >= 1, nq >= 0, nv >= 0; got {obs_dim}, {act_dim}, {nq}, {nv}"
            )
        self.obs_dim, self.act_dim, self.nq, self.nv, self.env_id = obs_dim, act_dim, nq, nv, env_id
        self._obs = _Rows((obs_dim,), np.float32)
        self._qpos = _Rows((nq,), np.float64)
        self._qvel = _Rows((nv,), np.float64)
        self._actions = _Rows((act_dim,), np.float32)
        self._rewards = _Rows((), np.float32)
        self._lengths = _Rows((), np.int64)
        self._terminated = _Rows((), np.bool_)

    def __len__(self) -> int:
        return len(self._lengths.view)

    @property
    def n_transitions(self) -> int:
        return len(self._actions.view)

    @property
    def episodes(self) -> Sequence[Episode]:
        return _EpisodeView(self)

    def add_episode(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
        qpos: np.ndarray,
        qvel: np.ndarray,
    ) -> None:
        """Validate and store a copy of one episode of L >= 1 transitions (shapes as in `Episode`).

        Raises ValueError before any state changes, so a rejected episode leaves the buffer intact.
        """
        obs = _as_float_array("observations", observations, np.float32, 2)
        act = _as_float_array("actions", actions, np.float32, 2)
        rew = _as_float_array("rewards", rewards, np.float32, 1)
        pos = _as_float_array("qpos", qpos, np.float64, 2)
        vel = _as_float_array("qvel", qvel, np.float64, 2)
        length = len(act)
        if length < 1:
            raise ValueError("an episode needs at least one transition (actions has 0 rows)")
        expected = {
            "observations": (obs, (length + 1, self.obs_dim)),
            "actions": (act, (length, self.act_dim)),
            "rewards": (rew, (length,)),
            "qpos": (pos, (length + 1, self.nq)),
            "qvel": (vel, (length + 1, self.nv)),
        }
        for name, (array, shape) in expected.items():
            if array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape}, expected {shape} for L={length} actions")
        self._obs.append(obs)
        self._qpos.append(pos)
        self._qvel.append(vel)
        self._actions.append(act)
        self._rewards.append(rew)
        self._lengths.append(np.array([length]))
        self._terminated.append(np.array([bool(terminated)]))

    def empty_like(self) -> EpisodeBuffer:
        """An empty buffer of the same row widths and task."""
        return EpisodeBuffer(self.obs_dim, self.act_dim, self.nq, self.nv, env_id=self.env_id)

    def add(self, episode: Episode) -> None:
        """Store a copy of `episode` (from this or another buffer of the same widths)."""
        self.add_episode(episode.observations, episode.actions, episode.rewards, episode.terminated,
                         episode.qpos, episode.qvel)

    def joined(self, other: EpisodeBuffer) -> EpisodeBuffer:
        """A new buffer holding this buffer's episodes, then `other`'s (both are left unchanged)."""
        out = self.empty_like()
        for buffer in (self, other):
            for episode in buffer.episodes:
                out.add(episode)
        return out

    def _episode(self, index: int) -> Episode:
        lengths = self._lengths.view
        t0 = int(lengths[:index].sum())
        o0, length = t0 + index, int(lengths[index])
        return Episode(
            observations=self._obs.view[o0 : o0 + length + 1],
            actions=self._actions.view[t0 : t0 + length],
            rewards=self._rewards.view[t0 : t0 + length],
            terminated=bool(self._terminated.view[index]),
            qpos=self._qpos.view[o0 : o0 + length + 1],
            qvel=self._qvel.view[o0 : o0 + length + 1],
        )

    def _require_data(self) -> None:
        if len(self) == 0:
            raise ValueError("the episode buffer is empty; add episodes first")

    def observations(self) -> np.ndarray:
        """Every stored observation, read-only [N + n_episodes, obs] (includes final observations)."""
        return self._obs.view

    def transitions(self) -> Transitions:
        """All real transitions as flat arrays (no padding); terminals are 1.0 only on true terminations."""
        lengths, terminated = self._lengths.view, self._terminated.view
        episode_of = np.repeat(np.arange(len(lengths)), lengths)
        obs_index = np.arange(self.n_transitions) + episode_of
        terminals = np.zeros(self.n_transitions, np.float32)
        terminals[(np.cumsum(lengths) - 1)[terminated]] = 1.0
        observations = self._obs.view
        return Transitions(
            obs=observations[obs_index],
            actions=self._actions.view.copy(),
            rewards=self._rewards.view.copy(),
            terminals=terminals,
            next_obs=observations[obs_index + 1],
        )

    def sample_windows(self, batch_size: int, horizon: int, rng: np.random.Generator) -> Windows:
        """Draw `batch_size` windows of rows 0..horizon uniformly over all eligible (episode, start) pairs.

        A non-terminated episode offers starts 0..L-H-1 (H+1 real transitions). A terminated one offers
        every start 0..L-1; rows past its end repeat the terminal observation and the last action with
        r = 0, d = 1 and valid = False, which is how the model learns that termination is absorbing.
        """
        self._require_data()
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        lengths, terminated = self._lengths.view, self._terminated.view
        counts = np.where(terminated, lengths, np.maximum(lengths - horizon, 0))
        if counts.sum() == 0:
            raise ValueError(
                f"horizon {horizon} needs episodes with at least {horizon + 1} transitions or a "
                f"termination; longest stored episode has {lengths.max()}"
            )
        episode, start = _draw(counts, batch_size, rng)
        t0 = np.cumsum(lengths) - lengths
        step = start[:, None] + np.arange(horizon + 1)  # [B, H+1], local step index k
        length = lengths[episode][:, None]
        valid = step < length
        transition = t0[episode][:, None] + np.minimum(step, length - 1)
        observation = (t0 + np.arange(len(lengths)))[episode][:, None] + np.minimum(step, length)
        return Windows(
            states=self._obs.view[observation],
            actions=self._actions.view[transition],
            rewards=np.where(valid, self._rewards.view[transition], np.float32(0.0)),
            terminals=((step >= length - 1) & terminated[episode][:, None]).astype(np.float32),
            valid=valid,
        )

    def start_states(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw n real states uniformly: obs [n, obs], qpos [n, nq], qvel [n, nv].

        Final observations of terminated episodes are excluded: nothing can start from them.
        """
        self._require_data()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        lengths, terminated = self._lengths.view, self._terminated.view
        episode, local = _draw(lengths + 1 - terminated, n, rng)
        row = (np.cumsum(lengths + 1) - (lengths + 1))[episode] + local
        return self._obs.view[row], self._qpos.view[row], self._qvel.view[row]

    def start_observations(self, last: int | None = None) -> np.ndarray:
        """Every observation an episode can start from [n, obs]: all but terminal final observations.

        `last`: only the newest `last` of them, in storage order (an on-policy learner wants the states
        its current policy visits, not those of the random prefill).
        """
        if last is not None and (not isinstance(last, (int, np.integer)) or last < 1):
            raise ValueError(f"last must be None or an integer >= 1, got {last!r}")
        self._require_data()
        final = np.cumsum(self._lengths.view + 1) - 1
        keep = np.ones(len(self._obs.view), bool)
        keep[final[self._terminated.view]] = False
        rows = self._obs.view[keep]
        return rows if last is None else rows[-last:]

    def check_task(self, env_id: str) -> None:
        """ValueError unless the buffer's data are of `env_id` (tasks can share an observation width, so
        shapes alone cannot tell); a buffer without a recorded task passes."""
        if self.env_id is not None and self.env_id != env_id:
            raise ValueError(f"the episode buffer holds data of {self.env_id!r}, not of {env_id!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Write one `.npz` atomically (a crash leaves any previous file intact)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                format_version=np.int64(FORMAT_VERSION),
                env_id=np.str_(self.env_id or ""),
                dims=np.array([self.obs_dim, self.act_dim, self.nq, self.nv], np.int64),
                observations=self._obs.view,
                actions=self._actions.view,
                rewards=self._rewards.view,
                lengths=self._lengths.view,
                terminated=self._terminated.view,
                qpos=self._qpos.view,
                qvel=self._qvel.view,
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> EpisodeBuffer:
        """Read a file written by `save`; any unreadable or inconsistent file is a ValueError naming it."""
        name = f"episode buffer file {os.fspath(path)!r}"
        if not os.path.isfile(path):
            raise ValueError(f"{name} does not exist or is not a file")
        try:
            with open(path, "rb") as handle:
                npz = np.load(handle, allow_pickle=False)
                if not isinstance(npz, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")  # noqa: TRY004
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{name} is truncated or corrupt: {err}") from None
        try:
            return cls._from_arrays(arrays)
        except KeyError as err:
            raise ValueError(f"{name} lacks the array {err}; not written by EpisodeBuffer.save?") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name} is not loadable: {err}") from None

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> EpisodeBuffer:
        version = int(arrays["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"format version {version} is newer than this code reads ({FORMAT_VERSION})")
        if version < 1:
            raise ValueError(f"unknown format version {version}")
        obs_dim, act_dim, nq, nv = (int(d) for d in arrays["dims"])
        buffer = cls(obs_dim, act_dim, nq, nv, env_id=str(arrays["env_id"]) or None)
        lengths, terminated = arrays["lengths"], arrays["terminated"]
        n_transitions = int(lengths.sum())
        if lengths.ndim != 1 or terminated.shape != lengths.shape or (lengths < 1).any():
            raise ValueError("inconsistent arrays: lengths/terminated do not describe episodes")
        for name in ("actions", "rewards"):
            if len(arrays[name]) != n_transitions:
                raise ValueError(
                    f"inconsistent arrays: {name} has {len(arrays[name])} rows, "
                    f"lengths sum to {n_transitions}"
                )
        for name in ("observations", "qpos", "qvel"):
            if len(arrays[name]) != n_transitions + len(lengths):
                raise ValueError(
                    f"inconsistent arrays: {name} has {len(arrays[name])} rows, "
                    f"expected {n_transitions + len(lengths)}"
                )
        t_cuts, o_cuts = np.cumsum(lengths)[:-1], np.cumsum(lengths + 1)[:-1]
        for ep in zip(
            np.split(arrays["observations"], o_cuts),
            np.split(arrays["actions"], t_cuts),
            np.split(arrays["rewards"], t_cuts),
            terminated,
            np.split(arrays["qpos"], o_cuts),
            np.split(arrays["qvel"], o_cuts),
        ):
            buffer.add_episode(*ep)
        return buffer
