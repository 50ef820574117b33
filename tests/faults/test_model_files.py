"""Damaged, hand-edited and hostile world-model files: `WorldModel.load` refuses each with one line naming the
file and the field at fault, and leaves the file and its folder as they were; files of format 1 (no checksum)
still load."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from imagined_env.data.normaliser import Normaliser
from imagined_env.pretrained import pretrained_paths
from imagined_env.world_model import WorldModel, content_checksum
from tests.conftest import LINEAR_SPEC, OBS, TINY_CONFIG, linear_buffer
from tests.faults.test_damaged_run_folders import plant_torch
from tests.faults.tiny_runs import snapshot


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An untrained tiny model's file, never modified (tests edit copies)."""
    torch.manual_seed(0)
    normaliser = Normaliser.fit(linear_buffer(n_episodes=2), -1.0, 1.0)
    path = tmp_path_factory.mktemp("model") / "wm.pt"
    WorldModel(LINEAR_SPEC, TINY_CONFIG, normaliser, "cpu").save(path)
    return path


def refused(path: Path) -> str:
    """The message of a load that must fail: one line naming `path`, with the folder left as it was."""
    before = snapshot(path.parent)
    with pytest.raises(ValueError) as info:
        WorldModel.load(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and len(message.splitlines()) == 1 and "\x1b" not in message, message
    assert snapshot(path.parent) == before
    return message


def edited(model_file: Path, folder: Path, change: Callable[[dict], None], checksum: bool = True) -> Path:
    """A copy of `model_file` with `change` applied to its payload; its checksum renewed unless told not to,
    as a careful hand edit would."""
    payload = torch.load(model_file, weights_only=True)
    change(payload)
    if checksum:
        payload["checksum"] = content_checksum(payload)
    path = folder / "edited.pt"
    torch.save(payload, path)
    return path


def setter(*keys: str, value=None, delete: bool = False) -> Callable[[dict], None]:
    def change(payload: dict) -> None:
        *parents, last = keys
        for key in parents:
            payload = payload[key]
        if delete:
            del payload[last]
        else:
            payload[last] = value(payload[last]) if callable(value) else value
    return change


EDITS = {
    "format_version 0": (setter("format_version", value=0),
                         "format_version must be an integer >= 1, got 0"),
    "format_version -1": (setter("format_version", value=-1),
                          "format_version must be an integer >= 1, got -1"),
    "format_version '2'": (setter("format_version", value="2"),
                           "format_version must be an integer >= 1, got '2'"),
    "no log_guidance_scale": (setter("log_guidance_scale", delete=True),
                              "lacks the field 'log_guidance_scale'"),
    "NaN log_guidance_scale": (setter("log_guidance_scale", value=math.nan),
                               "log_guidance_scale must be a finite number, got nan"),
    "text log_guidance_scale": (setter("log_guidance_scale", value="-5"),
                                "log_guidance_scale must be a finite number, got '-5'"),
    "no spec": (setter("spec", delete=True), "lacks the field 'spec'"),
    "no compact": (setter("compact", delete=True), "lacks the field 'compact'"),
    "text compact": (setter("compact", value="no"), "compact must be a bool, got str"),
    "narrow normaliser": (lambda p: p["normaliser"].update(obs_mean=[0.0] * (OBS - 1),
                                                           obs_std=[1.0] * (OBS - 1)),
                          f"the normaliser's obs statistics have {OBS - 1} entries, "
                          f"but the task's obs width is {OBS}"),
    "NaN normaliser": (setter("normaliser", "obs_std", value=lambda v: [v[0], math.nan, *v[2:]]),
                       "normaliser.obs_std[1] must be a finite number, got nan"),
    "text normaliser": (setter("normaliser", "reward_mean", value="0"),
                        "normaliser.reward_mean must be a list of numbers, got str"),
    "short action bounds": (setter("spec", "action_low", value=(-1.0,)), "action bounds must have act_dim=2"),
    "crossed action bounds": (setter("spec", "action_low", value=(2.0, 2.0)), "action_low <= action_high"),
    "text action bounds": (setter("spec", "action_high", value=("1", 1.0)),
                           "spec.action_high[0] must be a number, got '1'"),
    "text horizon": (setter("config", "horizon", value="5"), "config.horizon must be an integer, got '5'"),
    "unknown config key": (setter("config", "colour", value="blue"), "unknown config key 'config.colour'"),
    "mean read-out of scaled actions": (setter("config", "readout", value="mean"),
                                        "readout='mean' needs scale_actions=False"),
    "NaN weight": (setter("ema", "inp.weight", value=lambda w: torch.full_like(w, math.nan)),
                   "ema.inp.weight holds NaN or inf"),
    "missing weight": (setter("denoiser", "inp.weight", delete=True),
                       'Missing key(s) in state_dict: "inp.weight"'),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_each_field_of_a_hand_edited_file_is_checked_and_named(model_file, tmp_path, edit):
    change, words = EDITS[edit]
    assert words in refused(edited(model_file, tmp_path, change))


def test_an_edit_without_a_new_checksum_is_damage(model_file, tmp_path):
    path = edited(model_file, tmp_path, setter("log_guidance_scale", value=0.0), checksum=False)
    assert "is damaged: its content does not match its checksum" in refused(path)
    path = edited(model_file, tmp_path, setter("checksum", delete=True), checksum=False)
    assert "is damaged: it lacks the checksum of format version 3" in refused(path)


@pytest.mark.parametrize("compact", [False, True])
def test_files_with_flipped_bytes_are_refused(model_file, tmp_path, compact):
    if compact:   # 16-bit EMA weights only: the checksum covers them as stored
        WorldModel.load(model_file, device="cpu").save(tmp_path / "compact.pt", compact=True)
        model_file = tmp_path / "compact.pt"
    rng = np.random.default_rng(0)
    data = np.frombuffer(model_file.read_bytes(), np.uint8)
    messages = []
    for i in range(20):
        damaged = data.copy()
        damaged[rng.choice(len(data), size=8, replace=False)] ^= rng.integers(1, 256, size=8, dtype=np.uint8)
        path = tmp_path / f"flipped-{i}.pt"
        path.write_bytes(damaged.tobytes())
        messages.append(refused(path))
    assert sum("does not match its checksum" in m for m in messages) >= 10, messages   # most hit tensor bytes


def test_a_directory_is_named_as_one(tmp_path):
    (tmp_path / "wm.pt").mkdir()
    assert "is a directory, not a file" in refused(tmp_path / "wm.pt")


def test_a_planted_pickle_is_refused_in_one_short_line_and_never_runs(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "model" / "wm.pt"
    path.parent.mkdir()
    plant_torch(path, marker)
    message = refused(path)
    assert "holds a pickled object" in message and "nothing in it was run" in message and len(message) < 250
    assert not marker.exists()


def test_files_of_format_1_load_without_a_checksum(model_file, tmp_path):
    def as_version_1(payload: dict) -> None:
        del payload["checksum"]
        payload["format_version"] = 1

    old = WorldModel.load(edited(model_file, tmp_path, as_version_1, checksum=False), device="cpu")
    new = WorldModel.load(model_file, device="cpu")
    s0 = np.random.default_rng(0).normal(size=(4, OBS)).astype(np.float32)
    a, b = (m.imagine(s0, generator=torch.Generator().manual_seed(0)) for m in (old, new))
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    # a checksum is checked whenever there is one, whatever the version says
    damaged = edited(model_file, tmp_path, lambda p: (as_version_1(p), p.update(checksum="sha256:0")),
                     checksum=False)
    assert "does not match its checksum" in refused(damaged)


def test_the_shipped_models_are_compact_checked_files():
    model_path, _ = pretrained_paths("HalfCheetah-v4")
    payload = torch.load(model_path, weights_only=True)
    assert payload["format_version"] == 3 and payload["compact"] is True and payload["checksum"]
    for env_id in ("HalfCheetah-v4", "HalfCheetah-v5"):
        assert WorldModel.load(model_path, device="cpu", env_id=env_id).spec.obs_dim == 17
