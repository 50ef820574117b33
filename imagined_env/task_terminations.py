"""The tasks' own termination rules, as functions of an observation.

Hopper and Walker2d end an episode when the body leaves a healthy range of height and angle, and those
are observation entries (Gymnasium's defaults, v4 and v5 alike). A learned terminal flag misses many of
these ends: a policy that falls then keeps collecting imagined reward. Applied to imagined next
observations, the rule ends imagined episodes where the imagined body leaves the healthy range (a fall
the simulator ends by a velocity above 100 is not seen: observations clip velocities at 10).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

TerminationRule = Callable[[torch.Tensor], torch.Tensor]
"""Observations [..., obs] -> terminated [...] bool."""


def _hopper(obs: torch.Tensor) -> torch.Tensor:
    # obs = (z, angle, joint angles, clipped velocities); healthy: z > 0.7, |angle| < 0.2, and every state
    # entry but x and z within (-100, 100) (velocities are clipped to 10 in the observation)
    z, angle = obs[..., 0], obs[..., 1]
    healthy = (z > 0.7) & (angle > -0.2) & (angle < 0.2) & (obs[..., 1:].abs() < 100).all(-1)
    return ~healthy


def _walker2d(obs: torch.Tensor) -> torch.Tensor:
    # obs = (z, angle, ...); healthy: 0.8 < z < 2.0 and -1 < angle < 1
    z, angle = obs[..., 0], obs[..., 1]
    return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


_RULES: dict[str, tuple[int, TerminationRule]] = {"Hopper": (11, _hopper), "Walker2d": (17, _walker2d)}
"""Task name -> (observation size, rule) for versions v4 and v5 with their default keyword arguments."""


def termination_rule(env_id: str, obs_dim: int) -> TerminationRule | None:
    """The rule of `env_id` (e.g. "Hopper-v4"), or None where the task has none known here (HalfCheetah
    never terminates; other tasks end as their learned flag says). A known task with another observation
    size (made with other keyword arguments) gets None: its entries may not be where the rule reads."""
    name, _, version = env_id.rpartition("-")
    entry = _RULES.get(name) if version in ("v4", "v5") else None
    if entry is None or entry[0] != obs_dim:
        return None
    return entry[1]
