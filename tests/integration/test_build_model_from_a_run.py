"""`build_model` with its data from a training run in imagination (source "run"), on a tiny run: the run
is made in the work folder, its buffer becomes the data, a build resumes the run and refuses one made with
other settings."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import agents.build_model as build_module
import agents.run_data as run_data_module
from agents.build_model import BuildConfig, build_model
from agents.presets import apply
from agents.run_data import RunDataConfig
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.world_model import WorldModel
from tests.faults.tiny_runs import TINY as TINY_RUN

pytestmark = [pytest.mark.slow, pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*is out of date"),
              pytest.mark.filterwarnings("ignore:.*settotalmass")]

TASK, STEPS = "Hopper-v4", 300
CONFIG = BuildConfig(run_data=RunDataConfig(steps=STEPS, seed=2, skill_parts=2), fit_steps=20,
                     n_start_states=40)


def tiny_preset(name, env_id, overrides=None):
    """The data run's preset made tiny (its seed and terminations still come from `RunDataConfig`)."""
    return apply(replace(TINY_RUN, env_id=env_id), overrides or {})


@pytest.fixture(autouse=True)
def tiny_runs(monkeypatch):
    monkeypatch.setattr(run_data_module, "build_preset", tiny_preset)


def build(out: Path, work: Path, config: BuildConfig = CONFIG) -> Path:
    return build_model(TASK, out, work, config, command="imagined-env build-model out --env Hopper-v4",
                       log=lambda _: None, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("build")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_data_module, "build_preset", tiny_preset)
        return build(root / "out", root / "work"), root / "work"


def test_the_runs_buffer_is_the_data_and_the_record_says_where_it_came_from(built):
    out, work = built
    run = work / "run"
    assert (run / "checkpoint" / "state.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 2 and config["world_model"]["terminations"] == "task"
    data = EpisodeBuffer.load(work / "data.npz")
    saved = EpisodeBuffer.load(run / "checkpoint" / "buffer.npz")
    assert data.n_transitions == saved.n_transitions == STEPS
    np.testing.assert_array_equal(data.observations(), saved.observations())
    record = (out / "COMMAND.txt").read_text()
    assert f"a training run in imagination (preset cpu-v7, {STEPS} real steps, seed 2)" in record
    assert "- uniform random prefill: " in record and "- policy in training, part 2 of 2: " in record
    shipped = json.loads((out / "data.json").read_text())
    assert shipped["real_steps_collected"] == STEPS
    assert sum(p["transitions"] for p in shipped["parts"].values()) == STEPS
    assert shipped["origin"].startswith("a training run in imagination")
    last = json.loads((run / "checkpoint" / "state.json").read_text())["history"][-1]
    assert last["real_steps"] == STEPS
    assert shipped["reference"] == {"policy": "the data run's final policy, deterministic",
                                    "mean_return": last["mean_return"]}
    model = WorldModel.load(out / "world_model.pt", device="cpu")
    assert model.config.n_members == 3 and model.config.disagreement_limit is not None


def test_a_build_resumes_its_unfinished_data_run(built, tmp_path):
    _, work = built
    work2 = tmp_path / "work"
    shutil.copytree(work / "run", work2 / "run")
    longer = replace(CONFIG, run_data=replace(CONFIG.run_data, steps=STEPS + 100))
    build(tmp_path / "out", work2, longer)
    data, before = EpisodeBuffer.load(work2 / "data.npz"), EpisodeBuffer.load(work / "data.npz")
    assert data.n_transitions == STEPS + 100
    np.testing.assert_array_equal(data.transitions().actions[:STEPS], before.transitions().actions)  # kept
    state = json.loads((work2 / "run" / "checkpoint" / "state.json").read_text())
    assert state["real_steps"] == STEPS + 100


def test_a_data_run_made_with_other_settings_is_refused_before_anything_changes(built, tmp_path, monkeypatch):
    _, work = built
    work2 = tmp_path / "work"
    shutil.copytree(work / "run", work2 / "run")
    before = {p: p.read_bytes() for p in sorted(work2.rglob("*")) if p.is_file()}
    other = replace(CONFIG, run_data=replace(CONFIG.run_data, seed=5))
    with pytest.raises(ValueError, match="differs from the one asked for in seed"):
        build(tmp_path / "out", work2, other)
    assert {p: p.read_bytes() for p in sorted(work2.rglob("*")) if p.is_file()} == before
    assert not (tmp_path / "out").exists()


def test_a_finished_data_stage_is_reused_without_running_again(built, tmp_path, monkeypatch):
    _, work = built
    work2 = tmp_path / "work"
    shutil.copytree(work, work2)
    monkeypatch.setattr(build_module, "collect_run_data", lambda *a, **k: pytest.fail("the run ran again"))
    monkeypatch.setattr(build_module, "fit_world_model", lambda *a, **k: pytest.fail("fitted again"))
    out = build(tmp_path / "out", work2)
    assert (out / "COMMAND.txt").read_text() == (built[0] / "COMMAND.txt").read_text()


def test_a_data_run_longer_than_asked_is_refused_before_anything_changes(built, tmp_path):
    _, work = built
    work2 = tmp_path / "work"
    shutil.copytree(work / "run", work2 / "run")
    before = {p: p.read_bytes() for p in sorted(work2.rglob("*")) if p.is_file()}
    shorter = replace(CONFIG, run_data=replace(CONFIG.run_data, steps=STEPS - 50))
    message = f"a run of {STEPS} real steps, more than the run_data.steps {STEPS - 50}"
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "out", work2, shorter)
    assert {p: p.read_bytes() for p in sorted(work2.rglob("*")) if p.is_file()} == before


def test_other_run_settings_with_a_finished_data_stage_are_refused_naming_the_file_to_delete(built, tmp_path):
    _, work = built
    work2 = tmp_path / "work"
    shutil.copytree(work, work2)
    other = replace(CONFIG, run_data=replace(CONFIG.run_data, seed=7))
    message = f"holds a data stage .* delete {re.escape(str(work2 / 'data.npz'))}"
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "out", work2, other)
    assert not (tmp_path / "out").exists()
