"""`imagined-env export`: a run's last checkpoint becomes a world model + start states the env takes."""
from __future__ import annotations

import numpy as np
import pytest

from agents.cli import main
from agents.coordinator import Coordinator
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import WorldModel
from tests.integration.test_coordinator import TINY

pytestmark = [pytest.mark.slow, pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*settotalmass")]


def test_export_writes_a_usable_world_model(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    Coordinator(TINY, run, verbose=0).learn(400, progress_bar=False)
    assert main(["export", str(run), str(out), "--start-episodes", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["COMMAND.txt", "start_states.npz", "world_model.pt"]
    assert (out / "COMMAND.txt").read_text().startswith("imagined-env ")
    starts = EpisodeBuffer.load(out / "start_states.npz")
    full = EpisodeBuffer.load(run / "checkpoint" / "buffer.npz")
    assert len(starts) == 2
    np.testing.assert_array_equal(starts.episodes[0].observations, full.episodes[0].observations)
    np.testing.assert_array_equal(starts.episodes[1].observations, full.episodes[len(full) - 1].observations)
    assert WorldModel.load(out / "world_model.pt").config.sampler.n_sample_steps == TINY.n_sample_steps
    env = ImaginedVectorEnv(out / "world_model.pt", 4, start_states=out / "start_states.npz",
                            env_id="HalfCheetah-v4", device="cpu")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 17) and np.isfinite(env.step(np.clip(env.planned_actions(), -1, 1))[0]).all()


def test_export_of_a_folder_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), str(tmp_path / "out")])
    assert exit_info.value.code != 0
    assert "holds no checkpoint" in capsys.readouterr().err
