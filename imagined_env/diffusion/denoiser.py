"""Denoisers: networks mapping (noisy trajectory, clean actions, t) to the clean trajectory.

Both predict x0 (not epsilon). They never denoise actions: actions are conditioning channels, shown as
`ActionInput` prescribes (by default scaled by sqrt(alpha_bar_t), to track the states' signal level).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the denoiser."""

    kind: str = "mlp"
    """"mlp": residual MLP over the flattened window; "transformer": one token a step."""
    width: int = 1024
    """Hidden width."""
    depth: int = 6
    """Residual blocks (MLP) or layers (transformer)."""
    time_dim: int = 128
    """Size of the Fourier time embedding."""
    heads: int = 4
    """Attention heads (transformer only)."""

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "transformer"):
            raise ValueError(f"denoiser kind must be 'mlp' or 'transformer', got {self.kind!r}")
        if self.width < 1 or self.depth < 1 or self.time_dim < 2:
            raise ValueError(f"width, depth must be >= 1 and time_dim >= 2, got {self}")
        if self.kind == "transformer" and self.width % self.heads:
            raise ValueError(f"transformer width {self.width} must be divisible by heads {self.heads}")


class TimeEmbedding(nn.Module):
    """Fixed Fourier features of the integer step, then a 2-layer MLP."""

    def __init__(self, time_dim: int, out_dim: int, max_period: float = 10_000.0):
        super().__init__()
        half = time_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.freqs: torch.Tensor
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embeds each distinct step once: a sampling batch shares one t, a training batch of B draws
        has at most T distinct ones, and at small widths this MLP is a quarter of the FLOPs."""
        steps, index = torch.unique(t, return_inverse=True)
        angles = steps.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))[index]


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.linear(torch.relu(self.norm(h)))


class ResidualMLPDenoiser(nn.Module):
    """Residual MLP over the whole flattened window [L * (x_dim + act_dim)]."""

    def __init__(self, n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig):
        super().__init__()
        self.n_rows, self.x_dim = n_rows, x_dim
        self.inp = nn.Linear(n_rows * (x_dim + act_dim), config.width)
        self.time = TimeEmbedding(config.time_dim, config.width)
        self.blocks = nn.Sequential(*[ResidualBlock(config.width) for _ in range(config.depth)])
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.ReLU(),
                                 nn.Linear(config.width, n_rows * x_dim))

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, L, x_dim], actions [B, L, act_dim] (already scaled), t [B] -> x0_hat [B, L, x_dim]."""
        flat = torch.cat([x, actions], dim=-1).flatten(1)
        h = self.blocks(self.inp(flat) + self.time(t))
        return self.out(h).view(-1, self.n_rows, self.x_dim)


class TransformerDenoiser(nn.Module):
    """Small transformer, one token per trajectory step, learned position embedding."""

    def __init__(self, n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig):
        super().__init__()
        self.inp = nn.Linear(x_dim + act_dim, config.width)
        self.pos = nn.Parameter(torch.zeros(1, n_rows, config.width))
        self.time = TimeEmbedding(config.time_dim, config.width)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, 4 * config.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, x_dim))

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, actions], dim=-1)) + self.pos + self.time(t)[:, None]
        return self.out(self.encoder(h))


class DenoiserEnsemble(nn.Module):
    """K denoisers of one architecture, each initialised on its own; called as one, it predicts their mean."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def each(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Every member's x0 prediction, stacked [K, B, L, x_dim]."""
        return torch.stack([member(x, actions, t) for member in self.members])

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.each(x, actions, t).mean(0)


def members(net: nn.Module) -> list[nn.Module]:
    """The networks trained one by one: an ensemble's members, else the network itself."""
    return list(net.members) if isinstance(net, DenoiserEnsemble) else [net]


def member_predictions(net: nn.Module, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor
                       ) -> torch.Tensor:
    """x0 predictions [K, B, L, x_dim] of every member (K = 1 for a single network)."""
    return net.each(x, actions, t) if isinstance(net, DenoiserEnsemble) else net(x, actions, t)[None]


def build_denoiser(n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig, n_members: int = 1
                   ) -> nn.Module:
    """One denoiser, or with `n_members` > 1 an ensemble of them."""
    cls = ResidualMLPDenoiser if config.kind == "mlp" else TransformerDenoiser
    if n_members == 1:
        return cls(n_rows, x_dim, act_dim, config)
    return DenoiserEnsemble([cls(n_rows, x_dim, act_dim, config) for _ in range(n_members)])
