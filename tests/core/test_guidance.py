"""Policy score and scale tuning against hand-written references."""
import math

import numpy as np
import torch
from torch import nn

from imagined_env.diffusion.guidance import (
    GuidanceConfig,
    gaussian_log_prob,
    policy_score,
    standardised_spread,
    update_log_scale,
)


class TinyPolicy(nn.Module):
    """A Gaussian policy with state-dependent mean and std, like SB3's gSDE."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Linear(3, 2)
        self.log_std = nn.Linear(3, 2)

    def forward(self, s):
        return self.mu(s), self.log_std(s).exp()


def test_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(0)
    a, m = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
    s = torch.rand(7, 2, generator=g) + 0.1
    ref = torch.distributions.Normal(m, s).log_prob(a).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(a, m, s), ref)


def test_score_matches_autograd_of_hand_written_density_and_leaves_no_grad():
    torch.manual_seed(0)
    pi = TinyPolicy()
    s, a = torch.randn(5, 3), torch.randn(5, 2)
    score = policy_score(pi, s, a, std_floor=0.0)
    # reference: autograd of the Gaussian log-density written out by hand, in float64
    a64 = a.double().requires_grad_(True)
    mean, std = (v.detach().double() for v in pi(s))
    logp = (-0.5 * ((a64 - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum()
    (ref,) = torch.autograd.grad(logp, a64)
    torch.testing.assert_close(score.double(), ref, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in pi.parameters())


def test_std_floor_bounds_the_score():
    pi = lambda s: (torch.zeros(len(s), 1), torch.full((len(s), 1), 1e-4))  # noqa: E731
    score = policy_score(pi, torch.zeros(1, 3), torch.ones(1, 1), std_floor=0.1)
    torch.testing.assert_close(score, torch.tensor([[-1.0 / 0.1 ** 2]]))


def test_spread_and_scale_update_direction():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.zeros(100_000, 2), torch.full((100_000, 2), 0.5)
    a = mean + 2.0 * std * torch.randn(100_000, 2, generator=g)
    assert abs(standardised_spread(a, mean, std) - 2.0) < 0.02
    cfg = GuidanceConfig(scale_lr=0.1)
    assert update_log_scale(0.0, 2.0, cfg) == np.float64(0.1)      # too spread: stronger guidance
    assert update_log_scale(0.0, 0.5, cfg) == -0.05                 # too narrow: weaker
    assert update_log_scale(0.3, 2.0, GuidanceConfig(adapt=False)) == 0.3
    assert update_log_scale(0.3, float("nan"), cfg) == 0.3
