"""NEXT_STEP autoreset under Gymnasium's own vector wrappers, checked step by step against the linear fake."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.utils import RunningMeanStd
from gymnasium.wrappers.vector import (
    ClipAction,
    DtypeObservation,
    NormalizeObservation,
    RecordEpisodeStatistics,
    TransformObservation,
)

from agents import ImaginedSB3VecEnv
from imagined_env.vector_env import ImaginedVectorEnv
from tests.conftest import ACT, linear_buffer, linear_step
from tests.fakes import LinearFakeModel

STARTS = linear_buffer(5, 10).observations()


def next_step_env(num_envs=2, horizon=2, autoreset_mode=AutoresetMode.NEXT_STEP):
    return ImaginedVectorEnv(LinearFakeModel(horizon), num_envs, start_states=STARTS,
                             autoreset_mode=autoreset_mode, planned_action_info=True)


def is_start(obs):
    return all((np.abs(STARTS - o).max(1) < 1e-6).any() for o in obs)


def test_next_step_reset_sequence_through_normalize_record_and_clip():
    raw_env = next_step_env()
    env = RecordEpisodeStatistics(NormalizeObservation(ClipAction(raw_env)))
    rms = RunningMeanStd(shape=(3,))

    def normalised(raw):                                    # what NormalizeObservation must return
        rms.update(raw)
        return (raw - rms.mean) / np.sqrt(rms.var + 1e-8)

    obs, info = env.reset(seed=0)
    s0 = raw_env.replay.current_obs().astype(np.float64)
    assert is_start(s0)
    np.testing.assert_allclose(obs, normalised(s0), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # planned actions through ClipAction: on-plan
        a0 = info["planned_action"]
        obs, rew, term, trunc, info = env.step(a0)          # step 1 of 2
        s1, r0 = linear_step(s0.astype(np.float32), a0)
        np.testing.assert_allclose(obs, normalised(s1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rew, r0, rtol=1e-5)
        assert not (term | trunc).any() and "episode" not in info

        a1 = info["planned_action"]
        obs, rew, term, trunc, info = env.step(a1)          # step 2 of 2: the episode's last observation
        s2, r1 = linear_step(s1, a1)
        np.testing.assert_allclose(obs, normalised(s2), rtol=1e-4, atol=1e-5)
        assert trunc.all() and not term.any() and "final_obs" not in info
        np.testing.assert_allclose(info["episode"]["r"], r0 + r1, rtol=1e-5)
        np.testing.assert_array_equal(info["episode"]["l"], [2, 2])

        wild = np.full((2, ACT), 0.9)                       # ignored: this step only resets
        obs, rew, term, trunc, info = env.step(wild)
        s3 = raw_env.replay.current_obs().astype(np.float64)
        assert is_start(s3) and not np.allclose(s3, s2)
        np.testing.assert_allclose(obs, normalised(s3), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(rew, [0.0, 0.0])
        assert not (term | trunc).any() and not info["off_plan"].any() and "episode" not in info

        a3 = info["planned_action"]
        obs, rew, term, trunc, info = env.step(a3)          # the new episode goes on from its start
        s4, r3 = linear_step(s3.astype(np.float32), a3)
        np.testing.assert_allclose(obs, normalised(s4), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rew, r3, rtol=1e-5)
    assert raw_env.model.calls == [2, 2]  # one call per episode start, none for the reset step
    np.testing.assert_array_equal(env.unwrapped.planned_actions(), info["planned_action"])


@pytest.mark.parametrize("wrap", [NormalizeObservation, lambda e: DtypeObservation(e, np.float32),
                                  lambda e: TransformObservation(e, lambda o: 2 * o, e.observation_space)])
def test_observation_wrappers_accept_next_step_and_refuse_same_step(wrap):
    env = wrap(next_step_env())
    _, info = env.reset(seed=1)
    env.step(info["planned_action"])
    with pytest.raises(ValueError, match="NEXT_STEP"):
        wrap(ImaginedVectorEnv(LinearFakeModel(), 2, start_states=STARTS))   # the default is SAME_STEP


def test_autoreset_mode_checks():
    with pytest.raises(ValueError, match="autoreset_mode must be .*SAME_STEP or NEXT_STEP, got 'Disabled'"):
        next_step_env(autoreset_mode="Disabled")
    assert next_step_env().autoreset_mode == AutoresetMode.NEXT_STEP
    env = ImaginedVectorEnv(LinearFakeModel(), 2, start_states=STARTS, autoreset_mode="NextStep")
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert ImaginedVectorEnv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP   # the class's stays
    with pytest.raises(ValueError, match="autoreset_mode=AutoresetMode.SAME_STEP"):
        ImaginedSB3VecEnv(env)


def test_single_env_planned_action_through_wrappers():
    from gymnasium.wrappers import ClipAction as SingleClipAction
    from gymnasium.wrappers import NormalizeObservation as SingleNormalizeObservation

    from imagined_env.single_env import ImaginedEnv

    env = SingleClipAction(SingleNormalizeObservation(
        ImaginedEnv(world_model=LinearFakeModel(), start_states=STARTS)))
    _, info = env.reset(seed=0)
    planned = env.get_wrapper_attr("planned_action")
    np.testing.assert_array_equal(planned(), info["planned_action"])
    _, _, _, _, info = env.step(planned())
    assert not info["off_plan"]
    np.testing.assert_array_equal(planned(), info["planned_action"])
