"""Real data collection with an SB3 policy: its action distribution sampled as SB3's rollout does."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from imagined_env.data.collect import Policy


def sb3_sampler(model: Any,
                normalize_obs: Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]] | None = None,
                extra_noise_std: float = 0.0, std_scale: float = 1.0) -> Policy:
    """A `Policy` that samples `model`'s action distribution exactly as SB3's on-policy rollout does.

    Returns the unclipped sample (what SB3's rollout buffer stores). `normalize_obs` maps raw
    observations to what the policy was trained on (e.g. `VecNormalize.normalize_obs`). gSDE noise is
    whatever the policy currently holds. Squashed policies are refused: their env action is a rescaling,
    not a clip, of the sample. `extra_noise_std` > 0 adds independent Gaussian noise of that std (action
    units, torch's global RNG) to each sample: wider real data for a world model, no longer on-policy.
    `std_scale` != 1 returns mode + std_scale x (sample - mode): the policy's noise narrowed (or widened),
    from the same random draws as the policy's own sample.
    """
    policy = model.policy
    if not isinstance(policy, ActorCriticPolicy) or policy.squash_output:
        raise ValueError(f"need an unsquashed SB3 ActorCriticPolicy (PPO/A2C), got {type(policy).__name__}")
    shape = model.action_space.shape

    def sample(obs: np.ndarray) -> np.ndarray:
        seen = obs if normalize_obs is None else normalize_obs(obs)
        obs_tensor, _ = policy.obs_to_tensor(seen)
        with torch.no_grad():
            distribution = policy.get_distribution(obs_tensor)
            action = distribution.get_actions(deterministic=False)
            if std_scale != 1.0:
                mode = distribution.get_actions(deterministic=True)
                action = mode + std_scale * (action - mode)
            if extra_noise_std > 0:
                action = action + extra_noise_std * torch.randn_like(action)
        return action.cpu().numpy().reshape(shape)

    return sample
