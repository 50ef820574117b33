"""`compare --backend`: the local backend takes no Ray option and never imports Ray; Ray options are
checked, and a missing ray extra named with its install command, before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import agents
from tests.faults.tiny_runs import REPO, cli, usage_error

GRID = ["compare", "--env", "HalfCheetah-v4", "--algos", "ppo", "--seeds", "0", "--steps", "600",
        "--eval-every", "300"]


@pytest.mark.parametrize("option", [["--address", "auto"], ["--cpus-per-trial", "2"],
                                    ["--gpus-per-trial", "1"], ["--storage", "somewhere"], ["--resume"]])
def test_ray_options_are_refused_with_the_local_backend(option, tmp_path, capsys):
    err = usage_error([*GRID, "--out", str(tmp_path / "out"), *option], capsys)
    assert f"{option[0]} only apply to --backend ray" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [
    (["--cpus-per-trial", "0"], "argument --cpus-per-trial: expected a positive integer, got 0"),
    (["--gpus-per-trial", "-0.5"], "argument --gpus-per-trial: expected a finite number >= 0, got -0.5"),
    (["--gpus-per-trial", "nan"], "argument --gpus-per-trial: expected a finite number >= 0, got nan"),
    (["--backend", "dask"], "argument --backend: invalid choice: 'dask'"),
])
def test_bad_ray_option_values_are_named(option, message, tmp_path, capsys):
    code, _, err = cli([*GRID, "--out", str(tmp_path / "out"), "--backend", "ray", *option], capsys)
    assert code == 2 and message in err  # argparse's usage line, then the error
    assert not (tmp_path / "out").exists()


def test_without_the_ray_extra_the_ray_backend_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does without the extra
    monkeypatch.delitem(sys.modules, "agents.tune_grid", raising=False)
    monkeypatch.delattr(agents, "tune_grid", raising=False)  # else `from agents import` finds the old one
    err = usage_error([*GRID, "--out", str(tmp_path / "out"), "--backend", "ray"], capsys)
    assert err.endswith('the Ray backend needs the ray extra: pip install "imagined-env[ray]"')
    assert not (tmp_path / "out").exists()


def test_the_command_line_does_not_import_ray():
    code = "import sys, agents.cli; agents.cli.build_parser(); assert 'ray' not in sys.modules, 'imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
