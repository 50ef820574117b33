"""Guidance from SB3 policies: the Gaussian an SB3 ActorCriticPolicy samples from, evaluated on the
observations as the policy sees them (through VecNormalize's running statistics when present); and its
critic in environment units, for measuring the advantages a model gives the learner."""
from __future__ import annotations

from typing import cast

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.evaluation import ValueFn


def sb3_guide(policy: ActorCriticPolicy, vec_normalize: VecNormalize | None = None) -> GaussianPolicyFn:
    """A `GaussianPolicyFn` of `policy`: states [N, obs] (env units) -> (mean, std) [N, act].

    Goes through SB3's own distribution objects, so gSDE (state-dependent std) works too. The
    VecNormalize statistics are read at call time, so guidance follows them as they update.
    """
    if policy.squash_output:
        raise ValueError("guidance needs an unsquashed Gaussian policy (PPO/A2C MlpPolicy); got "
                         "squash_output=True")

    def moments(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a Normal: unsquashed Gaussian policies (diagonal or gSDE) keep one, never a list of them
        dist = cast(torch.distributions.Normal,
                    policy.get_distribution(_as_seen(states, policy, vec_normalize)).distribution)
        return dist.mean.to(states.device), dist.stddev.to(states.device)

    return moments


def sb3_value(policy: ActorCriticPolicy, vec_normalize: VecNormalize | None = None,
              reward_scale: float | None = None) -> ValueFn:
    """The critic of `policy` in environment units: observations [N, obs] -> values [N] in reward units.

    `reward_scale`: what the learner's rewards were divided by; None reads it from `vec_normalize` at each
    call (its return std while it normalises rewards, else 1). Give it for a frozen evaluation wrapper,
    whose rewards are raw although the critic learnt normalised ones."""

    def value(observations: np.ndarray) -> np.ndarray:
        obs = _as_seen(torch.as_tensor(observations, dtype=torch.float32), policy, vec_normalize)
        with torch.no_grad():
            values = policy.predict_values(obs).flatten().cpu().numpy()
        scale = reward_scale
        if scale is None:
            scale = 1.0
            if vec_normalize is not None and vec_normalize.norm_reward:
                scale = float(np.sqrt(vec_normalize.ret_rms.var + vec_normalize.epsilon))
        return values * scale

    return value


def _as_seen(states: torch.Tensor, policy: ActorCriticPolicy, vec_normalize: VecNormalize | None
             ) -> torch.Tensor:
    """States [N, obs] (env units) as the policy sees them, on its device."""
    obs = states.to(policy.device, torch.float32)
    if vec_normalize is not None and vec_normalize.norm_obs:
        rms = cast(RunningMeanStd, vec_normalize.obs_rms)  # array observations: one, not SB3's dict
        mean = torch.as_tensor(rms.mean, dtype=torch.float32, device=obs.device)
        var = torch.as_tensor(rms.var, dtype=torch.float32, device=obs.device)
        clip = vec_normalize.clip_obs
        obs = ((obs - mean) / torch.sqrt(var + vec_normalize.epsilon)).clamp(-clip, clip)
    return obs
