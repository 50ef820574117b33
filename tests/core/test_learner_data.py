"""Learner-data settings are refused by name; the default checkpoints are evenly spaced."""
from __future__ import annotations

import pytest

from agents.learner_data import LearnerDataConfig


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
