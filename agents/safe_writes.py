"""Writing run files safely: a writability probe that really writes, and write failures reported as one
`WriteFailed` naming the file."""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROBE_BYTES = 1 << 16
"""Bytes the writability probe writes and syncs: an empty file is created even on a full disk."""


class WriteFailed(Exception):
    """A file of a run could not be written (full disk, lost permission, ...)."""

    def __init__(self, path: str | os.PathLike, reason: str, note: str = ""):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot write {path}: {reason}" + (f"; {note}" if note else ""))


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Report any failure of the writes inside as `WriteFailed` naming `path` (torch's writer raises
    RuntimeError where Python's raise OSError)."""
    try:
        yield
    except WriteFailed:
        raise
    except (OSError, RuntimeError) as err:
        raise WriteFailed(path, failure_reason(err)) from err


def failure_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        name = errno.errorcode.get(err.errno or 0)
        return f"{err.strerror} ({name})" if name else err.strerror
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def check_writable(run_dir: Path, what: str = "run_dir") -> None:
    """Create `run_dir` and write and sync some bytes in it (permissions alone lie for root, and an empty
    file fits on a full disk), or raise ValueError naming the directory as `what`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{what} {run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir) as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise ValueError(f"{what} {run_dir} is not writable: {failure_reason(err)}") from None
