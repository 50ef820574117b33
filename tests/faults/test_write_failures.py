"""Full disks and killed writers: a failed write is one line naming the file and the intact checkpoint,
leaves nothing half-written, and `--resume` continues; litter of killed writers is swept."""
from __future__ import annotations

import errno
import io
import json
import tempfile

import pytest

from agents import coordinator as coordinator_module
from agents import run_files
from agents.coordinator import Coordinator
from agents.run_log import ProgressCSV
from agents.safe_writes import WriteFailed
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.world_model import WorldModel
from tests.faults.tiny_runs import BUDGET, CHECKPOINT_FILES, TINY, cli, snapshot, stray_files, usage_error


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def torch_write_failed(*args, **kwargs):  # what torch's zip writer raises on a full disk
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 0 vs 64\n"
                       "PytorchStreamWriter failed writing file data/0: file write failed")


class FullDiskFile(io.BytesIO):
    def write(self, data):
        enospc()


def test_the_writability_probe_writes_bytes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kwargs: FullDiskFile())
    run_dir = tmp_path / "run"
    message = usage_error(["train", "--steps", "10000", "--run-dir", str(run_dir)], capsys)
    assert f"{run_dir} is not writable: No space left on device (ENOSPC)" in message
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("target,attribute,failure,file,checkpointed", [
    (EpisodeBuffer, "save", enospc, "checkpoint/buffer.npz", BUDGET),
    (run_files, "save_stats", enospc, "checkpoint/vec_normalize.npz", BUDGET),
    (WorldModel, "save", torch_write_failed, "checkpoint/world_model.pt", BUDGET),
    (ProgressCSV, "write", enospc, "progress.csv", BUDGET),  # the row comes before the checkpoint
    (coordinator_module, "write_rows", enospc, "evaluations.csv", BUDGET + 50),  # at 400, after one more
])
def test_a_failed_write_names_the_file_and_the_intact_checkpoint(run_copy, capsys, monkeypatch, target,
                                                                 attribute, failure, file, checkpointed):
    monkeypatch.setattr(target, attribute, failure)
    message = usage_error(["train", "--resume", str(run_copy), "--steps", str(BUDGET + 100),
                           "--verbose", "0"], capsys)
    reason = ("PytorchStreamWriter failed writing file data/0: file write failed"
              if failure is torch_write_failed else "No space left on device (ENOSPC)")
    assert f"cannot write {run_copy / file}: {reason}" in message
    checkpoint = run_copy / "checkpoint"
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES and stray_files(run_copy) == []
    assert json.loads((checkpoint / "state.json").read_text())["real_steps"] == checkpointed
    assert f"the last checkpoint ({checkpointed} real steps, {checkpoint}) is intact" in message
    assert f"imagined-env train --resume {run_copy}" in message

    monkeypatch.undo()
    assert cli(["train", "--resume", str(run_copy), "--verbose", "0", "--steps", str(BUDGET + 100)],
               capsys)[0] == 0
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["real_steps"] == BUDGET + 100 and state["policy_updates"] == (BUDGET + 100 - 200) // 50
    assert EpisodeBuffer.load(checkpoint / "buffer.npz").n_transitions == BUDGET + 100


def test_a_failed_first_write_says_there_is_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(EpisodeBuffer, "save", enospc)
    coordinator = Coordinator(TINY, tmp_path / "run", verbose=0)
    with pytest.raises(WriteFailed, match="no checkpoint was written yet") as failure:
        coordinator.learn(BUDGET, progress_bar=False)
    assert failure.value.path == tmp_path / "run" / "checkpoint" / "buffer.npz"
    assert stray_files(tmp_path / "run") == [] and not (tmp_path / "run" / "checkpoint").exists()
    coordinator.close()


def test_litter_of_killed_writers_is_swept_on_resume(run_copy, capsys):
    litter = [run_copy / ".config.json.k2j3.tmp", run_copy / ".world_model.pt.x8a1.tmp",
              run_copy / ".evaluations.csv.q0.tmp", run_copy / ".checkpoint-tmp-abc" / "buffer.npz",
              run_copy / ".checkpoint-old" / "state.json"]
    for path in litter:
        path.parent.mkdir(exist_ok=True)
        path.write_text("half")
    (run_copy / ".notes.tmp").write_text("the user's")  # not the run's: stays
    assert cli(["train", "--resume", str(run_copy), "--verbose", "0", "--steps", str(BUDGET + 50)],
               capsys)[0] == 0
    assert stray_files(run_copy) == [run_copy / ".notes.tmp"]


def test_litter_is_swept_when_a_run_starts_and_a_refused_start_touches_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".config.json.abc.tmp").write_text("half")
    (run_dir / ".checkpoint-tmp-xyz").mkdir()
    before = snapshot(run_dir)
    usage_error(["train", "--steps", "10000", "--run-dir", str(run_dir), "--learner.batch-size", "1"], capsys)
    assert snapshot(run_dir) == before and (run_dir / ".checkpoint-tmp-xyz").is_dir()
    Coordinator(TINY, run_dir, verbose=0).close()
    assert stray_files(run_dir) == []
