"""The Ray backend of `imagined-env compare` on one Ray instance: the same results as the local backend,
the Imagined-* ids in a fresh worker, and its option checks."""
from __future__ import annotations

import json
import sys

import pytest

ray = pytest.importorskip("ray", reason='the Ray tests need the ray extra: pip install -e ".[ray]"')

from agents.cli import main  # noqa: E402
from tests.faults.tiny_runs import snapshot, usage_error  # noqa: E402
from tests.ray.conftest import TINY_GRID, TRIALS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mujoco, pytest.mark.filterwarnings("ignore:.*is out of date")]


@pytest.fixture(scope="module")
def ray_grid(ray_instance, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "grid"
    assert main([*TINY_GRID, "--backend", "ray", "--out", str(out)]) == 0
    return out


def test_a_grid_on_ray_gives_the_local_backend_s_results_and_files(ray_grid, local_grid):
    for name in ("compare.csv", "compare_summary.csv"):
        assert (ray_grid / name).read_bytes() == (local_grid / name).read_bytes(), name
    ray_json, local_json = (json.loads((d / "compare.json").read_text()) for d in (ray_grid, local_grid))
    assert ray_json == local_json
    assert set(ray_json["results"]) == {"ppo", "imagination-ppo"}
    finals = [rows[-1]["real_steps"] for seeds in ray_json["results"].values() for rows in seeds.values()]
    assert finals == [600] * TRIALS
    assert (ray_grid / "compare.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((ray_grid / "tune_trials.json").read_text())
    assert len(record["trials"]) == TRIALS and record["grid"]["threads"] == 1


def test_a_fresh_worker_knows_the_imagined_ids_once_it_loads_the_trial_module(ray_instance):
    import cloudpickle

    def in_fresh_worker():
        import gymnasium as gym

        before = "Imagined-HalfCheetah-v4" in gym.registry
        import agents.tune_grid  # noqa: F401  (what unpickling a trial's function imports)

        env = gym.make("Imagined-HalfCheetah-v4")
        obs, _ = env.reset(seed=0)
        env.close()
        return before, obs.shape

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:  # an environment variable of its own: Ray starts a new worker process for this task
        task = ray.remote(in_fresh_worker).options(runtime_env={"env_vars": {"FRESH_WORKER": "1"}})
        before, shape = ray.get(task.remote(), timeout=600)  # generous: a busy machine starts workers slowly
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert not before and shape == (17,)


def test_a_stored_grid_is_not_started_again_nor_resumed_with_other_settings(ray_grid, capsys):
    before = snapshot(ray_grid)
    err = usage_error([*TINY_GRID, "--backend", "ray", "--out", str(ray_grid)], capsys)
    assert "holds a Ray grid already" in err and "--resume" in err
    argv = [*TINY_GRID, "--backend", "ray", "--out", str(ray_grid), "--resume"]
    err = usage_error([*argv[:argv.index("--steps") + 1], "900", *argv[argv.index("--steps") + 2:]], capsys)
    assert "other settings (budget differ)" in err
    assert snapshot(ray_grid) == before


def test_ray_options_are_checked_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    err = usage_error([*TINY_GRID, "--backend", "ray", "--out", str(out), "--resume"], capsys)
    assert "--resume: no Ray Tune experiment to continue in" in err and str(out / "tune") in err
    err = usage_error([*TINY_GRID, "--backend", "ray", "--out", str(out), "--threads", "2"], capsys)
    assert "--threads 2 exceeds --cpus-per-trial 1" in err
    assert not out.exists() or snapshot(out) == {}
