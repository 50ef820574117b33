"""A tiny stored data set of a real task and the flags of a tiny world model, shared by the data-parallel
tests."""
from __future__ import annotations

import gymnasium as gym
import pytest

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, collect_episodes

TASK = "Hopper-v4"
STEPS = 4
TINY_FLAGS = ["--steps", str(STEPS), "--world-model.denoiser.width", "32",
              "--world-model.denoiser.depth", "1", "--world-model.denoiser.time-dim", "16",
              "--world-model.schedule.n-steps", "20", "--train.batch-size", "8", "--train.seed", "3"]
"""Batch 8: 4 windows per worker of 2."""


@pytest.fixture(scope="package")
def data_file(tmp_path_factory: pytest.TempPathFactory):
    """300 uniform-random Hopper steps, stored as build-model stores its data."""
    env = gym.make(TASK)
    buffer: EpisodeBuffer = buffer_for_env(env, TASK)
    collect_episodes(env, buffer, 300, seed=0)
    env.close()
    path = tmp_path_factory.mktemp("data") / "data.npz"
    buffer.save(path)
    return path
