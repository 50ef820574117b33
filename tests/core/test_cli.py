"""The CLI's parsing and checks, and the comparison's writers: fast, nothing is trained."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from agents.cli import COMPARE_OWNED, build_config, build_parser, main
from agents.compare import CompareSpec, EvalPoint, plot_comparison, write_csv, write_json
from agents.config import CoordinatorConfig
from agents.config_flags import field_doc, flag_name, given_flags, leaf_paths
from agents.demo import DemoConfig
from agents.real_evaluation import frozen_eval_env, real_env
from agents.zoo import ZOO_PPO, zoo_settings

CONFIG_FLAGS = [flag_name(path) for path, _, _ in leaf_paths(CoordinatorConfig)]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    return out


# ---- help ---------------------------------------------------------------------------------------
def test_train_help_lists_every_config_field_with_both_presets(capsys):
    text = help_text("train", capsys)
    missing = [flag for flag in CONFIG_FLAGS if flag not in text]
    assert not missing
    assert "--world-model.denoiser.width" in text and "[128; paper 1024]" in " ".join(text.split())
    assert "--resume" in text and "--config" in text and "--steps" in text
    assert all(preset in text for preset in ("cpu-v1", "cpu-v7", "paper-v1"))
    assert len(text.splitlines()) < 240  # one or two lines a field or preset


def test_compare_help_lists_every_config_field_or_its_own_option(capsys):
    text = help_text("compare", capsys)
    own = {"env_id": "--env", "algo": "--algos", "seed": "--seeds", "eval_every": "--eval-every",
           "eval_episodes": "--eval-episodes", "eval_max_episode_steps": "--max-episode-steps"}
    assert set(own) == COMPARE_OWNED
    missing = [flag_name(p) for p, _, _ in leaf_paths(CoordinatorConfig)
               if p not in own and flag_name(p) not in text]
    assert not missing
    assert all(flag in text for flag in own.values())
    assert "RL Baselines3 Zoo" in " ".join(text.split())


def test_demo_and_evaluate_help(capsys):
    demo = help_text("demo", capsys)
    docs = {path: field_doc(path, owner) for path, _, owner in leaf_paths(DemoConfig)}
    assert all(flag_name(path) in demo and doc.split()[0] in demo for path, doc in docs.items() if doc)
    evaluate = help_text("evaluate", capsys)
    assert all(opt in evaluate for opt in ("--vecnormalize", "--episodes", "--env", "--algo"))


def test_every_config_field_is_documented():
    assert [path for path, _, owner in leaf_paths(CoordinatorConfig) if not field_doc(path, owner)] == []


# ---- config precedence ------------------------------------------------------------------------------
def parsed_config(argv: list[str]) -> CoordinatorConfig:
    args = build_parser().parse_args(["train", "--steps", "10000", *argv])
    return build_config(args.preset, args.config, given_flags(args))[0]


@pytest.mark.parametrize("learner", [
    {"learner": {"n_epochs": 3, "policy": {"log_std_init": -1}}},
    {"learner_kwargs": {"n_epochs": 3, "policy_kwargs": {"log_std_init": -1}}},  # an older file's form
])
def test_preset_then_file_then_flags(tmp_path, learner):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"prefill_steps": 1234, "eval_every": 777, "world_model": {"horizon": 7},
                                **learner}))
    config = parsed_config(["--config", str(path), "--prefill-steps", "2000",
                            "--world-model.denoiser.width", "64"])
    cpu = CoordinatorConfig.preset("cpu")
    assert config.prefill_steps == 2000  # flag beats file
    assert config.eval_every == 777 and config.world_model.horizon == 7  # file beats preset
    denoiser = config.world_model.denoiser
    assert denoiser.width == 64 and denoiser.depth == cpu.world_model.denoiser.depth
    policy = replace(cpu.learner.policy, log_std_init=-1.0)  # nested configs merge field by field
    assert config.learner == replace(cpu.learner, n_epochs=3, policy=policy)


def test_flag_types_and_paper_preset():
    config = parsed_config(["--preset", "paper", "--env", "Hopper-v4", "--n-sample-steps", "none",
                            "--world-model.guidance.adapt", "false", "--learner.ent-coef", "0.01",
                            "--learner.policy.pi", "32,16", "--world-model.denoiser.width", "512"])
    paper = CoordinatorConfig.preset("paper", env_id="Hopper-v4")
    assert config.env_id == "Hopper-v4" and config.algo == paper.algo == "a2c"
    assert config.world_model.schedule.tau == paper.world_model.schedule.tau == 0.1  # the task's default...
    assert config.world_model.denoiser.width == 512  # ...kept under another world-model flag
    assert config.n_sample_steps is None and config.world_model.guidance.adapt is False
    assert config.learner.ent_coef == 0.01 and config.learner.max_grad_norm == 0.1
    assert config.learner.policy.pi == (32, 16) and config.learner.policy.vf == (64, 64)


def test_every_preset_id_and_alias_is_accepted():
    assert parsed_config(["--preset", "cpu-v1"]) == CoordinatorConfig.preset("cpu-v1")
    assert parsed_config(["--preset", "paper-v1"]) == parsed_config(["--preset", "paper"])
    assert parsed_config([]) == parsed_config(["--preset", "cpu-v7"]) == CoordinatorConfig()


def test_a_compare_json_is_a_config_and_names_its_preset(tmp_path):
    imagination = CoordinatorConfig.preset("cpu-v2", n_imagined_envs=64)
    write_json([], replace(spec(), imagination=imagination, preset="cpu-v2"), tmp_path / "compare.json")
    args = build_parser().parse_args(["train", "--steps", "10000", "--config",
                                      str(tmp_path / "compare.json")])
    assert build_config(args.preset, args.config, given_flags(args)) == (imagination, "cpu-v2")
    data = json.loads((tmp_path / "compare.json").read_text())
    del data["preset"], data["imagination_config"]["refit_world_model_steps"]  # an older file
    (tmp_path / "compare.json").write_text(json.dumps(data))
    config, preset = build_config(None, str(tmp_path / "compare.json"), {})
    assert preset == "cpu-v7" and config == replace(imagination, refit_world_model_steps=500)


def test_a_run_config_json_round_trips(tmp_path):
    original = CoordinatorConfig.preset("cpu", seed=5, prefill_steps=321)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(original.to_dict()))
    assert parsed_config(["--config", str(path)]) == original


# ---- bad inputs: exit code 2 and a message that names the problem -----------------------------------------
def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    not_json, not_object, a_file = tmp_path / "bad.json", tmp_path / "list.json", tmp_path / "file"
    not_json.write_text("{prefill_steps: 1")
    not_object.write_text("[1, 2]")
    a_file.write_text("")
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"world_model": {"hieght": 3}}))
    typed, legacy, model_free = tmp_path / "typed.json", tmp_path / "legacy.json", tmp_path / "compare.json"
    typed.write_text(json.dumps({"world_model": {"horizon": "5"}}))
    legacy.write_text(json.dumps({"learner_kwargs": {"use_sde": True}}))
    model_free.write_text(json.dumps({"imagination_config": None, "results": {}}))
    run = ["--run-dir", str(tmp_path / "run")]
    out = ["--out", str(tmp_path)]
    (tmp_path / "runs" / "imagination-ppo_seed2" / "checkpoint").mkdir(parents=True)
    (tmp_path / "runs" / "imagination-ppo_seed2" / "checkpoint" / "state.json").write_text("{}")
    (tmp_path / "runs" / "ensemble-ppo_seed4").mkdir(parents=True)  # an ensemble run keeps no checkpoint
    (tmp_path / "runs" / "ensemble-ppo_seed4" / "evaluations.csv").write_text("real_steps\n")
    return [
        (["train", "--steps", "9000", "--env", "HalfCheetah-v9", *run], "unknown task 'HalfCheetah-v9'"),
        (["train", "--steps", "100", *run], "below prefill_steps 5000"),
        (["train", *run], "--steps"),
        (["train", "--steps", "9000", "--config", str(tmp_path / "missing.json"), *run],
         "cannot read config file"),
        (["train", "--steps", "9000", "--config", str(not_json), *run], "is not valid JSON"),
        (["train", "--steps", "9000", "--config", str(not_object), *run], "must hold a JSON object"),
        (["train", "--steps", "9000", "--config", str(typo), *run],
         "unknown config key 'world_model.hieght'"),
        (["train", "--steps", "9000", "--world-model.denoiser.width", "wide", *run],
         "world_model.denoiser.width must be an integer, got 'wide'"),
        (["train", "--steps", "9000", "--config", str(typed), *run],
         "world_model.horizon must be an integer, got '5'"),
        (["train", "--steps", "9000", "--config", str(legacy), *run],
         "learner_kwargs key 'use_sde' has no typed setting"),
        (["train", "--steps", "9000", "--config", str(model_free), *run], "holds no imagination config"),
        (["train", "--steps", "9000", "--preset", "cpu-v9", *run], "invalid choice: 'cpu-v9'"),
        (["train", "--steps", "9000", "--learner.policy.activation", "swish", *run],
         "unknown activation 'swish'"),
        (["train", "--steps", "9000", "--algo", "sac", *run], "unknown algo 'sac'"),
        (["train", "--steps", "9000", "--run-dir", str(a_file / "run")], "not writable"),
        (["train", "--steps", "9000", "--run-dir", str(a_file)], "is not a directory"),
        (["train", "--steps", "0", *run], "expected a positive integer"),
        (["train", "--resume", str(tmp_path)], "no checkpoint there"),
        (["train", "--resume", str(tmp_path), "--seed", "3"],
         "drop --preset/--config/--run-dir and config flags"),
        (["compare", "--steps", "9000", "--algos", "ppo,dqn", *out], "unknown method(s) ['dqn']"),
        (["compare", "--steps", "9000", "--seeds", "0,0", *out], "distinct comma-separated"),
        (["compare", "--steps", "9000", "--env", "Ant-v4", *out], "has no imagined version"),
        (["compare", "--steps", "9000", "--env", "HalfCheeta-v4", *out], "did you mean HalfCheetah-v4"),
        (["compare", "--steps", "9000", "--algos", "ppo", "--env", "Swimmer-v4", *out],
         "no tuned PPO for 'Swimmer-v4'"),
        (["compare", "--steps", "1000", *out], "below prefill_steps"),
        (["compare", "--steps", "9000", "--eval-every", "10000", *out], "exceeds --steps"),
        (["compare", "--steps", "9000", "--out", str(a_file)], "is not a directory"),
        (["compare", "--steps", "9000", "--algos", "ppo", "--n-imagined-envs", "8", *out], "has none"),
        (["compare", "--steps", "9000", "--seeds", "1,2", *out], "holds runs of an earlier comparison"),
        (["compare", "--steps", "9000", "--seeds", "4", "--algos", "ensemble-ppo", *out],
         "holds runs of an earlier comparison"),
        (["evaluate", str(tmp_path / "nothing")], "neither a run folder nor a learner .zip"),
        (["evaluate", str(tmp_path)], "no checkpoint/state.json"),
        (["demo", "--imagined-steps", "0"], "must be > 0"),
        (["demo", "--episode-steps", "0"], "episode_steps"),
    ]


def test_bad_inputs_fail_before_training_with_exit_code_2(tmp_path, capsys):
    for argv, message in bad_inputs(tmp_path):
        code, _, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert message in err, (argv, err)


def test_evaluate_zip_needs_env_and_loadable_file(tmp_path, capsys):
    junk = tmp_path / "model.zip"
    junk.write_bytes(b"not a zip")
    assert "--env is required" in run_cli(["evaluate", str(junk)], capsys)[2]
    code, _, err = run_cli(["evaluate", str(junk), "--env", "HalfCheetah-v4"], capsys)
    assert code == 2 and f"cannot load {junk}" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code, _, err = run_cli(["compare", "--steps", "9000", "--out", str(locked / "out")], capsys)
    assert code == 2 and "not writable" in err


# ---- the model-free side: RL Zoo settings, frozen evaluation statistics ----------------------------------
def test_zoo_ppo_settings_reach_the_learner():
    from agents.compare import make_model_free

    model = make_model_free(zoo_settings("ppo", "HalfCheetah-v4"), "HalfCheetah-v4", seed=0)
    venv = model.get_env()
    assert isinstance(venv, VecNormalize) and venv.norm_obs and venv.norm_reward and venv.gamma == 0.98
    rollout = (model.n_steps, model.batch_size, model.n_epochs, model.gamma, model.gae_lambda)
    assert rollout == (512, 64, 20, 0.98, 0.92)
    assert model.learning_rate == 2.0633e-05 and model.ent_coef == 0.000401762 and model.vf_coef == 0.58096
    assert model.max_grad_norm == 0.8 and model.clip_range(1.0) == 0.1
    policy = model.policy
    assert policy.activation_fn is nn.ReLU and policy.ortho_init is False
    assert np.allclose(policy.log_std.detach().numpy(), -2.0)
    assert policy.net_arch == {"pi": [256, 256], "vf": [256, 256]}
    venv.close()


def test_zoo_table_and_a2c_defaults():
    assert set(ZOO_PPO) == {"HalfCheetah", "Hopper", "Walker2d"}
    assert zoo_settings("ppo", "Hopper-v5").kwargs["gamma"] == 0.999
    a2c = zoo_settings("a2c", "Walker2d-v4")
    assert a2c.kwargs == {} and a2c.norm_obs and a2c.norm_reward and a2c.gamma == 0.99
    assert "SB3 default A2C + VecNormalize" in a2c.describe()


def test_evaluation_sees_frozen_copy_of_training_statistics():
    train = VecNormalize(real_env("HalfCheetah-v4", 0), gamma=0.98)
    train.obs_rms.mean[:] = 3.0
    frozen = frozen_eval_env("HalfCheetah-v4", 1, train)
    assert isinstance(frozen, VecNormalize) and not frozen.training and not frozen.norm_reward
    assert np.allclose(frozen.obs_rms.mean, 3.0)
    train.obs_rms.mean[:] = -1.0  # training goes on; the evaluation's copy does not move
    frozen.reset()
    assert np.allclose(frozen.obs_rms.mean, 3.0)
    train.close()
    frozen.close()


# ---- tables and plot from synthetic histories --------------------------------------------------------------
def synthetic(methods=("ppo", "imagination-ppo"), seeds=(0, 1), steps=(0, 500, 1000)) -> list[EvalPoint]:
    return [EvalPoint(m, s, t, mean_return=100.0 * i + 10 * s + t / 100, std_return=1.0 + s)
            for i, m in enumerate(methods) for s in seeds for t in steps]


def spec(methods=("ppo", "imagination-ppo")) -> CompareSpec:
    return CompareSpec("HalfCheetah-v4", methods, (0, 1), 1000, 500, 2, CoordinatorConfig.preset("cpu"),
                       "cpu-v7")


def test_csv_has_one_row_per_evaluation(tmp_path):
    points = synthetic()
    write_csv(points, tmp_path / "compare.csv")
    with open(tmp_path / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["method", "seed", "real_steps", "mean_return", "std_return"]
    assert [(r["method"], int(r["seed"]), int(r["real_steps"]), float(r["mean_return"])) for r in rows] == \
        [(p.method, p.seed, p.real_steps, p.mean_return) for p in points]


def test_json_groups_by_method_and_seed_and_states_settings(tmp_path):
    points = synthetic()
    write_json(points[::-1], spec(), tmp_path / "compare.json")  # order of arrival does not matter
    data = json.loads((tmp_path / "compare.json").read_text())
    setup = (data["env_id"], data["budget"], data["seeds"], data["eval_every"])
    assert setup == ("HalfCheetah-v4", 1000, [0, 1], 500)
    assert data["results"]["imagination-ppo"]["1"] == [
        {"real_steps": t, "mean_return": 110.0 + t / 100, "std_return": 2.0} for t in (0, 500, 1000)]
    assert "RL Zoo tuned HalfCheetah" in data["settings"]["ppo"] and "n_steps 512" in data["settings"]["ppo"]
    assert "(cpu-v7)" in data["settings"]["imagination-ppo"] and data["preset"] == "cpu-v7"
    assert data["imagination_config"] == CoordinatorConfig.preset("cpu").to_dict()


def test_plot_is_a_png(tmp_path):
    plot_comparison(synthetic(), spec(), tmp_path / "compare.png")
    data = (tmp_path / "compare.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.png"]  # no temporary left behind
