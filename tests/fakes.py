"""An analytic fake world model: exact linear dynamics, so every next state can be checked by hand."""
from __future__ import annotations

import numpy as np
import torch

from imagined_env.world_model import EnvSpec, Imagination
from tests.conftest import ACT, OBS, linear_step


class LinearFakeModel:
    """Duck-types WorldModel for the replay core: plans follow s' = A s + B clip(a) exactly.

    Actions are policy samples (mean + std * noise) when a policy is given, else N(0, 0.5).
    An episode terminates when s[0] of the next state exceeds `terminate_above`. Records each call's
    batch size (`calls`) and whether the guidance scale was tuned from it (`adapted`).
    """

    def __init__(self, horizon: int = 4, terminate_above: float = np.inf, env_id: str = "Linear-v0"):
        self.horizon = horizon
        self.spec = EnvSpec(env_id, OBS, ACT, (-1.0,) * ACT, (1.0,) * ACT)
        self.device = torch.device("cpu")
        self.terminate_above = terminate_above
        self.calls: list[int] = []
        self.adapted: list[bool] = []

    def check_start_states(self, observations) -> None:
        """Linear dynamics take any start state."""

    def imagine(self, start_obs, policy=None, *, generator=None, actions=None, n_sample_steps=None
                ) -> Imagination:
        s = np.asarray(start_obs, np.float32)
        b, h = len(s), self.horizon
        self.calls.append(b)
        self.adapted.append(False)
        obs = np.zeros((b, h + 1, OBS), np.float32)
        acts = np.zeros((b, h, ACT), np.float32)
        rews = np.zeros((b, h), np.float32)
        terms = np.zeros((b, h), bool)
        obs[:, 0] = s
        for k in range(h):
            noise = torch.randn(b, ACT, generator=generator).numpy()
            if policy is None:
                a = 0.5 * noise
            else:
                mean, std = policy(torch.as_tensor(obs[:, k]))
                a = mean.detach().numpy() + std.detach().numpy() * noise
            if actions is not None and k < np.shape(actions)[1]:
                a = np.asarray(actions, np.float32)[:, k]
            acts[:, k] = a
            obs[:, k + 1], rews[:, k] = linear_step(obs[:, k], a)
            terms[:, k] = obs[:, k + 1, 0] > self.terminate_above
        # after a termination the rest is padding, like the real model's output
        ended = np.cumsum(terms, axis=1) > 0
        terms = terms | ended
        return Imagination(torch.as_tensor(obs), torch.as_tensor(acts), torch.as_tensor(rews),
                           torch.as_tensor(terms), float("nan"))

    def adapt_guidance(self, imagination: Imagination) -> None:
        self.adapted[-1] = True
