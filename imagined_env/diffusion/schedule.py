"""Noise schedule of the trajectory diffusion and its one reverse step: pure tensor math, no weights, no I/O.

The schedule is the cosine-power family alpha_bar(u) = cos(pi u / 2) ** (2 tau), with betas clipped at
`max_beta` so the last step stays invertible. Tables are computed in float64 once and cast, so float32
rounding does not accumulate in the cumulative product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScheduleConfig:
    """Settings of the noise schedule."""

    n_steps: int = 128
    """T, the number of diffusion steps of the full chain."""
    tau: float = 1.0
    """Power of the cosine (1 is the usual cosine schedule). Smaller tau keeps more signal late."""
    max_beta: float = 0.999
    """Upper clip of each beta, so that the final step is not pure noise with alpha = 0."""

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0 < self.max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {self.max_beta}")


@dataclass(frozen=True)
class SamplerConfig:
    """Chain length and the step limits of the reverse process."""

    n_sample_steps: int | None = None
    """Network passes per sample: None = the full T-step chain, else an even strided subset."""
    late_clip_steps: int = 10
    """At timesteps <= this (in full-chain units), the update of the posterior mean is limited..."""
    late_clip: float = 0.25
    """...to +- this (normalised units), which stops late-chain blow-ups."""

    def __post_init__(self) -> None:
        steps = self.n_sample_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"n_sample_steps must be None or an integer >= 1, got {steps!r}")
        if not self.late_clip > 0:
            raise ValueError(f"late_clip must be > 0, got {self.late_clip}")


def cosine_power_alpha_bar(u: torch.Tensor, tau: float) -> torch.Tensor:
    """Continuous alpha_bar(u) = cos(pi u / 2) ** (2 tau) for u in [0, 1]."""
    return torch.cos(0.5 * math.pi * u).clamp(min=0.0) ** (2.0 * tau)


def make_betas(config: ScheduleConfig) -> torch.Tensor:
    """float64 betas [T]: beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)."""
    grid = torch.arange(config.n_steps + 1, dtype=torch.float64) / config.n_steps
    ab = cosine_power_alpha_bar(grid, config.tau)
    ratio = torch.where(ab[:-1] > 0, ab[1:] / ab[:-1], torch.zeros_like(ab[1:]))
    return (1.0 - ratio).clamp(max=config.max_beta)


class DiffusionSchedule:
    """Lookup tables of one schedule, on one device, with the q-sample and posterior formulas.

    Timesteps are integers 0..T-1; step t has cumulative signal `alpha_bar[t]`. The posterior is
    written for any pair s < t so that the strided (DDIM-style, eta = 1) sampler and the full DDPM
    chain share one formula; with s = t - 1 it is the usual DDPM posterior.
    """

    def __init__(self, config: ScheduleConfig, device: torch.device | str = "cpu"):
        self.config = config
        betas = make_betas(config)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        self.betas_f64 = betas
        self.alpha_bar_f64 = alpha_bar
        self.alpha_bar = alpha_bar.to(device=device, dtype=torch.float32)
        self.device = torch.device(device)

    @property
    def n_steps(self) -> int:
        return self.config.n_steps

    def _ab(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer steps t; t = -1 means the clean data (alpha_bar = 1)."""
        ab = self.alpha_bar.to(t.device)[t.clamp(min=0)]
        return torch.where(t < 0, torch.ones_like(ab), ab)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise; t has shape [B], x0 [B, ...]."""
        ab = _expand(self._ab(t), x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def signal_scale(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar_t) [B]: the scale applied to the clean actions given to the denoiser."""
        return self._ab(t).sqrt()

    def posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(x_s | x_t, x0) for s < t (s = -1 is the clean end).

        With a = ab_t / ab_s and b = 1 - a:
        mean = sqrt(ab_s) b / (1 - ab_t) x0 + sqrt(a) (1 - ab_s) / (1 - ab_t) x_t,
        var = b (1 - ab_s) / (1 - ab_t).
        """
        c0, ct, std = self._posterior_terms(t, s, x0)
        return c0 * x0 + ct * xt, std

    def posterior_std(self, t: int, s: int, like: torch.Tensor) -> torch.Tensor:
        """The std of `posterior` for one step t -> s, shaped to broadcast against `like`."""
        step = torch.tensor([t], device=like.device)
        return self._posterior_terms(step, torch.full_like(step, s), like)[2]

    def _posterior_terms(self, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coefficients of x0 and x_t in the posterior mean, and the posterior std, shaped like `like`."""
        ab_t = _expand(self._ab(t), like)
        ab_s = _expand(self._ab(s), like)
        a = ab_t / ab_s
        b = 1.0 - a
        denom = 1.0 - ab_t
        var = (b * (1.0 - ab_s) / denom).clamp(min=0.0)
        return ab_s.sqrt() * b / denom, a.sqrt() * (1.0 - ab_s) / denom, var.sqrt()

    def reverse_chain(self, n_sample_steps: int | None) -> list[tuple[int, int]]:
        """The (t, s) pairs a sampler steps through, from T-1 down; s = -1 marks the step to clean data."""
        steps = strided_timesteps(self.n_steps, n_sample_steps)
        return list(zip(steps, steps[1:] + [-1]))

    def reverse_step(self, x0_hat: torch.Tensor, x: torch.Tensor, t: int, s: int, config: SamplerConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """x_s from x_t [B, ...] and the denoiser's prediction x0_hat: the posterior mean, its move limited
        to +- `config.late_clip` at t <= `config.late_clip_steps`, plus posterior-std noise (none at s = -1).
        """
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        mean, std = self.posterior(x0_hat, x, tt, torch.full_like(tt, s))
        if t <= config.late_clip_steps:
            mean = x + (mean - x).clamp(-config.late_clip, config.late_clip)
        if s < 0:
            return mean
        return mean + std * torch.randn(x.shape, device=x.device, generator=generator)


def strided_timesteps(n_steps: int, n_sample_steps: int | None) -> list[int]:
    """Descending timesteps visited by the sampler: all T (full chain) or an even subset of
    `n_sample_steps` <= T of them.

    The subset always contains T-1 (the noisiest step, where sampling starts) and 0.
    """
    if n_sample_steps is not None and not 1 <= n_sample_steps <= n_steps:
        raise ValueError(f"n_sample_steps must lie in [1, {n_steps}] (the chain's length) or be None for the "
                         f"full chain, got {n_sample_steps}")
    if n_sample_steps is None or n_sample_steps == n_steps:
        return list(range(n_steps - 1, -1, -1))
    if n_sample_steps == 1:
        return [n_steps - 1]
    grid = torch.linspace(0, n_steps - 1, n_sample_steps, dtype=torch.float64).round().long()
    return sorted(set(grid.tolist()), reverse=True)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())).to(like.dtype)
