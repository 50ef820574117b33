"""Policy-guided trajectory sampling: B whole trajectories from one chain of network passes.

States are denoised given the current actions; actions follow the policy's score plus fresh noise.
Inside the chain the actions live in normalised units, where the chain's noise is drawn; once per step
they go to policy units (environment units, unclipped), where the policy scores them and the
simulator's bounds clip what the denoiser sees.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import (
    is_causal,
    member_predictions,
    members,
    rows_of_tokens,
    token_stepper,
    transition_tokens,
)
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


@dataclass(frozen=True)
class ActionInput:
    """How the denoiser sees the normalised, clipped actions, the same in training and sampling."""

    scale_actions: bool = True
    """Scale them by the signal level sqrt(alpha_bar_t), else show them at full strength."""
    last_action: bool = True
    """Show the last row's action, else the mean action (zero once normalised)."""

    def __call__(self, actions: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """actions [B, L, act] (normalised, clipped), signal sqrt(alpha_bar_t) [B] -> denoiser input."""
        if self.scale_actions:
            actions = signal[:, None, None] * actions
        if not self.last_action:
            actions = torch.cat([actions[:, :-1], torch.zeros_like(actions[:, -1:])], dim=1)
        return actions


class GuidedSampler:
    """Samples trajectories from a trained denoiser, guided by a policy; holds no state between calls."""

    def __init__(self, denoiser: nn.Module, schedule: DiffusionSchedule, normaliser: Normaliser,
                 bounds: ActionBounds, action_input: ActionInput, guidance: GuidanceConfig,
                 config: SamplerConfig):
        self.denoiser, self.schedule, self.normaliser, self.bounds = denoiser, schedule, normaliser, bounds
        self.action_input, self.guidance, self.config = action_input, guidance, config
        self.chain = schedule.reverse_chain(config.n_sample_steps)

    @torch.no_grad()
    def sample(self, start_states: torch.Tensor, n_rows: int, *, policy: GaussianPolicyFn | None = None,
               scale: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
               fixed_actions: torch.Tensor | None = None) -> GuidedSample:
        """B trajectories of `n_rows` rows from start states [B, obs] (environment units).

        `scale`: the guidance scale lambda, one for all rows or one per row [L] (None: the guidance
        config's initial scale).
        `fixed_actions` [B, k, act] (policy units, k <= n_rows), when given, fixes a_0..a_{k-1} at every
        step: the trajectory is then conditioned on actions the agent actually took (k = 1), or on a
        whole given sequence (the model as an open-loop simulator).
        Without a policy the actions are one draw of N(0, I) in normalised units (data-like), unguided.
        """
        norm, device = self.normaliser, start_states.device
        batch, obs_dim = start_states.shape
        n_fixed = 0 if fixed_actions is None else fixed_actions.shape[1]
        if fixed_actions is not None and (fixed_actions.shape[0] != batch or n_fixed > n_rows):
            raise ValueError(f"fixed_actions must have shape [{batch}, k <= {n_rows}, act], "
                             f"got {tuple(fixed_actions.shape)}")
        s0 = norm.normalise_obs(start_states)
        x = torch.randn(batch, n_rows, obs_dim + 2, device=device, generator=generator)
        x[:, 0, :obs_dim] = s0
        a = torch.randn(batch, n_rows, self.bounds.low.numel(), device=device, generator=generator)
        fixed = None if fixed_actions is None else norm.normalise_action(self.bounds.clip(fixed_actions))
        step_scale = self._step_scale(scale, batch, device)
        spread, row_spread = float("nan"), torch.full((n_rows,), float("nan"))
        for t, s in self.chain:
            if fixed is not None:
                a[:, :n_fixed] = fixed
            a_pi = norm.unnormalise_action(a)
            tt = torch.full((batch,), t, device=device, dtype=torch.long)
            seen = norm.normalise_action(self.bounds.clip(a_pi))
            seen = self.action_input(seen, self.schedule.signal_scale(tt))
            x0_hat = self.denoiser(x, seen, tt)
            x0_hat[:, 0, :obs_dim] = s0
            if policy is not None:
                a_pi, pi_mean, pi_std = self._clamped_to_policy(a_pi, x0_hat[..., :obs_dim], policy)
                if s < 0:   # the final actions: measured, not stepped
                    spread = standardised_spread(a_pi, pi_mean, pi_std)
                    row_spread = row_spreads(*(v.view(a.shape) for v in (a_pi, pi_mean, pi_std)))
                    a = norm.normalise_action(a_pi).view(a.shape)
                else:
                    a_pi = guidance_step(a_pi, pi_mean, pi_std, step_scale)
                    noise = torch.randn(a.shape, device=device, generator=generator)
                    noise_std = self.schedule.posterior_std(t, s, a)
                    a = norm.normalise_action(a_pi).view(a.shape) + noise_std * noise
            x = self.schedule.reverse_step(x0_hat, x, t, s, self.config, generator)
            x[:, 0, :obs_dim] = s0
        actions = norm.unnormalise_action(a)
        if fixed_actions is not None:
            actions[:, :n_fixed] = fixed_actions
        return GuidedSample(x0=x, actions=actions, spread=spread, row_spread=row_spread)

    @torch.no_grad()
    def readout(self, start_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """E[x0 | s0, a] in one pass: the denoiser's x0 prediction at the noisiest step t = T-1 with the
        noisy rows at their prior mean (zero), the start state inpainted and the actions [B, L, act] (policy
        units) as conditioning. Normalised rows of every ensemble member [K, B, L, obs+2] (K = 1 for one
        network), a deterministic function of (s0, a)."""
        batch, obs_dim = start_states.shape
        if actions.dim() != 3 or actions.shape[0] != batch:
            raise ValueError(f"actions must have shape [{batch}, L, act], got {tuple(actions.shape)}")
        x, tt, s0 = self._readout_input(start_states, actions.shape[1])
        seen = self.action_input(self.normaliser.normalise_action(self.bounds.clip(actions)),
                                 self.schedule.signal_scale(tt))
        x0_hat = member_predictions(self.denoiser, x, seen, tt)
        x0_hat[:, :, 0, :obs_dim] = s0
        return x0_hat

    def _readout_input(self, start_states: torch.Tensor, n_rows: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The read-out's noisy rows [B, n_rows, obs+2] (zero, the start state inpainted), its step t = T-1
        [B] and the normalised start states [B, obs]."""
        batch, obs_dim = start_states.shape
        s0 = self.normaliser.normalise_obs(start_states)
        x = torch.zeros(batch, n_rows, obs_dim + 2, device=start_states.device)
        x[:, 0, :obs_dim] = s0
        tt = torch.full((batch,), self.schedule.n_steps - 1, device=start_states.device, dtype=torch.long)
        return x, tt, s0

    @torch.no_grad()
    def policy_rollout(self, start_states: torch.Tensor, policy: GaussianPolicyFn, n_rows: int, *,
                       generator: torch.Generator | None = None, fixed_actions: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions [B, n_rows, act] (policy units) drawn row after row: a_k ~ N(mean, std) of the
        policy at row k's state of the mean read-out of a_0..a_{k-1}; `fixed_actions` [B, k, act] gives
        the first k. With a causal denoiser (needed) a later draw cannot move an earlier state, so
        every action is an exact draw of the policy at the state the learner is shown. The last row's
        action stays 0: it only reaches that row's outcomes, which no imagined transition uses. Returns
        the actions and their read-out (as `readout`): causal MLP and recurrent denoisers build it token by
        token (`token_stepper`; a causal MLP's costs about half a pass in all, a recurrent one's one pass),
        other denoisers by one pass per row."""
        if not is_causal(self.denoiser):
            raise ValueError("a policy rollout of the read-out needs a causal denoiser: with another, later "
                             "actions move earlier states and the drawn actions leave the policy")
        batch = start_states.shape[0]
        n_fixed = 0 if fixed_actions is None else fixed_actions.shape[1]
        noise = torch.randn(batch, n_rows - 1, self.bounds.low.numel(), device=start_states.device,
                            generator=generator)
        actions = torch.zeros(batch, n_rows, self.bounds.low.numel(), device=start_states.device)
        if fixed_actions is not None:
            actions[:, :n_fixed] = fixed_actions
        x, tt, s0 = self._readout_input(start_states, n_rows)
        found = [token_stepper(net, tt) for net in members(self.denoiser)]
        steppers = [stepper for stepper in found if stepper is not None]
        if len(steppers) < len(found):
            for k in range(n_fixed, n_rows - 1):
                mean, std = policy(self._readout_state(start_states, actions, k))
                actions[:, k] = mean + std * noise[:, k]
            return actions, self.readout(start_states, actions)
        signal, obs_dim = self.schedule.signal_scale(tt), start_states.shape[1]

        def token(j: int) -> torch.Tensor:   # token j of the actions drawn so far (it carries a_{j-1})
            seen = self.action_input(self.normaliser.normalise_action(self.bounds.clip(actions)), signal)
            return transition_tokens(x, seen)[:, j]

        first = token(0)
        outputs = [[stepper.push(first)] for stepper in steppers]
        for k in range(n_rows):
            if n_fixed <= k < n_rows - 1:
                rows = torch.stack([out[k] for out in outputs]).mean(0)
                mean, std = policy(self._row_state(start_states, rows, k))
                actions[:, k] = mean + std * noise[:, k]
            following = token(k + 1)
            for stepper, out in zip(steppers, outputs):
                out.append(stepper.push(following))
        x0_hat = torch.stack([rows_of_tokens(torch.stack(out, dim=1)) for out in outputs])
        x0_hat[:, :, 0, :obs_dim] = s0
        return actions, x0_hat

    @torch.no_grad()
    def policy_consistent(self, start_states: torch.Tensor, actions: torch.Tensor, policy: GaussianPolicyFn,
                          n_rows: int, n_fixed: int = 0) -> torch.Tensor:
        """`actions` [B, L, act] (policy units) with each a_k, k in n_fixed..n_rows-1, clamped to the
        policy's mean +- `action_clamp_std` std (its own std, unfloored) at row k's state of the mean
        read-out, row after row. The chain guided the actions at its own states; the read-out moves them,
        and an action many std away from the policy at the state the learner is shown gives PPO a
        probability ratio that overflows. With a causal denoiser one sweep in row order settles every row;
        a non-causal one lets later actions move earlier states a little, so a second sweep follows."""
        a = actions.clone()
        for k in [*range(n_fixed, n_rows)] * (1 if is_causal(self.denoiser) else 2):
            mean, std = policy(self._readout_state(start_states, a, k))
            bound = self.guidance.action_clamp_std * std
            a[:, k] = torch.maximum(torch.minimum(a[:, k], mean + bound), mean - bound)
        return a

    def _readout_state(self, start_states: torch.Tensor, actions: torch.Tensor, k: int) -> torch.Tensor:
        """Row k's state [B, obs] (environment units) of the members' mean read-out of `actions`; row 0 is
        the start state itself, read out by no pass."""
        if k == 0:
            return start_states
        return self._row_state(start_states, self.readout(start_states, actions).mean(0)[:, k], k)

    def _row_state(self, start_states: torch.Tensor, row: torch.Tensor, k: int) -> torch.Tensor:
        """Row k's state [B, obs] (environment units) from its read-out row [B, obs+2] (normalised); row 0
        is the start state itself."""
        return start_states if k == 0 else self.normaliser.unnormalise_obs(row[:, :start_states.shape[1]])

    def _step_scale(self, scale: float | torch.Tensor | None, batch: int, device: torch.device
                    ) -> float | torch.Tensor:
        """lambda per guidance step: a strided chain takes fewer steps, so each is scaled up to keep lambda
        meaning the same for any chain length; a per-row lambda [L] becomes [B * L, 1], rows fastest."""
        if scale is None:
            scale = self.guidance.initial_scale
        step_scale = scale * self.schedule.n_steps / len(self.chain)
        if isinstance(step_scale, torch.Tensor):
            step_scale = step_scale.to(device).repeat(batch)[:, None]
        return step_scale

    def _clamped_to_policy(self, a: torch.Tensor, states_norm: torch.Tensor, policy: GaussianPolicyFn
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions a [B, L, act] (policy units) clamped to the policy's mean +- k std at the states of
        their rows, with that mean and std; each [B * L, act]."""
        batch, rows, act_dim = a.shape
        states = self.normaliser.unnormalise_obs(states_norm).reshape(batch * rows, -1)
        mean, std = policy_moments(policy, states, self.guidance.std_floor)
        bound = self.guidance.action_clamp_std * std
        clamped = torch.maximum(torch.minimum(a.reshape(batch * rows, act_dim), mean + bound), mean - bound)
        return clamped, mean, std
