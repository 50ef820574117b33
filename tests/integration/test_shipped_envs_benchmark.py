"""The shipped-env benchmark on a tiny budget: one oracle run and the random reference, the table and JSON
it writes, and `--resume` skipping finished runs; the bars' reading of the shipped row."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagined_env.pretrained import pretrained_paths
from tests.benchmark_scripts import BENCHMARKS, load_benchmark


@pytest.fixture
def bench(monkeypatch):
    return load_benchmark("shipped_envs", monkeypatch)


def shipped(means: dict[int, float], complete: bool = True) -> dict:
    return {"complete": complete, "steps": {str(s): {"mean": m} for s, m in means.items()}}


def verdicts(bars: list[dict]) -> list[bool | None]:
    return [bar["passed"] for bar in bars]


def test_bars_read_the_shipped_rows_mean(bench):
    assert verdicts(bench.bars("HalfCheetah-v4", shipped({50_000: 1600, 100_000: 1500, 200_000: 1450}))) == [
        True, True]                                                  # 1450 >= 1600 - 160
    assert verdicts(bench.bars("HalfCheetah-v4", shipped({50_000: 1400, 200_000: 1250}))) == [False, False]
    assert verdicts(bench.bars("HalfCheetah-v4", shipped({50_000: -100, 200_000: -109}))) == [False, True]
    assert verdicts(bench.bars("Hopper-v5", shipped({50_000: 1100, 200_000: 900}))) == [True, False]
    assert verdicts(bench.bars("Walker2d-v4", shipped({50_000: 500, 200_000: 990}))) == [False, True]
    assert verdicts(bench.bars("Walker2d-v4", shipped({50_000: 500, 100_000: 700}))) == [None, None]
    assert verdicts(bench.bars("Hopper-v4", shipped({50_000: 1200, 200_000: 1300}, complete=False))) == [
        None, None]                                                  # not every seed measured
    assert verdicts(bench.bars("HalfCheetah-v4", None)) == [None, None]


def test_the_tables_per_seed_cells_stay_apart_with_eight_seeds(bench):
    """Eight seeds' returns are wider than the default column: every value still reads on its own."""
    per_seed = {str(k): 1000.0 + k + 0.25 for k in range(8)}
    cell = {"mean": 1003.5, "std": 2.3, "per_seed": per_seed}
    tasks = {"Hopper-v4": {"model": "abc", "model_dir": None, "pessimism_option": True, "bars": [],
                           "rows": {"shipped": {"complete": True,
                                                "steps": {"50000": cell, "100000": cell}}}}}
    text = bench.table(tasks, list(range(8)), (50_000, 100_000), 5)
    row = next(line for line in text.splitlines() if line.startswith("  per seed"))
    assert row.split()[2:] == [f"{v:.1f}" for v in per_seed.values()] * 2


@pytest.mark.mujoco
def test_oracle_run_writes_table_json_parts_and_resume_skips_it(bench, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tiny.json"
    argv = ["--envs", "HalfCheetah-v4", "--rows", "oracle,random", "--seeds", "0", "--steps", "1280,2560",
            "--episodes", "1", "--jobs", "1", "--out", str(out)]
    report = bench.main(argv)
    text = capsys.readouterr().out

    parts = tmp_path / "tiny.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["HalfCheetah-v4_oracle_seed0.json",
                                                       "HalfCheetah-v4_random_seed0.json"]
    run = report["runs"]["HalfCheetah-v4_oracle_seed0"]
    assert [c["steps"] for c in run["checkpoints"]] == [1280, 2560]
    assert [c["imagined_steps"] for c in run["checkpoints"]] == [1280, 2560]  # rollouts of 256 envs x H = 5
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["failed"] == {} and report["settings"]["steps"] == [1280, 2560]

    task = report["tasks"]["HalfCheetah-v4"]
    assert set(task["rows"]) == {"oracle", "random"}
    cell = task["rows"]["oracle"]["steps"]["2560"]
    assert cell["mean"] == cell["per_seed"]["0"] == run["checkpoints"][1]["real_return"] and cell["std"] == 0
    random = report["runs"]["HalfCheetah-v4_random_seed0"]["real_return"]
    assert task["rows"]["random"]["mean"] == random < 0
    assert verdicts(task["bars"]) == [None, None]                   # neither 50k nor the shipped row measured

    assert "MuJoCo oracle" in text and "random actions" in text and f"{random:.1f}" in text
    assert f"{cell['mean']:.1f} +- 0.0" in text
    assert text.count("n/a (not measured)") == 2

    def must_not_run(*args):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(bench, "run_unit", must_not_run)
    again = bench.main(argv + ["--resume"])
    assert json.loads(json.dumps(again["runs"])) == json.loads(json.dumps(report["runs"]))
    assert again["tasks"] == report["tasks"]

    before = out.read_text()
    with pytest.raises(ValueError, match=r"oracle_seed0.json was measured with other settings"):
        bench.main(["--steps", "1280", *argv[:6], *argv[8:], "--resume"])
    with pytest.raises(ValueError, match=r"oracle_seed0.json was measured with other settings.*episode_st"):
        bench.main([*argv, "--resume", "--episode-steps", "5"])
    assert out.read_text() == before


def test_episode_steps_reach_every_row_but_leave_the_snippet_alone(bench):
    def unit(row, episode_steps):
        return bench.Unit("Hopper-v4", row, 0, (1,), 1, "digest", True, episode_steps)

    assert bench.env_kwargs(unit("shipped", None)) is None                   # the README snippet exactly
    assert bench.env_kwargs(unit("shipped", 5)) == {"episode_steps": 5}
    assert bench.env_kwargs(unit("no-pessimism", 5)) == {"pessimism": False, "episode_steps": 5}


def test_an_exported_model_replaces_the_shipped_one_in_every_row(bench, tmp_path):
    exported = str(tmp_path)
    (tmp_path / "start_states.npz").write_bytes(b"starts")

    def unit(row):
        return bench.Unit("HalfCheetah-v4", row, 0, (1,), 1, "digest", True, None, exported)

    given = {"world_model": str(tmp_path / "world_model.pt"),
             "start_states": str(tmp_path / "start_states.npz")}
    assert bench.env_kwargs(unit("shipped")) == given
    assert bench.env_kwargs(unit("no-pessimism")) == {**given, "pessimism": False}
    assert bench.model_paths("HalfCheetah-v4", exported) == (tmp_path / "world_model.pt",
                                                              tmp_path / "start_states.npz")
    built = tmp_path / "built"                  # a build-model folder ships start_states.npy
    built.mkdir()
    assert bench.model_paths("HalfCheetah-v4", str(built)) == (built / "world_model.pt",
                                                               built / "start_states.npy")
    assert bench.row_label("shipped", exported) == f"model of {tmp_path.name}"
    assert bench.row_label("no-pessimism", exported) == f"model of {tmp_path.name}, pessimism off"
    assert bench.row_label("oracle", exported) == bench.row_label("oracle", None) == "MuJoCo oracle"
    assert bench.row_label("shipped", None) == "shipped model"
    # the shipped models' return targets do not apply to another model; the hold bar does
    means = shipped({50_000: 100, 200_000: 50})
    assert verdicts(bench.bars("HalfCheetah-v4", means, targets=False)) == [False]
    assert [b["bar"] for b in bench.bars("HalfCheetah-v4", means, targets=False)] == [
        "return at 200,000 not lower than at 50,000 by more than 10%"]


def test_the_oracle_row_of_an_exported_model_starts_from_its_start_states(bench, tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(bench.WorldModel, "load", lambda path, device: loaded.append(path) or SimpleNamespace(
        horizon=7))
    monkeypatch.setattr(bench, "SimulatorModel", lambda env_id, horizon: ("simulator", env_id, horizon))
    (tmp_path / "start_states.npz").write_bytes(b"starts")
    unit = bench.Unit("HalfCheetah-v4", "oracle", 0, (1,), 1, "digest", True, None, str(tmp_path))
    assert bench.env_kwargs(unit) == {"world_model": ("simulator", "HalfCheetah-v4", 7),
                                      "start_states": tmp_path / "start_states.npz", "pessimism": False}
    assert loaded == [tmp_path / "world_model.pt"]          # the exported model's horizon


def test_an_exported_folder_is_checked_against_its_task_and_digested(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--envs", "HalfCheetah-v4", "--model", str(tmp_path)])
    assert f"--model {tmp_path}: missing {tmp_path / 'world_model.pt'}" in capsys.readouterr().err
    shutil.copy(pretrained_paths("HalfCheetah-v4")[0], tmp_path / "world_model.pt")   # a HalfCheetah model
    (tmp_path / "start_states.npz").write_bytes(b"starts")
    for envs in ("Hopper-v4", "HalfCheetah-v4,Hopper-v4", "Imagined-HalfCheetah-v4"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--envs", envs, "--model", str(tmp_path)])
        assert (f"--envs {envs}: the model of --model {tmp_path} was fitted on HalfCheetah-v4"
                in capsys.readouterr().err)
    assert bench.parse_args(["--model", f"{tmp_path}/"]).envs == ["HalfCheetah-v4"]   # its task by default
    args = bench.parse_args(["--envs", "HalfCheetah-v5", "--model", f"{tmp_path}/"])   # v5 steps as v4
    assert args.model == str(tmp_path) and args.envs == ["HalfCheetah-v5"]
    digest = bench.model_digest("HalfCheetah-v4", args.model)
    assert digest != bench.model_digest("HalfCheetah-v4")
    (tmp_path / "start_states.npz").write_bytes(b"other starts")   # the start states are part of the model
    assert bench.model_digest("HalfCheetah-v4", args.model) != digest


def test_parts_written_before_a_field_existed_resume_as_its_default(bench, tmp_path):
    unit = bench.Unit("Hopper-v4", "shipped", 0, (1, 2), 1, "digest", True)
    old = {k: v for k, v in dataclasses.asdict(unit).items() if k != "model_dir"}
    (tmp_path / "part.json").write_text(json.dumps({"unit": old, "checkpoints": []}))
    assert bench.read_part(tmp_path / "part.json", unit)["unit"] == json.loads(json.dumps(old))
    with pytest.raises(ValueError, match=r"model_dir.*None, 'export'"):
        bench.read_part(tmp_path / "part.json", dataclasses.replace(unit, model_dir="export"))


def test_workers_end_when_the_driver_is_killed(tmp_path):
    """A SIGKILLed driver must not leave its pool's workers running their units."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux-only")
    driver = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {str(BENCHMARKS)!r})
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
import shipped_envs
pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=shipped_envs.end_with_driver,
                           initargs=(os.getpid(),))
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 120)
time.sleep(120)
"""], stdout=subprocess.PIPE, text=True, cwd=BENCHMARKS.parent)
    worker = int(driver.stdout.readline())
    assert _alive(worker)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_the_unsure_truncates_row_is_the_shipped_model_with_unsure_ends_truncated(bench):
    unit = bench.Unit("Hopper-v4", "unsure-truncates", 0, (1,), 1, "digest", True)
    kwargs = bench.env_kwargs(unit)
    model, shipped_config = kwargs["world_model"], bench.WorldModel.load(pretrained_paths("Hopper-v4")[0],
                                                                         device="cpu").config
    assert shipped_config.unsure_ends == "terminate" and shipped_config.disagreement_limit is not None
    assert model.config == dataclasses.replace(shipped_config, unsure_ends="truncate")
    assert kwargs["start_states"] == str(pretrained_paths("Hopper-v4")[1])
    assert "unsure-truncates" not in bench.DEFAULT_ROWS
    assert bench.row_label("unsure-truncates", None) == "shipped model, unsure ends truncated"


def test_the_zoo_learner_is_the_tasks_tuned_ppo_over_vecnormalize(bench):
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.real_evaluation import evaluate_real
    from agents.zoo import ZOO_PPO

    model = bench.learner(bench.Unit("Hopper-v4", "shipped", 3, (1,), 1, "digest", True, learner="zoo"))
    tuned = ZOO_PPO["Hopper"]
    env = model.get_env()
    assert isinstance(env, VecNormalize) and env.num_envs == bench.ZOO_N_ENVS and env.gamma == tuned["gamma"]
    assert model.imagined is not None and model.n_steps == 8 * model.imagined.horizon
    assert (model.batch_size, model.n_epochs, model.gamma, model.gae_lambda) == (
        tuned["batch_size"], tuned["n_epochs"], tuned["gamma"], tuned["gae_lambda"])
    assert (model.n_steps * env.num_envs) % model.batch_size == 0           # whole mini-batches
    model.learn(model.n_steps * env.num_envs)
    evaluate_real(model, "Hopper-v4", 1, 0, model.get_env())       # the statistics reach the real env
    plain = bench.learner(bench.Unit("Hopper-v4", "shipped", 3, (1,), 1, "digest", True))
    assert plain.n_steps == plain.imagined.horizon and plain.n_envs == bench.DEFAULT_N_ENVS


@pytest.mark.parametrize("key,obs,reward", [("sb3-norm", True, True), ("sb3-norm-obs", True, False),
                                            ("sb3-norm-reward", False, True)])
def test_the_vecnormalize_learners_normalise_what_they_name_and_turn_the_policys_own_off(bench, key, obs,
                                                                                           reward):
    from stable_baselines3.common.vec_env import VecNormalize

    model = bench.learner(bench.Unit("Hopper-v4", "shipped", 3, (1,), 1, "digest", True, learner=key))
    env = model.get_env()
    assert isinstance(env, VecNormalize) and (env.norm_obs, env.norm_reward) == (obs, reward)
    assert env.num_envs == bench.DEFAULT_N_ENVS and model.n_steps == model.imagined.horizon
    assert not model.policy.observations_fitted
    plain = bench.learner(bench.Unit("Hopper-v4", "shipped", 3, (1,), 1, "digest", True))
    assert plain.policy.observations_fitted          # the snippet's own normalisation


@pytest.mark.parametrize("key,algo,normalising", [("sb3", "ImaginationPPO", True),
                                                  ("sb3-raw", "ImaginationPPO", False),
                                                  ("a2c", "ImaginationA2C", True),
                                                  ("a2c-raw", "ImaginationA2C", False)])
def test_the_snippet_learners_are_ppo_or_a2c_with_or_without_the_policys_normalisation(bench, key, algo,
                                                                                        normalising):
    model = bench.learner(bench.Unit("Hopper-v4", "shipped", 3, (1,), 1, "digest", True, learner=key))
    assert type(model).__name__ == algo and model.policy.observations_fitted == normalising
    assert model.n_envs == bench.DEFAULT_N_ENVS and model.n_steps == model.imagined.horizon
