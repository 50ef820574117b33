"""World-model error and action ranking against the simulator, with models whose answer is known."""
from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from imagined_env.data.collect import set_mujoco_state
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.schedule import ScheduleConfig
from imagined_env.evaluation import (
    action_ranking,
    action_sensitivity,
    lambda_returns,
    open_loop_error,
    real_start_obs,
)
from imagined_env.training import spec_from_env
from imagined_env.world_model import Imagination, WorldModel, WorldModelConfig
from tests.mujoco.real_states import real_states as shared_real_states

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]
H = 6


def real_states(env_id: str, n: int = 5):
    return shared_real_states(env_id, n, steps=200)


def exact_imagination(env, qpos, qvel, actions) -> Imagination:
    """What a perfect model would generate: the simulator's own trajectory under clip(actions)."""
    batch = len(qpos)
    obs = np.zeros((batch, H + 1, env.observation_space.shape[0]), np.float32)
    rewards, terms = np.zeros((batch, H), np.float32), np.zeros((batch, H), bool)
    for b in range(batch):
        obs[b, 0] = set_mujoco_state(env, qpos[b], qvel[b])
        for k in range(H):
            step = env.unwrapped.step(np.clip(actions[b, k], -1, 1))
            obs[b, k + 1], rewards[b, k], terms[b, k] = step[:3]
            if terms[b, k]:
                terms[b, k:] = True
                break
    return Imagination(*(torch.as_tensor(v) for v in (obs, actions, rewards, terms)), spread=float("nan"))


def test_a_perfect_imagination_has_zero_error_and_an_offset_its_square():
    env, _, qpos, qvel = real_states("HalfCheetah-v4")
    actions = np.random.default_rng(1).normal(scale=2.0, size=(5, H, 6)).astype(np.float32)  # often > 1
    perfect = exact_imagination(env, qpos, qvel, actions)
    error = open_loop_error(env, perfect, qpos, qvel)
    assert error.obs_mse.shape == error.reward_mse.shape == (H,)
    np.testing.assert_allclose(error.obs_mse, 0.0, atol=1e-8)
    np.testing.assert_allclose(error.reward_mse, 0.0, atol=1e-8)
    assert np.all(error.n_valid == 5)
    shifted = perfect.observations.clone()
    shifted[:, 1:] += 0.5
    offset = open_loop_error(env, Imagination(shifted, perfect.actions, perfect.rewards + 2.0,
                                              perfect.terminations, float("nan")), qpos, qvel)
    np.testing.assert_allclose(offset.obs_mse, 0.25, rtol=1e-4)
    np.testing.assert_allclose(offset.reward_mse, 4.0, rtol=1e-4)


def test_steps_after_a_termination_are_not_compared():
    env, _, qpos, qvel = real_states("Hopper-v4", n=3)
    perfect = exact_imagination(env, qpos, qvel, np.zeros((3, H, 3), np.float32))
    terms = perfect.terminations.clone()
    terms[0, 2:] = True                                  # the model ends trajectory 0 after step 2
    garbage = perfect.observations.clone()
    garbage[0, 4:] = 1e6                                 # padding: must not count
    imagination = Imagination(garbage, perfect.actions, perfect.rewards, terms, 0.0)
    error = open_loop_error(env, imagination, qpos, qvel)
    np.testing.assert_array_equal(error.n_valid, [3, 3, 3, 2, 2, 2])
    np.testing.assert_allclose(error.obs_mse, 0.0, atol=1e-8)
    still = perfect.observations[:, :1].expand_as(perfect.observations).clone()
    still[0, 4:] = np.inf                                # diverged padding: must not count either
    no_motion = open_loop_error(env, Imagination(still, perfect.actions, perfect.rewards, terms, 0.0),
                                qpos, qvel)
    np.testing.assert_allclose(no_motion.obs_mse, error.no_motion_mse, rtol=1e-6)
    real = perfect.observations.numpy()
    by_hand = ((real[:, 1:] - real[:, :1]) ** 2).mean(axis=2)
    np.testing.assert_allclose(error.no_motion_mse, [by_hand[:, k].mean() if k < 3 else by_hand[1:, k].mean()
                                                     for k in range(H)], rtol=1e-6)


def fixed_gaussian(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(len(states), 6), torch.full((len(states), 6), 0.3)


def test_a_world_model_is_measured_without_touching_its_guidance():
    env, buffer, qpos, qvel = real_states("HalfCheetah-v4", n=4)
    spec = spec_from_env(env, "HalfCheetah-v4")
    config = WorldModelConfig(horizon=H, denoiser=DenoiserConfig(width=32, depth=1, time_dim=8),
                              schedule=ScheduleConfig(n_steps=8))
    model = WorldModel(spec, config, Normaliser.fit(buffer, -1.0, 1.0), "cpu")
    scale = model.guidance_scale
    error = open_loop_error(env, model, qpos, qvel, policy=fixed_gaussian, n_sample_steps=2,
                            generator=torch.Generator().manual_seed(0))
    assert model.guidance_scale == scale
    assert np.all(np.isfinite(error.obs_mse)) and np.all(error.obs_mse > 0)
    with pytest.raises(ValueError, match="does not start from"):
        imagination = model.imagine(real_start_obs(env, qpos, qvel) + 1.0, n_sample_steps=2)
        open_loop_error(env, imagination, qpos, qvel)


class _ReplayingModel:
    """Stands in for a WorldModel in `action_sensitivity`: replays given actions through `generate`."""

    horizon = H
    spec = SimpleNamespace(act_dim=6)

    def __init__(self, generate):
        self.generate = generate

    def imagine(self, starts, *, actions, generator=None, n_sample_steps=None):
        return self.generate(np.asarray(actions))


def test_action_sensitivity_of_the_simulator_itself_is_one_and_of_an_action_blind_model_near_zero():
    env, _, qpos, qvel = real_states("HalfCheetah-v4", n=64)
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (64, H, 6)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.5, a.shape), -1, 1).astype(np.float32)
    other = gym.make("HalfCheetah-v4")
    oracle = _ReplayingModel(lambda actions: exact_imagination(other, qpos, qvel, actions))
    exact = action_sensitivity(env, oracle, qpos, qvel, a, b)
    assert exact.correlation == pytest.approx(1.0, abs=1e-6) and exact.n == 64
    assert exact.real_std == pytest.approx(exact.imagined_std, rel=1e-5) and exact.real_std > 0.1

    def blind(actions):  # right states, rewards that ignore the actions
        out = exact_imagination(other, qpos, qvel, actions)
        noise = torch.as_tensor(rng.normal(size=out.rewards.shape), dtype=torch.float32)
        return Imagination(out.observations, out.actions, noise, out.terminations, out.spread)

    assert abs(action_sensitivity(env, _ReplayingModel(blind), qpos, qvel, a, b).correlation) < 0.3
    with pytest.raises(ValueError, match=r"action sequences must have shape \(64, 6, 6\)"):
        action_sensitivity(env, oracle, qpos, qvel, a[:, :2], b)


class _SimulatorModel:
    """Duck-types `WorldModel.imagine` on HalfCheetah with the simulator itself: a start observation fixes
    the state up to the x position, on which nothing depends. The model replays `seen(actions)`, adds
    N(0, reward_noise^2) from the generator to each reward, N(0, obs_noise^2) to each imagined state after the
    start, and leak * sum(a_{H-1}) to rows before H-1."""

    horizon = H
    spec = SimpleNamespace(act_dim=6)
    device = torch.device("cpu")

    def __init__(self, seen=lambda actions: actions, reward_noise: float = 0.0, leak: float = 0.0,
                 obs_noise: float = 0.0):
        self.sim = gym.make("HalfCheetah-v4")
        self.seen, self.reward_noise, self.leak, self.obs_noise = seen, reward_noise, leak, obs_noise
        self.calls = 0

    def imagine(self, start_obs, policy=None, *, generator=None, actions=None, n_sample_steps=None):
        assert policy is None and np.shape(actions)[1] == H
        self.calls += 1
        starts, actions = np.asarray(start_obs, np.float64), np.asarray(actions, np.float32)
        qpos = np.concatenate([np.zeros((len(starts), 1)), starts[:, :8]], axis=1)
        out = exact_imagination(self.sim, qpos, starts[:, 8:], self.seen(actions))
        rewards = out.rewards + self.reward_noise * torch.randn(out.rewards.shape, generator=generator)
        rewards[:, :H - 1] += self.leak * torch.as_tensor(actions[:, H - 1].sum(axis=1))[:, None]
        observations = out.observations.clone()
        observations[:, 1:] += self.obs_noise * torch.randn(observations[:, 1:].shape, generator=generator)
        return Imagination(observations, torch.as_tensor(actions), rewards, out.terminations, float("nan"))


def ranking_case(n: int = 64):
    env, _, qpos, qvel = real_states("HalfCheetah-v4", n=n)
    actions = np.random.default_rng(1).uniform(-1, 1, (n, H, 6)).astype(np.float32)
    return env, qpos, qvel, actions


def real_returns(qpos, qvel, actions) -> np.ndarray:
    """Real rewards [B, H] of actions executed open-loop, by a separate simulator."""
    return exact_imagination(gym.make("HalfCheetah-v4"), qpos, qvel, actions).rewards.numpy()


def test_the_simulator_as_a_model_ranks_perfectly_without_noise_or_leak():
    env, qpos, qvel, a = ranking_case()
    ranking = action_ranking(env, _SimulatorModel(), qpos, qvel, a, np.random.default_rng(3),
                             leak_rows=range(1, H))
    for figures in (ranking.ranking_independent, ranking.ranking_common):
        assert list(figures) == [0.1, 0.3]
        np.testing.assert_allclose(list(figures.values()), 1.0, atol=1e-6)
    assert ranking.noise_to_signal == 0.0 and ranking.n == 64
    assert ranking.leak_by_row == {k: 0.0 for k in range(1, H)} and ranking.leak == 0.0
    assert list(ranking.as_log_dict()) == [
        "world_model/ranking_0.1", "world_model/ranking_0.1_common", "world_model/ranking_0.3",
        "world_model/ranking_0.3_common", "world_model/noise_to_signal", "world_model/leak",
        *(f"world_model/leak_row{k}" for k in range(1, H))]
    default = action_ranking(env, _SimulatorModel(), qpos, qvel, a, np.random.default_rng(3), sigmas=(0.2,))
    assert list(default.leak_by_row) == [H - 1]
    assert list(default.as_log_dict()) == ["world_model/ranking_0.2", "world_model/ranking_0.2_common",
                                           "world_model/noise_to_signal", "world_model/leak"]


def forward_speed_value(obs: np.ndarray) -> np.ndarray:
    """A critic of HalfCheetah's kind: the value of a state grows with its forward speed (obs 8)."""
    return 30.0 * obs[:, 8] + 2.0 * obs[:, 1]


def test_with_a_critic_the_advantage_ranking_is_exact_for_the_simulator_and_sees_state_errors():
    env, qpos, qvel, a = ranking_case()
    exact = action_ranking(env, _SimulatorModel(), qpos, qvel, a, np.random.default_rng(3),
                           value=forward_speed_value, gamma=0.99, gae_lambda=0.9)
    np.testing.assert_allclose(list(exact.advantage_ranking.values()), 1.0, atol=1e-6)
    assert list(exact.as_log_dict())[:6] == [
        "world_model/ranking_0.1", "world_model/ranking_0.1_common", "world_model/advantage_ranking_0.1",
        "world_model/ranking_0.3", "world_model/ranking_0.3_common", "world_model/advantage_ranking_0.3"]
    # exact rewards, noisy states: the reward-only ranking cannot tell, the advantage ranking through the
    # critic can; and the figures without a critic are the same as before (same model and simulator runs)
    def noisy(obs_noise, value=forward_speed_value):
        model = _SimulatorModel(obs_noise=obs_noise)
        return action_ranking(env, model, qpos, qvel, a, np.random.default_rng(3), value=value, gamma=0.99,
                              gae_lambda=0.9)

    rankings = [noisy(s) for s in (0.1, 0.3, 1.0)]
    for ranking in rankings:   # the rewards are exact: the return ranking and the critic-free control see 1
        np.testing.assert_allclose(list(ranking.ranking_independent.values()), 1.0, atol=1e-6)
        np.testing.assert_allclose(list(ranking.advantage_ranking_without_critic.values()), 1.0, atol=1e-6)
    for sigma in (0.1, 0.3):   # the more state noise, the worse the advantage ranking
        by_noise = [r.advantage_ranking[sigma] for r in rankings]
        assert by_noise == sorted(by_noise, reverse=True) and by_noise[0] < 0.99 and by_noise[-1] < 0.5
    # with a critic, the other figures and their random streams are those of a ranking without one
    def with_reward_noise(value):
        model = _SimulatorModel(reward_noise=0.3, obs_noise=0.3)
        return action_ranking(env, model, qpos, qvel, a, np.random.default_rng(3), value=value,
                              leak_rows=range(1, H))

    plain, critic = with_reward_noise(None), with_reward_noise(forward_speed_value)
    assert plain.advantage_ranking == plain.advantage_ranking_without_critic == {}
    assert len(critic.advantage_ranking) == len(critic.advantage_ranking_without_critic) == 2
    assert (plain.ranking_independent, plain.ranking_common, plain.noise_to_signal, plain.leak_by_row) == (
        critic.ranking_independent, critic.ranking_common, critic.noise_to_signal, critic.leak_by_row)
    assert 0 < plain.noise_to_signal and all(r < 1 for r in plain.ranking_independent.values())


def test_lambda_returns_match_sb3s_generalised_advantage_estimate_with_terminations():
    from gymnasium import spaces
    from stable_baselines3.common.buffers import RolloutBuffer

    rng = np.random.default_rng(0)
    batch, horizon, gamma, lam = 4, 5, 0.97, 0.8
    rewards = rng.normal(size=(batch, horizon))
    next_values = rng.normal(size=(batch, horizon)) * 5
    terms = np.zeros((batch, horizon), bool)
    terms[1, 2] = terms[2, 4] = terms[3, 0] = True
    buffer = RolloutBuffer(horizon, spaces.Box(-1, 1, (1,)), spaces.Box(-1, 1, (1,)), gamma=gamma,
                           gae_lambda=lam, n_envs=batch)
    v0 = rng.normal(size=batch)                       # V(s_0): G_0 does not depend on it
    for k in range(horizon):
        starts = np.zeros(batch) if k == 0 else terms[:, k - 1].astype(float)
        value = v0 if k == 0 else next_values[:, k - 1]
        buffer.add(np.zeros((batch, 1)), np.zeros((batch, 1)), rewards[:, k], starts,
                   torch.as_tensor(value), torch.zeros(batch))
    buffer.compute_returns_and_advantage(torch.as_tensor(next_values[:, -1]), terms[:, -1])
    np.testing.assert_allclose(lambda_returns(rewards, next_values, terms, gamma, lam), buffer.returns[0],
                               rtol=1e-5)


def test_an_action_blind_model_ranks_nothing_and_its_noise_is_measured_against_the_real_signal():
    env, qpos, qvel, a = ranking_case()
    blind = action_ranking(env, _SimulatorModel(seen=np.zeros_like), qpos, qvel, a, np.random.default_rng(3))
    # its imagined return differences are all 0: no ranking, reported as a correlation of 0
    assert blind.ranking_independent == blind.ranking_common == {0.1: 0.0, 0.3: 0.0}
    assert blind.noise_to_signal == 0.0
    noisy = action_ranking(env, _SimulatorModel(seen=np.zeros_like, reward_noise=0.5), qpos, qvel, a,
                           np.random.default_rng(3))
    assert noisy.ranking_common == {0.1: 0.0, 0.3: 0.0}     # common noise cancels in the differences
    assert all(0 < abs(r) < 0.3 for r in noisy.ranking_independent.values())  # noise, uncorrelated
    rng = np.random.default_rng(3)                           # the first perturbation drawn is sigma = 0.1's
    b = np.clip(a + rng.normal(0.0, 0.1, a.shape), -1, 1)
    signal = np.std(real_returns(qpos, qvel, b).sum(axis=1) - real_returns(qpos, qvel, a).sum(axis=1))
    # the difference of two independent returns has std 0.5 * sqrt(2 H); a 64-sample std is within ~10 %
    assert noisy.noise_to_signal == pytest.approx(0.5 * np.sqrt(2 * H) / signal, rel=0.25)


def test_a_model_whose_earlier_rewards_see_the_last_action_leaks_by_the_hand_computed_amount():
    env, qpos, qvel, a = ranking_case()
    ranking = action_ranking(env, _SimulatorModel(leak=0.5), qpos, qvel, a, np.random.default_rng(3),
                             leak_rows=range(1, H))
    rng = np.random.default_rng(3)
    rng.normal(0.0, 0.1, a.shape)
    changed = a.copy()                                       # a_{H-1} from the largest sigma's b
    changed[:, H - 1] = np.clip(a + rng.normal(0.0, 0.3, a.shape), -1, 1)[:, H - 1]
    imagined_change = 0.5 * np.abs((changed[:, H - 1] - a[:, H - 1]).sum(axis=1)).mean()
    real_change = np.abs(real_returns(qpos, qvel, changed)[:, H - 1]
                         - real_returns(qpos, qvel, a)[:, H - 1]).mean()
    assert real_change > 0.01
    assert ranking.leak == pytest.approx(imagined_change / real_change, rel=1e-4)
    assert ranking.leak_by_row == {**{k: 0.0 for k in range(1, H - 1)}, H - 1: ranking.leak}


@pytest.mark.parametrize(("change", "message"), [
    ({"actions": np.zeros((8, H - 1, 6))}, r"actions must have shape \(8, 6, 6\) .* got \(8, 5, 6\)"),
    ({"sigmas": (0.1, 0.0)}, r"sigmas must be distinct, finite and > 0 .* got \(0.1, 0.0\)"),
    ({"sigmas": (-0.3,)}, r"sigmas .* got \(-0.3,\)"),
    ({"sigmas": ()}, r"sigmas .* got \(\)"),
    ({"n": 1}, r"B >= 2 start states, got B = 1"),
    ({"qvel_rows": 7}, r"qvel must have shape \(8, 9\)"),
    ({"leak_rows": (0,)}, r"leak_rows must be distinct rows in 1\.\.5 .* got \(0,\)"),
    ({"leak_rows": (2, H)}, r"leak_rows .* got \(2, 6\)"),
    ({"gamma": 1.5}, r"gamma and gae_lambda must lie in \[0, 1\], got 1.5 and 0.95"),
])
def test_bad_ranking_input_is_refused_before_any_simulation(change, message):
    env, _, qpos, qvel = real_states("HalfCheetah-v4", n=8)
    n = change.get("n", 8)
    qpos, qvel = qpos[:n], qvel[:change.get("qvel_rows", n)]
    actions = change.get("actions", np.zeros((n, H, 6), np.float32))
    model = _SimulatorModel()
    before = env.unwrapped.data.qpos.copy()
    kwargs = {k: v for k, v in change.items() if k in ("sigmas", "leak_rows", "gamma")}
    with pytest.raises(ValueError, match=message):
        action_ranking(env, model, qpos, qvel, actions, np.random.default_rng(0), **kwargs)
    assert model.calls == 0 and np.array_equal(env.unwrapped.data.qpos, before)


def test_a_world_model_is_ranked_without_touching_its_guidance():
    env, buffer, qpos, qvel = real_states("HalfCheetah-v4", n=6)
    config = WorldModelConfig(horizon=H, denoiser=DenoiserConfig(width=32, depth=1, time_dim=8),
                              schedule=ScheduleConfig(n_steps=8))
    model = WorldModel(spec_from_env(env, "HalfCheetah-v4"), config, Normaliser.fit(buffer, -1.0, 1.0), "cpu")
    scale = model.guidance_scale
    a = np.random.default_rng(1).uniform(-1, 1, (6, H, 6)).astype(np.float32)
    ranking = action_ranking(env, model, qpos, qvel, a, np.random.default_rng(3), n_sample_steps=2)
    assert model.guidance_scale == scale
    figures = ranking.as_log_dict()
    assert len(figures) == 6 and all(np.isfinite(v) for v in figures.values())
    assert ranking.noise_to_signal > 0                        # an untrained model's samples differ
