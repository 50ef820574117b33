"""The autoregressive baselines on a known linear system: they learn it, give `Imagination`s of the
right shapes, condition on clipped actions and make the network calls their design says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imagined_env.baselines import (
    ARDiffusionConfig,
    EnsembleConfig,
    StepwiseImaginer,
    fit_ar_diffusion,
    fit_mlp_ensemble,
)
from imagined_env.baselines.mlp_ensemble import EnsembleTrainer, new_mlp_ensemble
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.diffusion.denoiser import CAUSAL_KINDS, DenoiserConfig
from imagined_env.diffusion.schedule import ScheduleConfig
from imagined_env.training import TrainConfig
from imagined_env.world_model import EnvSpec

SPEC = EnvSpec(env_id="linear", obs_dim=3, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
ROT = 0.9 * np.array([[np.cos(0.5), -np.sin(0.5), 0.0], [np.sin(0.5), np.cos(0.5), 0.0], [0.0, 0.0, 0.5]])
B_MAT = np.array([[0.8, 0.0], [0.0, 0.8], [0.5, -0.5]])
W_S, W_A = np.array([1.0, -0.5, 0.3]), np.array([0.2, 0.4])


def linear_step(s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s [N, 3], a [N, 2] (unclipped) -> next state [N, 3], reward [N]; the system sees clip(a)."""
    a = np.clip(a, -1.0, 1.0)
    return s @ ROT.T + a @ B_MAT.T, s @ W_S + a @ W_A


def linear_buffer(n_episodes: int, length: int, seed: int) -> EpisodeBuffer:
    """Random actions in [-1.5, 1.5] (a third of them out of bounds), stored unclipped."""
    rng = np.random.default_rng(seed)
    buffer = EpisodeBuffer(3, 2, 0, 0, env_id="linear")
    for _ in range(n_episodes):
        s = [rng.normal(size=3)]
        actions = rng.uniform(-1.5, 1.5, size=(length, 2))
        rewards = []
        for a in actions:
            nxt, r = linear_step(s[-1][None], a[None])
            s.append(nxt[0])
            rewards.append(r[0])
        buffer.add_episode(np.array(s), actions, np.array(rewards), False,
                           np.zeros((length + 1, 0)), np.zeros((length + 1, 0)))
    return buffer


def held_out(n: int = 500) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    data = linear_buffer(n // 50, 50, seed=123).transitions()
    nxt, rew = linear_step(data.obs, data.actions)
    return torch.as_tensor(data.obs), torch.as_tensor(data.actions), nxt, rew


def linear_policy(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = 0.5 * states[:, :2]
    return mean, torch.full_like(mean, 0.3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: on a shared CPU, intra-op thread hand-offs cost more than the math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_buffer() -> EpisodeBuffer:
    return linear_buffer(40, 50, seed=0)


@pytest.fixture(scope="module")
def ensemble(train_buffer):
    config = EnsembleConfig(n_members=3, n_elites=2, width=64, depth=2)
    model, _ = fit_mlp_ensemble(train_buffer, SPEC, 600, config, TrainConfig(lr=3e-3, batch_size=128),
                                device="cpu", progress=False)
    return model


@pytest.fixture(scope="module")
def ar_diffusion(train_buffer):
    config = ARDiffusionConfig(denoiser=DenoiserConfig(width=128, depth=2, time_dim=16),
                               schedule=ScheduleConfig(n_steps=16), ema_decay=0.9)
    model, _ = fit_ar_diffusion(train_buffer, SPEC, 800, config, TrainConfig(lr=1e-3, batch_size=128),
                                device="cpu", progress=False)
    return model


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_ar_diffusion_refuses_a_causal_denoiser(kind):
    """Its condition rides in the action channels, which a causal denoiser hides from the row's states."""
    with pytest.raises(ValueError, match=f"non-causal denoiser .*got '{kind}'"):
        ARDiffusionConfig(denoiser=DenoiserConfig(kind=kind, width=16))


@pytest.mark.parametrize("name,bound", [("ensemble", 0.01), ("ar_diffusion", 0.1)])
def test_one_step_error_far_below_copying_the_state(name, bound, request):
    model = request.getfixturevalue(name)
    obs, actions, true_next, true_reward = held_out()
    next_obs, rewards, terminal = model.step(obs, actions, torch.Generator().manual_seed(0))
    mse = float(((next_obs.numpy() - true_next) ** 2).mean())
    copy_mse = float(((obs.numpy() - true_next) ** 2).mean())
    reward_mse = float(((rewards.numpy() - true_reward) ** 2).mean())
    assert mse < bound * copy_mse, (mse, copy_mse)  # measured: ensemble ~7e-4, AR diffusion ~0.05
    assert reward_mse < 0.1 * true_reward.var(), (reward_mse, true_reward.var())
    assert not terminal.any()


@pytest.mark.parametrize("name", ["ensemble", "ar_diffusion"])
def test_rollout_shapes_and_unclipped_policy_actions(name, request):
    model = request.getfixturevalue(name)
    far = lambda s: (torch.full((len(s), 2), 5.0), torch.full((len(s), 2), 0.1))
    out = model.rollout(np.zeros((5, 3)), far, 4, torch.Generator().manual_seed(0))
    assert out.observations.shape == (5, 5, 3) and out.actions.shape == (5, 4, 2)
    assert out.rewards.shape == (5, 4) and out.terminations.shape == (5, 4)
    assert out.terminations.dtype == torch.bool
    torch.testing.assert_close(out.observations[:, 0], torch.zeros(5, 3))
    assert (out.actions > 4.0).all()  # what the policy sampled, not the clipped action
    assert abs(out.spread - 1.0) < 0.3


@pytest.mark.parametrize("name", ["ensemble", "ar_diffusion"])
def test_conditioning_sees_the_clipped_action(name, request):
    model = request.getfixturevalue(name)
    obs = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    wild = torch.tensor([[3.0, -7.0], [1.5, 0.2]]).repeat(3, 1)
    a = model.step(obs, wild, torch.Generator().manual_seed(2))
    b = model.step(obs, wild.clamp(-1.0, 1.0), torch.Generator().manual_seed(2))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_rollout_follows_the_policy_at_the_model_state(ensemble):
    """With a near-deterministic policy the imagined actions are the policy mean at imagined states."""
    sharp = lambda s: (0.5 * s[:, :2], torch.full((len(s), 2), 1e-6))
    out = ensemble.rollout(torch.ones(4, 3), sharp, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.actions, 0.5 * out.observations[:, :3, :2], atol=1e-4, rtol=0)


def test_deterministic_ensemble_step_is_the_elites_average_mean(ensemble):
    obs, actions, _, _ = held_out(50)
    a = ensemble.step(obs, actions, torch.Generator().manual_seed(0), deterministic=True)
    b = ensemble.step(obs, actions, torch.Generator().manual_seed(1), deterministic=True)
    mean, _, _ = ensemble.net(ensemble.inputs(obs, actions).expand(3, -1, -1))
    delta = mean[ensemble.elites].mean(0)[:, :3] * ensemble.codec.delta_std + ensemble.codec.delta_mean
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[0], obs + delta)


def test_ar_diffusion_runs_one_full_chain_per_step(ar_diffusion):
    calls = []
    hook = ar_diffusion.ema.register_forward_hook(lambda *_: calls.append(1))
    try:
        ar_diffusion.rollout(np.zeros((2, 3)), linear_policy, 3)
        assert len(calls) == 3 * 16
        calls.clear()
        ar_diffusion.rollout(np.zeros((2, 3)), linear_policy, 3, n_sample_steps=4)
        assert len(calls) == 3 * 4
    finally:
        hook.remove()


def test_ensemble_keeps_the_best_members_as_elites(ensemble):
    obs, actions, true_next, true_reward = held_out(200)
    inputs = ensemble.inputs(obs, actions)
    targets = ensemble.codec.encode(obs, torch.as_tensor(true_next, dtype=torch.float32),
                                    torch.as_tensor(true_reward, dtype=torch.float32), torch.zeros(len(obs)))
    before = ensemble.elites
    try:
        mse = ensemble.select_elites(inputs, targets[:, :-1])
        assert set(ensemble.elites.tolist()) == set(mse.argsort()[:2].tolist())
    finally:
        ensemble.elites = before


def test_stepwise_imaginer_replays_given_actions_step_by_step(ensemble):
    step = lambda s, a, g: ensemble.step(s, a, g, deterministic=True)
    imaginer = StepwiseImaginer(step, SPEC, 3, torch.device("cpu"))
    obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    given = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(1))
    out = imaginer.imagine(obs, actions=given)
    state = obs
    for k in range(3):                            # reference: the one-step model applied by hand
        state, reward, _ = step(state, given[:, k], None)
        torch.testing.assert_close(out.observations[:, k + 1], state)
        torch.testing.assert_close(out.rewards[:, k], reward)
    torch.testing.assert_close(out.actions, given)
    assert np.isnan(out.spread)
    sharp = lambda s: (0.5 * s[:, :2], torch.full((len(s), 2), 1e-6))
    prefix = imaginer.imagine(obs, sharp, actions=given[:, :1])      # the policy picks the rest
    torch.testing.assert_close(prefix.actions[:, 0], given[:, 0])
    torch.testing.assert_close(prefix.actions[:, 1:], 0.5 * prefix.observations[:, 1:3, :2],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"actions": torch.zeros(2, 2, 2)}, "a policy must choose the actions of steps 2..2"),
    ({"actions": torch.zeros(2, 4, 2)}, r"fixed actions must have shape \[2, k, act\] with 1 <= k <= 3"),
    ({"actions": torch.zeros(2, 3, 2), "n_sample_steps": 4}, "n_sample_steps=4"),
])
def test_stepwise_imaginer_refuses_what_it_cannot_do(ensemble, kwargs, match):
    imaginer = StepwiseImaginer(lambda s, a, g: ensemble.step(s, a, g), SPEC, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match=match):
        imaginer.imagine(torch.zeros(2, 3), **kwargs)


def test_ensemble_trainer_refits_as_the_buffer_grows():
    """The imagination loop's use: new statistics after data arrives, then more steps with the same
    optimiser; the held-out error falls and the codec holds the grown buffer's delta statistics."""
    buffer = linear_buffer(4, 50, seed=0)
    torch.manual_seed(0)
    model = new_mlp_ensemble(buffer, SPEC, EnsembleConfig(n_members=3, n_elites=2, width=64, depth=2), "cpu")
    trainer = EnsembleTrainer(model, TrainConfig(lr=3e-3, batch_size=64), seed=0)
    assert trainer.train(buffer, 0) == [] and trainer.steps == 0
    with pytest.raises(ValueError, match="n_steps must be >= 0, got -1"):
        trainer.train(buffer, -1)
    obs, actions, true_next, _ = held_out(200)

    def error() -> float:
        return float(((model.step(obs, actions, deterministic=True)[0].numpy() - true_next) ** 2).mean())

    assert len(trainer.train(buffer, 100)) == 100
    first = error()
    grown = linear_buffer(40, 50, seed=0)  # the first four episodes and 36 more
    trainer.refit_normaliser(grown)
    data = grown.transitions()
    np.testing.assert_allclose(model.codec.delta_mean.numpy(), (data.next_obs - data.obs).mean(0), atol=1e-5)
    trainer.train(grown, 300)
    assert trainer.steps == 400
    assert trainer.optimizer.state[model.net.head.weight]["step"] == 400  # one optimiser throughout
    assert error() < 0.5 * first, (error(), first)
