"""Denoisers: networks mapping (noisy trajectory, clean actions, t) to the clean trajectory.

All predict x0 (not epsilon). They never denoise actions: actions are conditioning channels, shown as
`ActionInput` prescribes (by default scaled by sqrt(alpha_bar_t), to track the states' signal level).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("mlp", "transformer", "causal-transformer", "causal-mlp", "causal-recurrent")
CAUSAL_KINDS = ("causal-transformer", "causal-mlp", "causal-recurrent")
"""Kinds whose row k reads no later action or noisy row (`is_causal` of the built network)."""

N_OUTCOMES = 2
"""Channels at the end of a row that belong to the row's action: reward and termination."""


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the denoiser."""

    kind: str = "mlp"
    """"mlp", "transformer", or causal (no row sees a later action): "causal-transformer", "causal-mlp",
    "causal-recurrent"."""
    width: int = 1024
    """Hidden width (causal-mlp: per transition)."""
    depth: int = 6
    """Residual blocks (MLP) or layers (transformer)."""
    time_dim: int = 128
    """Size of the Fourier time embedding."""
    heads: int = 4
    """Attention heads (both transformers)."""
    dropout: float = 0.0
    """Dropout on the residual branches in training, not in generation: against memorising small buffers."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"denoiser kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.width < 1 or self.depth < 1 or self.time_dim < 2:
            raise ValueError(f"width, depth must be >= 1 and time_dim >= 2, got {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"denoiser dropout must lie in [0, 1), got {self.dropout}")
        if self.kind.endswith("transformer") and self.width % self.heads:
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
    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.linear(self.drop(torch.relu(self.norm(h))))


class ResidualMLPDenoiser(nn.Module):
    """Residual MLP over the whole flattened window [L * (x_dim + act_dim)]."""

    def __init__(self, n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig):
        super().__init__()
        self.n_rows, self.x_dim = n_rows, x_dim
        self.inp = nn.Linear(n_rows * (x_dim + act_dim), config.width)
        self.time = TimeEmbedding(config.time_dim, config.width)
        self.blocks = nn.Sequential(*[ResidualBlock(config.width, config.dropout)
                                      for _ in range(config.depth)])
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
            config.width, config.heads, 4 * config.width, dropout=config.dropout, batch_first=True,
            norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, x_dim))

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, actions], dim=-1)) + self.pos + self.time(t)[:, None]
        return self.out(self.encoder(h))


class CausalBlock(nn.Module):
    """Pre-norm transformer layer whose attention lets each token see itself and earlier tokens only."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.drop(self.proj(att.transpose(1, 2).reshape(batch, tokens, width)))
        return h + self.drop(self.mlp(self.norm2(h)))


class CausalTransformerDenoiser(nn.Module):
    """A transformer causal in time: the states of row k depend only on the noisy rows <= k and a_0..a_{k-1},
    the reward and termination of row k (the last two channels, outcomes of (s_k, a_k)) also on a_k and the
    noisy s_{k+1}, never on a later action. So no imagined past moves with a later action.

    Token j carries transition j-1: (noisy s_j, noisy r_{j-1}, d_{j-1}, a_{j-1}), zeros where a part lies
    outside the window (L + 1 tokens for L rows); its output is (s_j, r_{j-1}, d_{j-1}). A token that held
    its own row's reward or action would pass a_j into s_j, within a pass or through the chain's next step.
    """

    causal = True
    """No row's output depends on a later action or noisy row (`is_causal`)."""

    def __init__(self, n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig):
        super().__init__()
        _check_outcome_channels(x_dim)
        self.inp = nn.Linear(x_dim + act_dim, config.width)
        self.pos = nn.Parameter(torch.zeros(1, n_rows + 1, config.width))
        self.time = TimeEmbedding(config.time_dim, config.width)
        self.blocks = nn.Sequential(*[CausalBlock(config.width, config.heads, config.dropout)
                                      for _ in range(config.depth)])
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, x_dim))

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, L, x_dim], actions [B, L, act_dim] (already scaled), t [B] -> x0_hat [B, L, x_dim]."""
        h = self.blocks(self.inp(transition_tokens(x, actions)) + self.pos + self.time(t)[:, None])
        return rows_of_tokens(self.out(h))


def _check_outcome_channels(x_dim: int) -> None:
    if x_dim <= N_OUTCOMES:
        raise ValueError(f"rows must hold a state and {N_OUTCOMES} outcome channels, got x_dim={x_dim}")


def transition_tokens(x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """[B, L, x_dim], [B, L, act_dim] -> [B, L + 1, x_dim + act_dim]: token j holds the noisy states of row j,
    the noisy outcomes (last N_OUTCOMES channels) of row j - 1 and a_{j - 1}, zeros outside the window."""
    split = x.shape[-1] - N_OUTCOMES
    return torch.cat([_to_tokens(x[..., :split], later=False), _to_tokens(x[..., split:], later=True),
                      _to_tokens(actions, later=True)], dim=-1)


def rows_of_tokens(y: torch.Tensor) -> torch.Tensor:
    """The inverse layout of `transition_tokens` for predictions: [B, L + 1, x_dim] -> [B, L, x_dim]."""
    split = y.shape[-1] - N_OUTCOMES
    return torch.cat([y[:, :-1, :split], y[:, 1:, split:]], dim=-1)


def _to_tokens(v: torch.Tensor, later: bool) -> torch.Tensor:
    """[B, L, c] -> [B, L + 1, c]: row k goes to token k, or with `later` to token k + 1; zeros elsewhere."""
    return F.pad(v, (0, 0, 1, 0) if later else (0, 0, 0, 1))


class BlockCausalLinear(nn.Linear):
    """A linear map between `blocks` equal blocks of features in which output block j reads input blocks
    <= j only: one dense matmul with a block-lower-triangular mask on the weight."""

    def __init__(self, blocks: int, block_in: int, block_out: int):
        super().__init__(blocks * block_in, blocks * block_out)
        self.block_in, self.block_out = block_in, block_out
        mask = torch.kron(torch.tril(torch.ones(blocks, blocks)), torch.ones(block_out, block_in))
        self.mask: torch.Tensor
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight * self.mask, self.bias)

    def block_row(self, h: torch.Tensor, j: int) -> torch.Tensor:
        """Output block j [B, block_out] from input blocks 0..j [B, (j + 1) * block_in]: what `forward`
        computes there, from the unmasked part of the weight alone."""
        rows = slice(j * self.block_out, (j + 1) * self.block_out)
        return F.linear(h, self.weight[rows, :(j + 1) * self.block_in], self.bias[rows])


class CausalResidualBlock(nn.Module):
    """`ResidualBlock` over token blocks: the norm is per token and the linear map block-causal."""

    def __init__(self, tokens: int, width: int, dropout: float = 0.0):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.linear = BlockCausalLinear(tokens, width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.drop(torch.relu(self.norm(h.view(-1, self.tokens, self.width))))
        return h + self.linear(z.flatten(1))


class CausalMLPDenoiser(nn.Module):
    """The residual MLP made causal in time: the tokens of `CausalTransformerDenoiser` (token j = transition
    j - 1), a hidden block of `width` features per token, every weight masked so that block j reads tokens
    and blocks <= j only. Row k's states thus depend on s0, the noisy rows <= k and a_0..a_{k-1} alone, at
    the cost of a dense MLP (no attention), with weights of their own for every pair of positions."""

    causal = True
    """No row's output depends on a later action or noisy row (`is_causal`)."""

    def __init__(self, n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig):
        super().__init__()
        _check_outcome_channels(x_dim)
        self.tokens, self.width = n_rows + 1, config.width
        self.inp = BlockCausalLinear(self.tokens, x_dim + act_dim, config.width)
        self.time = TimeEmbedding(config.time_dim, config.width)
        self.blocks = nn.Sequential(*[CausalResidualBlock(self.tokens, config.width, config.dropout)
                                      for _ in range(config.depth)])
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.ReLU(), nn.Linear(config.width, x_dim))

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, L, x_dim], actions [B, L, act_dim] (already scaled), t [B] -> x0_hat [B, L, x_dim]."""
        h = self.inp(transition_tokens(x, actions).flatten(1)).view(-1, self.tokens, self.width)
        h = self.blocks((h + self.time(t)[:, None]).flatten(1))
        return rows_of_tokens(self.out(h.view(-1, self.tokens, self.width)))


class CausalRecurrentDenoiser(nn.Module):
    """Causal in time by recurrence: the tokens of `CausalTransformerDenoiser` enter one at a time, and one
    step function, shared by every position, updates a hidden state h_j = h_{j-1} + f(norm(h_{j-1}), token
    j); token j's output is read from h_j. Row k's states thus depend on s0, the noisy rows <= k and
    a_0..a_{k-1} alone. Sharing the step across positions is the structure of a one-step model, which
    keeps improving on held-out states of a small buffer where weights of their own for every pair of
    positions (`CausalMLPDenoiser`) stop. The loop runs over the L + 1 tokens, each step batched."""

    causal = True
    """No row's output depends on a later action or noisy row (`is_causal`)."""

    def __init__(self, n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig):
        super().__init__()
        _check_outcome_channels(x_dim)
        width, self.tokens = config.width, n_rows + 1
        self.inp = nn.Linear(x_dim + act_dim, width)
        self.time = TimeEmbedding(config.time_dim, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        layers: list[nn.Module] = [nn.Linear(2 * width, width), nn.ReLU(), nn.Dropout(config.dropout)]
        for _ in range(config.depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU(), nn.Dropout(config.dropout)]
        self.step = nn.Sequential(*layers, nn.Linear(width, width))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, x_dim))

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, L, x_dim], actions [B, L, act_dim] (already scaled), t [B] -> x0_hat [B, L, x_dim]."""
        tokens = self.inp(transition_tokens(x, actions)) + self.time(t)[:, None]
        h, states = self.start.expand(len(tokens), -1), []
        for j in range(tokens.shape[1]):
            h = self.update(h, tokens[:, j])
            states.append(h)
        return rows_of_tokens(self.out(torch.stack(states, dim=1)))

    def update(self, h: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The hidden state [B, width] after one more embedded token [B, width]."""
        return h + self.step(torch.cat([self.norm(h), embedded], dim=-1))


class TokenStepper:
    """A `CausalMLPDenoiser` fed one token at a time: `push` of token j returns the network's output for it,
    which depends on tokens <= j only; each layer's features of the earlier tokens are kept. A sequential
    read-out (a policy rollout) thus costs one pass of the useful half of every masked matmul, instead of
    one full pass per row. It computes the network in eval mode (no dropout), as generation uses it."""

    def __init__(self, net: CausalMLPDenoiser, t: torch.Tensor):
        self.blocks = cast(list[CausalResidualBlock], list(net.blocks))
        self.net, self.time = net, net.time(t)
        self.tokens: list[torch.Tensor] = []
        self.features: list[list[torch.Tensor]] = [[] for _ in self.blocks]

    def push(self, token: torch.Tensor) -> torch.Tensor:
        """token [B, x_dim + act_dim] (a column of `transition_tokens`) -> its output [B, x_dim]."""
        j, net = len(self.tokens), self.net
        if j == net.tokens:
            raise ValueError(f"the window holds {net.tokens} tokens, all pushed already")
        self.tokens.append(token)
        h = net.inp.block_row(torch.cat(self.tokens, dim=-1), j) + self.time
        for block, kept in zip(self.blocks, self.features):
            kept.append(torch.relu(block.norm(h)))
            h = h + block.linear.block_row(torch.cat(kept, dim=-1), j)
        return net.out(h)


class RecurrentStepper:
    """A `CausalRecurrentDenoiser` fed one token at a time, as `TokenStepper` feeds a causal MLP: `push`
    of token j updates the kept hidden state once and returns token j's output (eval mode, no dropout)."""

    def __init__(self, net: CausalRecurrentDenoiser, t: torch.Tensor):
        self.net, self.time, self.pushed = net, net.time(t), 0
        self.h = net.start.expand(len(self.time), -1)

    def push(self, token: torch.Tensor) -> torch.Tensor:
        """token [B, x_dim + act_dim] (a column of `transition_tokens`) -> its output [B, x_dim]."""
        if self.pushed == self.net.tokens:
            raise ValueError(f"the window holds {self.net.tokens} tokens, all pushed already")
        self.h, self.pushed = self.net.update(self.h, self.net.inp(token) + self.time), self.pushed + 1
        return self.net.out(self.h)


def token_stepper(net: nn.Module, t: torch.Tensor) -> TokenStepper | RecurrentStepper | None:
    """A stepper that feeds `net` one token at a time at steps t [B], or None for a network that cannot be
    fed so (its sequential read-out takes a full pass per row). Steppers compute the network as in eval
    mode, so one in training mode with dropout is refused."""
    if net.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in net.modules()):
        raise ValueError("a stepper reads the network without dropout: call net.eval() first")
    if isinstance(net, CausalMLPDenoiser):
        return TokenStepper(net, t)
    if isinstance(net, CausalRecurrentDenoiser):
        return RecurrentStepper(net, t)
    return None


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


def is_causal(net: nn.Module) -> bool:
    """Whether `net` (or every member of an ensemble) declares itself causal in time."""
    return all(getattr(member, "causal", False) for member in members(net))


def member_predictions(net: nn.Module, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor
                       ) -> torch.Tensor:
    """x0 predictions [K, B, L, x_dim] of every member (K = 1 for a single network)."""
    return net.each(x, actions, t) if isinstance(net, DenoiserEnsemble) else net(x, actions, t)[None]


def build_denoiser(n_rows: int, x_dim: int, act_dim: int, config: DenoiserConfig, n_members: int = 1
                   ) -> nn.Module:
    """One denoiser, or with `n_members` > 1 an ensemble of them."""
    cls = {"mlp": ResidualMLPDenoiser, "transformer": TransformerDenoiser,
           "causal-transformer": CausalTransformerDenoiser, "causal-mlp": CausalMLPDenoiser,
           "causal-recurrent": CausalRecurrentDenoiser}[config.kind]
    if n_members == 1:
        return cls(n_rows, x_dim, act_dim, config)
    return DenoiserEnsemble([cls(n_rows, x_dim, act_dim, config) for _ in range(n_members)])
