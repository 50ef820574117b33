"""The imagination policy's own observation normalisation: fixed statistics of the env's start states,
kept in the policy, so a learner trained in imagination acts on the real task's raw observations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from agents import ImaginationPPO, ImaginedSB3VecEnv
from agents.plan_following import OBS_CLIP, OBS_MIN_STD
from imagined_env.vector_env import ImaginedVectorEnv
from tests.conftest import linear_buffer
from tests.fakes import LinearFakeModel


def start_states(seed: int = 0) -> np.ndarray:
    """Start observations with very different scales per dimension, one of them constant."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(64, 3)) * np.array([0.1, 20.0, 1.0]) + np.array([1.0, -5.0, 0.0])
    obs[:, 2] = 0.3
    return obs.astype(np.float32)


def imagined(starts: np.ndarray, n_envs: int = 8) -> ImaginedSB3VecEnv:
    return ImaginedSB3VecEnv(ImaginedVectorEnv(LinearFakeModel(5), n_envs, start_states=starts))


def reference_features(obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """z-scores by the start states' mean and population std (floored), clipped: in float64."""
    s = np.asarray(starts, np.float64)
    std = np.maximum(s.std(axis=0), OBS_MIN_STD)
    return np.clip((obs.astype(np.float64) - s.mean(axis=0)) / std, -OBS_CLIP, OBS_CLIP)


def test_the_policy_sees_observations_z_scored_by_its_env_start_states():
    starts = start_states()
    model = ImaginationPPO("MlpPolicy", imagined(starts), n_steps=5, batch_size=40, seed=0)
    obs = np.array([[1.0, -5.0, 0.3], [1.1, 15.0, 0.3], [0.0, -500.0, 0.31], [1.0, 0.0, 10.0]], np.float32)
    features = model.policy.extract_features(torch.as_tensor(obs))
    np.testing.assert_allclose(features.numpy(), reference_features(obs, starts), rtol=1e-5, atol=1e-5)
    assert features[2, 1] == -OBS_CLIP and features[3, 2] == OBS_CLIP   # far out, and the constant column


def test_the_normalisation_travels_with_the_saved_learner_and_is_not_refitted(tmp_path):
    starts = start_states()
    model = ImaginationPPO("MlpPolicy", imagined(starts), n_steps=5, batch_size=40, n_epochs=1, seed=0)
    model.learn(5 * 8)
    model.save(tmp_path / "learner.zip")
    obs = start_states(seed=1) * 3.0
    expected, _ = model.predict(obs, deterministic=True)

    loaded = ImaginationPPO.load(tmp_path / "learner.zip")          # no env: raw observations in
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    other = imagined(start_states(seed=2) * 5.0 + 1.0)               # other start states: kept, not refitted
    loaded = ImaginationPPO.load(tmp_path / "learner.zip", env=other)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    torch.testing.assert_close(loaded.policy.features_extractor.obs_mean,
                               torch.as_tensor(starts.astype(np.float64).mean(0), dtype=torch.float32))


def test_under_vecnormalize_or_when_turned_off_the_policy_leaves_observations_alone():
    starts = start_states()
    obs = torch.as_tensor(start_states(seed=1) * 3.0)
    under_vecnormalize = ImaginationPPO("MlpPolicy", VecNormalize(imagined(starts)), n_steps=5, batch_size=40,
                                        seed=0)
    turned_off = ImaginationPPO("MlpPolicy", imagined(starts), n_steps=5, batch_size=40, seed=0,
                                policy_kwargs={"normalize_observations": False})
    for model in (under_vecnormalize, turned_off):
        torch.testing.assert_close(model.policy.extract_features(obs), obs)   # no double normalisation
    assert not any("obs_mean" in key for key in turned_off.policy.state_dict())   # older files still load


def test_a_vecnormalize_of_rewards_alone_leaves_the_policys_normalisation_on():
    starts = start_states()
    model = ImaginationPPO("MlpPolicy", VecNormalize(imagined(starts), norm_obs=False), n_steps=5,
                           batch_size=40, seed=0)
    obs = start_states(seed=1) * 3.0
    np.testing.assert_allclose(model.policy.extract_features(torch.as_tensor(obs)).numpy(),
                               reference_features(obs, starts), rtol=1e-5, atol=1e-5)
    mean, _ = model.imagined.replay.policy(torch.as_tensor(obs))   # guidance: normalised once, by it
    torch.testing.assert_close(mean, model.policy.get_distribution(torch.as_tensor(obs)).distribution.mean)


def test_on_a_real_env_it_is_sb3_ppo_exactly():
    """Not wired to an imagined env, nothing is fitted: same actions and values as SB3's PPO."""
    ours = ImaginationPPO("MlpPolicy", "Pendulum-v1", seed=0)
    theirs = PPO("MlpPolicy", "Pendulum-v1", seed=0)
    assert not ours.policy.observations_fitted
    obs = torch.as_tensor(np.random.default_rng(0).normal(scale=30.0, size=(16, 3)), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours.policy.get_distribution(obs).distribution.mean,
                                   theirs.policy.get_distribution(obs).distribution.mean)
        torch.testing.assert_close(ours.policy.predict_values(obs), theirs.policy.predict_values(obs))


@pytest.mark.parametrize("shared", [True, False])
def test_every_path_of_the_policy_goes_through_the_same_normalisation(shared):
    """Guidance, `predict`, values (bootstraps) and the update's `evaluate_actions` all see z-scores."""
    starts = linear_buffer(5, 10).observations() * 4.0 + 2.0
    model = ImaginationPPO("MlpPolicy", imagined(starts, n_envs=4), n_steps=5, batch_size=20, seed=0,
                           policy_kwargs={"share_features_extractor": shared})
    policy = model.policy
    states = torch.randn(6, 3) * 4.0 + 2.0
    normed = torch.as_tensor(reference_features(states.numpy(), starts), dtype=torch.float32)
    with torch.no_grad():   # the network fed the reference z-scores by hand, past the features extractors
        ref_mean = policy.action_net(policy.mlp_extractor.forward_actor(normed))
        ref_value = policy.value_net(policy.mlp_extractor.forward_critic(normed))
        guided, _ = model.imagined.replay.policy(states)
        _, log_prob, _ = policy.evaluate_actions(states, ref_mean)
        action, _ = model.predict(states.numpy(), deterministic=True)
        torch.testing.assert_close(guided, ref_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(policy.predict_values(states), ref_value, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(action, ref_mean.clamp(-1, 1).numpy(), rtol=1e-4, atol=1e-6)
        ref_log_prob = policy.get_distribution(states).log_prob(ref_mean)
        torch.testing.assert_close(log_prob, ref_log_prob)


def test_non_flat_observations_are_refused_by_name():
    from agents import PlanFollowingPolicy
    with pytest.raises(ValueError, match="normalize_observations needs flat Box observations"):
        PlanFollowingPolicy(spaces.Box(-1, 1, (2, 3)), spaces.Box(-1, 1, (1,)), lambda _: 3e-4,
                            normalize_observations=True)
    PlanFollowingPolicy(spaces.Box(-1, 1, (2, 3)), spaces.Box(-1, 1, (1,)), lambda _: 3e-4)


def test_a_learner_saved_before_the_normalisation_existed_loads_and_acts_as_saved(tmp_path):
    """A file whose policy settings lack `normalize_observations` was trained on raw observations: it
    loads without the normalisation, onto an imagined env too, and its actions do not change."""
    starts = start_states()
    model = ImaginationPPO("MlpPolicy", imagined(starts), n_steps=5, batch_size=40, n_epochs=1, seed=0,
                           policy_kwargs={"normalize_observations": False})
    model.learn(5 * 8)
    del model.policy_kwargs["normalize_observations"]            # as files of before were saved
    model.save(tmp_path / "old.zip")
    obs = start_states(seed=1) * 3.0
    expected, _ = model.predict(obs, deterministic=True)
    loaded = ImaginationPPO.load(tmp_path / "old.zip", env=imagined(starts))
    assert not loaded.policy.observations_fitted
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    loaded.learn(5 * 8)                                           # and trains on, still without it
    assert not loaded.policy.observations_fitted


def test_a_normalising_policy_refuses_an_env_that_normalises_observations_too(tmp_path):
    starts = start_states()
    model = ImaginationPPO("MlpPolicy", imagined(starts), n_steps=5, batch_size=40, n_epochs=1, seed=0)
    with pytest.raises(ValueError, match="normalises its observations itself.*norm_obs=False"):
        model.set_env(VecNormalize(imagined(starts)))
    model.set_env(VecNormalize(imagined(starts), norm_obs=False))   # rewards alone are fine
    model.save(tmp_path / "learner.zip")
    loaded = ImaginationPPO.load(tmp_path / "learner.zip", env=VecNormalize(imagined(starts)))
    with pytest.raises(ValueError, match="normalises its observations itself"):
        loaded.learn(5 * 8)                                        # before any rollout step


def test_the_statistics_stay_those_of_the_start_states_while_learning():
    """Fixed, not running: after updates the policy still z-scores by the start states."""
    starts = start_states()
    model = ImaginationPPO("MlpPolicy", imagined(starts), n_steps=5, batch_size=40, n_epochs=1, seed=0,
                           policy_kwargs={"log_std_init": 1.0})     # wide actions: states spread out
    model.learn(5 * 8 * 3)
    obs = start_states(seed=1) * 3.0
    np.testing.assert_allclose(model.policy.extract_features(torch.as_tensor(obs)).numpy(),
                               reference_features(obs, starts), rtol=1e-5, atol=1e-5)


def test_a_features_extractor_of_the_callers_own_leaves_the_normalisation_off():
    from stable_baselines3.common.torch_layers import FlattenExtractor
    model = ImaginationPPO("MlpPolicy", imagined(start_states()), n_steps=5, batch_size=40, seed=0,
                           policy_kwargs={"features_extractor_class": FlattenExtractor})
    assert type(model.policy.features_extractor) is FlattenExtractor and not model.policy.observations_fitted
