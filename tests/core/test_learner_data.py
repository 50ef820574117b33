"""Learner-data settings are refused by name, and `EpisodeBuffer.joined` keeps both buffers' episodes in
order."""
from __future__ import annotations

import numpy as np
import pytest

from agents.learner_data import LearnerDataConfig
from imagined_env.data.buffer import EpisodeBuffer


@pytest.mark.parametrize("field,value", [
    ("rounds", -1), ("rounds", 1.0), ("rounds", True), ("imagined_steps", 0), ("checkpoints", 0),
    ("real_steps", 0), ("real_steps", "2000"), ("seeds", ()), ("seeds", (1, 1)), ("seeds", (-1,)),
    ("seeds", [1000]), ("seeds", (1.5,)), ("seeds", (True,)),
])
def test_bad_settings_name_their_field(field, value):
    with pytest.raises(ValueError, match=field):
        LearnerDataConfig(**{field: value})


def test_fewer_imagined_steps_than_checkpoints_are_refused():
    with pytest.raises(ValueError, match=r"imagined_steps \(3\) must be at least checkpoints \(4\)"):
        LearnerDataConfig(imagined_steps=3, checkpoints=4)


def test_the_defaults_and_edge_values_are_accepted():
    assert LearnerDataConfig().rounds == 0                   # off unless asked for
    assert LearnerDataConfig().marks().tolist() == [50_000, 100_000, 150_000, 200_000]
    assert LearnerDataConfig(imagined_steps=10, checkpoints=3).marks().tolist() == [3, 7, 10]
    LearnerDataConfig(rounds=2, seeds=(0,), imagined_steps=1, checkpoints=1, real_steps=1)


def episode(rng: np.random.Generator, length: int, terminated: bool) -> tuple:
    return (rng.normal(size=(length + 1, 3)), rng.normal(size=(length, 2)), rng.normal(size=length),
            terminated, rng.normal(size=(length + 1, 2)), rng.normal(size=(length + 1, 2)))


def test_joined_holds_the_first_buffers_episodes_then_the_seconds():
    rng = np.random.default_rng(0)
    first, second = (EpisodeBuffer(3, 2, 2, 2, env_id="Hopper-v4") for _ in range(2))
    made = [episode(rng, n, n % 2 == 0) for n in (3, 5, 2, 4)]
    for i, e in enumerate(made):
        (first if i < 2 else second).add_episode(*e)
    both = first.joined(second)
    assert both.env_id == "Hopper-v4" and len(both) == 4 and both.n_transitions == 14
    for got, want in zip(both.episodes, made):
        np.testing.assert_array_equal(got.observations, want[0].astype(np.float32))
        np.testing.assert_array_equal(got.actions, want[1].astype(np.float32))
        np.testing.assert_array_equal(got.qvel, want[5])
        assert got.terminated == want[3]
    assert len(first) == 2 and len(second) == 2              # the inputs are unchanged
