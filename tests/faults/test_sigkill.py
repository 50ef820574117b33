"""Ten SIGKILLs at random points of a tiny `imagined-env train`, each followed by `--resume`: the run
reaches its budget with exact counters, every progress row once, and no stray files.

Each run is a process forked from a server that has imported the package once, so a kill costs a
fraction of a second instead of a fresh interpreter's imports."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.run_files import find_checkpoint
from imagined_env.data.buffer import EpisodeBuffer
from tests.faults.tiny_runs import CHECKPOINT_FILES, REPO, TINY, stray_files, tiny_config_file

pytestmark = [pytest.mark.slow, pytest.mark.mujoco]
KILLS = 10
BUDGET = 4000
JITTER = 0.05
"""Seconds, at most, between a run reaching its kill's real-step target and the kill: a random point within
the iteration that follows (a checkpoint is written every iteration)."""


FORK_SERVER = """
import json, os, sys
import torch
import agents.cli
torch.set_num_threads(1)
for line in sys.stdin:
    command, payload = line.split(" ", 1)
    if command == "run":
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the server's stdout answers the test
            try:
                code = agents.cli.main(json.loads(payload) + ["--threads", "1", "--no-progress"])
            except SystemExit as exit_info:
                code = exit_info.code
            os._exit(code or 0)
        print(pid, flush=True)
    else:
        print(os.waitstatus_to_exitcode(os.waitpid(int(payload), 0)[1]), flush=True)
"""


class ForkServer:
    """`imagined-env` runs as processes forked from one that imported the package already."""

    def __init__(self, log: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with open(log, "ab") as stderr:
            self.server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=REPO, env=env, text=True,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)

    def _ask(self, line: str) -> int:
        self.server.stdin.write(line + "\n")
        self.server.stdin.flush()
        return int(self.server.stdout.readline())

    def run(self, argv: list[str]) -> int:
        """The pid of a new run of `imagined-env argv`."""
        return self._ask("run " + json.dumps(argv))

    def wait(self, pid: int) -> int:
        """Its exit code (-9 after SIGKILL)."""
        return self._ask(f"wait {pid}")

    def running(self, pid: int) -> bool:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] not in "ZX"

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


def config_inode(run_dir: Path) -> int | None:
    path = run_dir / "config.json"
    return path.stat().st_ino if path.exists() else None


def wait_until_open(server: ForkServer, pid: int, run_dir: Path, before: int | None, log: Path) -> None:
    """Until the run has (atomically, so as a new file) written config.json: its folder is open."""
    deadline = time.monotonic() + 60.0
    while config_inode(run_dir) in (before, None):
        if not server.running(pid) or time.monotonic() > deadline:
            pytest.fail(f"the run did not open its folder:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def logged_steps(run_dir: Path) -> int:
    """The real steps of the newest progress row (0 before the first)."""
    try:
        with open(run_dir / "progress.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (FileNotFoundError, csv.Error):
        return 0
    return int(float(rows[-1]["time/real_steps"])) if rows else 0


def wait_until_steps(server: ForkServer, pid: int, run_dir: Path, target: int, log: Path) -> None:
    """Until the run has logged `target` real steps: kills are placed by progress, not by time, so a fast
    machine cannot finish the budget before the last kill."""
    deadline = time.monotonic() + 120.0
    while logged_steps(run_dir) < target:
        if not server.running(pid) or time.monotonic() > deadline:
            pytest.fail(f"the run ended or stalled before {target} real steps:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def test_ten_sigkills_each_resumed_reach_exact_counters_without_litter(tmp_path):
    rng = random.Random(15)
    run_dir, log = tmp_path / "run", tmp_path / "stderr.log"
    fresh = ["train", "--config", str(tiny_config_file(tmp_path)), "--steps", str(BUDGET),
             "--run-dir", str(run_dir), "--verbose", "0"]
    resume = ["train", "--resume", str(run_dir), "--verbose", "0"]
    server, checkpointed = ForkServer(log), []
    every = TINY.policy_every
    targets = sorted(rng.sample(range(TINY.prefill_steps + every, BUDGET - 10 * every, every), KILLS))
    for target in targets:
        before = config_inode(run_dir)
        pid = server.run(resume if find_checkpoint(run_dir) else fresh)
        wait_until_open(server, pid, run_dir, before, log)
        wait_until_steps(server, pid, run_dir, target, log)
        time.sleep(rng.uniform(0.0, JITTER))
        assert server.running(pid), f"the run ended before its kill:\n{log.read_text()[-3000:]}"
        os.kill(pid, signal.SIGKILL)
        assert server.wait(pid) == -signal.SIGKILL
        checkpoint = find_checkpoint(run_dir)
        checkpointed.append(json.loads((checkpoint / "state.json").read_text())["real_steps"]
                            if checkpoint else 0)
    assert checkpointed == sorted(checkpointed) and checkpointed[-1] < BUDGET  # never lost, never done early

    assert server.wait(server.run(resume)) == 0, log.read_text()[-3000:]
    server.close()
    checkpoint = run_dir / "checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    prefill, every = TINY.prefill_steps, TINY.policy_every
    refits = BUDGET // TINY.normaliser_refit_every - prefill // TINY.normaliser_refit_every
    assert (state["real_steps"], state["budget"]) == (BUDGET, BUDGET)
    assert state["policy_updates"] == (BUDGET - prefill) // every
    assert state["world_model_steps"] == (TINY.initial_world_model_steps
                                          + refits * TINY.refit_world_model_steps
                                          + int(TINY.world_model_steps_per_real_step * (BUDGET - prefill)))
    assert EpisodeBuffer.load(checkpoint / "buffer.npz").n_transitions == BUDGET
    assert [row["real_steps"] for row in state["history"]] == list(range(300, BUDGET + 1, TINY.eval_every))
    with open(run_dir / "progress.csv", newline="") as handle:
        steps = [float(row["time/real_steps"]) for row in csv.DictReader(handle)]
    assert steps == list(range(prefill + every, BUDGET + 1, every))  # every row once, none lost
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES
    assert stray_files(run_dir) == []
