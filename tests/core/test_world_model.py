"""World model: loss/training on a synthetic system, guided sampling, save/load, bad input."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import DenoiserEnsemble
from imagined_env.diffusion.guidance import GuidanceConfig
from imagined_env.diffusion.sampler import GuidedSampler
from imagined_env.diffusion.schedule import DiffusionSchedule, SamplerConfig
from imagined_env.training import TrainConfig, fit_world_model
from imagined_env.world_model import FORMAT_VERSION, WorldModel, WorldModelConfig, content_checksum
from tests.conftest import ACT, LINEAR_SPEC, OBS, TINY_CONFIG, H, linear_buffer, linear_step


def fixed_policy(mean: float, std: float):
    return lambda s: (torch.full((len(s), ACT), mean), torch.full((len(s), ACT), std))


def rewrite(path, payload) -> None:
    """Save an edited payload with its checksum renewed, as a careful hand edit would."""
    torch.save({**payload, "checksum": content_checksum(payload)}, path)


def write_version_1(path, payload) -> None:
    """Save a payload as a file of format 1, written before files carried a checksum."""
    torch.save({**{k: v for k, v in payload.items() if k != "checksum"}, "format_version": 1}, path)


def imagine_and_tune(model: WorldModel, *args, **kwargs):
    """A guided imagination followed by the tuning step the replay layer takes after it."""
    out = model.imagine(*args, **kwargs)
    model.adapt_guidance(out)
    return out


def test_training_beats_no_model_baseline(trained_linear_model):
    model, buf, losses = trained_linear_model
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:20])
    s0, _, _ = buf.start_states(np.random.default_rng(5), 256)
    out = model.imagine(s0, fixed_policy(0.0, 0.7), generator=torch.Generator().manual_seed(0))
    truth, _ = linear_step(s0, out.actions[:, 0].numpy())
    model_err = np.mean((out.observations[:, 1].numpy() - truth) ** 2)
    copy_err = np.mean((s0 - truth) ** 2)
    assert model_err < 0.25 * copy_err, (model_err, copy_err)


def test_shapes_units_and_start_states_preserved(trained_linear_model):
    model, buf, _ = trained_linear_model
    s0, _, _ = buf.start_states(np.random.default_rng(0), 7)
    out = model.imagine(s0, fixed_policy(0.2, 0.3))
    assert out.observations.shape == (7, H + 1, OBS) and out.actions.shape == (7, H, ACT)
    assert out.rewards.shape == (7, H) and out.terminations.shape == (7, H)
    assert out.terminations.dtype == torch.bool
    assert torch.equal(out.observations[:, 0], torch.as_tensor(s0))      # exactly, not approximately
    # rewards come back in task units: the true reward of the start state is -|s0|^2
    np.testing.assert_allclose(out.rewards[:, 0].numpy(), -(s0 ** 2).sum(-1), rtol=0.3, atol=0.5)


def test_guidance_moves_actions_toward_policy(trained_linear_model):
    model, buf, _ = trained_linear_model
    s0, _, _ = buf.start_states(np.random.default_rng(1), 512)
    g = lambda: torch.Generator().manual_seed(3)
    unguided = model.imagine(s0, None, generator=g()).actions
    guided = model.imagine(s0, fixed_policy(0.8, 0.1), generator=g()).actions
    assert (guided - 0.8).abs().mean() < 0.5 * (unguided - 0.8).abs().mean()
    assert ((guided - 0.8).abs() <= 3 * 0.1 + 1e-5).all()          # clamped to +-3 std of the policy


def test_scale_tuning_reaches_unit_spread(trained_linear_model):
    model, buf, _ = trained_linear_model
    config = dataclasses.replace(model.config, guidance=GuidanceConfig(initial_scale=1e-4, scale_lr=0.3))
    tuned = WorldModel(model.spec, config,
                       model.normaliser, "cpu")
    tuned.ema.load_state_dict(model.ema.state_dict())
    s0, _, _ = buf.start_states(np.random.default_rng(2), 256)
    gen = torch.Generator().manual_seed(0)
    spreads = [imagine_and_tune(tuned, s0, fixed_policy(0.0, 0.2), generator=gen).spread for _ in range(60)]
    assert abs(spreads[0] - 1.0) > 0.3                    # the untuned scale is off...
    assert abs(np.mean(spreads[-10:]) - 1.0) < 0.15       # ...and tuning brings it to ~1


def test_imagining_leaves_the_guidance_scale_alone_until_told_to_tune(trained_linear_model):
    model, buf, _ = trained_linear_model
    config = dataclasses.replace(model.config, guidance=GuidanceConfig(initial_scale=1e-4, per_row=True))
    tuned = WorldModel(model.spec, config, model.normaliser, "cpu")
    tuned.ema.load_state_dict(model.ema.state_dict())
    s0, _, _ = buf.start_states(np.random.default_rng(2), 64)
    out = tuned.imagine(s0, fixed_policy(0.0, 0.2), generator=torch.Generator().manual_seed(0))
    assert tuned.guidance_scale == pytest.approx(1e-4) and not tuned.row_scale_offsets.any()
    tuned.adapt_guidance(out)
    lr = config.guidance.scale_lr
    assert tuned.log_guidance_scale == pytest.approx(np.log(1e-4) + lr * (out.spread - 1.0))
    torch.testing.assert_close(tuned.row_scale_offsets, lr * (out.row_spread - out.spread))
    before = tuned.log_guidance_scale
    tuned.adapt_guidance(tuned.imagine(s0, None))                 # unguided: no spread to tune from
    assert tuned.log_guidance_scale == before
    tuned.imagine(s0, fixed_policy(0.0, 0.2), generator=torch.Generator().manual_seed(0))
    assert tuned.log_guidance_scale == before                     # imagining alone never tunes


def test_a_given_first_action_is_kept_and_followed(trained_linear_model):
    model, buf, _ = trained_linear_model
    s0, _, _ = buf.start_states(np.random.default_rng(3), 64)
    a0 = np.tile(np.array([[0.9, -0.9]], np.float32), (64, 1))
    out = model.imagine(s0, fixed_policy(-0.5, 0.1), actions=a0[:, None],
                        generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out.actions[:, 0].numpy(), a0)
    truth, _ = linear_step(s0, a0)
    other, _ = linear_step(s0, np.full_like(a0, -0.5))
    err = np.mean((out.observations[:, 1].numpy() - truth) ** 2)
    assert err < 0.5 * np.mean((out.observations[:, 1].numpy() - other) ** 2)


def test_sampling_leaves_no_policy_gradients(trained_linear_model):
    model, buf, _ = trained_linear_model
    net = nn.Linear(OBS, ACT)
    pi = lambda s: (net(s), torch.full((len(s), ACT), 0.3))
    model.imagine(buf.start_states(np.random.default_rng(0), 4)[0], pi)
    assert all(p.grad is None for p in net.parameters())


def test_strided_chain_is_reproducible_and_shorter(trained_linear_model):
    model, buf, _ = trained_linear_model
    s0, _, _ = buf.start_states(np.random.default_rng(4), 8)
    calls = []
    hook = model.ema.register_forward_hook(lambda *_: calls.append(1))
    try:
        a = model.imagine(s0, None, n_sample_steps=5, generator=torch.Generator().manual_seed(9))
        b = model.imagine(s0, None, n_sample_steps=5, generator=torch.Generator().manual_seed(9))
    finally:
        hook.remove()
    assert torch.equal(a.observations, b.observations)
    assert len(calls) == 2 * 5 < 2 * model.schedule.n_steps


def test_save_load_roundtrip(tmp_path, trained_linear_model):
    model, buf, _ = trained_linear_model
    path = tmp_path / "wm.pt"
    model.save(path)
    loaded = WorldModel.load(path, device="cpu", env_id="Linear-v0")
    assert loaded.spec == model.spec and loaded.config == model.config
    assert loaded.guidance_scale == model.guidance_scale
    s0, _, _ = buf.start_states(np.random.default_rng(0), 5)
    a = model.imagine(s0, fixed_policy(0, 0.5), generator=torch.Generator().manual_seed(1))
    b = loaded.imagine(s0, fixed_policy(0, 0.5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.observations, b.observations) and torch.equal(a.actions, b.actions)
    assert [p.name for p in tmp_path.iterdir()] == ["wm.pt"]             # no temp file left behind


def test_load_errors_name_the_file(tmp_path, trained_linear_model):
    model, _, _ = trained_linear_model
    path = tmp_path / "wm.pt"
    model.save(path)
    with pytest.raises(ValueError, match="trained on 'Linear-v0', not 'Hopper-v4'"):
        WorldModel.load(path, env_id="Hopper-v4")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pt.*truncated or corrupt"):
        WorldModel.load(cut)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.pt"
    rewrite(newer, payload)
    with pytest.raises(ValueError, match="newer.pt.*format version"):
        WorldModel.load(newer)
    with pytest.raises(ValueError, match="does not exist"):
        WorldModel.load(tmp_path / "missing.pt")


def test_row_guidance_factors_survive_save_load(tmp_path, trained_linear_model):
    model, _, _ = trained_linear_model
    tuned = WorldModel(model.spec, model.config, model.normaliser, "cpu")
    tuned.row_scale_offsets = torch.linspace(-0.5, 0.5, H + 1)
    path = tmp_path / "wm.pt"
    tuned.save(path)
    torch.testing.assert_close(WorldModel.load(path).row_guidance_scales, tuned.row_guidance_scales)
    payload = torch.load(path, weights_only=True)
    del payload["row_scale_offsets"]                      # a file written before per-row tuning existed
    write_version_1(path, payload)
    assert torch.equal(WorldModel.load(path).row_scale_offsets, torch.zeros(H + 1))
    payload["row_scale_offsets"] = [0.0] * H
    rewrite(path, payload)
    with pytest.raises(ValueError, match=f"wm.pt is inconsistent: {H} row guidance factors for {H + 1} rows"):
        WorldModel.load(path)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, OBS + 1)), r"start_obs must have shape \[B, 3\]"),
    (np.zeros(OBS), r"start_obs must have shape"),
    (np.full((2, OBS), np.nan), "NaN"),
])
def test_bad_start_states(trained_linear_model, bad, match):
    model, _, _ = trained_linear_model
    with pytest.raises(ValueError, match=match):
        model.imagine(bad)


class _ZeroDenoiser(nn.Module):
    """Predicts x0 = 0 everywhere: the loss is then the (weighted) mean square of the clean rows."""

    def forward(self, x, actions, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_reward_loss_weight_against_numpy_reference(weight):
    buf = linear_buffer(n_episodes=5)
    normaliser = Normaliser.fit(buf, -1.0, 1.0)
    config = dataclasses.replace(TINY_CONFIG, reward_loss_weight=weight)
    model = WorldModel(LINEAR_SPEC, config, normaliser, "cpu")
    model.denoiser = _ZeroDenoiser()
    windows = buf.sample_windows(16, H, np.random.default_rng(0))
    # reference: z-score each channel by hand; row 0's states are inpainted, so they carry no error
    states = (windows.states - normaliser.obs_mean) / normaliser.obs_std
    states[:, 0] = 0.0
    rewards = (windows.rewards - normaliser.reward_mean[0]) / normaliser.reward_std[0]
    terminals = (windows.terminals - normaliser.terminal_mean[0]) / normaliser.terminal_std[0]
    weighted = (states ** 2).sum() + weight * (rewards ** 2).sum() + (terminals ** 2).sum()
    expected = weighted / (windows.rewards.size * (OBS + 1 + weight))
    assert model.loss(windows).item() == pytest.approx(float(expected), rel=1e-5)


def test_reward_loss_weight_must_be_positive():
    with pytest.raises(ValueError, match="reward_loss_weight must be > 0, got 0"):
        WorldModelConfig(reward_loss_weight=0.0)


def test_given_action_sequences_are_replayed_open_loop(trained_linear_model):
    model, buf, _ = trained_linear_model
    s0, _, _ = buf.start_states(np.random.default_rng(3), 256)
    actions = np.random.default_rng(4).normal(scale=0.7, size=(256, H, ACT)).astype(np.float32)
    out = model.imagine(s0, actions=actions, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out.actions.numpy(), actions)   # unclipped, exactly as given
    truth, _ = linear_step(s0, actions[:, 0])
    for k in range(1, H):                                          # the model's states follow the actions
        model_err = np.mean((out.observations[:, k].numpy() - truth) ** 2)
        assert model_err < 0.25 * np.mean((s0 - truth) ** 2), (k, model_err)
        truth, _ = linear_step(truth, actions[:, k])
    prefix = model.imagine(s0[:8], fixed_policy(0.3, 0.2), actions=actions[:8, :2])
    np.testing.assert_array_equal(prefix.actions[:, :2].numpy(), actions[:8, :2])


@pytest.mark.parametrize("kwargs, match", [
    ({"actions": np.zeros((2, H + 1, ACT))}, rf"actions must have shape \[B, k, {ACT}\] with 1 <= k <= {H}"),
    ({"actions": np.zeros((3, H, ACT))}, "actions has 3 rows, expected 2"),
    ({"actions": np.full((2, H, ACT), np.nan)}, "actions contains NaN"),
    ({"actions": np.zeros((2, ACT))}, rf"actions must have shape \[B, k, {ACT}\]"),
    ({"actions": np.zeros((1, 1, ACT))}, "actions has 1 rows, expected 2"),
])
def test_bad_action_sequences(trained_linear_model, kwargs, match):
    model, _, _ = trained_linear_model
    with pytest.raises(ValueError, match=match):
        model.imagine(np.zeros((2, OBS)), **kwargs)


def test_scale_tuning_stays_bounded_on_a_strided_chain_at_the_std_floor(trained_linear_model):
    # 5 of 20 steps with a policy std at the 0.1 floor: an uncapped guidance step would overshoot the
    # mean (pull 2 at the initial scale), the spread would rise and the tuning would run the scale away
    model, buf, _ = trained_linear_model
    tuned = WorldModel(model.spec, dataclasses.replace(model.config, guidance=GuidanceConfig(scale_lr=0.3)),
                       model.normaliser, "cpu")
    tuned.ema.load_state_dict(model.ema.state_dict())
    s0, _, _ = buf.start_states(np.random.default_rng(2), 256)
    gen = torch.Generator().manual_seed(0)
    spreads = [imagine_and_tune(tuned, s0, fixed_policy(0.0, 0.1), generator=gen, n_sample_steps=5).spread
               for _ in range(60)]
    assert abs(np.mean(spreads[-10:]) - 1.0) < 0.3
    assert tuned.guidance_scale < 0.005


class _RecordingDenoiser(nn.Module):
    """Predicts zeros and records the (actions, t) it was given."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, actions, t):
        self.seen.append((actions.clone(), t.clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("scale_actions,last_action", [(True, True), (False, True), (False, False)])
def test_actions_reach_the_denoiser_scaled_or_at_full_strength(scale_actions, last_action):
    buf = linear_buffer(n_episodes=5)
    normaliser = Normaliser.fit(buf, -1.0, 1.0)
    config = dataclasses.replace(TINY_CONFIG, scale_actions=scale_actions,
                                 condition_on_last_action=last_action)
    model = WorldModel(LINEAR_SPEC, config, normaliser, "cpu")
    model.denoiser = model.ema = _RecordingDenoiser()
    alpha_bar = model.schedule.alpha_bar_f64.numpy()

    def expected(actions_env, t):
        # reference: z-score the clipped actions by hand, then sqrt(alpha_bar_t) or 1
        z = (np.clip(actions_env, -1, 1) - normaliser.action_mean) / normaliser.action_std
        return z * (np.sqrt(alpha_bar[t])[:, None, None] if scale_actions else 1.0)

    windows = buf.sample_windows(8, H, np.random.default_rng(0))
    model.loss(windows)
    seen, t = model.denoiser.seen[-1]
    want = expected(windows.actions, t.numpy())
    np.testing.assert_allclose(seen[:, :H].numpy(), want[:, :H], rtol=1e-5, atol=1e-6)
    if last_action:
        np.testing.assert_allclose(seen[:, H].numpy(), want[:, H], rtol=1e-5, atol=1e-6)
    else:  # the mean action, i.e. zero once z-scored, where the data's last action was not
        assert np.all(seen[:, H].numpy() == 0) and np.abs(want[:, H]).max() > 0.1

    actions = np.random.default_rng(1).normal(size=(3, H, ACT)).astype(np.float32)
    model.imagine(np.zeros((3, OBS), np.float32), actions=actions, n_sample_steps=4)
    for seen, t in model.ema.seen[1:]:                    # every pass of the chain; row H is free
        np.testing.assert_allclose(seen[:, :H].numpy(), expected(actions, t.numpy()), rtol=1e-5, atol=1e-6)
        assert last_action or np.all(seen[:, H].numpy() == 0)


def test_each_row_is_guided_with_its_own_scale():
    # with a denoiser that predicts zeros and a state-independent policy the rows do not interact, so
    # row k of a run with per-row scales must equal row k of the run that used its scale everywhere
    normaliser = Normaliser.fit(linear_buffer(n_episodes=5), -1.0, 1.0)
    config = dataclasses.replace(TINY_CONFIG, guidance=GuidanceConfig(per_row=True))
    model = WorldModel(LINEAR_SPEC, config, normaliser, "cpu")
    model.denoiser = model.ema = _RecordingDenoiser()
    s0 = np.zeros((64, OBS), np.float32)

    def actions(offsets):
        model.row_scale_offsets = torch.as_tensor(offsets, dtype=torch.float32)
        return model.imagine(s0, fixed_policy(0.3, 0.5), generator=torch.Generator().manual_seed(0)).actions

    weak, strong = actions(np.full(H + 1, -3.0)), actions(np.full(H + 1, 3.0))
    mixed = actions(np.where(np.arange(H + 1) % 2 == 0, -3.0, 3.0))
    for k in range(H):
        torch.testing.assert_close(mixed[:, k], (weak if k % 2 == 0 else strong)[:, k])
    assert not torch.allclose(weak, strong)


def test_per_row_tuning_brings_every_row_to_the_target_spread(trained_linear_model):
    model, buf, _ = trained_linear_model
    config = dataclasses.replace(model.config, guidance=GuidanceConfig(scale_lr=0.3, per_row=True))
    tuned = WorldModel(model.spec, config, model.normaliser, "cpu")
    tuned.ema.load_state_dict(model.ema.state_dict())
    s0, _, _ = buf.start_states(np.random.default_rng(2), 256)
    gen = torch.Generator().manual_seed(0)

    def policy(s):  # the mean depends on the state, so rows whose states are uncertain spread more
        s = torch.as_tensor(s)
        return 2.0 * s[:, :ACT], torch.full((len(s), ACT), 0.2)

    first = imagine_and_tune(tuned, s0, policy, generator=gen, n_sample_steps=10)
    rows = [imagine_and_tune(tuned, s0, policy, generator=gen, n_sample_steps=10) for _ in range(60)]
    before = first.row_spread[:H]
    after = torch.stack([r.row_spread[:H] for r in rows[-10:]]).mean(0)
    assert (after - 1.0).abs().max() < 0.15 < (before - 1.0).abs().max(), (before, after)
    assert tuned.row_scale_offsets.abs().max() > 0.1


def test_guided_actions_carry_the_chain_noise_in_normalised_units():
    # a pull of 1 puts the actions on the policy mean at every guided step; what is left at the end is the
    # noise of the last step, std_{1 -> 0} in normalised units, i.e. std_{1 -> 0} * action_std in policy units
    ones, zeros = np.ones(OBS, np.float32), np.zeros(OBS, np.float32)
    action_std = np.array([0.2, 1.0], np.float32)
    normaliser = Normaliser(zeros, ones, np.array([0.5, -0.5], np.float32), action_std,
                            np.zeros(1, np.float32), np.ones(1, np.float32), np.zeros(1, np.float32),
                            np.ones(1, np.float32))
    config = dataclasses.replace(TINY_CONFIG, guidance=GuidanceConfig(initial_scale=1.0))
    model = WorldModel(LINEAR_SPEC, config, normaliser, "cpu")
    model.denoiser = model.ema = _RecordingDenoiser()
    out = model.imagine(np.zeros((2048, OBS), np.float32), fixed_policy(0.3, 0.1),
                        generator=torch.Generator().manual_seed(0))
    last_std = model.schedule.posterior_std(1, 0, torch.zeros(1)).item()
    spread = ((out.actions - 0.3) / 0.1).reshape(-1, ACT).std(dim=0).numpy()
    np.testing.assert_allclose(spread, last_std * action_std / 0.1, rtol=0.05)


def test_the_sampler_refuses_fixed_actions_that_do_not_fit():
    normaliser = Normaliser.fit(linear_buffer(n_episodes=5), -1.0, 1.0)
    model = WorldModel(LINEAR_SPEC, TINY_CONFIG, normaliser, "cpu")
    with pytest.raises(ValueError, match=r"fixed_actions must have shape \[2, k <= 5, act\], got \(2, 6, "):
        model.sampler().sample(torch.zeros(2, OBS), H + 1, fixed_actions=torch.zeros(2, H + 2, ACT))


def _mean_readout_model(model: WorldModel) -> WorldModel:
    """The trained model's weights with the "mean" read-out, actions at full strength and the last row's
    action hidden."""
    config = dataclasses.replace(model.config, readout="mean", scale_actions=False,
                                 condition_on_last_action=False)
    mean_model = WorldModel(model.spec, config, model.normaliser, "cpu")
    mean_model.ema.load_state_dict(model.ema.state_dict())
    return mean_model


def test_mean_readout_is_deterministic_given_start_and_actions(trained_linear_model):
    model, buf, _ = trained_linear_model
    mean_model = _mean_readout_model(model)
    s0, _, _ = buf.start_states(np.random.default_rng(6), 32)
    actions = np.random.default_rng(7).normal(scale=0.7, size=(32, H, ACT)).astype(np.float32)
    for m, same in ((mean_model, True), (model, False)):   # the chain's read-out draws its own noise
        a, b = (m.imagine(s0, actions=actions, generator=torch.Generator().manual_seed(g)) for g in (0, 1))
        assert torch.equal(a.observations, b.observations) is same
        assert torch.equal(a.rewards, b.rewards) is same
        np.testing.assert_array_equal(a.actions.numpy(), actions)


def test_mean_readout_is_one_denoiser_pass_from_the_prior_mean(trained_linear_model):
    model, buf, _ = trained_linear_model
    mean_model = _mean_readout_model(model)
    norm, n_steps = model.normaliser, model.schedule.n_steps
    s0, _, _ = buf.start_states(np.random.default_rng(8), 16)

    def by_hand(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # reference: zero noisy rows with the start state's row, z-scored clipped actions at full strength
        # with the last row's action hidden (zero), x0 prediction at t = T-1, s0 inpainted
        z0 = (s0 - norm.obs_mean) / norm.obs_std
        x = np.zeros((len(s0), H + 1, OBS + 2), np.float32)
        x[:, 0, :OBS] = z0
        seen = np.zeros((len(s0), H + 1, ACT), np.float32)
        seen[:, :H] = (np.clip(actions, -1, 1) - norm.action_mean) / norm.action_std
        with torch.no_grad():
            pred = model.ema(torch.as_tensor(x), torch.as_tensor(seen),
                             torch.full((len(s0),), n_steps - 1)).numpy()
        states = pred[..., :OBS] * norm.obs_std + norm.obs_mean
        states[:, 0] = s0
        return states, pred[:, :H, OBS] * norm.reward_std[0] + norm.reward_mean[0]

    given = np.random.default_rng(9).normal(scale=0.7, size=(16, H, ACT)).astype(np.float32)
    replay = mean_model.imagine(s0, actions=given)                             # open loop
    guided = mean_model.imagine(s0, fixed_policy(0.3, 0.2), actions=given[:, :1],
                                generator=torch.Generator().manual_seed(0))   # the chain picks the actions
    for out in (replay, guided):
        states, rewards = by_hand(out.actions.numpy())
        np.testing.assert_allclose(out.observations.numpy(), states, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.rewards.numpy(), rewards, rtol=1e-4, atol=1e-5)
    assert not np.allclose(guided.actions.numpy()[:, 1:], given[:, 1:])


def test_readout_survives_save_load_and_old_files_read_the_chain(tmp_path, trained_linear_model):
    model, _, _ = trained_linear_model
    path = tmp_path / "wm.pt"
    _mean_readout_model(model).save(path)
    assert WorldModel.load(path).config.readout == "mean"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["readout"]                      # a file written before the read-out option
    write_version_1(path, payload)
    assert WorldModel.load(path).config.readout == "chain"
    with pytest.raises(ValueError, match="readout must be one of chain, mean, rollout, got 'median'"):
        WorldModelConfig(readout="median")


class _FixedDenoiser(nn.Module):
    """Predicts the same normalised rows [L, C] for every trajectory."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def forward(self, x, actions, t):
        return self.rows.expand_as(x).clone()


@pytest.mark.parametrize("unsure_ends", ["truncate", "terminate"])
def test_disagreement_penalty_and_limit_against_a_hand_computation(unsure_ends):
    normaliser = Normaliser.fit(linear_buffer(n_episodes=5), -1.0, 1.0)
    config = dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False, n_members=3,
                                 disagreement_penalty=0.7, disagreement_limit=0.7,
                                 condition_on_last_action=False, unsure_ends=unsure_ends)
    model = WorldModel(LINEAR_SPEC, config, normaliser, "cpu")
    rows = np.random.default_rng(0).normal(size=(3, H + 1, OBS + 2)).astype(np.float32)
    rows[:, :, OBS + 1] = -100.0                  # no terminal flag ...
    rows[:, [1, 3], OBS + 1] = 100.0              # ... but at transitions 1 and 3 (all members agree on it)
    model.ema = DenoiserEnsemble([_FixedDenoiser(torch.as_tensor(r)) for r in rows])
    s0 = np.random.default_rng(1).normal(size=(4, OBS)).astype(np.float32)
    out = model.imagine(s0, actions=np.zeros((4, H, ACT), np.float32))
    # reference: transition k's outcome is s_{k+1} (row k+1) and r_k (row k); u_k is the root mean over
    # those channels of the members' variance; rewards are the members' mean, unnormalised, minus 0.7 u
    var = rows.var(axis=0)
    u = np.sqrt(np.concatenate([var[1:, :OBS], var[:-1, OBS:OBS + 1]], axis=1).mean(axis=1))
    reward = rows[:, :H, OBS].mean(axis=0) * normaliser.reward_std[0] + normaliser.reward_mean[0]
    terminal = rows[:, :H, OBS + 1].mean(axis=0) * normaliser.terminal_std[0] + normaliser.terminal_mean[0]
    np.testing.assert_allclose(out.disagreement.numpy(), np.tile(u, (4, 1)), rtol=1e-5)
    np.testing.assert_allclose(out.rewards.numpy(), np.tile(reward - 0.7 * u, (4, 1)), rtol=1e-5, atol=1e-5)
    unsure, task = u > 0.7, terminal > 0.5
    # both at transition 1, the limit alone at 2, the task alone at 3
    assert list(unsure) == [False, True, True, False] and list(task) == [False, True, False, True]
    if unsure_ends == "terminate":
        np.testing.assert_array_equal(out.terminations.numpy(), np.tile(task | unsure, (4, 1)))
        assert out.truncations is None
    else:   # the task's end wins where both fall on one step
        np.testing.assert_array_equal(out.terminations.numpy(), np.tile(task, (4, 1)))
        np.testing.assert_array_equal(out.truncations.numpy(), np.tile([False, False, True, False], (4, 1)))
    np.testing.assert_array_equal(out.ended.numpy(), np.tile(task | unsure, (4, 1)))    # either way, it ends
    states = rows[:, 1:, :OBS].mean(axis=0) * normaliser.obs_std + normaliser.obs_mean
    np.testing.assert_allclose(out.observations[:, 1:].numpy(), np.tile(states, (4, 1, 1)),
                               rtol=1e-5, atol=1e-5)


@functools.cache
def _trained_linear_ensemble() -> WorldModel:
    config = dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False, n_members=3,
                                 disagreement_penalty=0.1)
    model, _ = fit_world_model(linear_buffer(), LINEAR_SPEC, 300, config,
                               TrainConfig(lr=2e-3, batch_size=128), device="cpu", progress=False)
    return model


def test_ensemble_members_disagree_more_off_the_data():
    model = _trained_linear_ensemble()
    rng = np.random.default_rng(0)
    near = rng.normal(size=(128, OBS)).astype(np.float32)           # the data's start states are N(0, I)
    actions = rng.normal(scale=0.7, size=(128, H, ACT)).astype(np.float32)
    u_near = model.imagine(near, actions=actions).disagreement.mean()
    u_far = model.imagine(8.0 * near, actions=actions).disagreement.mean()
    assert u_far > 2 * u_near, (u_near, u_far)                      # measured: 0.085 vs 0.24


def test_ensemble_save_load_roundtrip(tmp_path):
    model = _trained_linear_ensemble()
    path = tmp_path / "ensemble.pt"
    model.save(path)
    loaded = WorldModel.load(path, device="cpu")
    assert loaded.config == model.config and len(loaded.ema.members) == 3
    s0 = np.random.default_rng(2).normal(size=(6, OBS)).astype(np.float32)
    a, b = (m.imagine(s0, fixed_policy(0.2, 0.3), generator=torch.Generator().manual_seed(0))
            for m in (model, loaded))
    for name in ("observations", "actions", "rewards", "terminations", "disagreement"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.disagreement > 0).all()


@pytest.mark.parametrize("changes,match", [
    ({"n_members": 0}, "n_members must be >= 1, got 0"),
    ({"n_members": 2}, "an ensemble .n_members=2. is read out by its members' mean: set readout='mean'"),
    ({"readout": "mean", "scale_actions": False, "disagreement_penalty": 0.5},
     "needs an ensemble: set n_members >= 2"),
    ({"readout": "mean", "scale_actions": False, "n_members": 2, "disagreement_penalty": -1.0},
     "disagreement_penalty must be >= 0"),
    ({"readout": "mean", "scale_actions": False, "n_members": 2, "disagreement_limit": 0.0},
     "disagreement_limit must be > 0 or None"),
])
def test_bad_ensemble_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY_CONFIG, **changes)


def test_config_from_dict_round_trips_and_names_ill_typed_fields():
    assert WorldModelConfig.from_dict(TINY_CONFIG.to_dict()) == TINY_CONFIG
    assert WorldModelConfig.from_dict({"ema_decay": 0}).ema_decay == 0.0          # an integer is a number
    cases = [({"horizon": "5"}, "world_model.horizon must be an integer, got '5'"),
             ({"denoiser": {"width": "wide"}}, "world_model.denoiser.width must be an integer, got 'wide'"),
             ({"sampler": {"n_sample_steps": 2.5}},
              r"world_model.sampler.n_sample_steps must be an integer or null"),
             ({"scale_actions": 1}, "world_model.scale_actions must be true or false, got 1"),
             ({"colour": "blue"}, "unknown config key 'world_model.colour'"),
             ({"schedule": 128}, "config key 'world_model.schedule' must be a JSON object, got 128")]
    for fields, match in cases:
        with pytest.raises(ValueError, match=match):
            WorldModelConfig.from_dict(fields, "world_model.")


def test_mean_readout_refuses_scaled_actions():
    # at t = T-1 scaled actions are multiplied by sqrt(alpha_bar_{T-1}): the one-pass read-out barely
    # sees them
    signal = float(DiffusionSchedule(TINY_CONFIG.schedule).alpha_bar_f64[-1].sqrt())
    with pytest.raises(ValueError, match=f"readout='mean' needs scale_actions=False.*"
                                         f"multiplied by {signal:.2g}"):
        dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=True)
    assert dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False).readout == "mean"


def test_sample_steps_beyond_the_chain_are_refused(trained_linear_model):
    model, _, _ = trained_linear_model
    chain = model.schedule.n_steps
    with pytest.raises(ValueError, match=rf"sampler.n_sample_steps \({chain + 1}\) "
                                         rf"exceeds the chain's length \(schedule.n_steps = {chain}\)"):
        dataclasses.replace(TINY_CONFIG, sampler=SamplerConfig(n_sample_steps=chain + 1))
    with pytest.raises(ValueError, match=rf"n_sample_steps must lie in \[1, {chain}\].*got 1000"):
        model.imagine(np.zeros((2, OBS), np.float32), n_sample_steps=1000)
    for bad in (0, "5", True):
        with pytest.raises(ValueError, match=f"n_sample_steps must be None or an integer >= 1, got {bad!r}"):
            SamplerConfig(n_sample_steps=bad)
    assert len(model.imagine(np.zeros((2, OBS), np.float32), n_sample_steps=chain).observations) == 2


def test_a_normaliser_of_another_width_is_refused():
    normaliser = Normaliser.fit(linear_buffer(n_episodes=2), -1.0, 1.0)
    wide = dataclasses.replace(LINEAR_SPEC, obs_dim=OBS + 1)
    with pytest.raises(ValueError, match=f"normaliser's obs statistics have {OBS} entries, "
                                         f"but the task's obs width is {OBS + 1}"):
        WorldModel(wide, TINY_CONFIG, normaliser, "cpu")


@pytest.mark.parametrize("low,high,match", [
    ((-1.0,), (1.0,), f"action bounds must have act_dim={ACT} entries"),
    ((1.0, -1.0), (-1.0, 1.0), "action_low <= action_high"),
    ((float("nan"), -1.0), (1.0, 1.0), "action_low <= action_high"),
])
def test_bad_action_bounds(low, high, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(LINEAR_SPEC, action_low=low, action_high=high)


class _CausalSum(nn.Module):
    """A hand-built causal denoiser: row k's normalised state is s0 plus the sum of the (normalised) actions
    before row k on the first ACT channels; rewards and terminals 0."""

    def forward(self, x: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[:, :, :OBS] = x[:, :1, :OBS]
        steps = torch.cumsum(F.pad(actions[:, :-1], (0, 0, 1, 0)), dim=1)   # sum over j < k, bitwise causal
        out[:, :, :ACT] += steps
        return out


def _causal_sum_sampler() -> tuple[Normaliser, GuidedSampler]:
    """A mean read-out sampler over `_CausalSum` (not declared causal), with its normaliser."""
    normaliser = Normaliser.fit(linear_buffer(n_episodes=5), -1.0, 1.0)
    config = dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False,
                                 condition_on_last_action=False)
    sampler = WorldModel(LINEAR_SPEC, config, normaliser, "cpu").sampler()
    sampler.denoiser = _CausalSum()
    return normaliser, sampler


@pytest.mark.parametrize("n_fixed", [0, 2])
def test_policy_consistent_actions_lie_within_the_clamp_at_the_readout_states(n_fixed):
    normaliser, sampler = _causal_sum_sampler()
    std = 0.05

    def policy(s):  # sharply state-dependent mean, small std
        return torch.tanh(3.0 * s[:, :ACT]), torch.full((len(s), ACT), std)

    rng = np.random.default_rng(0)
    s0 = torch.as_tensor(rng.normal(size=(64, OBS)), dtype=torch.float32)
    actions = torch.as_tensor(rng.uniform(-1, 1, size=(64, H + 1, ACT)), dtype=torch.float32)
    out = sampler.policy_consistent(s0, actions, policy, H, n_fixed)
    # reference by hand: the read-out state of row k from the returned actions, in environment units
    a = out.numpy()
    states = _hand_readout_states(s0.numpy(), a, normaliser)
    for k in range(H):
        gap = np.abs(a[:, k] - np.tanh(3.0 * states[:, k, :ACT]))
        if k < n_fixed:
            np.testing.assert_array_equal(a[:, k], actions.numpy()[:, k])     # given actions stay
        else:
            assert gap.max() <= 3 * std + 1e-5
    assert np.abs(a[:, n_fixed:H] - actions.numpy()[:, n_fixed:H]).max() > 0.5   # it did have to move them
    np.testing.assert_array_equal(a[:, H], actions.numpy()[:, H])               # the hidden last row's too

    # declared causal, one sweep in row order settles every row: the same actions, half the read-outs
    readouts = []
    sampler.readout = lambda *args, f=sampler.readout: readouts.append(1) or f(*args)
    sampler.policy_consistent(s0, actions, policy, H, n_fixed)
    two_sweeps = len(readouts)
    sampler.denoiser.causal = True
    np.testing.assert_array_equal(sampler.policy_consistent(s0, actions, policy, H, n_fixed).numpy(), a)
    assert 2 * (len(readouts) - two_sweeps) == two_sweeps > 0


def _hand_readout_states(s0: np.ndarray, actions: np.ndarray, normaliser: Normaliser) -> np.ndarray:
    """`_CausalSum`'s read-out states [B, H, obs] of actions [B, L, act] (environment units), by numpy."""
    seen = (np.clip(actions, -1, 1) - normaliser.action_mean) / normaliser.action_std
    z = (s0 - normaliser.obs_mean) / normaliser.obs_std
    states = []
    for k in range(H):
        zk = z.copy()
        zk[:, :ACT] += seen[:, :k].sum(axis=1)
        states.append(zk * normaliser.obs_std + normaliser.obs_mean)
    return np.stack(states, axis=1)


@pytest.mark.parametrize("n_fixed", [0, 2])
def test_policy_rollout_draws_each_action_from_the_policy_at_its_readout_state(n_fixed):
    normaliser, sampler = _causal_sum_sampler()
    std = 0.3

    def policy(s):  # sharply state-dependent mean
        return torch.tanh(3.0 * s[:, :ACT]), torch.full((len(s), ACT), std)

    rng = np.random.default_rng(0)
    s0 = torch.as_tensor(rng.normal(size=(4096, OBS)), dtype=torch.float32)
    given = torch.as_tensor(rng.uniform(-1, 1, size=(4096, n_fixed, ACT)), dtype=torch.float32)
    with pytest.raises(ValueError, match="needs a causal denoiser"):   # not declared causal
        sampler.policy_rollout(s0, policy, H + 1)
    sampler.denoiser.causal = True
    out = sampler.policy_rollout(s0, policy, H + 1, generator=torch.Generator().manual_seed(1),
                                 fixed_actions=given if n_fixed else None)[0].numpy()
    states = _hand_readout_states(s0.numpy(), out, normaliser)
    z = (out[:, n_fixed:H] - np.tanh(3.0 * states[:, n_fixed:, :ACT])) / std   # standardised draws
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03
    assert abs(np.corrcoef(z[:, 0].ravel(), z[:, -1].ravel())[0, 1]) < 0.05     # fresh noise per row
    np.testing.assert_array_equal(out[:, :n_fixed], given.numpy())
    np.testing.assert_array_equal(out[:, H], 0.0)                                 # never read


def test_rollout_readout_imagines_the_policys_draws_at_the_states_it_shows():
    torch.manual_seed(0)
    causal = dataclasses.replace(TINY_CONFIG.denoiser, kind="causal-mlp", width=16)
    config = dataclasses.replace(TINY_CONFIG, readout="rollout", scale_actions=False,
                                 condition_on_last_action=False, denoiser=causal)
    model = WorldModel(LINEAR_SPEC, config, Normaliser.fit(linear_buffer(n_episodes=5), -1.0, 1.0), "cpu")
    std = 0.2

    def policy(s):
        return torch.tanh(s[:, :ACT]), torch.full((len(s), ACT), std)

    s0 = torch.as_tensor(np.random.default_rng(0).normal(size=(2048, OBS)), dtype=torch.float32)
    out = model.imagine(s0, policy, generator=torch.Generator().manual_seed(0))
    assert np.isnan(out.spread)                                   # nothing guided, nothing to tune
    z = (out.actions - torch.tanh(out.observations[:, :H, :ACT])) / std
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03
    replay = model.imagine(s0, actions=out.actions)               # the same actions, read out again
    torch.testing.assert_close(replay.observations, out.observations)
    torch.testing.assert_close(replay.rewards, out.rewards)
    again = model.imagine(s0, policy, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.actions, out.actions)        # reproducible from the generator


@pytest.mark.parametrize("changes,match", [
    ({"readout": "rollout", "scale_actions": False}, r"readout='rollout' needs a causal denoiser .*'mlp'"),
    ({"readout": "rollout", "denoiser": dataclasses.replace(TINY_CONFIG.denoiser, kind="causal-mlp")},
     "readout='rollout' needs scale_actions=False"),
])
def test_bad_rollout_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY_CONFIG, **changes)
