"""The imagined VectorEnv: exact per-step bookkeeping with an analytic fake model, checks, errors."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import imagined_env  # noqa: F401
from imagined_env.replay import ReplayConfig
from imagined_env.single_env import ImaginedEnv
from imagined_env.vector_env import ImaginedVectorEnv
from tests.conftest import ACT, OBS, linear_buffer, linear_step
from tests.fakes import LinearFakeModel


def make_env(num_envs=4, horizon=4, terminate_above=np.inf, **kw):
    return ImaginedVectorEnv(LinearFakeModel(horizon, terminate_above), num_envs,
                             start_states=linear_buffer(5, 10), **kw)


def test_follow_plan_truncates_at_horizon_with_final_obs():
    env = make_env(num_envs=3, horizon=4)
    obs, _ = env.reset(seed=0)
    for k in range(4):
        planned = env.planned_actions()
        nxt, rew, term, trunc, info = env.step(np.clip(planned, -1, 1))
        expected, expected_r = linear_step(obs.astype(np.float32), planned)
        assert not info["off_plan"].any() and not term.any()
        if k < 3:
            np.testing.assert_allclose(nxt, expected, rtol=1e-6)
            assert not trunc.any() and "final_obs" not in info
        else:                                               # same-step autoreset at H
            assert trunc.all() and info["_final_obs"].all()
            np.testing.assert_allclose(np.stack(info["final_obs"]), expected, rtol=1e-6)
            starts = linear_buffer(5, 10).observations()
            assert all((np.abs(starts - o).max(1) < 1e-6).any() for o in nxt)   # new episodes: real starts
        np.testing.assert_allclose(rew, expected_r, rtol=1e-6)
        obs = nxt
    assert env.replay.model.calls == [3]                     # one batched call for the whole episode


def test_longer_episodes_continue_from_their_own_imagined_states_in_new_plans():
    env = make_env(num_envs=3, horizon=4, episode_steps=10)
    obs, _ = env.reset(seed=0)
    starts = linear_buffer(5, 10).observations()
    for k in range(10):
        planned = env.planned_actions()
        nxt, rew, term, trunc, info = env.step(np.clip(planned, -1, 1))
        expected, _ = linear_step(obs.astype(np.float32), planned)
        if k < 9:                        # past H = 4 and 8 too: the dynamics go on from the imagined state
            np.testing.assert_allclose(nxt, expected, rtol=1e-5, atol=1e-6)
            assert not trunc.any() and "final_obs" not in info
        else:
            assert trunc.all()
            np.testing.assert_allclose(np.stack(info["final_obs"]), expected, rtol=1e-5, atol=1e-6)
            assert all((np.abs(starts - o).max(1) < 1e-6).any() for o in nxt)   # new episodes: real starts
        obs = nxt
    assert env.replay.model.calls == [3, 3, 3]               # a batched plan per H steps
    for bad in (0, 2.5, "10"):
        with pytest.raises(ValueError, match=f"episode_steps must be None or an int >= 1, got {bad!r}"):
            make_env(episode_steps=bad)


def test_off_plan_actions_are_honoured_and_warned_once():
    env = make_env(num_envs=2)
    obs, _ = env.reset(seed=1)
    taken = np.array([[0.9, -0.9], [-0.3, 0.3]], np.float32)
    with pytest.warns(UserWarning, match="ImaginationPPO"):
        nxt, *_ , info = env.step(taken)
    assert info["off_plan"].all()
    np.testing.assert_allclose(nxt, linear_step(obs.astype(np.float32), taken)[0], rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nxt2, *_ = env.step(-taken)                          # still honoured, no second warning
    np.testing.assert_allclose(nxt2, linear_step(nxt.astype(np.float32), -taken)[0], rtol=1e-6)


def test_out_of_bounds_planned_action_counts_as_on_plan():
    """SB3 sends clip(sample); the simulator sees the clipped action, so it matches the plan."""
    env = make_env(num_envs=1)
    env.reset(seed=2)
    env.planned_actions()                                   # plans are generated lazily
    env.replay.actions[0, 0] = [3.0, -2.0]
    _, _, _, _, info = env.step(np.array([[1.0, -1.0]], np.float32))
    assert not info["off_plan"].any()


def test_early_terminations_use_spares_from_the_same_call():
    env = make_env(num_envs=64, horizon=6, terminate_above=0.5, replay=ReplayConfig(spare_margin=2.0))
    env.reset(seed=3)
    n_term = 0
    for _ in range(30):
        _, _, term, _, info = env.step(np.clip(env.planned_actions(), -1, 1))
        n_term += int(term.sum())
        if term.any():
            assert all(np.asarray(o)[0] > 0.5 for o in info["final_obs"][term])
    calls = env.replay.model.calls
    assert n_term > 20
    assert len(calls) < 0.5 * n_term, calls                 # terminations did not cost a call each


def test_reset_seed_reproducible():
    a, b = make_env(), make_env()
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(a.planned_actions(), b.planned_actions())
    oc, _ = a.reset(seed=8)
    assert not np.array_equal(oa, oc)


def test_spaces_and_checks():
    env = make_env(num_envs=5)
    assert env.single_observation_space.dtype == np.float64
    assert env.observation_space.shape == (5, OBS) and env.action_space.shape == (5, ACT)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    single = ImaginedEnv(world_model=LinearFakeModel(), start_states=linear_buffer(5, 10))
    check_env(single, skip_render_check=True)
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb3_check_env(single)


def test_render_mode_refused():
    with pytest.raises(TypeError, match="no simulator to render"):
        make_env(render_mode="rgb_array")


@pytest.mark.parametrize("actions,match", [
    (np.zeros((4, ACT + 1)), r"actions must have shape \(4, 2\)"),
    (np.zeros(ACT), r"actions must have shape"),
    (np.full((4, ACT), "a"), "numeric"),
    (np.full((4, ACT), np.nan), "NaN"),
])
def test_bad_actions_change_nothing(actions, match):
    env = make_env()
    env.reset(seed=0)
    before = (env.replay.cursor.copy(), env.elapsed.copy(), env.planned_actions())
    with pytest.raises(ValueError, match=match):
        env.step(actions)
    np.testing.assert_array_equal(env.replay.cursor, before[0])
    np.testing.assert_array_equal(env.elapsed, before[1])
    np.testing.assert_array_equal(env.planned_actions(), before[2])


def test_step_after_close_and_before_reset():
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((4, ACT)))
    env.reset(seed=0)
    env.close()
    assert env.model is None
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros((4, ACT)))


def test_wrong_task_and_bad_start_states(tmp_path):
    with pytest.raises(ValueError, match="trained on 'Linear-v0', not 'Hopper-v4'"):
        ImaginedVectorEnv(LinearFakeModel(), 2, start_states=linear_buffer(2, 5), env_id="Hopper-v4")
    path = tmp_path / "starts.npz"
    from imagined_env.data.buffer import EpisodeBuffer
    other = EpisodeBuffer(OBS + 2, ACT, 1, 1)
    other.add_episode(np.zeros((3, OBS + 2)), np.zeros((2, ACT)), np.zeros(2), False, np.zeros((3, 1)),
                      np.zeros((3, 1)))
    other.save(path)
    with pytest.raises(ValueError, match=r"start states must have shape \[n >= 1, 3\].*\(3, 5\)"):
        ImaginedVectorEnv(LinearFakeModel(), 2, start_states=path)
    with pytest.raises(ValueError, match=r"start states must have shape \[n >= 1, 11\].*\(3, 5\)"):
        gym.make("Imagined-Hopper-v4", start_states=path)            # the shipped model, the wrong data
    with pytest.raises(ValueError, match="no pretrained world model ships for 'Ant-v4'.*imagined-env "
                                         "train"):
        ImaginedVectorEnv(None, 2, env_id="Ant-v4", start_states=path)
    with pytest.raises(ValueError, match="no world model given.*imagined-env train"):
        ImaginedVectorEnv(None, 2, start_states=path)


def test_reset_with_a_list_of_seeds_uses_every_seed():
    runs = {}
    for seeds in ([3, 99], [3, 5], [3, 5]):
        env = make_env()
        obs, _ = env.reset(seed=seeds)
        runs.setdefault(tuple(seeds), []).append(obs)
    np.testing.assert_array_equal(*runs[(3, 5)])
    assert not np.array_equal(runs[(3, 5)][0], runs[(3, 99)][0])
    with pytest.raises(ValueError, match="list of ints"):
        make_env().reset(seed=[3, None])


def test_off_plan_regenerations_neither_tune_guidance_nor_set_the_spare_rate():
    env = make_env(num_envs=4, horizon=4, terminate_above=-np.inf)     # every trajectory terminates
    fake = env.model
    env.reset(seed=0)
    env.planned_actions()                                               # unguided: nothing to tune from
    env.set_policy(lambda s: (torch.zeros(len(s), ACT), torch.full((len(s), ACT), 0.5)))
    env.planned_actions()                                               # batched: rate 1 -> spares next time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env.step(np.full((4, ACT), 0.9))                                # off-plan for all four
    assert fake.adapted == [False, True, False]
    env2 = make_env(num_envs=4, horizon=4, terminate_above=np.inf)      # nothing terminates...
    env2.model.terminate_above = -np.inf
    env2.reset(seed=0)
    env2.model.terminate_above = np.inf
    env2.planned_actions()                                              # ...in the batched call
    env2.model.terminate_above = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env2.step(np.full((4, ACT), 0.9))                               # an off-plan call that terminates
    env2.reset(seed=1)
    env2.planned_actions()
    assert env2.model.calls[-1] == 4                                    # no spares from the off-plan call


def test_planned_actions_before_reset_and_setters_after_close():
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.planned_actions()
    env.close()
    for call in (lambda: env.set_policy(None), env.replan,
                 lambda: env.set_start_states(linear_buffer(5, 10))):
        with pytest.raises(RuntimeError, match="closed"):
            call()


def test_generation_runs_with_the_env_torch_threads_and_restores_them():
    class ThreadRecorder(LinearFakeModel):
        def imagine(self, *args, **kwargs):
            self.threads = torch.get_num_threads()
            return super().imagine(*args, **kwargs)

    before = torch.get_num_threads()
    for setting, expected in ((2, 2), (None, before)):
        env = ImaginedVectorEnv(ThreadRecorder(), 2, start_states=linear_buffer(5, 10), torch_threads=setting)
        env.reset(seed=0)
        env.step(np.clip(env.planned_actions(), -1, 1))
        assert env.model.threads == expected and torch.get_num_threads() == before
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match=f"torch_threads must be None or an int >= 1, got {bad!r}"):
            make_env(torch_threads=bad)
