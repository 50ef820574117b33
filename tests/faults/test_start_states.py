"""Start states must be of the model's task and within reach of its normalisation: the checks the
imagined env applies to what a user gives it."""
from __future__ import annotations

import numpy as np
import pytest

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.normaliser import START_STATE_LIMIT, Normaliser
from tests.conftest import linear_buffer


def test_a_buffer_of_another_task_is_refused_even_with_the_same_widths():
    walker = EpisodeBuffer(17, 6, 9, 9, env_id="Walker2d-v4")  # HalfCheetah-v4 has 17 and 6 too
    with pytest.raises(ValueError, match="holds data of 'Walker2d-v4', not of 'HalfCheetah-v4'"):
        walker.check_task("HalfCheetah-v4")
    walker.check_task("Walker2d-v4")
    EpisodeBuffer(17, 6, 9, 9).check_task("HalfCheetah-v4")  # no recorded task: nothing to compare


@pytest.fixture(scope="module")
def normaliser() -> Normaliser:
    buffer = linear_buffer(n_episodes=5)
    return Normaliser.fit(buffer, -1.0, 1.0)


def test_start_states_in_range_pass(normaliser):
    normaliser.check_start_states(linear_buffer(n_episodes=2, seed=1).start_observations())


@pytest.mark.parametrize("value,words", [(1e30, "stds from the model's mean"), (np.nan, "is not finite"),
                                         (np.inf, "is not finite")])
def test_start_states_far_out_or_not_finite_name_row_and_dimension(normaliser, value, words):
    starts = np.zeros((4, 3), np.float32)
    starts[2, 1] = value
    with pytest.raises(ValueError, match=f"start state 2, dimension 1: .* {words}"):
        normaliser.check_start_states(starts)


def test_the_limit_is_in_stds_of_the_training_data(normaliser):
    starts = normaliser.obs_mean[None].astype(np.float64).copy()
    starts[0, 0] += 0.99 * START_STATE_LIMIT * normaliser.obs_std[0]
    normaliser.check_start_states(starts)
    starts[0, 0] += 0.02 * START_STATE_LIMIT * normaliser.obs_std[0]
    with pytest.raises(ValueError, match="dimension 0"):
        normaliser.check_start_states(starts)
    with pytest.raises(ValueError, match=r"shape \[n, 3\]"):
        normaliser.check_start_states(np.zeros((2, 4)))


@pytest.mark.mujoco
def test_the_imagined_env_refuses_a_foreign_buffer_and_far_out_start_states(tmp_path):
    from imagined_env.vector_env import ImaginedVectorEnv

    shipped = ImaginedVectorEnv(env_id="HalfCheetah-v4", num_envs=2, device="cpu")
    starts = shipped._starts[:4].copy()
    walker = EpisodeBuffer(17, 6, 9, 9, env_id="Walker2d-v4")
    steps = 3
    walker.add_episode(observations=np.zeros((steps + 1, 17), np.float32),
                       actions=np.zeros((steps, 6), np.float32), rewards=np.zeros(steps, np.float32),
                       qpos=np.zeros((steps + 1, 9)), qvel=np.zeros((steps + 1, 9)), terminated=False)
    with pytest.raises(ValueError, match="holds data of 'Walker2d-v4', not of 'HalfCheetah-v4'"):
        ImaginedVectorEnv(env_id="HalfCheetah-v4", num_envs=2, start_states=walker, device="cpu")
    starts[1, 5] = 1e30
    with pytest.raises(ValueError, match="start state 1, dimension 5"):
        shipped.set_start_states(starts)
    assert np.isfinite(shipped._starts).all()  # refused before anything changed
