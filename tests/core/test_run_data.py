"""The run-data recipe's settings and its report of the skill levels in a buffer, against hand counts."""
from __future__ import annotations

import numpy as np
import pytest

from agents.run_data import RunDataConfig, skill_report
from imagined_env.data.buffer import EpisodeBuffer


def buffer_of(lengths_and_rewards: list[tuple[int, float]]) -> EpisodeBuffer:
    buffer = EpisodeBuffer(obs_dim=2, act_dim=1, nq=1, nv=1)
    for length, reward in lengths_and_rewards:
        buffer.add_episode(np.zeros((length + 1, 2)), np.zeros((length, 1)), np.full(length, reward), False,
                           np.zeros((length + 1, 1)), np.zeros((length + 1, 1)))
    return buffer


def test_episodes_that_start_in_the_prefill_are_random_and_the_rest_split_in_order():
    # episodes start at steps 0, 3, 7, 12, 14, 16, 18, 20; a prefill of 6 steps holds the first two
    buffer = buffer_of([(3, -1.0), (4, -2.0), (5, 1.0), (2, 2.0), (2, 3.0), (2, 4.0), (2, 5.0), (2, 6.0)])
    report = skill_report(buffer, prefill_steps=6, n_parts=2)
    assert list(report) == ["uniform random prefill", "policy in training, part 1 of 2",
                            "policy in training, part 2 of 2"]
    assert report["uniform random prefill"] == {"episodes": 2, "transitions": 7,
                                                "mean_return": (-3.0 - 8.0) / 2, "max_return": -3.0}
    assert report["policy in training, part 1 of 2"] == {"episodes": 3, "transitions": 9,
                                                         "mean_return": (5.0 + 4.0 + 6.0) / 3,
                                                         "max_return": 6.0}
    assert report["policy in training, part 2 of 2"] == {"episodes": 3, "transitions": 6,
                                                         "mean_return": (8.0 + 10.0 + 12.0) / 3,
                                                         "max_return": 12.0}


def test_parts_with_no_episodes_are_left_out():
    report = skill_report(buffer_of([(3, 0.0), (3, 1.0)]), prefill_steps=3, n_parts=4)
    assert list(report) == ["uniform random prefill", "policy in training, part 1 of 4"]


@pytest.mark.parametrize("changes,message", [
    ({"steps": 0}, "run_data.steps must be an int >= 1, got 0"),
    ({"skill_parts": 1.5}, "run_data.skill_parts must be an int >= 1, got 1.5"),
    ({"seed": -1}, "run_data.seed must be an int >= 0, got -1"),
    ({"preset": "cpu-v99"}, "unknown preset 'cpu-v99'"),
    ({"terminations": "rule"}, "terminations must be one of learned, task, got 'rule'"),
])
def test_bad_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunDataConfig(**changes)
