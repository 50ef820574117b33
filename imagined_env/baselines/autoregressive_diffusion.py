"""Autoregressive diffusion: the PolyGRAD denoiser family modelling one transition at a time.

p(s_{t+1}, r_t, d_t | s_t, a_t) is a one-row diffusion over x = [normalised delta-state, r, d]
[B, 1, obs+2]. The denoiser's conditioning channels carry (normalised s_t, normalised clipped a_t)
unscaled: unlike PolyGRAD's actions they are exact and never noised, so nothing is gained by fading
them with sqrt(alpha_bar_t). Generating H steps runs H reverse chains (H x T network calls), with
a_t sampled from the policy at the model's own s_t: the cost PolyGRAD's single chain avoids.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagined_env.baselines.common import (
    DeltaCodec,
    TransitionTensors,
    action_bounds,
    autoregressive_rollout,
    checked_start,
    transition_tensors,
)
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import CAUSAL_KINDS, DenoiserConfig, build_denoiser
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.diffusion.schedule import DiffusionSchedule, SamplerConfig, ScheduleConfig
from imagined_env.fitting import ema_copy, ema_update, fit_steps
from imagined_env.training import TrainConfig
from imagined_env.utils import resolve_device
from imagined_env.world_model import EnvSpec, Imagination


@dataclass(frozen=True)
class ARDiffusionConfig:
    """Same parts and defaults as `WorldModelConfig`, minus the horizon and guidance."""

    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Chain length per step (None: the full T steps) and the late-chain step clip."""
    ema_decay: float = 0.99
    """Decay of the EMA copy used for generation."""
    terminal_threshold: float = 0.5
    """A generated terminal channel above this (environment units) is a termination."""

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.denoiser.kind in CAUSAL_KINDS:
            raise ValueError(f"AR diffusion needs a non-causal denoiser (mlp or transformer), got "
                             f"{self.denoiser.kind!r}: its condition (s_t, a_t) enters through the action "
                             "channels, which a causal denoiser hides from the row's states")


POLYGRAD_TRAIN = TrainConfig()
"""The world model's optimiser settings (Adam 3e-4, batch 256, clip 1), so both diffusions train alike."""


class ARDiffusion:
    """Trained with `loss` + `update_ema`; generates with the EMA weights through `step` / `rollout`."""

    def __init__(self, spec: EnvSpec, config: ARDiffusionConfig, codec: DeltaCodec,
                 device: str | torch.device = "auto"):
        self.spec, self.config, self.codec = spec, config, codec
        self.device = resolve_device(device)
        obs_dim, act_dim = spec.obs_dim, spec.act_dim
        self.denoiser = build_denoiser(1, obs_dim + 2, obs_dim + act_dim, config.denoiser).to(self.device)
        self.ema = ema_copy(self.denoiser)
        self.schedule = DiffusionSchedule(config.schedule, self.device)
        self.bounds = action_bounds(spec, self.device)

    def condition(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """obs [N, obs], actions [N, act] (policy units) -> conditioning [N, 1, obs+act] on the clipped
        action, the one the simulator would execute."""
        norm = self.codec.normaliser
        cond = torch.cat([norm.normalise_obs(obs), norm.normalise_action(self.bounds.clip(actions))], dim=-1)
        return cond[:, None]

    def loss(self, batch: TransitionTensors, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0-prediction MSE on a batch of B transitions at uniform t, the loss of the trajectory model."""
        x0 = self.codec.encode(batch.obs, batch.next_obs, batch.rewards, batch.terminals)[:, None]
        t = torch.randint(0, self.schedule.n_steps, (len(batch),), device=self.device, generator=generator)
        xt = self.schedule.q_sample(x0, t, torch.randn(x0.shape, device=self.device, generator=generator))
        return F.mse_loss(self.denoiser(xt, self.condition(batch.obs, batch.actions), t), x0)

    def update_ema(self) -> None:
        ema_update(self.ema, self.denoiser, self.config.ema_decay)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.denoiser.parameters()

    @torch.no_grad()
    def step(self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None,
             n_sample_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reverse chain: obs [N, obs], actions [N, act] -> next_obs [N, obs], rewards [N],
        terminations [N] bool. `n_sample_steps` overrides the configured chain length."""
        sampler = self.config.sampler
        chain = self.schedule.reverse_chain(n_sample_steps if n_sample_steps is not None
                                            else sampler.n_sample_steps)
        cond = self.condition(obs, actions)
        x = torch.randn(obs.shape[0], 1, self.spec.obs_dim + 2, device=self.device, generator=generator)
        for t, s in chain:
            tt = torch.full((obs.shape[0],), t, device=self.device, dtype=torch.long)
            x = self.schedule.reverse_step(self.ema(x, cond, tt), x, t, s, sampler, generator)
        next_obs, rewards, terminals = self.codec.decode(obs, x[:, 0])
        return next_obs, rewards, terminals > self.config.terminal_threshold

    def rollout(self, start_obs: torch.Tensor | np.ndarray, policy: GaussianPolicyFn, horizon: int,
                generator: torch.Generator | None = None, n_sample_steps: int | None = None) -> Imagination:
        """B trajectories of `horizon` steps from start_obs [B, obs]: per step, a ~ policy at the model's
        state, then one reverse chain."""
        s0 = checked_start(start_obs, self.spec.obs_dim, self.device)
        step = lambda s, a: self.step(s, a, generator, n_sample_steps)
        return autoregressive_rollout(step, s0, policy, horizon, generator)


def fit_ar_diffusion(buffer: EpisodeBuffer, spec: EnvSpec, n_steps: int,
                     config: ARDiffusionConfig = ARDiffusionConfig(), train: TrainConfig = POLYGRAD_TRAIN, *,
                     device: str | torch.device = "auto", progress: bool = True
                     ) -> tuple[ARDiffusion, list[float]]:
    """Fit on `buffer.transitions()` for `n_steps` Adam steps of `train.batch_size` transitions, with
    PolyGRAD's optimiser settings and an EMA update after every step."""
    device = resolve_device(device)
    torch.manual_seed(train.seed)
    data = transition_tensors(buffer, action_bounds(spec, device), device)
    normaliser = Normaliser.fit(buffer, np.array(spec.action_low), np.array(spec.action_high))
    model = ARDiffusion(spec, config, DeltaCodec.fit(data, normaliser), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    rng = np.random.default_rng(train.seed)
    generator = torch.Generator(device=device).manual_seed(train.seed)
    model.denoiser.train()
    losses = fit_steps(model, optimizer,
                       lambda: data.take(torch.as_tensor(rng.integers(len(data), size=train.batch_size),
                                                         device=device)),
                       n_steps, grad_clip=train.grad_clip, generator=generator, progress=progress,
                       desc="ar diffusion")
    return model, losses
