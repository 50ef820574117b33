"""`atomic_path`: the temporary file `.<name>.*.tmp` is flushed to disk before it is renamed over the target,
and any failure, in the writer or in the flush, removes it and leaves the previous file as it was."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from imagined_env.utils import atomic_path


def test_the_temporary_file_is_flushed_before_the_rename(tmp_path, monkeypatch):
    target, events = tmp_path / "config.json", []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", os.path.basename(path), Path(path).read_text()))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and re.fullmatch(r"\.config\.json\..+\.tmp", tmp.name), tmp.name
        tmp.write_text("{}")
    assert events == [("fsync", tmp.name, "{}"), ("replace", tmp.name, "config.json")]
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_failing_flush_leaves_the_previous_file_and_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "config.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
