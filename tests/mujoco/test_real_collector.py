"""RealCollector: chunked stepping that keeps the episode in progress, stores episodes as they end."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from imagined_env.data.collect import RealCollector, buffer_for_env

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]


def test_time_limit_episodes_flush_and_continuation():
    env = gym.make("HalfCheetah-v4", max_episode_steps=40)
    buffer = buffer_for_env(env, "HalfCheetah-v4")
    collector = RealCollector(env, buffer, seed=0)
    assert collector.collect(30, policy=lambda obs: np.full(6, 2.0)) == []    # nothing ended yet
    assert len(buffer) == 0
    ended = collector.collect(70, policy=lambda obs: np.full(6, 2.0))
    assert len(ended) == 2 and collector.real_steps == 100
    assert [ep.length for ep in buffer.episodes] == [40, 40]
    assert not any(ep.terminated for ep in buffer.episodes)                  # truncation is no termination
    np.testing.assert_allclose(ended, [ep.rewards.sum() for ep in buffer.episodes], rtol=1e-5)
    assert np.all(buffer.episodes[0].actions == 2.0)                         # the sample, not the clip
    collector.flush()
    collector.flush()                                                        # nothing new: no empty episode
    assert buffer.n_transitions == collector.real_steps == 100 and len(buffer) == 3
    cut = buffer.episodes[2].observations[-1]
    collector.collect(25)
    assert len(buffer) == 4 and buffer.episodes[3].length == 20             # the episode ran on to its limit
    np.testing.assert_array_equal(buffer.episodes[3].observations[0], cut)
    assert collector.episode_returns == ended + [pytest.approx(float(buffer.episodes[2].rewards.sum()
                                                                     + buffer.episodes[3].rewards.sum()))]


def test_hopper_terminations_are_stored_and_seeding_reproduces():
    runs = []
    for _ in range(2):
        env = gym.make("Hopper-v4")
        buffer = buffer_for_env(env, "Hopper-v4")
        collector = RealCollector(env, buffer, seed=3)
        collector.collect(300)
        collector.flush()
        runs.append(buffer)
    buffer = runs[0]
    assert buffer.n_transitions == 300
    assert sum(ep.terminated for ep in buffer.episodes) >= 3 and not buffer.episodes[-1].terminated
    np.testing.assert_array_equal(runs[0].transitions().actions, runs[1].transitions().actions)
