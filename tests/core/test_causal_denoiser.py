"""The causal denoisers (transformer, MLP, recurrent): no output of a row moves with a later action or a
later noisy row, bitwise, in one pass and through the guided chain; the non-causal transformer, under the
same probes, does move."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import (
    CausalMLPDenoiser,
    CausalRecurrentDenoiser,
    CausalTransformerDenoiser,
    DenoiserConfig,
    build_denoiser,
    rows_of_tokens,
    token_stepper,
    transition_tokens,
)
from imagined_env.training import TrainConfig, fit_world_model
from imagined_env.world_model import WorldModel
from tests.conftest import ACT, LINEAR_SPEC, OBS, TINY_CONFIG, H, linear_buffer

ROWS, X_DIM = 6, OBS + 2
SMALL = DenoiserConfig(kind="causal-transformer", width=32, depth=2, time_dim=16, heads=4)
CAUSAL = {"causal-transformer": CausalTransformerDenoiser, "causal-mlp": CausalMLPDenoiser,
          "causal-recurrent": CausalRecurrentDenoiser}
NOISE_LEVELS = [torch.full((3,), 0), torch.full((3,), 60), torch.full((3,), 127), torch.tensor([0, 60, 127])]


def _net(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_denoiser(ROWS, X_DIM, ACT, dataclasses.replace(SMALL, kind=kind)).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, ROWS, X_DIM, generator=gen), torch.randn(3, ROWS, ACT, generator=gen)


def _from(v: torch.Tensor, k: int) -> torch.Tensor:
    """v with rows k.. replaced by other values."""
    other = v.clone()
    other[:, k:] = torch.randn(other[:, k:].shape, generator=torch.Generator().manual_seed(100 + k)) * 3
    return other


@torch.no_grad()
def _moved_rows(net, x, a, t, x2, a2) -> tuple[list[bool], list[bool]]:
    """Per row: did its states, did its reward and termination change (bitwise) from (x, a) to (x2, a2)?"""
    y, y2 = net(x, a, t), net(x2, a2, t)
    states = [not torch.equal(y[:, r, :OBS], y2[:, r, :OBS]) for r in range(ROWS)]
    outcomes = [not torch.equal(y[:, r, OBS:], y2[:, r, OBS:]) for r in range(ROWS)]
    return states, outcomes


@pytest.mark.parametrize("kind", CAUSAL)
@pytest.mark.parametrize("t", NOISE_LEVELS, ids=["t0", "t60", "t127", "mixed"])
def test_no_row_moves_with_a_later_action_or_a_later_noisy_row(t, kind):
    net, (x, a) = _net(kind), _inputs()
    for k in range(ROWS):
        # actions a_k..: the states of rows <= k and the outcomes of rows < k stay; a_k reaches r_k, s_{k+1}
        states, outcomes = _moved_rows(net, x, a, t, x, _from(a, k))
        assert states[:k + 1] == [False] * (k + 1) and outcomes[:k] == [False] * k, (k, states, outcomes)
        assert outcomes[k] and (k == ROWS - 1 or states[k + 1]), (k, states, outcomes)  # the probe can see
        # noisy rows k+1..: the states of rows <= k and the outcomes of rows < k stay
        if k < ROWS - 1:
            states, outcomes = _moved_rows(net, x, a, t, _from(x, k + 1), a)
            assert states[:k + 1] == [False] * (k + 1) and outcomes[:k] == [False] * k, (k, states, outcomes)
            assert states[k + 1] and outcomes[k], (k, states, outcomes)
        # a row's own noisy reward and termination: they are outcomes of its action, so its states ignore them
        x2 = x.clone()
        x2[:, k, OBS:] += 1.0
        states, outcomes = _moved_rows(net, x, a, t, x2, a)
        assert states[:k + 1] == [False] * (k + 1) and outcomes[:k] == [False] * k, (k, states, outcomes)


@pytest.mark.parametrize("kind", CAUSAL)
def test_a_first_action_alone_reaches_every_later_row(kind):
    """Causal, not blind: the first action moves the states of every later row."""
    net, (x, a) = _net(kind), _inputs()
    a2 = a.clone()
    a2[:, 0] += 1.0
    states, _ = _moved_rows(net, x, a, NOISE_LEVELS[-1], x, a2)
    assert states == [False] + [True] * (ROWS - 1)


@pytest.mark.parametrize("kind", CAUSAL)
@pytest.mark.parametrize("t", NOISE_LEVELS[1:3], ids=["t60", "t127"])
def test_the_outcomes_of_a_row_do_not_move_with_the_next_action(t, kind):
    net, (x, a) = _net(kind), _inputs()
    for k in range(ROWS - 1):
        states, outcomes = _moved_rows(net, x, a, t, x, _from(a, k + 1))
        assert outcomes[:k + 1] == [False] * (k + 1) and states[:k + 2] == [False] * (k + 2), (k, outcomes)


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_the_same_probes_catch_the_non_causal_denoisers(kind):
    """Positive control: the probes above can fail."""
    net, (x, a), t = _net(kind), _inputs(), NOISE_LEVELS[-1]
    for k in range(1, ROWS):
        states, _ = _moved_rows(net, x, a, t, x, _from(a, k))
        assert any(states[:k]), k
        states, _ = _moved_rows(net, x, a, t, _from(x, k), a)
        assert any(states[:k]), k


@pytest.mark.parametrize("kind", CAUSAL)
def test_a_batch_is_denoised_in_one_pass_and_rows_need_outcome_channels(kind):
    net, (x, a) = _net(kind), _inputs()
    assert isinstance(net, CAUSAL[kind])
    with torch.no_grad():
        whole = net(x, a, NOISE_LEVELS[-1])
        one_by_one = torch.cat([net(x[i:i + 1], a[i:i + 1], NOISE_LEVELS[-1][i:i + 1]) for i in range(3)])
    assert whole.shape == (3, ROWS, X_DIM)
    torch.testing.assert_close(whole, one_by_one)
    with pytest.raises(ValueError, match="x_dim=2"):
        CAUSAL[kind](ROWS, 2, ACT, SMALL)
    with pytest.raises(ValueError, match="divisible by heads 3"):
        DenoiserConfig(kind="causal-transformer", width=32, heads=3)
    with pytest.raises(ValueError, match="causal-recurrent, got 'causal'"):
        DenoiserConfig(kind="causal")


@functools.cache
def _trained(kind: str) -> WorldModel:
    torch.manual_seed(0)
    config = dataclasses.replace(TINY_CONFIG, denoiser=dataclasses.replace(TINY_CONFIG.denoiser, kind=kind))
    model, _ = fit_world_model(linear_buffer(), LINEAR_SPEC, 60, config, TrainConfig(lr=2e-3, batch_size=64),
                               device="cpu", progress=False)
    return model


def _state_policy(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A policy whose mean follows the state, so guided actions carry what their rows' states know."""
    return torch.tanh(s[:, :ACT] - s[:, 1:ACT + 1]), torch.full((len(s), ACT), 0.4)


def _imagined_past_moves(model: WorldModel, k: int) -> bool:
    """Do the imagined states of rows <= k or rewards of rows < k differ between a chain guided by the
    policy after k given actions and one given H actions that share those k?"""
    s0 = np.random.default_rng(3).normal(size=(8, OBS)).astype(np.float32)
    given = torch.as_tensor(np.random.default_rng(4).uniform(-1, 1, size=(8, H, ACT)), dtype=torch.float32)
    runs = [model.imagine(s0, _state_policy, actions=acts, generator=torch.Generator().manual_seed(0))
            for acts in (given[:, :k], given)]
    return not (torch.equal(runs[0].observations[:, :k + 1], runs[1].observations[:, :k + 1])
                and torch.equal(runs[0].rewards[:, :k], runs[1].rewards[:, :k]))


@pytest.mark.parametrize("kind", CAUSAL)
def test_the_guided_chain_keeps_the_imagined_past_fixed_whatever_the_later_actions(kind):
    """Through every step of the chain: guided actions a_j read the states of row j, which depend only on
    a_0..a_{j-1}, so the past of row k is the same whether later actions follow the policy or are given."""
    causal, plain = _trained(kind), _trained("transformer")
    for k in range(1, H):
        assert not _imagined_past_moves(causal, k), k
    assert all(_imagined_past_moves(plain, k) for k in range(1, H))     # positive control


@pytest.mark.parametrize("kind", CAUSAL)
def test_a_causal_model_saved_and_loaded_records_its_kind_and_imagines_the_same(tmp_path, kind):
    model = _trained(kind)
    model.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["config"]["denoiser"]["kind"] == kind
    loaded = WorldModel.load(tmp_path / "m.pt")
    assert loaded.config == model.config and isinstance(loaded.ema, CAUSAL[kind])
    s0 = np.random.default_rng(0).normal(size=(5, OBS)).astype(np.float32)
    runs = [m.imagine(s0, _state_policy, generator=torch.Generator().manual_seed(2)) for m in (model, loaded)]
    for field in ("observations", "actions", "rewards", "terminations"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field


@pytest.mark.parametrize("kind", ["causal-mlp", "causal-recurrent"])
def test_a_network_fed_token_by_token_gives_its_full_pass(kind):
    net = _net(kind)
    x, actions = _inputs()
    t = torch.tensor([0, 60, 127])
    stepper, tokens = token_stepper(net, t), transition_tokens(x, actions)
    assert stepper is not None and token_stepper(_net("causal-transformer"), t) is None
    with torch.no_grad():
        outputs = [stepper.push(tokens[:, j]) for j in range(ROWS + 1)]
        torch.testing.assert_close(rows_of_tokens(torch.stack(outputs, dim=1)), net(x, actions, t))
        with pytest.raises(ValueError, match="all pushed already"):
            stepper.push(tokens[:, 0])


@pytest.mark.parametrize("kind", ["causal-mlp", "causal-recurrent"])
def test_a_stepper_reads_a_dropout_network_as_generation_does(kind):
    torch.manual_seed(0)
    net = build_denoiser(ROWS, X_DIM, ACT, dataclasses.replace(SMALL, kind=kind, dropout=0.5))
    x, actions = _inputs()
    t = torch.tensor([0, 60, 127])
    with pytest.raises(ValueError, match="without dropout"):
        token_stepper(net, t)                                        # in training mode
    stepper, tokens = token_stepper(net.eval(), t), transition_tokens(x, actions)
    assert stepper is not None
    with torch.no_grad():
        outputs = [stepper.push(tokens[:, j]) for j in range(ROWS + 1)]
        torch.testing.assert_close(rows_of_tokens(torch.stack(outputs, dim=1)), net(x, actions, t))


def test_a_model_trained_with_dropout_imagines_deterministically():
    """Training keeps the denoiser in training mode; the EMA copy that generates never drops units."""
    torch.manual_seed(0)
    denoiser = dataclasses.replace(TINY_CONFIG.denoiser, kind="causal-mlp", dropout=0.3)
    config = dataclasses.replace(TINY_CONFIG, denoiser=denoiser)
    model, _ = fit_world_model(linear_buffer(), LINEAR_SPEC, 20, config, TrainConfig(lr=2e-3, batch_size=64),
                               device="cpu", progress=False)
    assert model.denoiser.training and not model.ema.training
    s0 = np.random.default_rng(0).normal(size=(5, OBS)).astype(np.float32)
    runs = [model.imagine(s0, _state_policy, generator=torch.Generator().manual_seed(2)) for _ in range(2)]
    assert torch.equal(runs[0].observations, runs[1].observations)


@pytest.mark.parametrize("kind", ["causal-mlp", "causal-recurrent"])
@pytest.mark.parametrize("n_members,n_fixed,last_action", [(1, 0, False), (2, 0, False), (2, 2, True)])
def test_a_stepped_rollout_draws_at_the_states_of_full_read_out_passes(kind, n_members, n_fixed, last_action,
                                                                        monkeypatch):
    """The token-by-token rollout against a reference built from full passes: its read-out is `readout` of
    its actions, and each drawn action standardised at the members' mean state of that read-out is the
    generator's noise; given first actions are kept."""
    torch.manual_seed(0)
    config = dataclasses.replace(
        TINY_CONFIG, readout="rollout", scale_actions=False, condition_on_last_action=last_action,
        n_members=n_members, denoiser=dataclasses.replace(TINY_CONFIG.denoiser, kind=kind, width=16))
    normaliser = Normaliser.fit(linear_buffer(n_episodes=5), -1.0, 1.0)
    sampler = WorldModel(LINEAR_SPEC, config, normaliser, "cpu").sampler()
    std = 0.3

    def policy(s):
        return torch.tanh(3.0 * s[:, :ACT]), torch.full((len(s), ACT), std)

    s0 = torch.as_tensor(np.random.default_rng(0).normal(size=(64, OBS)), dtype=torch.float32)
    given = torch.as_tensor(np.random.default_rng(1).uniform(-1, 1, (64, n_fixed, ACT)), dtype=torch.float32)
    with monkeypatch.context() as patch:   # the stepped path makes no full pass
        patch.setattr(CAUSAL[kind], "forward", lambda *_: pytest.fail("a full pass was made"))
        actions, x0 = sampler.policy_rollout(s0, policy, H + 1, generator=torch.Generator().manual_seed(1),
                                             fixed_actions=given if n_fixed else None)
    reference = sampler.readout(s0, actions)
    assert x0.shape == reference.shape == (n_members, 64, H + 1, OBS + 2)
    torch.testing.assert_close(x0, reference)
    states = normaliser.unnormalise_obs(reference.mean(0)[:, :, :OBS])
    states[:, 0] = s0
    noise = torch.randn(64, H, ACT, generator=torch.Generator().manual_seed(1))
    drawn = (actions[:, :H] - torch.tanh(3.0 * states[:, :H, :ACT])) / std
    torch.testing.assert_close(drawn[:, n_fixed:], noise[:, n_fixed:], atol=1e-4, rtol=0)
    torch.testing.assert_close(actions[:, :n_fixed], given)
    assert (actions[:, H] == 0).all()
