"""`WorldModelTrainer.train` data-parallel over the ranks of a torch.distributed process group.

Every rank holds the whole model and draws the whole batch (windows and diffusion noise) from the same
seeded streams, then computes the loss of its own contiguous 1/N of the rows; DDP averages the gradients,
so each rank takes the same clipped Adam step and the same EMA update. The fit is thus the one-process fit
of the same settings, whatever N, up to the order of float sums. Drawing the whole batch costs each rank
index gathers and B x rows x channels normals, little beside its share of the network's passes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imagined_env.data.buffer import EpisodeBuffer, Windows
from imagined_env.fitting import LossCallback, fit_steps
from imagined_env.training import WorldModelTrainer
from imagined_env.world_model import WorldModel


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a batch of `batch_size` that `rank` of `world_size` computes; equal parts, so the mean of
    the ranks' mean losses is the batch's mean loss."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    if batch_size % world_size:
        raise ValueError(f"the batch size {batch_size} must be divisible by the number of workers "
                         f"{world_size}, so that every worker computes an equal part of each batch")
    part = batch_size // world_size
    return slice(rank * part, (rank + 1) * part)


class _PartLoss(nn.Module):
    """This rank's loss as a module holding the denoiser, so that DDP sees the forward its gradients
    come from (the EMA copy is no submodule: it is not trained)."""

    def __init__(self, model: WorldModel, rows: slice):
        super().__init__()
        self.denoiser, self.model, self.rows = model.denoiser, model, rows

    def forward(self, windows: Windows, generator: torch.Generator | None) -> torch.Tensor:
        return self.model.loss(windows, generator, rows=self.rows)


@dataclass
class _RankFittable:
    """What `fit_steps` needs, with the loss going through DDP."""

    ddp: DistributedDataParallel
    model: WorldModel

    def loss(self, batch: Windows, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.ddp(batch, generator)

    def update_ema(self) -> None:
        self.model.update_ema()

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()


def state_digest(model: WorldModel) -> str:
    """SHA-256 of the trained weights, the EMA weights and the normaliser: equal on every rank when
    the ranks are in step."""
    digest = hashlib.sha256()
    for net in (model.denoiser, model.ema):
        for key, value in net.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for key, value in model.normaliser.to_dict().items():
        digest.update(key.encode())
        digest.update(np.asarray(value, np.float32).tobytes())
    return digest.hexdigest()


def check_same_on_every_rank(model: WorldModel) -> None:
    """RuntimeError unless every rank's model (weights, EMA, normaliser) is the same as rank 0's: ranks
    that read different data files, or seeded differently, would otherwise train apart silently."""
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, state_digest(model))
    differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise RuntimeError(f"ranks {differing} hold another model than rank 0 (weights, EMA or normaliser "
                           "statistics): give every worker the same data file and settings")


def train_data_parallel(trainer: WorldModelTrainer, buffer: EpisodeBuffer, n_steps: int, *,
                        progress: bool = False, on_loss: LossCallback | None = None,
                        log_every: int = 50) -> list[float]:
    """`trainer.train(buffer, n_steps)` on this rank's part of every batch, in step with the other ranks of
    the default process group, which must all call it with an equal trainer and buffer (checked first).
    Returns the loss of every step over the whole batch (the same on every rank); `on_loss` and the
    progress bar (rank 0 only) see this rank's part."""
    if not dist.is_initialized():
        raise RuntimeError("train_data_parallel needs a torch.distributed process group: "
                           "call torch.distributed.init_process_group first (torchrun and Ray Train do)")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    model, config = trainer.model, trainer.config
    rank, world_size = dist.get_rank(), dist.get_world_size()
    rows = rank_rows(config.batch_size, rank, world_size)
    check_same_on_every_rank(model)
    model.denoiser.train()
    ddp = DistributedDataParallel(_PartLoss(model, rows), forward_sync_buffers=False)
    start = trainer.steps
    report = None if on_loss is None else lambda k, loss: on_loss(start + k, loss)
    local = fit_steps(_RankFittable(ddp, model), trainer.optimizer,
                      lambda: buffer.sample_windows(config.batch_size, model.horizon, trainer.rng), n_steps,
                      grad_clip=config.grad_clip, generator=trainer.generator,
                      progress=progress and rank == 0, desc=f"world model (rank 0 of {world_size})",
                      on_loss=report, log_every=log_every)
    trainer.steps += len(local)
    losses = torch.tensor(local, dtype=torch.float64, device=model.device)
    dist.all_reduce(losses)
    return (losses / world_size).tolist()
