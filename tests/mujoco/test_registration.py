"""The registered ids on the shipped pretrained model: spaces equal the real task's, checkers pass, the
pessimism switch arrives. Ids whose model folder is not shipped yet are skipped, the folder named."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import imagined_env  # noqa: F401
from imagined_env.pretrained import MODEL_FOLDERS, pretrained_paths, serves
from imagined_env.registration import TASKS, VERSIONS
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import WorldModel

pytestmark = pytest.mark.mujoco


SHIPPED = []
for _task in TASKS:
    for _version in VERSIONS:
        _id = f"{_task}-{_version}"
        try:
            pretrained_paths(_id)
            SHIPPED.append(pytest.param(_id))
        except ValueError:
            _folder = f"imagined_env/pretrained/{MODEL_FOLDERS[_id]}/"
            _reason = f"no model ships for {_id} yet: its folder {_folder} is missing"
            SHIPPED.append(pytest.param(_id, marks=pytest.mark.skip(reason=_reason)))


@pytest.mark.parametrize("env_id", SHIPPED)
def test_make_vec_default_is_the_pretrained_model_and_spaces_match_the_real_task(env_id):
    venv = gym.make_vec(f"Imagined-{env_id}", num_envs=3, device="cpu")
    assert isinstance(venv, ImaginedVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP   # Gymnasium's default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                        # the v4 tasks
        real = gym.make(env_id)
    assert venv.single_observation_space == real.observation_space
    assert venv.single_action_space == real.action_space
    assert serves(venv.model.spec.env_id, env_id)
    obs, info = venv.reset(seed=0)
    np.testing.assert_array_equal(info["planned_action"], venv.planned_actions())
    obs2, rew, _, _, info = venv.step(np.clip(info["planned_action"], -1, 1))
    assert obs2.shape == obs.shape and rew.shape == (3,) and not info["off_plan"].any()
    venv.close()


@pytest.mark.parametrize("env_id", SHIPPED)
def test_single_env_passes_gymnasium_and_sb3_checks(env_id):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(f"Imagined-{env_id}", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    obs, info = env.reset(seed=1)
    obs, _, _, _, info = env.step(np.clip(info["planned_action"], -1, 1))
    assert not info["off_plan"] and np.isfinite(obs).all()


@pytest.mark.parametrize("env_id", SHIPPED)
def test_pessimism_is_the_shipped_model_s_own_by_default_and_can_be_switched_off(env_id):
    stored = WorldModel.load(pretrained_paths(env_id)[0], device="cpu").config
    default = gym.make_vec(f"Imagined-{env_id}", num_envs=2, device="cpu").unwrapped.model.config
    assert (default.disagreement_penalty, default.disagreement_limit) == (stored.disagreement_penalty,
                                                                         stored.disagreement_limit)
    for env in (gym.make_vec(f"Imagined-{env_id}", num_envs=2, device="cpu", pessimism=False).unwrapped,
                gym.make(f"Imagined-{env_id}", device="cpu", pessimism=False).unwrapped.vec):
        assert (env.model.config.disagreement_penalty, env.model.config.disagreement_limit) == (0.0, None)
        obs, _ = env.reset(seed=0)
        assert np.isfinite(env.step(env.planned_actions())[1]).all()


def test_the_one_line_swap_builds_the_batched_env_on_the_shipped_model():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from agents import ImaginationA2C, ImaginationPPO
    from agents.env_factory import DEFAULT_N_ENVS

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)       # following the plan: never off-plan; n_steps fits
        for task in ("Imagined-HalfCheetah-v4", "HalfCheetah-v4"):
            model = ImaginationPPO("MlpPolicy", task, n_epochs=1, seed=0)
            assert model.n_envs == DEFAULT_N_ENVS and model.n_steps == model.imagined.horizon == 5
            assert model.imagined.model.spec.env_id == "HalfCheetah-v4"
        model.learn(DEFAULT_N_ENVS * 5)
        a2c = ImaginationA2C("MlpPolicy", "Imagined-HalfCheetah-v4", n_envs=8, env_kwargs={"device": "cpu"})
        assert a2c.n_envs == 8 and a2c.n_steps == 5
        a2c.learn(8 * 5)
    assert np.isfinite(model.imagined.model.guidance_scale)
    PPO("MlpPolicy", "Imagined-HalfCheetah-v4", n_steps=8, batch_size=8, n_epochs=1, seed=0).learn(8)
    many = make_vec_env("Imagined-HalfCheetah-v4", n_envs=2, env_kwargs={"device": "cpu"})
    with pytest.raises(ValueError,
                       match=r"ImaginationPPO\('MlpPolicy', 'Imagined-HalfCheetah-v4', n_envs=2\)"):
        ImaginationPPO("MlpPolicy", many)


def test_registered_episodes_outlast_one_plan_and_max_episode_steps_sets_their_length():
    from imagined_env.registration import EPISODE_STEPS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        default = gym.make_vec("Imagined-Hopper-v4", num_envs=2)
        short = gym.make_vec("Imagined-Hopper-v4", num_envs=2, max_episode_steps=7)
        one_plan = gym.make_vec("Imagined-Hopper-v4", num_envs=2, episode_steps=5)
        single = gym.make("Imagined-Hopper-v4")
    assert EPISODE_STEPS > default.horizon and default.episode_steps == EPISODE_STEPS
    assert short.episode_steps == 7 and one_plan.episode_steps == 5
    assert single.unwrapped.vec.episode_steps == EPISODE_STEPS
    for env in (default, short, one_plan, single):
        env.close()
