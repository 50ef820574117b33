"""`build_model.with_reset_starts`: the task's own reset observations take the place of some start states."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.build_model import RESET_SEED, with_reset_starts


def resets_of(env_id: str, n: int) -> np.ndarray:
    env = gym.make(env_id)
    out = np.stack([env.reset(seed=RESET_SEED + i)[0] for i in range(n)]).astype(np.float32)
    env.close()
    return out


def test_n_rows_become_the_tasks_reset_observations_and_the_rest_stay():
    starts = np.full((40, 11), 5.0, np.float32)       # far from any Hopper reset state (z about 1.25)
    out = with_reset_starts(starts, "Hopper-v4", 6, seed=0)
    changed = np.flatnonzero((out != starts).any(1))
    assert len(changed) == 6
    np.testing.assert_array_equal(out[np.setdiff1d(np.arange(40), changed)], 5.0)
    expected = resets_of("Hopper-v4", 6)
    assert sorted(map(tuple, out[changed])) == sorted(map(tuple, expected))
    assert out.dtype == np.float32 and (starts == 5.0).all()          # the input is left as it was


def test_the_places_follow_the_seed():
    starts = np.zeros((64, 11), np.float32)
    places = [np.flatnonzero(with_reset_starts(starts, "Hopper-v4", 8, seed=s).any(1)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(places[0], places[1])
    assert not np.array_equal(places[0], places[2])
