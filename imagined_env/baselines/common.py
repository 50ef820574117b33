"""What both autoregressive baselines share: the delta-state target coding, the real transitions as tensors,
and the loop that turns a one-step model plus a policy into an `Imagination`.

Actions are sampled from the policy at the model's own predicted state, one step at a time: that is
what an autoregressive model does in an RL loop, and what PolyGRAD replaces with one guided chain.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.guidance import GaussianPolicyFn, standardised_spread
from imagined_env.diffusion.sampler import ActionBounds
from imagined_env.world_model import EnvSpec, Imagination

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(obs [N, obs], actions [N, act] in policy units, unclipped) -> (next_obs [N, obs], rewards [N],
terminations [N] bool); the step clips the actions itself."""


@dataclass(frozen=True)
class TransitionTensors:
    """Every real transition on one device: obs [N, obs], actions [N, act] clipped to the env's
    bounds (what the simulator executed), rewards [N], terminals [N] (0/1), next_obs [N, obs]."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminals: torch.Tensor
    next_obs: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def take(self, index: torch.Tensor) -> TransitionTensors:
        """The transitions at integer `index` [B] (a batch)."""
        return TransitionTensors(*(getattr(self, f.name)[index] for f in fields(self)))


def action_bounds(spec: EnvSpec, device: torch.device) -> ActionBounds:
    return ActionBounds(torch.tensor(spec.action_low, dtype=torch.float32, device=device),
                        torch.tensor(spec.action_high, dtype=torch.float32, device=device))


def transition_tensors(buffer: EpisodeBuffer, bounds: ActionBounds, device: torch.device
                       ) -> TransitionTensors:
    if buffer.n_transitions == 0:
        raise ValueError("cannot fit a model on an empty episode buffer: collect real data first")
    data = buffer.transitions()
    as_t = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device)
    return TransitionTensors(obs=as_t(data.obs), actions=bounds.clip(as_t(data.actions)),
                             rewards=as_t(data.rewards), terminals=as_t(data.terminals),
                             next_obs=as_t(data.next_obs))


@dataclass(frozen=True, eq=False)
class DeltaCodec:
    """Normalised one-step targets [delta-state, r, d] and back.

    The delta s_{t+1} - s_t is z-scored with its own statistics (deltas are far smaller than states,
    so this keeps every output dimension equally weighted in a loss); reward and terminal use the world
    model's normaliser, so all models predict them in the same units.
    """

    normaliser: Normaliser
    delta_mean: torch.Tensor
    delta_std: torch.Tensor

    @classmethod
    def fit(cls, data: TransitionTensors, normaliser: Normaliser, min_std: float = 1e-2) -> DeltaCodec:
        delta = (data.next_obs - data.obs).double()
        return cls(normaliser, delta.mean(0).float(), delta.std(0, correction=0).clamp(min=min_std).float())

    def encode(self, obs: torch.Tensor, next_obs: torch.Tensor, rewards: torch.Tensor,
               terminals: torch.Tensor) -> torch.Tensor:
        """obs, next_obs [N, obs], rewards, terminals [N] -> targets [N, obs+2]."""
        rows = self.normaliser.normalise_rows(next_obs, rewards, terminals)
        return torch.cat([(next_obs - obs - self.delta_mean) / self.delta_std, rows[..., -2:]], dim=-1)

    def decode(self, obs: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs [N, obs], targets [N, obs+2] -> next_obs [N, obs], rewards [N], terminal values [N]."""
        _, rewards, terminals = self.normaliser.unnormalise_rows(x)
        return obs + x[..., :-2] * self.delta_std + self.delta_mean, rewards, terminals


def checked_start(start_obs: torch.Tensor | np.ndarray, obs_dim: int, device: torch.device) -> torch.Tensor:
    """Start observations as float32 [B, obs] on `device`; ValueError on a wrong shape or non-finite value."""
    s0 = torch.as_tensor(start_obs, dtype=torch.float32, device=device)
    if s0.dim() != 2 or s0.shape[1] != obs_dim or s0.shape[0] < 1:
        raise ValueError(f"start_obs must have shape [B, {obs_dim}] with B >= 1, got {tuple(s0.shape)}")
    if not torch.isfinite(s0).all():
        raise ValueError("start_obs contains NaN or inf")
    return s0


@torch.no_grad()
def autoregressive_rollout(step: StepFn, start_obs: torch.Tensor, policy: GaussianPolicyFn | None,
                           horizon: int, generator: torch.Generator | None = None,
                           fixed_actions: torch.Tensor | None = None) -> Imagination:
    """H steps from start_obs [B, obs]: a_k ~ N(mean_pi(s_k), std_pi(s_k)), then s_{k+1} from `step`.

    `fixed_actions` [B, k, act] (policy units), when given, are a_0..a_{k-1}; the policy draws the rest
    (with k = H it is not needed: a given sequence is replayed open-loop). The spread is measured over
    the policy's actions (NaN without any). Rows after a predicted termination are still stepped (they
    are padding to the consumer).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    n_fixed = 0 if fixed_actions is None else fixed_actions.shape[1]
    if fixed_actions is not None and (fixed_actions.dim() != 3 or fixed_actions.shape[0] != start_obs.shape[0]
                                      or not 1 <= n_fixed <= horizon):
        raise ValueError(f"fixed actions must have shape [{start_obs.shape[0]}, k, act] with 1 <= k <= "
                         f"{horizon}, got {tuple(fixed_actions.shape)}")
    if policy is None and n_fixed < horizon:
        raise ValueError(f"a policy must choose the actions of steps {n_fixed}..{horizon - 1}: "
                         "none was given")
    states, actions, rewards, terminations, means, stds = [start_obs], [], [], [], [], []
    for k in range(horizon):
        if k < n_fixed:
            assert fixed_actions is not None  # n_fixed > 0
            action = fixed_actions[:, k]
        else:
            assert policy is not None  # checked above for every step past the fixed ones
            mean, std = policy(states[-1])
            action = mean + std * torch.randn(mean.shape, device=mean.device, generator=generator)
            means.append(mean)
            stds.append(std)
        next_obs, reward, terminal = step(states[-1], action)
        states.append(next_obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminal)
    spread = (standardised_spread(torch.cat(actions[n_fixed:]), torch.cat(means), torch.cat(stds))
              if means else float("nan"))
    return Imagination(
        observations=torch.stack(states, 1), actions=torch.stack(actions, 1),
        rewards=torch.stack(rewards, 1), terminations=torch.stack(terminations, 1), spread=spread,
    )


class UnguidedModel:
    """What the imagination loop reads of a world model's guidance, for a model whose actions are the
    policy's own draws (a one-step model, the simulator): there is no scale to report or tune."""

    @property
    def guidance_scale(self) -> float:
        """No guidance: NaN."""
        return float("nan")

    def adapt_guidance(self, imagination: Imagination) -> None:
        """Nothing to tune."""


@dataclass(frozen=True)
class StepwiseImaginer:
    """A one-step model behind `WorldModel.imagine`'s interface at a fixed horizon, so that measures written
    for the world model (e.g. `evaluation.action_ranking`) take the baselines as they are."""

    step: Callable[[torch.Tensor, torch.Tensor, torch.Generator | None],
                   tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    """(obs [N, obs], actions [N, act], generator) -> (next_obs, rewards, terminations), as `StepFn`."""
    spec: EnvSpec
    horizon: int
    device: torch.device

    def imagine(self, start_obs: torch.Tensor | np.ndarray, policy: GaussianPolicyFn | None = None, *,
                generator: torch.Generator | None = None, actions: torch.Tensor | np.ndarray | None = None,
                n_sample_steps: int | None = None) -> Imagination:
        """B trajectories of `horizon` steps; `actions` [B, k, act] fixes a_0..a_{k-1}, as in
        `WorldModel.imagine`. A one-step model's chain length is part of its step: `n_sample_steps` must
        be None."""
        if n_sample_steps is not None:
            raise ValueError(f"n_sample_steps={n_sample_steps}: a one-step model's chain length is set in "
                             "its config, not per call")
        s0 = checked_start(start_obs, self.spec.obs_dim, self.device)
        fixed = None if actions is None else torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        return autoregressive_rollout(lambda s, a: self.step(s, a, generator), s0, policy, self.horizon,
                                      generator, fixed)
