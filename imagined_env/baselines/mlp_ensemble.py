"""MBPO-style probabilistic MLP ensemble (Janner et al. 2019): the standard autoregressive baseline.

Each member is a Gaussian MLP over (normalised s_t, normalised clipped a_t) predicting the normalised
delta-state and reward, plus a termination logit. All members are evaluated as one batched matmul per
layer, so a step of the whole ensemble is one network call. Rollouts step a uniformly drawn elite
per trajectory and step and sample its Gaussian, as MBPO does.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagined_env.baselines.common import (
    DeltaCodec,
    action_bounds,
    autoregressive_rollout,
    checked_start,
    transition_tensors,
)
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.fitting import fit_steps
from imagined_env.training import TrainConfig
from imagined_env.utils import resolve_device
from imagined_env.world_model import EnvSpec, Imagination


@dataclass(frozen=True)
class EnsembleConfig:
    """Architecture and regularisation of the ensemble; defaults are MBPO's MuJoCo model."""

    n_members: int = 7
    n_elites: int = 5
    """Members used in rollouts: those with the lowest held-out MSE after training."""
    width: int = 200
    depth: int = 4
    """Hidden SiLU layers per member."""
    max_logvar_init: float = 0.5
    min_logvar_init: float = -10.0
    logvar_bound_weight: float = 0.01
    """Weight of sum(max_logvar) - sum(min_logvar) in the loss, which keeps the learned bounds tight."""
    weight_decay: float = 5e-5
    """L2 on the layer weights (not on the log-variance bounds)."""
    holdout_fraction: float = 0.1
    """Share of transitions held out of training to rank the members (at most `max_holdout`)."""
    max_holdout: int = 5000
    terminal_threshold: float = 0.5
    """Predicted termination probability above which a step is a termination."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_elites <= self.n_members:
            raise ValueError(f"need 1 <= n_elites <= n_members, got {self.n_elites} and {self.n_members}")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be >= 1, got {self.width}, {self.depth}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if not 0 < self.terminal_threshold < 1:
            raise ValueError(f"terminal_threshold must lie in (0, 1), got {self.terminal_threshold}")


EnsembleBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Per member: inputs [E, B, obs+act], targets [E, B, obs+1] (normalised delta-state, reward),
terminals [E, B]."""

ENSEMBLE_TRAIN = TrainConfig(lr=1e-3, grad_clip=10.0)
"""MBPO's optimiser (Adam 1e-3, batch 256 per member); the loose clip only catches early NLL spikes."""


class EnsembleLinear(nn.Module):
    """E independent linear maps [E, N, in] -> [E, N, out], MBPO's truncated-normal initialisation."""

    def __init__(self, n_members: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, fan_in, fan_out))
        nn.init.trunc_normal_(self.weight, std=1.0 / (2.0 * math.sqrt(fan_in)))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class GaussianEnsembleNet(nn.Module):
    """inputs [E, N, in] -> mean [E, N, D], log-variance [E, N, D], terminal logit [E, N].

    The log-variance is soft-clamped into learned [min_logvar, max_logvar] so that it can neither
    collapse on well-fit data nor explode off-distribution.
    """

    def __init__(self, in_dim: int, out_dim: int, config: EnsembleConfig):
        super().__init__()
        dims = [in_dim] + [config.width] * config.depth
        self.hidden = nn.ModuleList(EnsembleLinear(config.n_members, a, b) for a, b in pairwise(dims))
        self.head = EnsembleLinear(config.n_members, config.width, 2 * out_dim + 1)
        self.max_logvar = nn.Parameter(torch.full((out_dim,), config.max_logvar_init))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), config.min_logvar_init))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for layer in self.hidden:
            x = F.silu(layer(x))
        mean, raw_logvar, logit = self.head(x).split([self.out_dim, self.out_dim, 1], dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, logit.squeeze(-1)


class MLPEnsemble:
    """The trained ensemble: `loss` for fitting, `step` and `rollout` for imagination."""

    def __init__(self, spec: EnvSpec, config: EnsembleConfig, codec: DeltaCodec,
                 device: str | torch.device = "auto"):
        self.spec, self.config, self.codec = spec, config, codec
        self.device = resolve_device(device)
        self.net = GaussianEnsembleNet(spec.obs_dim + spec.act_dim, spec.obs_dim + 1, config).to(self.device)
        self.bounds = action_bounds(spec, self.device)
        self.elites = torch.arange(config.n_elites, device=self.device)

    def inputs(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """obs [N, obs], actions [N, act] (policy units) -> normalised inputs [N, obs+act] of the
        clipped action, the one the simulator would execute."""
        norm = self.codec.normaliser
        return torch.cat([norm.normalise_obs(obs), norm.normalise_action(self.bounds.clip(actions))], dim=-1)

    def loss(self, batch: EnsembleBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian NLL + termination BCE + log-variance bound penalty, averaged over members.
        Deterministic: `generator` is unused."""
        inputs, targets, terminals = batch
        mean, logvar, logit = self.net(inputs)
        nll = ((mean - targets).pow(2) * torch.exp(-logvar) + logvar).mean()
        bce = F.binary_cross_entropy_with_logits(logit, terminals)
        bound = self.config.logvar_bound_weight * (self.net.max_logvar.sum() - self.net.min_logvar.sum())
        return nll + bce + bound

    def update_ema(self) -> None:
        """No EMA: the ensemble generates with its trained weights."""

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.net.parameters()

    @torch.no_grad()
    def select_elites(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Keep the `n_elites` members with the lowest MSE of the mean on held-out inputs [N, obs+act],
        targets [N, obs+1]; returns every member's MSE [E]."""
        mean, _, _ = self.net(inputs.expand(self.config.n_members, -1, -1))
        mse = (mean - targets).pow(2).mean(dim=(1, 2))
        self.elites = mse.argsort()[: self.config.n_elites]
        return mse

    @torch.no_grad()
    def step(self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None,
             deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One transition per row: obs [N, obs], actions [N, act] -> next_obs [N, obs], rewards [N],
        terminations [N] bool. A sample of a random elite (MBPO), or with `deterministic` the elites'
        average mean: a point estimate, which scores lower squared errors than any sampler."""
        n = obs.shape[0]
        mean, logvar, logit = self.net(self.inputs(obs, actions).expand(self.config.n_members, -1, -1))
        if deterministic:
            x, logit = mean[self.elites].mean(0), logit[self.elites].mean(0)
        else:
            pick = torch.randint(len(self.elites), (n,), device=self.device, generator=generator)
            member, rows = self.elites[pick], torch.arange(n, device=self.device)
            mean, std, logit = mean[member, rows], (0.5 * logvar[member, rows]).exp(), logit[member, rows]
            x = mean + std * torch.randn(mean.shape, device=self.device, generator=generator)
        padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=-1)  # decode's terminal value is unused
        next_obs, rewards, _ = self.codec.decode(obs, padded)
        return next_obs, rewards, torch.sigmoid(logit) > self.config.terminal_threshold

    def rollout(self, start_obs: torch.Tensor | np.ndarray, policy: GaussianPolicyFn, horizon: int,
                generator: torch.Generator | None = None, deterministic: bool = False) -> Imagination:
        """B trajectories of `horizon` steps from start_obs [B, obs], actions sampled from `policy` at the
        model's own states (one ensemble call per step); `deterministic` as in `step`."""
        s0 = checked_start(start_obs, self.spec.obs_dim, self.device)
        step = lambda s, a: self.step(s, a, generator, deterministic)
        return autoregressive_rollout(step, s0, policy, horizon, generator)


class EnsembleTrainer:
    """Adam on a growing buffer, MBPO's way: each `train` call draws a fresh split of the buffer's
    transitions, takes its steps on one part (each member its own batch of `train.batch_size`) and ranks the
    members on the other. Keeps the optimiser and its random streams between calls, so an ensemble can be
    refitted as real data arrives (the imagination loop's `agents.ensemble_loop`).

    After the first call the ranking part holds transitions earlier calls trained on (as in MBPO), so it
    ranks members mostly in-sample. Each call also re-reads the whole buffer (about 15 Adam steps' worth at
    100k transitions): cheap for calls of hundreds of steps, dominant for calls of a few."""

    def __init__(self, model: MLPEnsemble, train: TrainConfig = ENSEMBLE_TRAIN, seed: int | None = None):
        self.model, self.config = model, train
        decay: list[nn.Parameter] = [layer.weight for layer in (*model.net.hidden, model.net.head)]
        rest = [p for p in model.net.parameters() if all(p is not d for d in decay)]
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": model.config.weight_decay},
                                        {"params": rest}]
        self.optimizer = torch.optim.Adam(groups, lr=train.lr)
        self.rng = np.random.default_rng(train.seed if seed is None else seed)
        self.steps = 0

    def refit_normaliser(self, buffer: EpisodeBuffer) -> None:
        """New input and target statistics for a grown buffer; call before the training that adapts to
        them."""
        buffer.check_task(self.model.spec.env_id)
        self.model.codec = fitted_codec(buffer, self.model.spec, self.model.device)

    def train(self, buffer: EpisodeBuffer, n_steps: int, *, progress: bool = False) -> list[float]:
        """`n_steps` Adam steps on the buffer's transitions, then the elites; the loss of every step."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        buffer.check_task(self.model.spec.env_id)
        if n_steps == 0:
            return []
        model, config = self.model, self.model.config
        data = transition_tensors(buffer, model.bounds, model.device)
        inputs = model.inputs(data.obs, data.actions)
        targets = model.codec.encode(data.obs, data.next_obs, data.rewards, data.terminals)[:, :-1]
        order = self.rng.permutation(len(data))
        n_holdout = min(int(config.holdout_fraction * len(data)), config.max_holdout)
        held, fit = order[:n_holdout], order[n_holdout:]

        def next_batch() -> EnsembleBatch:
            size = (config.n_members, self.config.batch_size)
            idx = torch.as_tensor(self.rng.choice(fit, size=size), device=model.device)
            return inputs[idx], targets[idx], data.terminals[idx]

        losses = fit_steps(model, self.optimizer, next_batch, n_steps, grad_clip=self.config.grad_clip,
                           progress=progress, desc="mlp ensemble")
        held = held if n_holdout > 0 else fit  # too little data to hold any out: rank on the training data
        model.select_elites(inputs[held], targets[held])
        self.steps += n_steps
        return losses


def fit_mlp_ensemble(buffer: EpisodeBuffer, spec: EnvSpec, n_steps: int,
                     config: EnsembleConfig = EnsembleConfig(), train: TrainConfig = ENSEMBLE_TRAIN, *,
                     device: str | torch.device = "auto", progress: bool = True
                     ) -> tuple[MLPEnsemble, list[float]]:
    """A new ensemble (weights seeded by `train.seed`) fitted on `buffer.transitions()` for `n_steps` Adam
    steps, then ranked on held-out transitions (`EnsembleTrainer`; with 0 steps, untrained and unranked)."""
    device = resolve_device(device)
    torch.manual_seed(train.seed)
    model = new_mlp_ensemble(buffer, spec, config, device)
    return model, EnsembleTrainer(model, train).train(buffer, n_steps, progress=progress)


def new_mlp_ensemble(buffer: EpisodeBuffer, spec: EnvSpec, config: EnsembleConfig = EnsembleConfig(),
                     device: str | torch.device = "auto") -> MLPEnsemble:
    """An untrained ensemble whose input and target statistics are those of `buffer` (torch's global RNG
    draws its weights)."""
    device = resolve_device(device)
    return MLPEnsemble(spec, config, fitted_codec(buffer, spec, device), device)


def fitted_codec(buffer: EpisodeBuffer, spec: EnvSpec, device: torch.device) -> DeltaCodec:
    """Input and target statistics of `buffer`'s transitions."""
    normaliser = Normaliser.fit(buffer, np.array(spec.action_low), np.array(spec.action_high))
    return DeltaCodec.fit(transition_tensors(buffer, action_bounds(spec, device), device), normaliser)
