"""Guidance from SB3 policies: the Gaussian an SB3 ActorCriticPolicy samples from, evaluated on the
observations as the policy sees them (through VecNormalize's running statistics when present)."""
from __future__ import annotations

import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecNormalize

from imagined_env.diffusion.guidance import GaussianPolicyFn


def sb3_guide(policy: ActorCriticPolicy, vec_normalize: VecNormalize | None = None) -> GaussianPolicyFn:
    """A `GaussianPolicyFn` of `policy`: states [N, obs] (env units) -> (mean, std) [N, act].

    Goes through SB3's own distribution objects, so gSDE (state-dependent std) works too. The
    VecNormalize statistics are read at call time, so guidance follows them as they update.
    """
    if policy.squash_output:
        raise ValueError("guidance needs an unsquashed Gaussian policy (PPO/A2C MlpPolicy); got "
                         "squash_output=True")

    def moments(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = states.to(policy.device, torch.float32)
        if vec_normalize is not None and vec_normalize.norm_obs:
            rms = vec_normalize.obs_rms
            mean = torch.as_tensor(rms.mean, dtype=torch.float32, device=obs.device)
            var = torch.as_tensor(rms.var, dtype=torch.float32, device=obs.device)
            clip = vec_normalize.clip_obs
            obs = ((obs - mean) / torch.sqrt(var + vec_normalize.epsilon)).clamp(-clip, clip)
        dist = policy.get_distribution(obs).distribution
        return dist.mean.to(states.device), dist.stddev.to(states.device)

    return moments
