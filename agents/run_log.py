"""The run's logs: progress.csv and TensorBoard events through SB3's logger (continued by a resumed
run), the console row after evaluations, and whole-file CSV tables such as evaluations.csv.

progress.csv is never rewritten in place (SB3's own CSV writer does, when a column appears): a kill
leaves the rows written so far."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import (
    HumanOutputFormat,
    KVWriter,
    Logger,
    filter_excluded_keys,
    make_output_format,
)

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


class ProgressCSV(KVWriter):
    """progress.csv: one row per dump, appended; when a row brings a new column the whole table is
    written again atomically (the file holds every row seen, under the union of their columns)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]):
        self.path, self.rows = path, list(rows)
        write_rows(path, self.rows)
        self.columns = list(dict.fromkeys(key for row in self.rows for key in row))
        self.file = open(path, "a", newline="")  # noqa: SIM115  (closed by `close`)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]],
              step: int = 0) -> None:
        row = dict(filter_excluded_keys(key_values, key_excluded, "csv"))
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.file.close()
            write_rows(self.path, self.rows)
            self.columns = list(dict.fromkeys(key for r in self.rows for key in r))
            self.file = open(self.path, "a", newline="")  # noqa: SIM115
        else:
            csv.DictWriter(self.file, fieldnames=self.columns, lineterminator="\n").writerow(row)
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def make_logger(run_dir: Path, keep_until: int | None, console: bool) -> RunLogger:
    """Logger writing progress.csv and TensorBoard events in `run_dir`. A resumed run (`keep_until` =
    its checkpoint's real steps) keeps the progress.csv rows up to there; the killed run's later rows
    are dropped, as those steps are run again."""
    path = run_dir / "progress.csv"
    kept = _read_rows(path, keep_until) if keep_until is not None and path.is_file() else []
    formats = [ProgressCSV(path, kept), make_output_format("tensorboard", str(run_dir))]
    return RunLogger(str(run_dir), formats, console)


def _read_rows(path: Path, keep_until: int) -> list[dict[str, float]]:
    """The rows of progress.csv up to `keep_until` real steps; a last line cut short (a full disk) is
    dropped."""
    try:
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]
        rows = [{k: float(v) for k, v in row.items() if k is not None and v} for row in csv.DictReader(lines)]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        raise ValueError(f"log file {path} is damaged ({err}); "
                         "move it away to resume without its rows") from None
    return [row for row in rows if row.get("time/real_steps", math.inf) <= keep_until]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite a whole CSV atomically (columns: every key, in order of appearance)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
