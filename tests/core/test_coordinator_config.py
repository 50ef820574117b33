"""Coordinator configuration: JSON round trip, presets, and every bad input refused before training."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from agents.coordinator import SUPPORTED_TASKS, Coordinator, CoordinatorConfig
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
    assert 256 <= cpu.world_model.denoiser.width <= 512 and 3 <= cpu.world_model.denoiser.depth <= 4
    assert 16 <= cpu.n_sample_steps <= 32
    assert cpu.world_model_steps_per_real_step <= 1.0
    assert 250 <= cpu.policy_every <= 1000
    assert cpu.learner_kwargs["gamma"] == 0.99 and cpu.learner_kwargs["gae_lambda"] == 0.9


def test_paper_preset_follows_section_5():
    paper = CoordinatorConfig.preset("paper")
    assert (paper.prefill_steps, paper.policy_every, paper.world_model_steps_per_real_step) == (5000, 4, 1.0)
    assert paper.n_imagined_envs == 1024 and paper.world_model.horizon == 10 and paper.n_sample_steps is None
    assert (paper.world_model.denoiser.width, paper.world_model.denoiser.depth) == (1024, 6)
    assert paper.world_model.schedule.n_steps == 128 and paper.world_model.schedule.tau == 1.0
    assert (paper.eval_every, paper.eval_episodes) == (10_000, 20)
    assert paper.learner_kwargs["gamma"] == 0.99 and paper.learner_kwargs["gae_lambda"] == 0.9


def test_hopper_presets_use_the_papers_tau():
    assert CoordinatorConfig.preset("paper", env_id="Hopper-v5").world_model.schedule.tau == 0.1
    assert CoordinatorConfig.preset("cpu", env_id="Hopper-v4").world_model.schedule.tau == 0.1
    assert CoordinatorConfig.preset("cpu", env_id="Walker2d-v4").world_model.schedule.tau == 1.0


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
    ({"start_state_window": 0}, "start_state_window must be None or an integer >= 1, got 0"),
    ({"target_update_kl": 0.0}, "target_update_kl must be None or > 0, got 0.0"),
    ({"target_update_kl": 0.02, "algo": "a2c"}, "needs algo 'ppo'"),
    ({"target_update_kl": 0.02, "final_learning_rate": 0.0}, "and no final_learning_rate"),
    ({"final_learning_rate": -1e-4}, "final_learning_rate must be None or >= 0, got -0.0001"),
    ({"device": "abacus"}, "not a torch device"),
    ({"learner_kwargs": {"seed": 1}}, "may not set"),
    ({"learner_kwargs": {"policy_kwargs": {"activation_fn": "swish"}}}, "unknown activation_fn"),
    ({"learner_kwargs": {"policy_kwargs": {"activation_fn": object}}}, "JSON-serialisable"),
])
def test_bad_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        CoordinatorConfig(**fields)


def test_unknown_preset_and_unknown_json_fields():
    with pytest.raises(ValueError, match="unknown preset 'gpu'"):
        CoordinatorConfig.preset("gpu")
    with pytest.raises(ValueError, match="unknown coordinator config fields"):
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
