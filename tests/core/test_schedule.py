"""The schedule against independent float64 numpy computations of the same formulas."""
import math

import numpy as np
import pytest
import torch

from imagined_env.diffusion.schedule import DiffusionSchedule, ScheduleConfig, strided_timesteps


def reference_alpha_bar(T: int, tau: float, max_beta: float) -> np.ndarray:
    """Per-step loop in numpy float64, written from the definition."""
    ab = lambda u: math.cos(math.pi * u / 2) ** (2 * tau)  # noqa: E731
    out, prod = [], 1.0
    for i in range(T):
        beta = min(1 - ab((i + 1) / T) / ab(i / T), max_beta) if ab(i / T) > 0 else max_beta
        prod *= 1 - beta
        out.append(prod)
    return np.array(out)


@pytest.mark.parametrize("T,tau", [(128, 1.0), (128, 0.1), (16, 1.0), (7, 2.5)])
def test_alpha_bar_matches_closed_form(T, tau):
    sched = DiffusionSchedule(ScheduleConfig(n_steps=T, tau=tau))
    ref = reference_alpha_bar(T, tau, 0.999)
    np.testing.assert_allclose(sched.alpha_bar_f64.numpy(), ref, rtol=1e-10, atol=1e-14)
    # before the clipped last step the telescoping product is the continuous curve itself
    closed = np.cos(np.pi * np.arange(1, T) / T / 2) ** (2 * tau)
    np.testing.assert_allclose(ref[:-1], closed, rtol=1e-9)
    assert np.all(np.diff(ref) < 0) and ref[-1] > 0


def test_posterior_matches_float64_ddpm():
    T = 32
    sched = DiffusionSchedule(ScheduleConfig(n_steps=T))
    betas = sched.betas_f64.numpy()
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    c1 = betas * np.sqrt(ab_prev) / (1 - ab)
    c2 = (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    var = betas * (1 - ab_prev) / (1 - ab)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(T, 3, 5, generator=g)
    xt = torch.randn(T, 3, 5, generator=g)
    t = torch.arange(T)
    mean, std = sched.posterior(x0, xt, t, t - 1)
    ref_mean = c1[:, None, None] * x0.double().numpy() + c2[:, None, None] * xt.double().numpy()
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std.reshape(T).numpy(), np.sqrt(var), rtol=1e-4, atol=1e-6)
    assert torch.equal(mean[0], x0[0])  # the last reverse step lands on the prediction itself


def test_strided_posterior_is_exact_marginal():
    """Sampling x_s from q(x_s | x_t, x0) with x_t ~ q(x_t | x0) must give the marginal q(x_s | x0)."""
    sched = DiffusionSchedule(ScheduleConfig(n_steps=64))
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = torch.full((n, 1), 0.7)
    t, s = torch.full((n,), 50), torch.full((n,), 20)
    xt = sched.q_sample(x0, t, torch.randn(n, 1, generator=g))
    mean, std = sched.posterior(x0, xt, t, s)
    xs = mean + std * torch.randn(n, 1, generator=g)
    ab_s = sched.alpha_bar_f64[20].item()
    assert abs(xs.mean().item() - math.sqrt(ab_s) * 0.7) < 5e-3
    assert abs(xs.var().item() - (1 - ab_s)) < 5e-3


def test_q_sample_recovers_x0():
    sched = DiffusionSchedule(ScheduleConfig(n_steps=128))
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(128, 4, generator=g), torch.randn(128, 4, generator=g)
    t = torch.arange(128)
    xt = sched.q_sample(x0, t, eps)
    ab = sched.alpha_bar[t][:, None]
    rec = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
    np.testing.assert_allclose(rec[:100].numpy(), x0[:100].numpy(), atol=1e-4)


def test_strided_timesteps():
    assert strided_timesteps(128, None) == list(range(127, -1, -1))
    steps = strided_timesteps(128, 16)
    assert steps[0] == 127 and steps[-1] == 0 and len(steps) == 16
    assert all(a > b for a, b in zip(steps, steps[1:]))
    assert strided_timesteps(10, 1) == [9]
    with pytest.raises(ValueError, match="n_sample_steps"):
        strided_timesteps(10, 0)


@pytest.mark.parametrize("kwargs", [{"n_steps": 0}, {"tau": 0.0}, {"max_beta": 1.0}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        ScheduleConfig(**kwargs)
