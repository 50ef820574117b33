"""The shared fitting loop and EMA helper against hand-computed steps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from imagined_env.fitting import ema_copy, ema_update, fit_steps


class Quadratic(nn.Module):
    """loss = |w - batch|^2 / 2: the gradient is w - batch, so every step can be written by hand."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))
        self.ema_calls = 0
        self.generators: list[torch.Generator | None] = []

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.generators.append(generator)
        return 0.5 * (self.w - batch).pow(2).sum()

    def update_ema(self) -> None:
        self.ema_calls += 1


def test_steps_clip_the_gradient_norm_and_update_the_ema_after_each():
    model = Quadratic()
    targets = iter([torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 0.1])])
    generator = torch.Generator()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = fit_steps(model, optimizer, lambda: next(targets), 2, grad_clip=1.0, generator=generator)
    # step 1: gradient -(3, 4, 0), norm 5, clipped to norm 1 -> w = (0.6, 0.8, 0)
    # step 2: gradient (0.6, 0.8, -0.1), norm sqrt(1.01) > 1: clipped again
    grad = torch.tensor([0.6, 0.8, -0.1])
    expected = torch.tensor([0.6, 0.8, 0.0]) - grad / grad.norm()
    torch.testing.assert_close(model.w.detach(), expected)
    assert losses == pytest.approx([12.5, 0.5 * float(grad.pow(2).sum())])
    assert model.ema_calls == 2 and model.generators == [generator, generator]


def test_a_small_gradient_is_not_clipped_and_losses_are_reported_every_log_every_steps():
    model = Quadratic(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    reports: list[tuple[int, float]] = []
    losses = fit_steps(model, optimizer, lambda: torch.tensor([0.4]), 4, grad_clip=1.0,
                       on_loss=lambda k, v: reports.append((k, v)), log_every=2)
    # w halves its distance to 0.4 each step: 0.2, 0.3, 0.35, 0.375
    assert model.w.item() == pytest.approx(0.375)
    assert losses == pytest.approx([0.08, 0.02, 0.005, 0.00125])
    assert reports == [(2, pytest.approx(0.05)), (4, pytest.approx(0.003125))]


def test_a_negative_step_count_is_refused_before_any_step():
    model = Quadratic()
    with pytest.raises(ValueError, match="n_steps must be >= 0, got -1"):
        fit_steps(model, torch.optim.SGD(model.parameters(), lr=1.0), lambda: torch.zeros(3), -1,
                  grad_clip=1.0)
    assert model.ema_calls == 0 and not model.generators


def test_ema_copy_is_frozen_and_ema_update_interpolates():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    ema = ema_copy(net)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    before = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema_update(ema, net, decay=0.9)
    for e, old, p in zip(ema.parameters(), before, net.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * old + 0.1 * p.detach())
