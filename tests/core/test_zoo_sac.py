"""SAC as the RL Zoo tunes it for MuJoCo reaches the learner, and runs under compare's evaluation."""
from __future__ import annotations

import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import VecNormalize

from agents.compare import CompareSpec, make_model_free, parse_methods, run_model_free
from agents.zoo import ZOO_SAC, zoo_settings


def test_zoo_sac_is_sb3_defaults_after_10k_random_steps_without_normalisation():
    assert set(ZOO_SAC) == {"HalfCheetah", "Hopper", "Walker2d"}
    settings = zoo_settings("sac", "Hopper-v4")
    assert settings.kwargs == {"learning_starts": 10_000} and not settings.normalized
    assert settings.describe() == ("RL Zoo tuned Hopper SAC (learning_starts 10000; SB3 default network; "
                                   "SB3 defaults otherwise), no normalisation")
    model = make_model_free(settings, "Hopper-v4", seed=0)
    assert isinstance(model, SAC) and not isinstance(model.get_env(), VecNormalize)
    assert (model.learning_starts, model.batch_size, model.buffer_size, model.gamma, model.tau) == (
        10_000, 256, 1_000_000, 0.99, 0.005)
    assert model.ent_coef == "auto" and model.learning_rate == 3e-4
    model.get_env().close()
    with pytest.raises(ValueError, match="no tuned SAC for 'Swimmer-v4'"):
        zoo_settings("sac", "Swimmer-v4")
    assert parse_methods("sac,ppo") == ("sac", "ppo")


@pytest.mark.mujoco
def test_sac_is_evaluated_on_schedule_and_stops_at_the_budget():
    spec = CompareSpec("HalfCheetah-v4", ("sac",), (0,), budget=200, eval_every=100, eval_episodes=1,
                       imagination=None, max_episode_steps=20)
    points = run_model_free("sac", spec, seed=0, progress=False)
    assert [p.real_steps for p in points] == [0, 100, 200] and {p.method for p in points} == {"sac"}
