"""Policy guidance: steps along the score grad_a log pi(a | s) of a diagonal Gaussian policy, and the online
tuning of the guidance scale. Pure tensor math; any policy enters as a callable.

A policy is a `GaussianPolicyFn`: states [N, obs] (environment units) -> (mean, std), each [N, act]
in the policy's own action units (for SB3: the unclipped Gaussian it samples from). The moments are
read without a graph, so sampling never leaves `.grad` on policy parameters.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

GaussianPolicyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

@dataclass(frozen=True)
class GuidanceConfig:
    """How strongly and how adaptively imagined actions are pulled toward the policy."""

    initial_scale: float = 0.005
    """lambda_0, in unnormalised action units per step of the full chain. A strided chain of S < T steps
    uses lambda * T / S per step, so one lambda fits every chain length."""
    scale_lr: float = 0.05
    """Step of log(lambda) per tuning call toward the target spread; large enough to settle within tens
    of calls, as a CPU run makes only a few hundred."""
    target_std: float = 1.0
    """Target std of standardised actions (a - mean_pi) / std_pi: 1 means on-policy spread."""
    std_floor: float = 0.1
    """Floor of the policy std inside the score, so that the score stays bounded."""
    action_clamp_std: float = 3.0
    """Actions are clamped to mean_pi +- this many std_pi at every step."""
    adapt: bool = True
    """Tune lambda online; False keeps `initial_scale`."""
    per_row: bool = False
    """Also tune one factor per trajectory row, lambda_k = lambda * exp(o_k), each toward the target
    spread: rows differ (the start row's state is known throughout the chain, later rows' are not), so
    one lambda for all leaves some rows under- and others over-dispersed."""

    def __post_init__(self) -> None:
        if not (self.initial_scale > 0 and self.std_floor > 0 and self.action_clamp_std > 0):
            raise ValueError(f"initial_scale, std_floor and action_clamp_std must be > 0, got {self}")


def policy_moments(
    policy: GaussianPolicyFn, states: torch.Tensor, std_floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's mean and floored std at states [N, obs], without a graph to its parameters."""
    with torch.no_grad():
        mean, std = policy(states)
    return mean, std.clamp(min=std_floor)


def guidance_step(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float | torch.Tensor
                  ) -> torch.Tensor:
    """a + scale * grad_a log N(a; mean, std), in closed form, with the pull scale / std^2 capped at 1.

    The uncapped step overshoots the mean once the pull exceeds 1 and grows the spread once it exceeds
    2; the scale tuning answers a larger spread with a larger scale, so a policy std near its floor on
    a strided chain (fewer, larger steps) would run the scale away. Capped, a step at most lands on
    the mean. [N, act] -> [N, act].
    """
    pull = (scale / std.pow(2)).clamp(max=1.0)
    return actions + pull * (mean - actions)


def standardised_spread(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    """Std of (a - mean) / std over all entries: 1.0 when actions are distributed like the policy."""
    return float(((actions - mean) / std).std())


def row_spreads(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`standardised_spread` of each row: [B, L, act] -> [L]."""
    return ((actions - mean) / std).transpose(0, 1).reshape(actions.shape[1], -1).std(dim=1)


def update_log_scale(log_scale: float, spread: float, config: GuidanceConfig) -> float:
    """One step of log(lambda) += lr * (spread - target): too spread means guidance too weak."""
    if not config.adapt or not math.isfinite(spread):
        return log_scale
    return log_scale + config.scale_lr * (spread - config.target_std)


def update_row_offsets(offsets: torch.Tensor, row_spread: torch.Tensor, spread: float,
                       config: GuidanceConfig) -> torch.Tensor:
    """One step of the per-row factors o_k += lr * (spread_k - spread): with `update_log_scale` on the
    common lambda, each row's log lambda_k moves by lr * (spread_k - target)."""
    if not (config.adapt and config.per_row) or not bool(torch.isfinite(row_spread).all()):
        return offsets
    return offsets + config.scale_lr * (row_spread.to(offsets) - spread)
