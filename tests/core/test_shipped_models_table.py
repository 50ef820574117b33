"""Which shipped model serves which id (`MODEL_FOLDERS`), the task check that follows it, and start states
given as a `.npy` array file."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import imagined_env  # noqa: F401  (registers the Imagined-* ids)
import imagined_env.pretrained as pretrained
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.pretrained import MODEL_FOLDERS, pretrained_paths, serves
from imagined_env.registration import TASKS, VERSIONS, imagined_id
from imagined_env.vector_env import ImaginedVectorEnv, start_state_array
from tests.conftest import ACT, OBS, linear_buffer
from tests.fakes import LinearFakeModel


class WorldModelStandIn(LinearFakeModel):
    """Checks start states as a real model does: finite values only."""

    def check_start_states(self, observations) -> None:
        if not np.isfinite(observations).all():
            raise ValueError("start states contain NaN or inf (not finite)")


def test_every_registered_id_has_a_folder_named_after_a_task_of_its_own_kind():
    ids = {f"{task}-{version}" for task in TASKS for version in VERSIONS}
    assert set(MODEL_FOLDERS) == ids
    assert {env_id for env_id in ids if imagined_id(env_id) in gym.registry} == ids
    for env_id, folder in MODEL_FOLDERS.items():
        assert folder in ids and folder.split("-")[0] == env_id.split("-")[0]
        assert MODEL_FOLDERS[folder] == folder                   # a folder's own task is served by it


@pytest.mark.parametrize("model_task,env_id,expected", [
    ("HalfCheetah-v4", "HalfCheetah-v4", True),
    ("HalfCheetah-v4", "HalfCheetah-v5", True),
    ("HalfCheetah-v5", "HalfCheetah-v4", True),
    ("Hopper-v4", "Hopper-v5", True),
    ("Walker2d-v4", "Walker2d-v5", False),
    ("Walker2d-v5", "Walker2d-v4", False),
    ("Hopper-v4", "Walker2d-v4", False),
    ("HalfCheetah-v4", "Linear-v0", False),
    ("Linear-v0", "Linear-v0", True),
    ("Linear-v0", "Linear-v1", False),
])
def test_serves(model_task, env_id, expected):
    assert serves(model_task, env_id) is expected


def test_ids_sharing_a_folder_share_its_files_and_missing_folders_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_HERE", tmp_path)
    (tmp_path / "Hopper-v4").mkdir()
    for name in ("world_model.pt", "start_states.npy"):
        (tmp_path / "Hopper-v4" / name).write_bytes(b"")
    assert pretrained_paths("Hopper-v5") == pretrained_paths("Hopper-v4") == (
        tmp_path / "Hopper-v4" / "world_model.pt", tmp_path / "Hopper-v4" / "start_states.npy")
    with pytest.raises(ValueError, match=r"no pretrained world model ships for 'Walker2d-v5' \(its folder "
                                         r"Walker2d-v5 is not in the package; shipped: \['Hopper-v4', "
                                         r"'Hopper-v5'\]\); pass world_model=<file> and start_states=<file>"):
        pretrained_paths("Walker2d-v5")
    with pytest.raises(ValueError, match=r"no pretrained world model ships for 'Ant-v4' \(shipped: "):
        pretrained_paths("Ant-v4")
    (tmp_path / "Hopper-v4" / "start_states.npy").unlink()       # a folder without both files does not ship
    with pytest.raises(ValueError, match=r"'Hopper-v5' \(its folder Hopper-v4 is not in the package; "
                                         r"shipped: none\)"):
        pretrained_paths("Hopper-v5")


def test_a_model_serves_the_ids_sharing_its_folder_and_no_others():
    model = LinearFakeModel(env_id="HalfCheetah-v4")
    starts = np.zeros((3, OBS), np.float32)
    env = ImaginedVectorEnv(model, 2, start_states=starts, env_id="HalfCheetah-v5")
    assert env.model is model
    with pytest.raises(ValueError, match="world model was trained on 'HalfCheetah-v4', not 'Hopper-v4'"):
        ImaginedVectorEnv(model, 2, start_states=starts, env_id="Hopper-v4")
    with pytest.raises(ValueError, match="world model was trained on 'Walker2d-v4', not 'Walker2d-v5'"):
        ImaginedVectorEnv(LinearFakeModel(env_id="Walker2d-v4"), 2, start_states=starts, env_id="Walker2d-v5")


def buffer_of(env_id: str) -> EpisodeBuffer:
    buffer = EpisodeBuffer(OBS, ACT, 1, 1, env_id=env_id)
    buffer.add_episode(np.ones((3, OBS), np.float32), np.zeros((2, ACT), np.float32),
                       np.zeros(2, np.float32), False, np.zeros((3, 1)), np.zeros((3, 1)))
    return buffer


def test_start_buffers_of_a_served_task_pass_and_of_others_are_refused():
    model = LinearFakeModel(env_id="Hopper-v4")
    assert start_state_array(buffer_of("Hopper-v5"), model).shape == (3, OBS)
    assert start_state_array(buffer_of("Hopper-v4"), model).shape == (3, OBS)
    with pytest.raises(ValueError, match="holds data of 'Walker2d-v4', not of 'Hopper-v4'"):
        start_state_array(buffer_of("Walker2d-v4"), model)
    with pytest.raises(ValueError, match="holds data of 'Walker2d-v5', not of 'Walker2d-v4'"):
        start_state_array(buffer_of("Walker2d-v5"), LinearFakeModel(env_id="Walker2d-v4"))


def test_start_states_from_a_npy_file(tmp_path):
    model = LinearFakeModel()
    starts = linear_buffer(3, 5).start_observations()
    np.save(tmp_path / "starts.npy", starts.astype(np.float64))
    for path in (tmp_path / "starts.npy", str(tmp_path / "starts.npy")):
        arr = start_state_array(path, model)
        assert arr.dtype == np.float32
        np.testing.assert_array_equal(arr, starts)
    env = ImaginedVectorEnv(model, 3, start_states=tmp_path / "starts.npy")
    obs, _ = env.reset(seed=0)
    assert all(any(np.allclose(o, s) for s in starts) for o in obs)


@pytest.mark.parametrize("content,words", [
    (None, "does not exist or is not a file"),
    (b"\x93NUMPY garbage", "is truncated or corrupt"),
    (np.array(["a", "b"]), "must hold a numeric array .n, obs., got dtype <U1"),
    (np.zeros((4, OBS + 1), np.float32), r"start states must have shape \[n >= 1, 3\].*\(4, 4\)"),
    (np.zeros((0, OBS), np.float32), r"start states must have shape \[n >= 1, 3\]"),
    (np.full((2, OBS), np.nan, np.float32), "NaN|not finite"),
])
def test_bad_npy_start_state_files_are_refused_with_their_name(tmp_path, content, words):
    path = tmp_path / "starts.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    model = WorldModelStandIn()
    with pytest.raises(ValueError, match=words) as info:
        start_state_array(path, model)
    if "shape" not in words and "NaN" not in words:
        assert str(path) in str(info.value)


def test_an_npz_archive_named_npy_is_refused(tmp_path):
    path = tmp_path / "starts.npy"
    with open(path, "wb") as handle:
        np.savez(handle, observations=np.zeros((2, OBS)))
    with pytest.raises(ValueError, match="starts.npy' is an .npz archive, not one array"):
        start_state_array(path, LinearFakeModel())
