"""Policy-guided trajectory sampling (PolyGRAD, section 4 of shared/polygrad.md).

States are denoised given the current actions; actions follow the policy's score plus fresh noise.
One call produces B whole trajectories with one chain of network passes. The sampler takes the
denoiser, schedule, normaliser and policy as arguments and owns no state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.guidance import (
    GaussianPolicyFn,
    GuidanceConfig,
    guidance_step,
    policy_moments,
    row_spreads,
    standardised_spread,
)
from imagined_env.diffusion.schedule import DiffusionSchedule, SamplerConfig


@dataclass(frozen=True)
class GuidedSample:
    """x0: [B, L, obs+2] normalised rows; actions: [B, L, act] in policy units (unclipped);
    spread: std of standardised actions (nan without a policy); row_spread: the same per row [L]."""

    x0: torch.Tensor
    actions: torch.Tensor
    spread: float
    row_spread: torch.Tensor


@dataclass(frozen=True)
class ActionBounds:
    """Bounds of the action the simulator sees; the denoiser is conditioned on clipped actions."""

    low: torch.Tensor
    high: torch.Tensor

    def clip(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, self.high.to(a.device)), self.low.to(a.device))


def action_input(cond: torch.Tensor, signal: torch.Tensor, *, scale_actions: bool, last_action: bool
                 ) -> torch.Tensor:
    """What the denoiser sees of the normalised, clipped actions [B, L, act] at signal levels
    sqrt(alpha_bar_t) [B]: scaled by them (`scale_actions`) or at full strength; the last row's action
    zeroed (the mean action) unless `last_action`."""
    if scale_actions:
        cond = signal[:, None, None] * cond
    if not last_action:
        cond = torch.cat([cond[:, :-1], torch.zeros_like(cond[:, -1:])], dim=1)
    return cond


@torch.no_grad()
def guided_sample(
    denoiser: nn.Module,
    schedule: DiffusionSchedule,
    normaliser: Normaliser,
    bounds: ActionBounds,
    start_states: torch.Tensor,
    n_rows: int,
    *,
    policy: GaussianPolicyFn | None,
    scale: float | torch.Tensor,
    guidance: GuidanceConfig,
    config: SamplerConfig,
    generator: torch.Generator | None = None,
    fixed_actions: torch.Tensor | None = None,
    scale_actions: bool = True,
    last_action: bool = True,
) -> GuidedSample:
    """Sample B trajectories of `n_rows` rows from start states [B, obs] (environment units).

    `fixed_actions` [B, k, act] (environment units, k <= n_rows), when given, fixes a_0..a_{k-1} at
    every step: the trajectory is then conditioned on actions the agent actually took (k = 1), or on a
    whole given sequence (the model as an open-loop simulator).
    `scale`: the guidance scale lambda, one for all rows or one per row [L].
    Without a policy the actions are one draw of N(0, I) in normalised units (data-like), unguided.
    `scale_actions`, `last_action`: how the denoiser sees the actions (`action_input`), as it was trained.
    """
    device = start_states.device
    batch, obs_dim = start_states.shape
    act_dim = bounds.low.numel()
    x_dim = obs_dim + 2
    s0 = normaliser.normalise_obs(start_states)
    x = torch.randn(batch, n_rows, x_dim, device=device, generator=generator)
    x[:, 0, :obs_dim] = s0
    a = torch.randn(batch, n_rows, act_dim, device=device, generator=generator)
    fixed = None if fixed_actions is None else normaliser.normalise_action(bounds.clip(fixed_actions))
    n_fixed = 0 if fixed is None else fixed.shape[1]
    chain = schedule.reverse_chain(config.n_sample_steps)
    # a strided chain takes fewer guidance steps: scale each so that lambda means the same for any length
    step_scale = scale * schedule.n_steps / len(chain)
    if isinstance(step_scale, torch.Tensor):                # per row: [L] -> [B * L, 1], rows fastest
        step_scale = step_scale.to(device).repeat(batch)[:, None]
    spread, row_spread = float("nan"), torch.full((n_rows,), float("nan"))
    for t, s in chain:
        if fixed is not None:
            a[:, :n_fixed] = fixed
        tt = torch.full((batch,), t, device=device, dtype=torch.long)
        cond = normaliser.normalise_action(bounds.clip(normaliser.unnormalise_action(a)))
        x0_hat = denoiser(x, action_input(cond, schedule.signal_scale(tt), scale_actions=scale_actions,
                                          last_action=last_action), tt)
        x0_hat[:, 0, :obs_dim] = s0
        if policy is not None:
            a_u, pi_mean, pi_std = _clamped_to_policy(a, x0_hat[..., :obs_dim], normaliser, policy, guidance)
            if s < 0:   # the final actions: measured, not stepped
                spread = standardised_spread(a_u, pi_mean, pi_std)
                row_spread = row_spreads(*(v.view(a.shape) for v in (a_u, pi_mean, pi_std)))
                a = normaliser.normalise_action(a_u).view(a.shape)
            else:
                a_u = guidance_step(a_u, pi_mean, pi_std, step_scale)
                noise = torch.randn(a.shape, device=device, generator=generator)
                a = normaliser.normalise_action(a_u).view(a.shape) + schedule.posterior_std(t, s, a) * noise
        x = schedule.reverse_step(x0_hat, x, t, s, config, generator)
        x[:, 0, :obs_dim] = s0
    actions = normaliser.unnormalise_action(a)
    if fixed_actions is not None:
        actions[:, :n_fixed] = fixed_actions
    return GuidedSample(x0=x, actions=actions, spread=spread, row_spread=row_spread)


def _clamped_to_policy(
    a: torch.Tensor,
    states_norm: torch.Tensor,
    normaliser: Normaliser,
    policy: GaussianPolicyFn,
    guidance: GuidanceConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Actions a [B, L, act] (normalised) in policy units, clamped to the policy's mean +- k std at the
    states of their rows, with that mean and std; each [B * L, act]."""
    batch, rows, act_dim = a.shape
    states = normaliser.unnormalise_obs(states_norm).reshape(batch * rows, -1)
    a_u = normaliser.unnormalise_action(a).reshape(batch * rows, act_dim)
    mean, std = policy_moments(policy, states, guidance.std_floor)
    k = guidance.action_clamp_std
    return torch.maximum(torch.minimum(a_u, mean + k * std), mean - k * std), mean, std
