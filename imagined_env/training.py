"""Fitting the world model on the episode buffer: Adam on the x0 loss, EMA after every step, with the
optimiser and sampling state kept so training continues across refits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.normaliser import Normaliser
from imagined_env.fitting import LossCallback, fit_steps
from imagined_env.world_model import EnvSpec, WorldModel, WorldModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the denoiser (defaults: PolyGRAD's Adam 3e-4, batch 256)."""

    lr: float = 3e-4
    """Adam learning rate."""
    batch_size: int = 256
    """Windows (or transitions, for the baselines) per gradient step."""
    grad_clip: float = 1.0
    """Max global gradient norm; diffusion losses spike at the noisiest steps early in training."""
    seed: int = 0
    """Seeds window sampling and the diffusion noise of training."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be > 0 and batch_size >= 1, got {self}")


class WorldModelTrainer:
    """Owns the optimiser and the window-sampling RNG so training can continue across refits."""

    def __init__(self, model: WorldModel, config: TrainConfig = TrainConfig()):
        self.model, self.config = model, config
        self.optimizer = torch.optim.Adam(model.denoiser.parameters(), lr=config.lr)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=model.device).manual_seed(config.seed)
        self.steps = 0

    def refit_normaliser(self, buffer: EpisodeBuffer) -> None:
        """New statistics for a grown buffer; call before the training that adapts to them."""
        spec = self.model.spec
        self.model.normaliser = Normaliser.fit(buffer, np.array(spec.action_low), np.array(spec.action_high))

    def train(self, buffer: EpisodeBuffer, n_steps: int, *, progress: bool = False,
              on_loss: LossCallback | None = None, log_every: int = 50) -> list[float]:
        """`n_steps` gradient steps on windows of the buffer; returns the loss of every step.
        `on_loss` gets the trainer's total step count and the recent mean loss every `log_every` steps."""
        model, start = self.model, self.steps
        model.denoiser.train()
        batch_size = self.config.batch_size
        report = None if on_loss is None else lambda k, loss: on_loss(start + k, loss)
        losses = fit_steps(model, self.optimizer,
                           lambda: buffer.sample_windows(batch_size, model.horizon, self.rng), n_steps,
                           grad_clip=self.config.grad_clip, generator=self.generator, progress=progress,
                           desc="world model", on_loss=report, log_every=log_every)
        self.steps += len(losses)
        return losses

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state,
                "generator": self.generator.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])


def spec_from_env(env: Any, env_id: str) -> EnvSpec:
    """EnvSpec of a gymnasium env with a flat Box observation and action space."""
    obs_space, act_space = env.observation_space, env.action_space
    return EnvSpec(env_id=env_id, obs_dim=int(obs_space.shape[0]), act_dim=int(act_space.shape[0]),
                   action_low=tuple(float(v) for v in act_space.low),
                   action_high=tuple(float(v) for v in act_space.high))


def fit_world_model(buffer: EpisodeBuffer, spec: EnvSpec, n_steps: int,
                    config: WorldModelConfig | None = None, train: TrainConfig = TrainConfig(),
                    *, device: str | torch.device = "auto", progress: bool = True,
                    on_loss: LossCallback | None = None) -> tuple[WorldModel, list[float]]:
    """Build a world model (default config: `WorldModelConfig()`) with statistics of `buffer` and train it
    for `n_steps`."""
    trainer = new_trainer(buffer, spec, config, train, device=device)
    losses = trainer.train(buffer, n_steps, progress=progress, on_loss=on_loss)
    return trainer.model, losses


def new_trainer(buffer: EpisodeBuffer, spec: EnvSpec, config: WorldModelConfig | None = None,
                train: TrainConfig = TrainConfig(), *, device: str | torch.device = "auto"
                ) -> WorldModelTrainer:
    """The trainer of a new world model with statistics of `buffer`, its weights drawn from `train.seed`:
    a function of its arguments alone, so every data-parallel rank builds the same one."""
    if len(buffer) == 0:
        raise ValueError("cannot fit a world model on an empty buffer: collect real data first")
    torch.manual_seed(train.seed)
    normaliser = Normaliser.fit(buffer, np.array(spec.action_low), np.array(spec.action_high))
    return WorldModelTrainer(WorldModel(spec, config or WorldModelConfig(), normaliser, device), train)
