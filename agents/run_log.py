"""The run's logs: progress.csv and TensorBoard events through SB3's logger (continued by a resumed
run), the console row after evaluations, and whole-file CSV tables such as evaluations.csv."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger, make_output_format

from imagined_env.utils import atomic_path


class _Console(KVWriter):
    """Prints a row to stdout only when the dump asks for it."""

    def __init__(self) -> None:
        self.human = HumanOutputFormat(sys.stdout)
        self.show = False

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]],
              step: int = 0) -> None:
        if self.show:
            self.human.write(key_values, key_excluded, step)

    def close(self) -> None:
        """stdout stays open."""


class RunLogger(Logger):
    """SB3's logger for one run: it also keeps the last value recorded under each key, so the run
    can act on what the learner reports (e.g. `train/approx_kl`) without reading SB3's state."""

    def __init__(self, folder: str, output_formats: list[KVWriter], console: bool):
        self.console = _Console() if console else None
        super().__init__(folder, output_formats + ([self.console] if self.console else []))
        self.latest: dict[str, Any] = {}

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        super().record(key, value, exclude)
        self.latest[key] = value

    def dump(self, step: int = 0, show: bool = False) -> None:
        """Write one row; `show` also prints it (when the logger has a console)."""
        if self.console is not None:
            self.console.show = show
        super().dump(step)


def make_logger(run_dir: Path, keep_until: int | None, console: bool) -> RunLogger:
    """Logger writing progress.csv and TensorBoard events in `run_dir`. A resumed run (`keep_until` =
    its checkpoint's real steps) keeps the progress.csv rows up to there; the killed run's later rows
    are dropped, as those steps are run again."""
    path = run_dir / "progress.csv"
    kept = _read_rows(path, keep_until) if keep_until is not None and path.is_file() else []
    formats = [make_output_format(name, str(run_dir)) for name in ("csv", "tensorboard")]
    for row in kept:  # the csv format
        formats[0].write(row, {})
    return RunLogger(str(run_dir), formats, console)


def _read_rows(path: Path, keep_until: int) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]
    return [row for row in rows if row.get("time/real_steps", math.inf) <= keep_until]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite a whole CSV atomically (columns: every key, in order of appearance)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
