"""Compact model files (`save(compact=True)`): only the EMA weights, as float16; they load as a model that
imagines as the original does up to float16 rounding, and older or full files keep loading."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from imagined_env.training import TrainConfig, fit_world_model
from imagined_env.world_model import FORMAT_VERSION, WorldModel, content_checksum
from tests.conftest import ACT, LINEAR_SPEC, TINY_CONFIG, linear_buffer, linear_step

# Max abs difference, in the data's standard deviations, between the imaginations of a compact file and of
# its model (same 256 start states, policy and generator): float16 keeps ~3 significant digits of each weight.
# Measured here: 4e-4 for states and rewards, against the model's own mean one-step error of 0.07 (170 times
# more), so the rounding is far below what the learner already lives with; 0.01 leaves room for other seeds.
ROUNDING_TOLERANCE = 0.01


@functools.cache
def _ensemble() -> WorldModel:
    """A 3-member ensemble with a disagreement penalty, as shipped, fitted briefly on the linear system."""
    config = dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False, n_members=3,
                                 disagreement_penalty=0.1, disagreement_limit=5.0)
    torch.manual_seed(0)
    model, _ = fit_world_model(linear_buffer(), LINEAR_SPEC, 300, config,
                               TrainConfig(lr=2e-3, batch_size=128), device="cpu", progress=False)
    model.log_guidance_scale = -1.25
    model.row_scale_offsets = torch.linspace(-0.3, 0.3, model.n_rows)
    return model


@pytest.fixture
def saved(tmp_path):
    """(model, full file, compact file)."""
    model = _ensemble()
    full, compact = tmp_path / "full.pt", tmp_path / "compact.pt"
    model.save(full)
    model.save(compact, compact=True)
    return model, full, compact


def policy(s: torch.Tensor):
    return torch.full((len(s), ACT), 0.2), torch.full((len(s), ACT), 0.3)


def test_a_compact_file_holds_the_ema_weights_as_float16_and_loads_them_as_float32_in_both_nets(saved):
    model, _, compact = saved
    payload = torch.load(compact, weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION == 3 and payload["compact"] is True
    assert "denoiser" not in payload
    assert {v.dtype for v in payload["ema"].values()} == {torch.float16}
    loaded = WorldModel.load(compact, device="cpu", env_id="Linear-v0")
    assert loaded.spec == model.spec and loaded.config == model.config
    assert loaded.normaliser.to_dict() == model.normaliser.to_dict()
    assert loaded.log_guidance_scale == model.log_guidance_scale
    assert torch.equal(loaded.row_scale_offsets, model.row_scale_offsets)
    original = model.ema.state_dict()
    for net in (loaded.ema, loaded.denoiser):
        state = net.state_dict()
        assert state.keys() == original.keys()
        for key, value in state.items():
            assert value.dtype == torch.float32
            assert torch.equal(value, original[key].half().float()), key
    # a compact model can be fitted further: its trained weights are float32 parameters with gradients
    assert all(p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())
    loaded.save(compact, compact=True)                       # and saved again, to the same bytes of weights
    again = torch.load(compact, weights_only=True)
    assert again["checksum"] == payload["checksum"]


def test_a_compact_file_is_under_three_tenths_of_a_full_one(saved):
    _, full, compact = saved
    ratio = compact.stat().st_size / full.stat().st_size
    assert ratio < 0.3, ratio                                # measured: 0.26 (half the nets, half the bytes)


def test_a_compact_model_imagines_as_its_original_up_to_float16_rounding(saved):
    model, _, compact = saved
    loaded = WorldModel.load(compact, device="cpu")
    s0 = linear_buffer(seed=3).start_states(np.random.default_rng(0), 256)[0]
    a, b = (m.imagine(s0, policy, generator=torch.Generator().manual_seed(0)) for m in (model, loaded))
    norm = model.normaliser
    reward_std = norm.reward_std[0]
    obs_diff = (norm.normalise_obs(a.observations) - norm.normalise_obs(b.observations)).abs().max()
    reward_diff = ((a.rewards - b.rewards) / reward_std).abs().max()
    assert torch.equal(a.actions, b.actions)
    assert 0 < obs_diff < ROUNDING_TOLERANCE, obs_diff       # not 0: the weights did change
    assert reward_diff < ROUNDING_TOLERANCE, reward_diff
    assert (a.disagreement - b.disagreement).abs().max() < ROUNDING_TOLERANCE
    # the model's own one-step error dwarfs the rounding (see ROUNDING_TOLERANCE)
    truth = torch.as_tensor(linear_step(s0, a.actions[:, 0].numpy())[0])
    model_error = (norm.normalise_obs(a.observations[:, 1]) - norm.normalise_obs(truth)).abs().mean()
    assert model_error > 10 * obs_diff, (model_error, obs_diff)


def test_an_edited_weight_in_a_compact_file_is_refused(saved, tmp_path):
    """(Flipped bytes in compact files: tests/faults/test_model_files.py.)"""
    _, _, compact = saved
    payload = torch.load(compact, weights_only=True)
    key = next(iter(payload["ema"]))
    payload["ema"][key] = payload["ema"][key].clone()
    payload["ema"][key].view(-1)[0] += 1                                # one weight, checksum kept
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="edited.pt is damaged: its content does not match its checksum"):
        WorldModel.load(tmp_path / "edited.pt")


def test_files_of_format_2_load_as_full_files(saved, tmp_path):
    model, full, _ = saved
    payload = torch.load(full, weights_only=True)
    del payload["compact"]
    payload["format_version"] = 2
    payload["checksum"] = content_checksum(payload)
    torch.save(payload, tmp_path / "v2.pt")
    loaded = WorldModel.load(tmp_path / "v2.pt", device="cpu")
    for mine, theirs in ((loaded.denoiser, model.denoiser), (loaded.ema, model.ema)):
        for (key, value), other in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(value, other), key


def test_bad_compact_saves_are_refused_before_writing(tmp_path):
    model = WorldModel(LINEAR_SPEC, TINY_CONFIG, _ensemble().normaliser, "cpu")
    with pytest.raises(ValueError, match="compact must be True or False, got 'yes'"):
        model.save(tmp_path / "a.pt", compact="yes")  # type: ignore[arg-type]
    with torch.no_grad():
        model.ema.inp.weight[0, 0] = 1e6                                # beyond float16's 65504
    with pytest.raises(ValueError, match=r"ema.inp.weight holds values up to 1e\+06, beyond float16's 65504: "
                                         "save it with compact=False"):
        model.save(tmp_path / "b.pt", compact=True)
    assert list(tmp_path.iterdir()) == []
    model.save(tmp_path / "c.pt")                                       # a full file holds it
    assert WorldModel.load(tmp_path / "c.pt").ema.inp.weight[0, 0] == 1e6


@pytest.mark.parametrize("compact", [False, True])
def test_the_same_model_saved_twice_under_other_names_is_the_same_bytes(tmp_path, compact):
    """A model's file identifies it (benchmarks digest the shipped files): no temporary name in it."""
    model = _ensemble()
    first, second = tmp_path / "a.pt", tmp_path / "sub" / "world_model.pt"
    model.save(first, compact=compact)
    model.save(second, compact=compact)
    assert first.read_bytes() == second.read_bytes()
