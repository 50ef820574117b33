"""The facts behind `MODEL_FOLDERS`: stepped from the same state with the same actions, HalfCheetah v4 and v5
agree bit for bit; Hopper v4 and v5 agree but for the healthy reward v4 pays on the terminating step; Walker2d
v4 and v5 part (v5 changed the feet's friction), so each needs its own model."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from imagined_env.pretrained import MODEL_FOLDERS

pytestmark = pytest.mark.mujoco


def side_by_side(task: str, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Largest |obs v4 - obs v5| and reward differences (v4 - v5) per step over episodes started from the
    same state, and the steps (counted over all episodes) on which v4 terminated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                        # the v4 tasks
        old, new = gym.make(f"{task}-v4"), gym.make(f"{task}-v5")
    rng = np.random.default_rng(seed)
    obs_diff, reward_diff, ends = [], [], []
    episode = 0
    while len(reward_diff) < steps:
        old.reset(seed=seed + episode)
        new.reset(seed=seed + episode)
        episode += 1
        new.unwrapped.set_state(old.unwrapped.data.qpos.copy(), old.unwrapped.data.qvel.copy())
        for _ in range(steps - len(reward_diff)):
            action = rng.uniform(-1, 1, old.action_space.shape)
            o_old, r_old, term_old, trunc_old, _ = old.step(action)
            o_new, r_new, term_new, trunc_new, _ = new.step(action)
            obs_diff.append(np.abs(o_old - o_new).max())
            reward_diff.append(r_old - r_new)
            assert (term_old, trunc_old) == (term_new, trunc_new) or task == "Walker2d"
            if term_old:
                ends.append(len(reward_diff) - 1)
            if term_old or trunc_old or term_new or trunc_new:
                break
    old.close()
    new.close()
    return np.array(obs_diff), np.array(reward_diff), ends


def test_halfcheetah_v4_and_v5_are_identical():
    assert MODEL_FOLDERS["HalfCheetah-v5"] == MODEL_FOLDERS["HalfCheetah-v4"]
    obs_diff, reward_diff, _ = side_by_side("HalfCheetah", 300)
    assert not obs_diff.any() and not reward_diff.any()


def test_hopper_v4_and_v5_differ_only_by_the_healthy_reward_of_the_terminating_step():
    assert MODEL_FOLDERS["Hopper-v5"] == MODEL_FOLDERS["Hopper-v4"]
    obs_diff, reward_diff, ends = side_by_side("Hopper", 300)
    assert len(ends) >= 3 and not obs_diff.any()                 # random actions topple it within ~50 steps
    np.testing.assert_array_equal(np.flatnonzero(reward_diff), ends)
    np.testing.assert_allclose(reward_diff[ends], 1.0, rtol=0, atol=1e-12)      # v4: r + 1, less rounding


def test_walker2d_v4_and_v5_part_so_each_has_its_own_model():
    assert MODEL_FOLDERS["Walker2d-v4"] != MODEL_FOLDERS["Walker2d-v5"]
    obs_diff, reward_diff, _ = side_by_side("Walker2d", 100)
    assert obs_diff.max() > 0.1 and np.abs(reward_diff).max() > 0
