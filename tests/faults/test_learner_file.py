"""A run's learner.zip is read for its tensors only, on `--resume` and `evaluate RUN_DIR`: a pickle planted
in its data member never runs, one planted in a tensor member is refused naming the file, and the learner
rebuilt from the run's config is the one that was saved."""
from __future__ import annotations

import base64
import json
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import cloudpickle
import pytest
import torch
from stable_baselines3 import PPO

from agents.coordinator import Coordinator
from tests.faults.test_damaged_run_folders import Payload
from tests.faults.tiny_runs import BUDGET, TINY, cli, usage_error

pytestmark = [pytest.mark.filterwarnings("ignore:.*is out of date"),
              pytest.mark.filterwarnings("ignore:.*settotalmass")]


def rewrite_member(archive_path: Path, name: str, content: bytes) -> None:
    """`archive_path` with member `name` replaced by `content`, every other member as it was."""
    with zipfile.ZipFile(archive_path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members[name] = content
    with zipfile.ZipFile(archive_path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def plant_in_data(path: Path, marker: Path) -> None:
    """Every cloudpickled field of SB3's JSON data member becomes a payload."""
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    payload = base64.b64encode(cloudpickle.dumps(Payload(marker))).decode()
    planted = 0
    for value in data.values():
        if isinstance(value, dict) and ":serialized:" in value:
            value[":serialized:"] = payload
            planted += 1
    assert planted > 0
    rewrite_member(path, "data", json.dumps(data).encode())


def plant_in_tensors(path: Path, marker: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        state = torch.load(archive.open("policy.pth"), weights_only=True)
    state["payload"] = Payload(marker)
    buffer = Path(str(path) + ".pth")
    torch.save(state, buffer)
    rewrite_member(path, "policy.pth", buffer.read_bytes())
    buffer.unlink()


def test_the_planted_data_payload_is_live(run_copy, tmp_path):
    """SB3's own `load` runs it: the tests below would fail if the run folder were read that way."""
    marker = tmp_path / "payload-ran"
    plant_in_data(run_copy / "checkpoint" / "learner.zip", marker)
    with pytest.raises(Exception):  # noqa: B017  (the payload replaced the classes SB3 needs)
        PPO.load(run_copy / "checkpoint" / "learner.zip", device="cpu")
    assert marker.exists()


def test_a_pickle_planted_in_the_learner_data_never_runs(run_copy, capsys, tmp_path):
    marker = tmp_path / "payload-ran"
    plant_in_data(run_copy / "checkpoint" / "learner.zip", marker)
    code, out, err = cli(["evaluate", str(run_copy), "--episodes", "1", "--max-episode-steps", "20"], capsys)
    assert code == 0 and "mean return" in out, err
    code, _, err = cli(["train", "--resume", str(run_copy), "--steps", str(BUDGET + TINY.policy_every),
                        "--verbose", "0"], capsys)
    assert code == 0, err
    state = json.loads((run_copy / "checkpoint" / "state.json").read_text())
    assert state["real_steps"] == BUDGET + TINY.policy_every
    assert not marker.exists()


def test_a_pickle_planted_in_the_learner_tensors_is_refused(run_copy, capsys, tmp_path):
    marker = tmp_path / "payload-ran"
    path = run_copy / "checkpoint" / "learner.zip"
    plant_in_tensors(path, marker)
    for argv in (["train", "--resume", str(run_copy)], ["evaluate", str(run_copy)]):
        message = usage_error(argv, capsys)
        assert str(path) in message and "pickled objects" in message
    assert not marker.exists()


def test_a_learner_file_of_other_settings_is_refused(run_copy, capsys, tmp_path):
    other = tmp_path / "other"
    wider = replace(TINY.learner.policy, pi=(32,), vf=(32,))
    config = replace(TINY, learner=replace(TINY.learner, policy=wider))
    Coordinator(config, other, verbose=0).learn(TINY.prefill_steps + TINY.policy_every,
                                                progress_bar=False).close()
    path = run_copy / "checkpoint" / "learner.zip"
    path.write_bytes((other / "checkpoint" / "learner.zip").read_bytes())
    for argv in (["train", "--resume", str(run_copy)], ["evaluate", str(run_copy)]):
        message = usage_error(argv, capsys)
        assert str(path) in message and "does not fit the run's learner settings" in message


def test_the_resumed_learner_is_the_saved_one(tmp_path):
    run = Coordinator(TINY, tmp_path / "run", verbose=0).learn(BUDGET, progress_bar=False)
    before = run.evaluate(2)
    saved = run.learner
    run.close()
    resumed = Coordinator.resume(tmp_path / "run", verbose=0)
    learner = resumed.learner
    assert learner.num_timesteps == saved.num_timesteps > 0
    for name, tensor in saved.policy.state_dict().items():
        assert torch.equal(learner.policy.state_dict()[name], tensor), name
    optimiser, restored = saved.policy.optimizer.state_dict(), learner.policy.optimizer.state_dict()
    assert optimiser["param_groups"] == restored["param_groups"]
    for index, moments in optimiser["state"].items():
        assert all(torch.equal(restored["state"][index][key], value) for key, value in moments.items())
    assert resumed.evaluate(2) == before
    resumed.close()


def test_evaluate_of_a_run_folder_equals_sb3s_load_of_its_files(finished_run, capsys):
    """The learner built from the config gives the return SB3's `load` of the same (trusted) file gives."""
    checkpoint = finished_run / "checkpoint"
    options = ["--episodes", "2", "--max-episode-steps", "50"]
    code, folder, err = cli(["evaluate", str(finished_run), *options], capsys)
    assert code == 0, err
    code, file, err = cli(["evaluate", str(checkpoint / "learner.zip"), "--env", TINY.env_id,
                           "--vecnormalize", str(checkpoint / "vec_normalize.npz"), *options], capsys)
    assert code == 0, err
    returns = [re.search(r"mean return (\S+ \+- \S+)", text).group(1) for text in (folder, file)]
    assert returns[0] == returns[1]
