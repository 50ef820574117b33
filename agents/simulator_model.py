"""MuJoCo behind the world model's interface: imagined trajectories that are the simulator's own, with
the policy's own sampled actions. Serves the oracle run (`agents.oracle`) and the on-policy action
sequences of the run's diagnostics.

Start states reach an imagined env as observations, so the task's observation must determine the
simulator state. HalfCheetah's and Hopper's do, up to the x position, which neither dynamics nor reward
depend on (Hopper clips velocities at +-10 in its observation: a state beyond the clip would be
simulated at the clip). Walker2d's observation has Hopper's layout, but its joint velocities commonly
exceed the clip (most uniform-random states do), so its starts would be simulated with other
velocities than the real states': it is refused.
"""
from __future__ import annotations

from typing import cast

import gymnasium as gym
import numpy as np
import torch

from agents.real_evaluation import make_quietly
from imagined_env.baselines.common import UnguidedModel
from imagined_env.data.collect import mujoco_state, set_mujoco_state
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.training import spec_from_env
from imagined_env.world_model import Imagination

ORACLE_TASKS = ("HalfCheetah", "Hopper")
"""Tasks whose observation determines the simulator state up to the x position (see module docstring)."""


def policy_rollout(env: gym.Env, qpos: np.ndarray, qvel: np.ndarray, horizon: int,
                   policy: GaussianPolicyFn | None, generator: torch.Generator | None = None,
                   fixed: np.ndarray | None = None) -> Imagination:
    """B simulated trajectories of `horizon` steps from states qpos [B, nq], qvel [B, nv].

    Row k's action is fixed[:, k] for k < fixed.shape[1], else a draw mean + std * N(0, 1) of `policy`
    at the simulator's observation before row k (one batched policy call per row, noise from
    `generator`). Actions are returned unclipped (policy units) and clipped for the simulator. After a
    termination the trajectory repeats its last observation with reward 0 and terminations True, as a
    world model's padding. spread: std of the standardised draws (1 in expectation; NaN without any).
    `env`'s state is overwritten."""
    qpos, qvel = np.atleast_2d(qpos).astype(np.float64), np.atleast_2d(qvel).astype(np.float64)
    batch, sim = len(qpos), env.unwrapped
    obs_space, act_space = cast(gym.spaces.Box, env.observation_space), cast(gym.spaces.Box, env.action_space)
    low, high = act_space.low, act_space.high
    n_fixed = 0 if fixed is None else fixed.shape[1]
    if n_fixed < horizon and policy is None:
        raise ValueError(f"rows {n_fixed}..{horizon - 1} have no action: "
                         f"give a policy or all {horizon} actions")
    obs = np.zeros((batch, horizon + 1, obs_space.shape[0]), np.float32)
    actions = np.zeros((batch, horizon, act_space.shape[0]), np.float32)
    rewards, terms = np.zeros((batch, horizon), np.float32), np.zeros((batch, horizon), bool)
    obs[:, 0] = [set_mujoco_state(env, p, v) for p, v in zip(qpos, qvel, strict=True)]
    draws = []
    for k in range(horizon):
        if fixed is not None and k < n_fixed:
            actions[:, k] = fixed[:, k]
        else:
            assert policy is not None  # rows past the fixed ones have one (checked above)
            with torch.no_grad():
                mean, std = policy(torch.as_tensor(obs[:, k]))
            device = mean.device if generator is None else generator.device
            noise = torch.randn(mean.shape, generator=generator, device=device).to(mean.device)
            actions[:, k] = (mean + std * noise).cpu().numpy()
            draws.append(noise)
        for b in np.flatnonzero(~terms[:, k - 1] if k else np.ones(batch, bool)):
            set_mujoco_state(env, qpos[b], qvel[b])
            obs[b, k + 1], rewards[b, k], terms[b, k], _, _ = sim.step(np.clip(actions[b, k], low, high))
            qpos[b], qvel[b] = mujoco_state(env)
        ended = terms[:, k - 1] if k else np.zeros(batch, bool)
        obs[ended, k + 1], terms[ended, k] = obs[ended, k], True
    spread = float(torch.cat(draws).std()) if draws else float("nan")
    return Imagination(torch.as_tensor(obs), torch.as_tensor(actions), torch.as_tensor(rewards),
                       torch.as_tensor(terms), spread=spread)


class SimulatorModel(UnguidedModel):
    """MuJoCo behind the world model's interface (`spec`, `horizon`, `device`, `imagine`,
    `guidance_scale`, `adapt_guidance`), for tasks in `ORACLE_TASKS`. Start observations are turned back
    into simulator states with x = 0."""

    def __init__(self, env_id: str, horizon: int):
        task = env_id.rsplit("-v", 1)[0]
        if task not in ORACLE_TASKS:
            raise ValueError(f"no simulator oracle for {env_id!r}: its observation does not determine the "
                             f"simulator state; oracle tasks: {', '.join(ORACLE_TASKS)}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.env = make_quietly(env_id)
        self.spec = spec_from_env(self.env, env_id)
        self.horizon = horizon
        self.device = torch.device("cpu")
        self.nq = len(mujoco_state(self.env)[0])

    def states(self, start_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """qpos [B, nq] (x = 0) and qvel [B, nv] of observations [B, obs]."""
        obs = np.asarray(start_obs, np.float64)
        return np.concatenate([np.zeros((len(obs), 1)), obs[:, :self.nq - 1]], axis=1), obs[:, self.nq - 1:]

    def imagine(self, start_obs: torch.Tensor | np.ndarray, policy: GaussianPolicyFn | None = None, *,
                generator: torch.Generator | None = None, actions: torch.Tensor | np.ndarray | None = None,
                n_sample_steps: int | None = None) -> Imagination:
        """`WorldModel.imagine` answered by the simulator (`n_sample_steps`: unused)."""
        start = torch.as_tensor(start_obs).detach().cpu().numpy()
        if start.ndim != 2 or start.shape[1] != self.spec.obs_dim or not np.isfinite(start).all():
            raise ValueError(f"start_obs must be finite with shape [B, {self.spec.obs_dim}], "
                             f"got {start.shape}")
        fixed = None if actions is None else torch.as_tensor(actions).detach().cpu().numpy()
        if fixed is not None and (fixed.ndim != 3 or len(fixed) != len(start)
                                  or not 1 <= fixed.shape[1] <= self.horizon
                                  or fixed.shape[2] != self.spec.act_dim):
            raise ValueError(f"actions must have shape [{len(start)}, k <= {self.horizon}, "
                             f"{self.spec.act_dim}], got {fixed.shape}")
        qpos, qvel = self.states(start)
        return policy_rollout(self.env, qpos, qvel, self.horizon, policy, generator, fixed)

    def check_start_states(self, observations: np.ndarray) -> None:
        """The simulator accepts any finite state."""
        bad = np.argwhere(~np.isfinite(np.asarray(observations, np.float64)))
        if len(bad):
            row, dim = (int(i) for i in bad[0])
            raise ValueError(f"start state {row}, dimension {dim} is not finite")

    def close(self) -> None:
        self.env.close()


