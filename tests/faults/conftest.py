"""A tiny HalfCheetah run, made once and copied for each test that damages or resumes it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from agents.coordinator import Coordinator
from tests.faults.tiny_runs import BUDGET, TINY


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs its tiny networks on one torch thread."""


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A run folder of TINY at BUDGET real steps; never modified (tests use `run_copy`)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    Coordinator(TINY, run_dir, verbose=0).learn(BUDGET, progress_bar=False).close()
    torch.set_num_threads(before)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target
