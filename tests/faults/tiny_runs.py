"""Tiny settings and helpers shared by the fault tests: a run small enough to make in a second, the CLI
in this process and as a child process, and what a clean run folder looks like."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agents.cli import main
from agents.config import CoordinatorConfig, PolicyConfig, sb3_default_learner
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.schedule import ScheduleConfig
from imagined_env.training import TrainConfig
from imagined_env.world_model import WorldModelConfig

REPO = Path(__file__).resolve().parents[2]
TINY = CoordinatorConfig(
    prefill_steps=200, initial_world_model_steps=10, world_model_steps_per_real_step=0.1, policy_every=50,
    n_imagined_envs=8, n_sample_steps=2, eval_every=100, eval_episodes=1, eval_max_episode_steps=10,
    open_loop_states=0, checkpoint_every=50, normaliser_refit_every=150, refit_world_model_steps=3,
    device="cpu",
    world_model=WorldModelConfig(horizon=3, denoiser=DenoiserConfig(width=32, depth=1, time_dim=8),
                                 schedule=ScheduleConfig(n_steps=8)),
    train=TrainConfig(lr=1e-3, batch_size=16),
    learner=replace(sb3_default_learner("ppo"), n_epochs=1, batch_size=12,
                    policy=PolicyConfig(pi=(16,), vf=(16,), activation="tanh")),
)
BUDGET = 300
"""Real steps of the shared finished run."""
CHECKPOINT_FILES = {"learner.zip", "world_model.pt", "run_state.pt", "buffer.npz", "vec_normalize.npz",
                    "state.json"}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`imagined-env argv` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([*argv, "--no-progress"])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of a command that must fail with exit code 2, on one line and without a traceback."""
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def tiny_config_file(directory: Path, **changes) -> Path:
    path = directory / "tiny.json"
    path.write_text(json.dumps(replace(TINY, **changes).to_dict()))
    return path


def cli_process(argv: list[str], log: Path) -> subprocess.Popen:
    """`imagined-env argv` as a child process of this source tree, one torch thread; stderr to `log`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "agents.cli", *argv, "--threads", "1", "--no-progress"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def stray_files(run_dir: Path) -> list[Path]:
    """What killed or failed writers could leave: temporary files and unfinished checkpoint directories."""
    return sorted([*run_dir.rglob(".*.tmp"), *run_dir.glob(".checkpoint-*")])


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a folder with its content, to show that a refused command wrote nothing."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
