"""The Ray backend beyond one process: a two-node cluster runs trials on both nodes, and a grid whose
driver was SIGKILLed finishes with --resume without running a finished trial again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray", reason='the Ray tests need the ray extra: pip install -e ".[ray]"')

from tests.ray.conftest import REPO, TINY_GRID, TRIALS, child_env, cli_command, run_child  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mujoco]

TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster
from agents.cli import main

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    code = main(json.loads(sys.argv[1]) + ["--address", cluster.address])
finally:
    cluster.shutdown()
sys.exit(code)
"""
"""A cluster of two raylets with one CPU each on this host, and `imagined-env compare` joining it; in a
process of its own, since a process holds one Ray connection and this one holds the shared instance."""


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[:i + 1], value, *argv[i + 2:]]


def test_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    out = tmp_path / "grid"
    argv = [*with_option(TINY_GRID, "--seeds", "0"), "--backend", "ray", "--out", str(out)]
    done = run_child([sys.executable, "-c", TWO_NODES, json.dumps(argv)], tmp_path / "log", timeout=900)
    assert done.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    trials = json.loads((out / "tune_trials.json").read_text())["trials"]
    assert len(trials) == 2  # one CPU per node and per trial: the two ran at once, one on each node
    assert len({t["node_id"] for t in trials.values()}) == 2
    assert set(json.loads((out / "compare.json").read_text())["results"]) == {"ppo", "imagination-ppo"}


def finished_trials(out) -> dict:
    try:
        return json.loads((out / "tune_trials.json").read_text())["trials"]
    except (OSError, ValueError):  # not written yet (it is replaced atomically, never half written)
        return {}


def test_a_killed_driver_s_grid_resumes_without_running_finished_trials(ray_instance, local_grid, tmp_path):
    out, log = tmp_path / "grid", tmp_path / "log"
    argv = cli_command([*TINY_GRID, "--backend", "ray", "--address", ray_instance, "--out", str(out)])
    with open(log, "ab") as stderr:  # a session of its own: the kill takes the driver and all it started
        driver = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=stderr, stderr=stderr,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not finished_trials(out) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    killed_at = time.time()
    before = finished_trials(out)
    assert 1 <= len(before) < TRIALS, log.read_text()[-3000:]  # killed with trials still to run

    resumed = run_child([*argv, "--resume"], log, timeout=900)
    assert resumed.returncode == 0, log.read_text()[-3000:]
    after = finished_trials(out)
    assert len(after) == TRIALS
    assert {k: after[k] for k in before} == before  # same start, node and results: not run again
    assert all(after[k]["started"] > killed_at for k in set(after) - set(before))
    for name in ("compare.csv", "compare_summary.csv"):
        assert (out / name).read_bytes() == (local_grid / name).read_bytes(), name
