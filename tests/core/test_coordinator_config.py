"""Coordinator configuration: JSON round trip, presets, and every bad input refused before training."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from torch import nn

from agents.config import _learner_kwargs, sb3_default_learner
from agents.coordinator import SUPPORTED_TASKS, Coordinator, CoordinatorConfig
from agents.presets import _PRESETS, ALIASES, build_preset, describe, preset_ids
from agents.run_files import find_checkpoint, new_checkpoint_dir, swap_in


def fake_checkpoint(run_dir, env_id: str, real_steps: int = 400, name: str = "checkpoint") -> None:
    """Only what the refusal logic reads: state.json with the task and the config."""
    path = run_dir / name
    path.mkdir(parents=True, exist_ok=True)
    config = CoordinatorConfig.preset("cpu", env_id=env_id)
    state = {"format_version": 1, "env_id": env_id, "real_steps": real_steps, "config": config.to_dict()}
    (path / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("name,env_id", [("cpu", "HalfCheetah-v4"), ("paper", "Walker2d-v5"),
                                         ("cpu", "Hopper-v4")])
def test_json_round_trip(name, env_id):
    config = CoordinatorConfig.preset(name, env_id=env_id, seed=3)
    again = CoordinatorConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.world_model == config.world_model and again.train == config.train


def test_cpu_preset_is_a_cpu_recipe():
    cpu = CoordinatorConfig.preset("cpu")
    assert cpu == CoordinatorConfig()                      # the defaults are the cpu preset
    denoiser = cpu.world_model.denoiser                    # a recurrent state, small step network
    assert denoiser.kind == "causal-recurrent" and 64 <= denoiser.width <= 256 and denoiser.depth <= 3
    assert cpu.world_model.readout == "rollout"
    assert 16 <= cpu.n_sample_steps <= 32
    assert cpu.world_model_steps_per_real_step <= 1.0
    assert 250 <= cpu.policy_every <= 1000
    assert cpu.learner.gamma == 0.99 and cpu.learner.gae_lambda == 0.9


def test_paper_preset_follows_the_papers_ratios():
    paper = CoordinatorConfig.preset("paper")
    assert (paper.prefill_steps, paper.policy_every, paper.world_model_steps_per_real_step) == (5000, 4, 1.0)
    assert paper.n_imagined_envs == 1024 and paper.world_model.horizon == 10 and paper.n_sample_steps is None
    assert (paper.world_model.denoiser.width, paper.world_model.denoiser.depth) == (1024, 6)
    assert paper.world_model.schedule.n_steps == 128 and paper.world_model.schedule.tau == 1.0
    assert (paper.eval_every, paper.eval_episodes) == (10_000, 20)
    assert paper.learner.gamma == 0.99 and paper.learner.gae_lambda == 0.9


def test_hopper_presets_use_the_papers_tau():
    assert CoordinatorConfig.preset("paper", env_id="Hopper-v5").world_model.schedule.tau == 0.1
    assert CoordinatorConfig.preset("cpu", env_id="Hopper-v4").world_model.schedule.tau == 0.1
    assert CoordinatorConfig.preset("cpu", env_id="Walker2d-v4").world_model.schedule.tau == 1.0
    changed = build_preset("cpu", "Hopper-v4",
                           {"world_model": {"horizon": 7}, "world_model.denoiser.width": 64})
    assert changed.world_model.schedule.tau == 0.1 and changed.world_model.horizon == 7  # not dropped
    assert build_preset("cpu", "Hopper-v4", {"world_model.schedule.tau": 0.5}).world_model.schedule.tau == 0.5


@pytest.mark.parametrize("name", preset_ids())
def test_every_preset_builds_for_every_task(name):
    for env_id in SUPPORTED_TASKS:
        config = build_preset(name, env_id)
        assert config.env_id == env_id
        assert CoordinatorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert describe(name) and "\n" not in describe(name)


def test_preset_versions_are_diffs_from_their_parents():
    assert ALIASES == {"cpu": "cpu-v7", "paper": "paper-v1"}
    assert build_preset("cpu-v7") == CoordinatorConfig()            # the defaults are the newest cpu preset
    v1, v2, v3, v4, v5, v6 = (build_preset(f"cpu-v{i}") for i in (1, 2, 3, 4, 5, 6))
    wm = CoordinatorConfig().world_model
    assert v1 == replace(CoordinatorConfig(), initial_world_model_steps=2000, n_sample_steps=32,
                         open_loop_states=16, refit_world_model_steps=0, world_model_steps_per_real_step=0.5,
                         world_model=replace(wm, scale_actions=True, condition_on_last_action=True,
                                             guidance=replace(wm.guidance, scale_lr=0.03), readout="chain",
                                             denoiser=replace(wm.denoiser, kind="mlp", width=256, depth=3)),
                         learner=replace(CoordinatorConfig().learner, ent_coef=0.0))
    assert v2 == replace(v1, initial_world_model_steps=4000, n_sample_steps=16, open_loop_states=128,
                         refit_world_model_steps=500, world_model_steps_per_real_step=1.0,
                         world_model=replace(v1.world_model, scale_actions=False))
    assert v3 == replace(v2, world_model=replace(v2.world_model, guidance=replace(wm.guidance, scale_lr=0.2)))
    assert v4 == replace(v3, world_model=replace(v3.world_model, condition_on_last_action=False))
    assert v5 == replace(v4, learner=replace(v4.learner, ent_coef=0.03))
    causal = replace(v5.world_model.denoiser, kind="causal-mlp", width=64)
    assert v6 == replace(v5, world_model=replace(v5.world_model, readout="rollout", denoiser=causal))
    recurrent = replace(causal, kind="causal-recurrent", width=128, depth=2)
    assert CoordinatorConfig() == replace(v6, world_model=replace(v6.world_model, denoiser=recurrent))
    assert all(p.parent is None or p.parent in _PRESETS for p in _PRESETS.values())


def test_learner_settings_become_the_sb3_arguments_of_before():
    """The SB3 arguments the untyped learner_kwargs of the cpu and paper presets produced."""
    cpu = _learner_kwargs(CoordinatorConfig())
    assert cpu.pop("policy_kwargs") == {"net_arch": {"pi": [256, 256], "vf": [256, 256]},
                                        "activation_fn": nn.ReLU, "log_std_init": 0.0, "ortho_init": False,
                                        "normalize_observations": False}  # the policy's own: off in runs
    assert cpu == {"n_steps": 5, "gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "n_epochs": 5,
                   "batch_size": 256, "clip_range": 0.2, "target_kl": 0.1, "ent_coef": 0.03,
                   "max_grad_norm": 0.5,
                   "vf_coef": 0.5, "normalize_advantage": True}  # the last two: SB3's PPO defaults
    paper = _learner_kwargs(CoordinatorConfig.preset("paper"))
    assert paper.pop("policy_kwargs") == {"net_arch": {"pi": [64, 64], "vf": [64, 64]},
                                          "activation_fn": nn.Tanh, "log_std_init": 0.0, "ortho_init": True,
                                          "normalize_observations": False}
    assert paper == {"n_steps": 10, "gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "ent_coef": 1e-5,
                     "max_grad_norm": 0.1, "normalize_advantage": True, "use_rms_prop": False, "vf_coef": 0.5}


def test_older_learner_kwargs_load_as_typed_settings():
    cpu_kwargs = {"gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "n_epochs": 5, "batch_size": 256,
                  "clip_range": 0.2, "target_kl": 0.1, "ent_coef": 0.03, "max_grad_norm": 0.5,
                  "policy_kwargs": {"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": "relu",
                                    "log_std_init": 0.0, "ortho_init": False}}
    old = {k: v for k, v in CoordinatorConfig().to_dict().items() if k != "learner"}
    assert CoordinatorConfig.from_dict({**old, "learner_kwargs": cpu_kwargs}) == CoordinatorConfig()
    paper = CoordinatorConfig.preset("paper").to_dict()
    del paper["learner"]
    paper["learner_kwargs"] = {"gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "ent_coef": 1e-5,
                               "max_grad_norm": 0.1, "normalize_advantage": True, "use_rms_prop": False}
    loaded = CoordinatorConfig.from_dict(paper)
    assert _learner_kwargs(loaded) == _learner_kwargs(CoordinatorConfig.preset("paper"))
    assert CoordinatorConfig.from_dict({**old, "learner_kwargs": {}}).learner == sb3_default_learner("ppo")
    assert sb3_default_learner("a2c").use_rms_prop and not sb3_default_learner("a2c").normalize_advantage


def test_unknown_task_is_named_with_the_supported_ones():
    with pytest.raises(ValueError) as err:
        CoordinatorConfig(env_id="Pendulum-v1")
    message = str(err.value)
    assert "Pendulum-v1" in message
    assert all(task in message for task in SUPPORTED_TASKS)
    tasks = ("HalfCheetah", "Hopper", "Walker2d")
    assert set(SUPPORTED_TASKS) == {f"{t}-{v}" for t in tasks for v in ("v4", "v5")}


@pytest.mark.parametrize("fields,match", [
    ({"algo": "sac"}, "unknown algo 'sac'"),
    ({"prefill_steps": 0}, "prefill_steps"),
    ({"prefill_steps": 5}, "exceed the world model horizon"),
    ({"policy_every": 0}, "policy_every"),
    ({"n_sample_steps": 0}, "n_sample_steps"),
    ({"world_model_steps_per_real_step": -1.0}, "world_model_steps_per_real_step"),
    ({"eval_episodes": 0}, "eval_episodes"),
    ({"collection_noise_std": -0.1}, "collection_noise_std must be >= 0, got -0.1"),
    ({"collection_std_scale": -1.0}, "collection_std_scale must be >= 0, got -1.0"),
    ({"start_state_window": 0}, "start_state_window must be None or an integer >= 1, got 0"),
    ({"target_update_kl": 0.0}, "target_update_kl must be None or > 0, got 0.0"),
    ({"target_update_kl": 0.02, "algo": "a2c"}, "needs algo 'ppo'"),
    ({"target_update_kl": 0.02, "final_learning_rate": 0.0}, "and no final_learning_rate"),
    ({"final_learning_rate": -1e-4}, "final_learning_rate must be None or >= 0, got -0.0001"),
    ({"device": "abacus"}, "not a torch device"),
    ({"learner": {"gamma": 1.5}}, r"learner.gamma must lie in \[0, 1\], got 1.5"),
    ({"learner": {"batch_size": 0}}, "learner.batch_size must be > 0, got 0"),
    ({"learner": {"policy": {"activation": "swish"}}}, "unknown activation 'swish'; choose one of relu"),
    ({"learner": {"policy": {"pi": [64, 0]}}}, "policy.pi must be a list of positive integers"),
])
def test_bad_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        CoordinatorConfig.from_dict(fields)


@pytest.mark.parametrize("data,match", [
    ({"world_model": {"horizon": "5"}}, "world_model.horizon must be an integer, got '5'"),
    ({"learner": {"policy": {"pi": "64"}}}, r"learner.policy.pi must be a list of integers, got '64'"),
    ({"world_model": 3}, "config key 'world_model' must be a JSON object"),
    ({"learner_kwargs": {"seed": 1}}, "learner_kwargs key 'seed' has no typed setting"),
    ({"learner_kwargs": {"policy_kwargs": {"squash_output": True}}}, "policy_kwargs key 'squash_output'"),
    ({"learner_kwargs": {"policy_kwargs": {"activation_fn": "swish"}}}, "unknown activation 'swish'"),
])
def test_json_values_are_checked_and_named_by_path(data, match):
    with pytest.raises(ValueError, match=match):
        CoordinatorConfig.from_dict(data)


def test_unknown_preset_and_unknown_json_fields():
    with pytest.raises(ValueError, match="unknown preset 'gpu'; choose one of cpu, paper, cpu-v1"):
        CoordinatorConfig.preset("gpu")
    with pytest.raises(ValueError, match="unknown config key 'colour'; valid keys: env_id"):
        CoordinatorConfig.from_dict({**CoordinatorConfig().to_dict(), "colour": "blue"})


def test_unwritable_run_dir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not writable"):
        Coordinator(CoordinatorConfig(), blocker / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_dir_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            Coordinator(CoordinatorConfig(), tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_checkpoint_of_another_task_is_refused(tmp_path):
    fake_checkpoint(tmp_path, "Hopper-v4")
    with pytest.raises(ValueError, match="another task .*Hopper-v4"):
        Coordinator(CoordinatorConfig(env_id="HalfCheetah-v4"), tmp_path)
    with pytest.raises(ValueError, match="is of task 'Hopper-v4', not 'HalfCheetah-v4'"):
        Coordinator.resume(tmp_path, env_id="HalfCheetah-v4")


def test_existing_checkpoint_of_the_same_task_is_not_overwritten(tmp_path):
    fake_checkpoint(tmp_path, "HalfCheetah-v4")
    with pytest.raises(ValueError, match="Coordinator.resume"):
        Coordinator(CoordinatorConfig(), tmp_path)


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        Coordinator.resume(tmp_path)


def test_an_interrupted_swap_leaves_the_previous_checkpoint(tmp_path):
    fake_checkpoint(tmp_path, "HalfCheetah-v4", real_steps=400)
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint-old")  # killed between the two renames
    assert find_checkpoint(tmp_path) == tmp_path / ".checkpoint-old"
    (tmp_path / ".checkpoint-tmp-killed").mkdir()                   # a writer killed mid-way
    new = new_checkpoint_dir(tmp_path)
    assert not (tmp_path / ".checkpoint-tmp-killed").exists()
    fake_checkpoint(new.parent, "HalfCheetah-v4", real_steps=500, name=new.name)
    assert swap_in(new, tmp_path) == tmp_path / "checkpoint" == find_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["real_steps"] == 500


@pytest.mark.mujoco
def test_budget_below_prefill_is_refused_before_any_step(tmp_path):
    coordinator = Coordinator(replace(CoordinatorConfig(), prefill_steps=1000), tmp_path, verbose=0)
    with pytest.raises(ValueError, match="must be an integer >= prefill_steps"):
        coordinator.learn(999, progress_bar=False)
    with pytest.raises(ValueError, match="give total_real_steps"):
        coordinator.learn(progress_bar=False)
    assert coordinator.real_steps == 0 and coordinator.world_model is None
    assert find_checkpoint(tmp_path) is None
    coordinator.close()
