"""One Ray instance for the Ray tests (2 CPUs, like the machine CI runs on), the tiny grid they share, and
its result on the local backend, computed once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_GRID = [
    "compare", "--env", "HalfCheetah-v4", "--algos", "ppo,imagination-ppo", "--seeds", "0,1",
    "--steps", "600",
    "--eval-every", "300", "--eval-episodes", "1", "--max-episode-steps", "50", "--no-progress",
    "--threads", "1", "--checkpoint-every", "100000", "--prefill-steps", "200",
    "--initial-world-model-steps", "10", "--world-model-steps-per-real-step", "0.05", "--policy-every", "200",
    "--n-imagined-envs", "16", "--n-sample-steps", "2", "--open-loop-states", "0",
    "--world-model.denoiser.width", "32", "--world-model.denoiser.depth", "1", "--train.batch-size", "32",
    "--learner.batch-size", "32", "--device", "cpu",
]
"""Four trials of a few seconds each: model-free PPO (one update) and a shrunk imagination run, seeds 0, 1."""
TRIALS = 4


@pytest.fixture(scope="session")
def ray_instance():
    """A new Ray started in this process with 2 CPUs (never a cluster left running on the machine); its
    address lets child processes join it."""
    import ray

    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="session")
def local_grid(tmp_path_factory):
    """The tiny grid on the local backend: the reference every Ray result must equal."""
    out = tmp_path_factory.mktemp("local") / "grid"
    assert main([*TINY_GRID, "--out", str(out)]) == 0
    return out


def child_env() -> dict[str, str]:
    """A child process of this source tree with one OpenMP thread; Ray's settings (token mode) inherited."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def cli_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "agents.cli", *argv]


def run_child(args: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    with open(log, "ab") as stderr:
        return subprocess.run(args, cwd=REPO, env=child_env(), stdout=stderr, stderr=stderr, timeout=timeout)
