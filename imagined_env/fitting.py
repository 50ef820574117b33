"""The one fitting loop and EMA helper of every model here: Adam-style steps on a clipped gradient norm,
with an EMA copy of the weights updated after each step for the models that generate with one."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

Batch = TypeVar("Batch")
BatchT_contra = TypeVar("BatchT_contra", contravariant=True)

LossCallback = Callable[[int, float], None]
"""(steps taken, mean loss of the last `log_every` steps) -> None."""


class Fittable(Protocol[BatchT_contra]):
    """What the loop needs of a model."""

    def loss(self, batch: BatchT_contra, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar training loss of one batch."""
        ...

    def update_ema(self) -> None:
        """Move the EMA weights toward the trained ones (a no-op for a model without EMA)."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trained parameters, whose gradient norm is clipped."""
        ...


def ema_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of `net` in eval mode, to hold the exponential moving average of its weights."""
    return copy.deepcopy(net).requires_grad_(False).eval()


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter."""
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)


def fit_steps(model: Fittable[Batch], optimizer: torch.optim.Optimizer, next_batch: Callable[[], Batch],
              n_steps: int, *, grad_clip: float, generator: torch.Generator | None = None,
              progress: bool = False, desc: str = "fitting", on_loss: LossCallback | None = None,
              log_every: int = 50) -> list[float]:
    """`n_steps` optimiser steps on batches from `next_batch`, each followed by `model.update_ema()`;
    returns the loss of every step. Every `log_every` steps the recent mean loss goes to the progress
    bar and to `on_loss`."""
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    losses: list[float] = []
    bar = tqdm(range(n_steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        loss = model.loss(next_batch(), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        model.update_ema()
        losses.append(loss.item())
        if len(losses) % log_every == 0:
            recent = float(np.mean(losses[-log_every:]))
            bar.set_postfix(loss=f"{recent:.4f}")
            if on_loss is not None:
                on_loss(len(losses), recent)
    return losses
