"""Damaged and hostile run folders: `--resume` and `evaluate` name the file, exit with code 2, run no
planted code and leave the folder as it was."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.faults.tiny_runs import snapshot, usage_error


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def drop_config(path: Path) -> None:
    state = json.loads(path.read_text())
    del state["config"]
    path.write_text(json.dumps(state))


DAMAGES = {
    "state.json without config": ("state.json", drop_config, "lacks the field 'config'"),
    "state.json truncated": ("state.json", truncate, "unreadable"),
    "run_state.pt missing": ("run_state.pt", Path.unlink, "missing"),
    "run_state.pt truncated": ("run_state.pt", truncate, "truncated"),
    "learner.zip missing": ("learner.zip", Path.unlink, "missing"),
    "learner.zip truncated": ("learner.zip", truncate, "truncated"),
    "vec_normalize.npz missing": ("vec_normalize.npz", Path.unlink, "missing"),
    "vec_normalize.npz truncated": ("vec_normalize.npz", truncate, "truncated"),
    "buffer.npz truncated": ("buffer.npz", truncate, "truncated"),
    "world_model.pt truncated": ("world_model.pt", truncate, "truncated"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_of_a_damaged_folder_names_the_file_and_writes_nothing(run_copy, capsys, damage):
    name, harm, words = DAMAGES[damage]
    harm(run_copy / "checkpoint" / name)
    before = snapshot(run_copy)
    message = usage_error(["train", "--resume", str(run_copy), "--steps", "400"], capsys)
    assert str(run_copy / "checkpoint" / name) in message and words in message
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("damage", [d for d in DAMAGES if DAMAGES[d][0] in
                                    ("state.json", "learner.zip", "vec_normalize.npz")])
def test_evaluate_of_a_damaged_folder_names_the_file(run_copy, capsys, damage):
    name, harm, words = DAMAGES[damage]
    harm(run_copy / "checkpoint" / name)
    message = usage_error(["evaluate", str(run_copy), "--episodes", "1"], capsys)
    assert str(run_copy / "checkpoint" / name) in message and words in message


class Payload:
    """Unpickling this creates `marker`: evidence that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant_torch(path: Path, marker: Path) -> None:
    torch.save({"trainer": Payload(marker), "rng": {}}, path)


def plant_npz(path: Path, marker: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, obs_mean=np.array([Payload(marker)], dtype=object))


@pytest.mark.parametrize("name,plant", [("run_state.pt", plant_torch), ("world_model.pt", plant_torch),
                                        ("vec_normalize.npz", plant_npz), ("buffer.npz", plant_npz)])
def test_a_planted_pickle_never_runs_on_resume(run_copy, capsys, tmp_path, name, plant):
    marker = tmp_path / "payload-ran"
    plant(run_copy / "checkpoint" / name, marker)
    message = usage_error(["train", "--resume", str(run_copy)], capsys)
    assert str(run_copy / "checkpoint" / name) in message
    assert not marker.exists()


def test_evaluate_never_unpickles_a_run_folders_statistics(run_copy, capsys, tmp_path):
    marker = tmp_path / "payload-ran"
    plant_npz(run_copy / "checkpoint" / "vec_normalize.npz", marker)
    assert (str(run_copy / "checkpoint" / "vec_normalize.npz")
            in usage_error(["evaluate", str(run_copy)], capsys))
    # a folder of an older version holds a pickled vec_normalize.pkl: it is named, not loaded
    (run_copy / "checkpoint" / "vec_normalize.npz").unlink()
    (run_copy / "checkpoint" / "vec_normalize.pkl").write_bytes(pickle.dumps(Payload(marker)))
    message = usage_error(["evaluate", str(run_copy)], capsys)
    assert "vec_normalize.pkl" in message and "trusted source" in message and "--vecnormalize" in message
    assert not marker.exists()


def test_help_says_what_must_be_trusted(capsys):
    from tests.faults.tiny_runs import cli

    texts = {}
    for command in ("train", "evaluate"):
        code, out, _ = cli([command, "--help"], capsys)
        assert code == 0
        texts[command] = " ".join(out.split())
    assert "learner .zip given by itself must come from a trusted source" in texts["evaluate"]
    assert "run folder is read without unpickling" in texts["evaluate"]
    assert "--resume reads the run folder without unpickling" in texts["train"]


def test_run_state_loads_weights_only_and_restores_the_random_generators(finished_run):
    import random

    from agents.rng_state import rng_state, set_rng_state

    saved = torch.load(finished_run / "checkpoint" / "run_state.pt", weights_only=True)
    assert set(saved) == {"trainer", "rng"}
    now = rng_state()
    set_rng_state(saved["rng"])
    first = (random.random(), np.random.normal(), torch.rand(1).item())
    set_rng_state(saved["rng"])
    assert (random.random(), np.random.normal(), torch.rand(1).item()) == first
    set_rng_state(now)
