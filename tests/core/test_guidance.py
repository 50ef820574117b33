"""Policy score and scale tuning against hand-written references."""
import math

import numpy as np
import torch
from torch import nn

from imagined_env.diffusion.guidance import (
    GuidanceConfig,
    guidance_step,
    policy_moments,
    row_spreads,
    standardised_spread,
    update_log_scale,
    update_row_offsets,
)


class TinyPolicy(nn.Module):
    """A Gaussian policy with state-dependent mean and std, like SB3's gSDE."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Linear(3, 2)
        self.log_std = nn.Linear(3, 2)

    def forward(self, s):
        return self.mu(s), self.log_std(s).exp()


def test_step_is_scale_times_autograd_score_of_hand_written_density():
    torch.manual_seed(0)
    pi = TinyPolicy()
    s, a = torch.randn(5, 3), torch.randn(5, 2)
    mean, std = policy_moments(pi, s, std_floor=0.0)
    scale = 0.5 * float(std.min()) ** 2                 # pull below 1 everywhere: no cap
    stepped = guidance_step(a, mean, std, scale)
    # reference: autograd of the Gaussian log-density written out by hand, in float64
    a64 = a.double().requires_grad_(True)
    m64, s64 = mean.double(), std.double()
    logp = (-0.5 * ((a64 - m64) / s64) ** 2 - torch.log(s64) - 0.5 * math.log(2 * math.pi)).sum()
    (score,) = torch.autograd.grad(logp, a64)
    torch.testing.assert_close(stepped.double(), a.double() + scale * score, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in pi.parameters())


def test_step_never_passes_the_mean():
    a = torch.tensor([[1.0, -1.0, 0.3]])
    mean, std = torch.zeros(1, 3), torch.tensor([[0.1, 0.1, 1.0]])
    stepped = guidance_step(a, mean, std, scale=0.05)     # pulls 5, 5, 0.05
    torch.testing.assert_close(stepped, torch.tensor([[0.0, 0.0, 0.3 * 0.95]]))


def test_std_floor_bounds_the_moments():
    pi = lambda s: (torch.zeros(len(s), 1), torch.full((len(s), 1), 1e-4))
    _, std = policy_moments(pi, torch.zeros(1, 3), std_floor=0.1)
    torch.testing.assert_close(std, torch.tensor([[0.1]]))


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


def test_row_spreads_match_a_per_row_reference():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(50, 4, 3, generator=g), torch.rand(50, 4, 3, generator=g) + 0.1
    a = mean + std * torch.randn(50, 4, 3, generator=g) * torch.tensor([0.5, 1.0, 1.5, 2.0])[:, None]
    z = ((a - mean) / std).numpy()
    reference = [np.std(z[:, k].ravel(), ddof=1) for k in range(4)]
    np.testing.assert_allclose(row_spreads(a, mean, std).numpy(), reference, rtol=1e-5)


def test_row_offsets_move_each_row_toward_the_target():
    cfg = GuidanceConfig(scale_lr=0.1, per_row=True)
    offsets, rows = torch.zeros(3), torch.tensor([0.6, 1.0, 1.4])
    moved = update_row_offsets(offsets, rows, 1.0, cfg)
    torch.testing.assert_close(moved, torch.tensor([-0.04, 0.0, 0.04]))
    # with the common scale's own step, each row's log lambda_k moves by lr * (spread_k - target)
    total = update_log_scale(0.0, 0.9, cfg) + update_row_offsets(offsets, rows, 0.9, cfg)
    torch.testing.assert_close(total, 0.1 * (rows - 1.0))
    assert torch.equal(update_row_offsets(offsets, rows, 1.0, GuidanceConfig(scale_lr=0.1)), offsets)
    frozen = GuidanceConfig(per_row=True, adapt=False)
    assert torch.equal(update_row_offsets(offsets, rows, 1.0, frozen), offsets)
    assert torch.equal(update_row_offsets(offsets, torch.full((3,), float("nan")), 1.0, cfg), offsets)
