"""Stepping a real Gymnasium MuJoCo env into an `EpisodeBuffer`, and reading/writing simulator state.

Actions follow SB3's on-policy convention: the policy's sample is stored as is, the simulator gets
`np.clip(sample, low, high)`.
"""
from __future__ import annotations

from typing import Any, Callable, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from imagined_env.data.buffer import EpisodeBuffer

Policy = Callable[[np.ndarray], np.ndarray]
"""obs [obs_dim] -> action [act_dim] as sampled (may lie outside the action bounds)."""


def mujoco_env(env: gym.Env) -> Any:
    """The MuJoCo env under `env`'s wrappers (gymnasium's MujocoEnv: `data`, `set_state`, `_get_obs`)."""
    return env.unwrapped


def action_bounds(env: gym.Env) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of `env`'s Box action space."""
    space = cast(spaces.Box, env.action_space)
    return space.low, space.high


def mujoco_state(env: gym.Env) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the simulator's qpos [nq] and qvel [nv]."""
    data = mujoco_env(env).data
    return data.qpos.copy(), data.qvel.copy()


def set_mujoco_state(env: gym.Env, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """Put the simulator in state (qpos, qvel) and return the observation the env shows there.

    Used to replay generated actions open-loop from a real start state. Wrapper state (e.g. the
    TimeLimit step counter) is left untouched.
    """
    sim = mujoco_env(env)
    sim.set_state(np.asarray(qpos, np.float64), np.asarray(qvel, np.float64))
    return sim._get_obs()


def _env_dims(env: gym.Env) -> tuple[int, int, int, int]:
    obs_space, act_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)):
        raise ValueError(f"need Box observation and action spaces, got {obs_space} and {act_space}")
    if len(obs_space.shape) != 1 or len(act_space.shape) != 1:
        raise ValueError(f"need flat spaces, got shapes {obs_space.shape} and {act_space.shape}")
    qpos, qvel = mujoco_state(env)
    return obs_space.shape[0], act_space.shape[0], len(qpos), len(qvel)


def buffer_for_env(env: gym.Env, env_id: str | None = None) -> EpisodeBuffer:
    """An empty buffer whose dimensions (obs, act, nq, nv) are read from `env`."""
    return EpisodeBuffer(*_env_dims(env), env_id=env_id)


def collect_episodes(
    env: gym.Env,
    buffer: EpisodeBuffer,
    n_steps: int,
    policy: Policy | None = None,
    seed: int | None = None,
) -> dict[str, float]:
    """Step `env` for `n_steps` transitions from a fresh reset, storing every episode in `buffer`.

    `policy=None` samples uniformly from `env.action_space`. `seed` seeds the first reset and the
    action space, so a seeded call is reproducible. The episode cut by the step budget is stored as
    not terminated. Returns counts and mean return/length over episodes the env itself ended (NaN if
    none ended).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    env_dims, buffer_dims = _env_dims(env), (buffer.obs_dim, buffer.act_dim, buffer.nq, buffer.nv)
    if env_dims != buffer_dims:
        raise ValueError(f"env dims (obs, act, nq, nv) {env_dims} do not match the buffer's {buffer_dims}")
    low, high = action_bounds(env)
    if seed is not None:
        env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    episode = _new_episode(env, obs)
    returns, lengths, n_terminated = [], [], 0
    for step in range(n_steps):
        action = env.action_space.sample() if policy is None else np.array(policy(obs), np.float32)
        obs, reward, terminated, truncated, _ = env.step(np.clip(action, low, high))
        _record(episode, env, obs, action, float(reward))
        if terminated or truncated or step == n_steps - 1:
            arrays = {key: np.stack(rows) for key, rows in episode.items()}
            buffer.add_episode(**arrays, terminated=terminated)
        if terminated or truncated:
            returns.append(float(np.sum(episode["rewards"])))
            lengths.append(len(episode["actions"]))
            n_terminated += bool(terminated)
            if step < n_steps - 1:
                obs, _ = env.reset()
                episode = _new_episode(env, obs)
    return {
        "steps": float(n_steps),
        "episodes_ended": float(len(returns)),
        "episodes_terminated": float(n_terminated),
        "mean_return": float(np.mean(returns)) if returns else float("nan"),
        "mean_length": float(np.mean(lengths)) if lengths else float("nan"),
    }


def _new_episode(env: gym.Env, obs: np.ndarray) -> dict[str, list[np.ndarray]]:
    qpos, qvel = mujoco_state(env)
    return {"observations": [obs], "actions": [], "rewards": [], "qpos": [qpos], "qvel": [qvel]}


def _record(
    episode: dict[str, list], env: gym.Env, obs: np.ndarray, action: np.ndarray, reward: float
) -> None:
    qpos, qvel = mujoco_state(env)
    new = {"observations": obs, "actions": action, "rewards": reward, "qpos": qpos, "qvel": qvel}
    for key, value in new.items():
        episode[key].append(value)


class RealCollector:
    """Steps one real env a few steps at a time, for a loop that interleaves acting and learning.

    The in-progress episode survives between `collect` calls; an episode goes to the buffer when the
    env ends it (terminated, or truncated by its time limit: stored as not terminated). `flush` stores
    the in-progress part as not terminated and continues the episode as a new buffer entry, so a
    checkpoint (or a change of behaviour policy) can cut anywhere without losing a transition.
    """

    def __init__(self, env: gym.Env, buffer: EpisodeBuffer, seed: int | None = None) -> None:
        env_dims, buffer_dims = _env_dims(env), (buffer.obs_dim, buffer.act_dim, buffer.nq, buffer.nv)
        if env_dims != buffer_dims:
            raise ValueError(f"env dims (obs, act, nq, nv) {env_dims} do not match the buffer's "
                             f"{buffer_dims}")
        self.env, self.buffer = env, buffer
        self._low, self._high = action_bounds(env)
        if seed is not None:
            env.action_space.seed(seed)
        self._obs, _ = env.reset(seed=seed)
        self._episode = _new_episode(env, self._obs)
        self._return = 0.0
        self.real_steps = 0
        """Transitions taken by this collector."""
        self.episode_returns: list[float] = []
        """Undiscounted return of every episode the env ended, in order."""

    def collect(self, n_steps: int, policy: Policy | None = None) -> list[float]:
        """Take `n_steps` transitions with `policy` (None: uniform random); returns the returns of the
        episodes that ended during this call."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        n_before = len(self.episode_returns)
        for _ in range(n_steps):
            self._step(policy)
        return self.episode_returns[n_before:]

    def flush(self) -> None:
        """Store the in-progress episode (if it has a transition) as not terminated; keep acting from here."""
        if self._episode["actions"]:
            self._store(terminated=False)
            self._episode = _new_episode(self.env, self._obs)

    def _step(self, policy: Policy | None) -> None:
        action = self.env.action_space.sample() if policy is None else np.array(policy(self._obs), np.float32)
        obs, reward, terminated, truncated, _ = self.env.step(np.clip(action, self._low, self._high))
        _record(self._episode, self.env, obs, action, float(reward))
        self.real_steps += 1
        self._return += float(reward)
        self._obs = obs
        if terminated or truncated:
            self._store(bool(terminated))
            self.episode_returns.append(self._return)
            self._return = 0.0
            self._obs, _ = self.env.reset()
            self._episode = _new_episode(self.env, self._obs)

    def _store(self, terminated: bool) -> None:
        arrays = {key: np.stack(rows) for key, rows in self._episode.items()}
        self.buffer.add_episode(**arrays, terminated=terminated)
