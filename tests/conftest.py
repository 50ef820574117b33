"""Shared tiny fixtures: a synthetic linear system and a tiny world model trained on it."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.schedule import ScheduleConfig
from imagined_env.training import TrainConfig, fit_world_model
from imagined_env.world_model import EnvSpec, WorldModelConfig

# One torch thread: the tests' tensors are tiny, and OpenMP threads competing with MuJoCo, SB3 or any
# other process on a small machine cost far more than they gain.
torch.set_num_threads(1)

OBS, ACT, H = 3, 2, 4
A_MAT = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.7]], np.float32)
B_MAT = np.array([[0.5, 0.0], [0.0, 0.5], [0.3, -0.3]], np.float32)


def linear_step(s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of the synthetic task: s' = A s + B clip(a), r = -|s|^2."""
    a = np.clip(a, -1, 1)
    return s @ A_MAT.T + a @ B_MAT.T, -(s ** 2).sum(-1)


def linear_buffer(n_episodes: int = 40, length: int = 30, seed: int = 0, terminate_above: float | None = None
                  ) -> EpisodeBuffer:
    rng = np.random.default_rng(seed)
    buf = EpisodeBuffer(OBS, ACT, nq=1, nv=1, env_id="Linear-v0")
    for _ in range(n_episodes):
        obs, acts, rews = [rng.normal(size=OBS).astype(np.float32)], [], []
        terminated = False
        for _ in range(length):
            a = rng.normal(scale=0.7, size=ACT).astype(np.float32)
            s2, r = linear_step(obs[-1], a)
            obs.append(s2.astype(np.float32))
            acts.append(a)
            rews.append(r)
            if terminate_above is not None and s2[0] > terminate_above:
                terminated = True
                break
        n = len(obs)
        buf.add_episode(np.array(obs), np.array(acts), np.array(rews, np.float32), terminated,
                        np.zeros((n, 1)), np.zeros((n, 1)))
    return buf


LINEAR_SPEC = EnvSpec("Linear-v0", OBS, ACT, (-1.0,) * ACT, (1.0,) * ACT)
TINY_CONFIG = WorldModelConfig(horizon=H, denoiser=DenoiserConfig(width=128, depth=2, time_dim=32),
                               schedule=ScheduleConfig(n_steps=20))


@functools.cache
def _trained_linear_model():
    torch.manual_seed(0)
    buf = linear_buffer()
    model, losses = fit_world_model(buf, LINEAR_SPEC, 400, TINY_CONFIG, TrainConfig(lr=2e-3, batch_size=128),
                                    device="cpu", progress=False)
    return model, buf, losses


@pytest.fixture
def trained_linear_model():
    """A tiny world model trained for a few hundred steps on the linear system (seconds), once per run."""
    return _trained_linear_model()


@pytest.fixture
def one_torch_thread():
    """Two shared cores: a second intra-op thread only adds contention for tiny networks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
