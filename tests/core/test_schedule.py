"""The schedule against independent float64 numpy computations of the same formulas."""
import itertools
import math

import numpy as np
import pytest
import torch

from imagined_env.diffusion.schedule import (
    DiffusionSchedule,
    SamplerConfig,
    ScheduleConfig,
    strided_timesteps,
)


def reference_alpha_bar(T: int, tau: float, max_beta: float) -> np.ndarray:
    """Per-step loop in numpy float64, written from the definition."""
    ab = lambda u: math.cos(math.pi * u / 2) ** (2 * tau)
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
    assert all(a > b for a, b in itertools.pairwise(steps))
    assert strided_timesteps(10, 1) == [9]
    with pytest.raises(ValueError, match="n_sample_steps"):
        strided_timesteps(10, 0)


@pytest.mark.parametrize("kwargs", [{"n_steps": 0}, {"tau": 0.0}, {"max_beta": 1.0}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        ScheduleConfig(**kwargs)


def reference_reverse_step(ab: np.ndarray, x0: np.ndarray, xt: np.ndarray, t: int, s: int
                           ) -> tuple[np.ndarray, float]:
    """Posterior mean and std of q(x_s | x_t, x0), written out in float64 from the DDPM posterior with
    the per-step alpha of the pair (t, s): alpha = ab_t / ab_s, beta = 1 - alpha."""
    ab_t, ab_s = ab[t], (ab[s] if s >= 0 else 1.0)
    alpha = ab_t / ab_s
    beta = 1.0 - alpha
    mean = (math.sqrt(ab_s) * beta * x0 + math.sqrt(alpha) * (1.0 - ab_s) * xt) / (1.0 - ab_t)
    return mean, math.sqrt(beta * (1.0 - ab_s) / (1.0 - ab_t))


@pytest.mark.parametrize("t,s", [(31, 30), (20, 12), (15, 14), (31, 0)])
def test_reverse_step_matches_the_float64_posterior_plus_its_noise(t, s):
    T = 32
    sched = DiffusionSchedule(ScheduleConfig(n_steps=T))
    ab = reference_alpha_bar(T, 1.0, 0.999)
    g = torch.Generator().manual_seed(3)
    x0, xt = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    no_clip = SamplerConfig(late_clip_steps=-1)
    out = sched.reverse_step(x0, xt, t, s, no_clip, torch.Generator().manual_seed(7))
    noise = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(7)).double().numpy()
    mean, std = reference_reverse_step(ab, x0.double().numpy(), xt.double().numpy(), t, s)
    np.testing.assert_allclose(out.numpy(), mean + std * noise, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sched.posterior_std(t, s, x0).item(), std, rtol=1e-5)


def test_last_reverse_step_lands_on_the_prediction_without_noise():
    sched = DiffusionSchedule(ScheduleConfig(n_steps=16))
    g = torch.Generator().manual_seed(4)
    x0, xt = torch.randn(6, 2, 3, generator=g), torch.randn(6, 2, 3, generator=g)
    state = g.get_state()
    out = sched.reverse_step(x0, xt, 0, -1, SamplerConfig(late_clip_steps=-1), g)
    torch.testing.assert_close(out, x0)
    assert torch.equal(g.get_state(), state)                 # no noise was drawn


def test_late_reverse_steps_limit_the_move_of_the_mean():
    T, clip = 32, 0.25
    sched = DiffusionSchedule(ScheduleConfig(n_steps=T))
    ab = reference_alpha_bar(T, 1.0, 0.999)
    g = torch.Generator().manual_seed(5)
    x0, xt = 3.0 * torch.randn(64, 2, 3, generator=g), torch.randn(64, 2, 3, generator=g)
    config = SamplerConfig(late_clip_steps=10, late_clip=clip)
    for t, s in [(10, 9), (0, -1)]:
        mean, std = reference_reverse_step(ab, x0.double().numpy(), xt.double().numpy(), t, s)
        out = sched.reverse_step(x0, xt, t, s, config, torch.Generator().manual_seed(8))
        noise = torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(8)).double().numpy()
        moved = out.double().numpy() - (std * noise if s >= 0 else 0.0) - xt.double().numpy()
        expected = np.clip(mean - xt.double().numpy(), -clip, clip)
        np.testing.assert_allclose(moved, expected, atol=2e-5)
        assert (np.abs(mean - xt.double().numpy()) > clip).mean() > 0.3  # the clip did bind
    # above late_clip_steps the mean moves freely
    mean, std = reference_reverse_step(ab, x0.double().numpy(), xt.double().numpy(), 20, 19)
    out = sched.reverse_step(x0, xt, 20, 19, config, torch.Generator().manual_seed(8))
    noise = torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(8)).double().numpy()
    np.testing.assert_allclose(out.numpy(), mean + std * noise, rtol=1e-4, atol=1e-5)


def test_reverse_chain_pairs_each_step_with_the_next():
    sched = DiffusionSchedule(ScheduleConfig(n_steps=10))
    assert sched.reverse_chain(None) == [(t, t - 1) for t in range(9, -1, -1)]
    chain = sched.reverse_chain(4)
    assert chain[0][0] == 9 and chain[-1] == (0, -1)
    assert all(s == nxt for (_, s), (nxt, _) in itertools.pairwise(chain))
    assert sched.reverse_chain(1) == [(9, -1)]
