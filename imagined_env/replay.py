"""The batched core of the imagined env: whole guided trajectories (plans) generated in one call
and replayed step by step. No episode bookkeeping here (that is `vector_env`); this layer only
guarantees that every next state it returns belongs to the action that was actually taken.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.world_model import WorldModel

StartSampler = Callable[[int], np.ndarray]
"""n -> n real start observations [n, obs] (drawn with the env's own RNG)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Costs and tolerances of the replay core."""

    n_sample_steps: int | None = None
    """Network passes per generation (None: the world model's configured chain)."""
    spare_margin: float = 1.25
    """Spares per generation = margin x (the last batched generation's early-termination rate) x batch, so
    that envs ending early find a fresh trajectory without a small call of their own."""
    action_atol: float = 1e-5
    """An action counts as the planned one when equal after clipping, up to this tolerance."""


class PlanReplay:
    """Per-env plans [N, H+1 / H] as numpy arrays, a cursor into each, and a pool of spares.

    `valid[i]` is False when env i has no plan for its current observation (after a restart
    without a spare, or after `invalidate`); such plans are generated lazily, all in one call,
    when an action or a planned action is next needed.
    """

    def __init__(self, model: WorldModel, num_envs: int, sample_starts: StartSampler,
                 config: ReplayConfig = ReplayConfig()):
        self.model, self.num_envs, self.sample_starts, self.config = model, num_envs, sample_starts, config
        h, obs_dim, act_dim = model.horizon, model.spec.obs_dim, model.spec.act_dim
        self.obs = np.zeros((num_envs, h + 1, obs_dim), np.float32)
        self.actions = np.zeros((num_envs, h, act_dim), np.float32)
        self.rewards = np.zeros((num_envs, h), np.float32)
        self.terms = np.zeros((num_envs, h), bool)
        self.truncs = np.zeros((num_envs, h), bool)
        self.cursor = np.zeros(num_envs, np.int64)
        self.valid = np.zeros(num_envs, bool)
        self.low = np.asarray(model.spec.action_low, np.float32)
        self.high = np.asarray(model.spec.action_high, np.float32)
        self.policy: GaussianPolicyFn | None = None
        self.generator = torch.Generator(device=model.device)
        self._pool: list[tuple[np.ndarray, ...]] = []
        self._early_rate = 0.0

    # ---- state -------------------------------------------------------------------------
    def current_obs(self) -> np.ndarray:
        """[N, obs] observation of every env at its cursor."""
        return self.obs[np.arange(self.num_envs), self.cursor]

    def seed(self, seed: int) -> None:
        """Seed the generation noise and forget the early-termination rate, so that what follows (how many
        spares are drawn, hence the random starts) depends on the seed alone, not on earlier episodes."""
        self.generator.manual_seed(seed)
        self._early_rate = 0.0

    def set_policy(self, policy: GaussianPolicyFn | None) -> None:
        """Guide future plans by `policy`; existing plans belonged to the old one: drop them."""
        self.policy = policy
        self.invalidate()

    def invalidate(self) -> None:
        """Re-plan every env from its current observation at the next need, and drop spares."""
        self._rebase(np.ones(self.num_envs, bool))
        self.valid[:] = False
        self._pool.clear()

    def restart(self, mask: np.ndarray) -> None:
        """Start new episodes in the masked envs: a spare if one is ready, else a real start state."""
        idx = np.flatnonzero(mask)
        n_spare = min(len(idx), len(self._pool))
        for i in idx[:n_spare]:
            self._assign(np.array([i]), *self._pool.pop())
        rest = idx[n_spare:]
        if len(rest):
            self.obs[rest, 0] = self.sample_starts(len(rest))
            self.cursor[rest] = 0
            self.valid[rest] = False

    # ---- plans -------------------------------------------------------------------------
    def planned_actions(self) -> np.ndarray:
        """[N, act] next planned action of every env (policy units, unclipped)."""
        self.ensure_plans()
        return self.actions[np.arange(self.num_envs), self.cursor].copy()

    def ensure_plans(self) -> None:
        """Generate plans for every env without one, plus spares, in one batched call."""
        idx = np.flatnonzero(~self.valid)
        if len(idx) == 0:
            return
        self._rebase(~self.valid)
        n_spares = math.ceil(self.config.spare_margin * self._early_rate * len(idx))
        starts = self.current_obs()[idx]
        if n_spares:
            starts = np.concatenate([starts, self.sample_starts(n_spares)])
        plans = self._generate(starts, None)
        self._early_rate = float((plans[3] | plans[4]).any(axis=1).mean())
        self._assign(idx, *(p[: len(idx)] for p in plans))
        self._pool.extend(tuple(p[j: j + 1] for p in plans) for j in range(len(idx), len(starts)))

    def advance(self, actions: np.ndarray, active: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Take `actions` [N, act]; returns (next_obs [N, obs], rewards [N], terminated [N], cut [N],
        off_plan [N]); cut: the plan ends there without the task ending (the model is unsure beyond).

        Envs whose action differs from the plan (after clipping) are re-planned from their current
        observation with that action fixed as the first one, so the next state belongs to it. Envs
        outside `active` (default: all) do not move: their current observation, reward 0, not ended.
        """
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, bool)
        self.ensure_plans()
        rows = np.arange(self.num_envs)
        planned = np.clip(self.actions[rows, self.cursor], self.low, self.high)
        taken = np.clip(actions, self.low, self.high)
        off = ~np.all(np.abs(planned - taken) <= self.config.action_atol, axis=1) & active
        if off.any():
            self._rebase(off)
            idx = np.flatnonzero(off)
            self._assign(idx, *self._generate(self.current_obs()[idx], actions[idx]))
        c = self.cursor
        step = active.astype(np.int64)
        next_obs, rew, term = (self.obs[rows, c + step], self.rewards[rows, c] * active,
                               self.terms[rows, c] & active)
        cut = self.truncs[rows, c] & active
        self.cursor = c + step
        self.valid &= self.cursor < self.model.horizon
        return next_obs.copy(), rew.copy(), term.copy(), cut.copy(), off

    def _rebase(self, mask: np.ndarray) -> None:
        """Move the current observation of masked envs to row 0, cursor 0 (plans kept only if valid)."""
        idx = np.flatnonzero(mask & (self.cursor > 0))
        self.obs[idx, 0] = self.obs[idx, self.cursor[idx]]
        self.cursor[idx] = 0
        self.valid[idx] = False

    def _generate(self, starts: np.ndarray, first_action: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Plans (obs, actions, rewards, terminations, truncations) from `starts`. Only batched,
        policy-guided plans tune the guidance scale: an off-plan regeneration of a few envs, its first action
        not the policy's, is no measure of the on-policy spread."""
        fixed = None if first_action is None else first_action[:, None]
        out = self.model.imagine(starts, self.policy, generator=self.generator, actions=fixed,
                                 n_sample_steps=self.config.n_sample_steps)
        if self.policy is not None and fixed is None:
            self.model.adapt_guidance(out)
        terms = out.terminations.cpu().numpy()
        truncs = np.zeros_like(terms) if out.truncations is None else out.truncations.cpu().numpy()
        return (out.observations.cpu().numpy(), out.actions.cpu().numpy(), out.rewards.cpu().numpy(), terms,
                truncs)

    def _assign(self, idx: np.ndarray, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, term: np.ndarray,
                trunc: np.ndarray) -> None:
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, act, rew
        self.terms[idx], self.truncs[idx] = term, trunc
        self.cursor[idx] = 0
        self.valid[idx] = True
