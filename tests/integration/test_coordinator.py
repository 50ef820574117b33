"""End to end in imagination on MuJoCo: tiny runs, their logs and checkpoints, and resume after SIGKILL."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents.config import PolicyConfig, sb3_default_learner
from agents.coordinator import Coordinator, CoordinatorConfig, find_checkpoint
from agents.rng_state import rng_state, set_rng_state
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.schedule import ScheduleConfig
from imagined_env.training import TrainConfig
from imagined_env.world_model import WorldModel, WorldModelConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]
H = 5
TINY = CoordinatorConfig(
    prefill_steps=300, initial_world_model_steps=40, world_model_steps_per_real_step=0.2, policy_every=100,
    n_imagined_envs=16, n_sample_steps=3, eval_every=200, eval_episodes=1, eval_max_episode_steps=50,
    open_loop_states=4, checkpoint_every=200, normaliser_refit_every=200, refit_world_model_steps=7,
    device="cpu",
    world_model=WorldModelConfig(horizon=H, denoiser=DenoiserConfig(width=64, depth=2, time_dim=16),
                                 schedule=ScheduleConfig(n_steps=16)),
    train=TrainConfig(lr=1e-3, batch_size=32),
    learner=replace(sb3_default_learner("ppo"), n_epochs=2, batch_size=40,
                    policy=PolicyConfig(pi=(32, 32), vf=(32, 32), activation="relu", ortho_init=True)),
)
CHECKPOINT_FILES = {"learner.zip", "world_model.pt", "run_state.pt", "buffer.npz", "vec_normalize.npz",
                    "state.json"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs its tiny networks on one torch thread."""


class CountUpdates(BaseCallback):
    def __init__(self):
        super().__init__()
        self.coordinators = []

    def _on_step(self) -> bool:
        self.coordinators.append(self.locals["coordinator"].real_steps)
        return True


class RecordLearningRate(BaseCallback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def _on_step(self) -> bool:  # after the iteration's update: the rate that update used
        self.rates.append(self.model.policy.optimizer.param_groups[0]["lr"])
        return True


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_counters(coordinator: Coordinator, budget: int) -> None:
    config = coordinator.config
    n_updates = (budget - config.prefill_steps) // config.policy_every
    assert coordinator.real_steps == budget and coordinator.buffer.n_transitions == budget
    assert coordinator.policy_updates == n_updates
    assert coordinator.learner.num_timesteps == n_updates * config.n_imagined_envs * H
    refits = budget // config.normaliser_refit_every - config.prefill_steps // config.normaliser_refit_every
    expected_wm = (config.initial_world_model_steps + refits * config.refit_world_model_steps
                   + int(config.world_model_steps_per_real_step * (budget - config.prefill_steps)))
    assert coordinator.trainer.steps == expected_wm


def test_tiny_halfcheetah_run_writes_logs_and_checkpoint(tmp_path):
    counter = CountUpdates()
    coordinator = Coordinator(TINY, tmp_path, verbose=0).learn(600, callback=counter, progress_bar=False)
    assert_counters(coordinator, 600)
    assert counter.coordinators == [400, 500, 600]                        # once per iteration
    assert [row["real_steps"] for row in coordinator.history] == [400, 600]
    assert all(np.isfinite(row["mean_return"]) and row["open_loop_mse"] > 0 for row in coordinator.history)
    assert all(-1 <= row["return_difference_corr"] <= 1 for row in coordinator.history)

    progress = read_csv(tmp_path / "progress.csv")
    assert [float(r["time/real_steps"]) for r in progress] == [400, 500, 600]
    for key in ("eval/mean_reward", "eval/std_reward", "world_model/loss", "world_model/open_loop_mse",
                "world_model/return_difference_corr", "guidance/scale", "guidance/spread",
                "guidance/spread_first_step",
                "guidance/spread_last_step", "train/value_loss", "train/approx_kl"):
        assert progress[-1][key] != "", key
    assert len(read_csv(tmp_path / "evaluations.csv")) == 2
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert CoordinatorConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == TINY

    checkpoint = find_checkpoint(tmp_path)
    assert checkpoint == tmp_path / "checkpoint"
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES
    assert not list(tmp_path.glob(".checkpoint-*"))
    assert EpisodeBuffer.load(checkpoint / "buffer.npz").n_transitions == 600
    tensors = torch.load(checkpoint / "run_state.pt", weights_only=True)  # no pickled objects
    assert set(tensors) == {"trainer", "rng"}
    assert tensors["trainer"]["steps"] == coordinator.trainer.steps
    latest = WorldModel.load(tmp_path / "world_model.pt", device="cpu", env_id="HalfCheetah-v4")
    assert latest.guidance_scale == pytest.approx(coordinator.world_model.guidance_scale)
    mean, std = coordinator.evaluate(n_episodes=2)
    assert np.isfinite(mean) and std >= 0
    coordinator.close()

    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "format_version": 1}))
    with pytest.raises(ValueError, match="format 1, written by an older version"):
        Coordinator.resume(tmp_path)


def test_a_longer_budget_runs_the_same_first_steps(tmp_path):
    """What `merge --budget` relies on: a run's evaluations up to B real steps are a B-step run's."""
    recurrent = DenoiserConfig(kind="causal-recurrent", width=16, depth=1, time_dim=8)
    config = replace(TINY, world_model=replace(TINY.world_model, denoiser=recurrent, readout="rollout",
                                                scale_actions=False))
    short = Coordinator(config, tmp_path / "short", verbose=0).learn(600, progress_bar=False)
    long = Coordinator(config, tmp_path / "long", verbose=0).learn(800, progress_bar=False)
    drop_time = lambda rows: [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]
    assert [row["real_steps"] for row in short.history] == [400, 600]
    assert drop_time(short.history) == drop_time(long.history[:2]) and long.history[2]["real_steps"] == 800


def test_run_state_restores_the_global_random_generators():
    saved = rng_state()
    first = (random.random(), np.random.normal(size=3), torch.rand(3))
    set_rng_state(saved)
    again = (random.random(), np.random.normal(size=3), torch.rand(3))
    assert first[0] == again[0] and np.array_equal(first[1], again[1]) and torch.equal(first[2], again[2])


CHILD = """
import json, sys, time, torch
from stable_baselines3.common.callbacks import BaseCallback
from agents.coordinator import Coordinator, CoordinatorConfig
torch.set_num_threads(1)
class Slow(BaseCallback):  # widens the window in which the parent kills this run
    def _on_step(self):
        time.sleep(0.3)
        return True
config = CoordinatorConfig.from_dict(json.loads(open(sys.argv[2]).read()))
Coordinator(config, sys.argv[1], verbose=0).learn(int(sys.argv[3]), callback=Slow(), progress_bar=False)
"""


def start_child(run_dir: Path, config: CoordinatorConfig, budget: int) -> subprocess.Popen:
    config_file = run_dir.parent / "child_config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(config_file), str(budget)],
                            cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_after_first_checkpoint(child: subprocess.Popen, run_dir: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while find_checkpoint(run_dir) is None:
        if child.poll() is not None:
            log = child.stderr.read().decode()[-3000:]
            pytest.fail(f"the child run ended before its first checkpoint:\n{log}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    child.stderr.close()


def test_resume_after_sigkill_reaches_the_budget_with_counters_intact(tmp_path):
    run_dir, budget = tmp_path / "run", 900
    # target_update_kl 1e-12: the learning rate falls by 1.5 per update
    config = replace(TINY, checkpoint_every=100, eval_every=300, target_update_kl=1e-12)
    kill_after_first_checkpoint(start_child(run_dir, config, budget), run_dir)

    checkpoint = find_checkpoint(run_dir)
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES  # complete, whatever the kill hit
    saved = json.loads((checkpoint / "state.json").read_text())
    assert 400 <= saved["real_steps"] < budget and saved["budget"] == budget

    with pytest.raises(ValueError, match="another task"):
        Coordinator(replace(config, env_id="Hopper-v4"), run_dir)
    with pytest.raises(ValueError, match="not 'Hopper-v4'"):
        Coordinator.resume(run_dir, env_id="Hopper-v4")

    resumed = Coordinator.resume(run_dir, env_id="HalfCheetah-v4", verbose=0)
    assert resumed.real_steps == saved["real_steps"] and resumed.budget == budget
    assert resumed.world_model.guidance_scale == pytest.approx(saved["guidance_scale"])
    assert resumed.trainer.steps == saved["world_model_steps"]
    recorder = RecordLearningRate()
    resumed.learn(callback=recorder, progress_bar=False)                   # to the stored budget
    assert_counters(resumed, budget)
    assert recorder.rates[0] == pytest.approx(saved["learning_rate"])      # the adapted rate carried over
    assert recorder.rates[1] == pytest.approx(saved["learning_rate"] / 1.5)
    assert [row["real_steps"] for row in resumed.history] == [600, 900]
    steps = [float(r["time/real_steps"]) for r in read_csv(run_dir / "progress.csv")]
    assert steps == list(range(400, budget + 1, 100))                     # no rows of the killed tail twice
    assert json.loads((find_checkpoint(run_dir) / "state.json").read_text())["real_steps"] == budget
    resumed.close()


def test_tiny_hopper_run_with_terminations(tmp_path):
    config = replace(TINY, env_id="Hopper-v4", normalize=False, algo="a2c",
                     learner=sb3_default_learner("a2c"))
    coordinator = Coordinator(config, tmp_path, verbose=0).learn(500, progress_bar=False)
    assert_counters(coordinator, 500)
    episodes = coordinator.buffer.episodes
    assert sum(ep.terminated for ep in episodes) >= 3 and any(not ep.terminated for ep in episodes)
    assert {p.name for p in find_checkpoint(tmp_path).iterdir()} == CHECKPOINT_FILES - {"vec_normalize.npz"}
    assert np.isfinite(coordinator.history[-1]["mean_return"])
    coordinator.close()


def test_learning_rate_decay_and_collection_noise_reach_learner_and_buffer(tmp_path):
    config = replace(TINY, learner=replace(TINY.learner, learning_rate=1e-3), final_learning_rate=1e-4,
                     collection_noise_std=4.0, open_loop_states=0)
    recorder = RecordLearningRate()
    coordinator = Coordinator(config, tmp_path, verbose=0).learn(600, callback=recorder, progress_bar=False)
    # updates at 400, 500, 600 real steps; the first policy update is due at the prefill's end (300)
    assert recorder.rates == pytest.approx([1e-3 - 0.9e-3 * k / 3 for k in (1, 2, 3)])
    logged = [float(r["train/learning_rate"]) for r in read_csv(tmp_path / "progress.csv")]
    assert logged == pytest.approx(recorder.rates)
    # policy std ~1 plus noise 4: ~4.1 after the prefill; uniform prefill actions have std 0.58
    actions = np.concatenate([ep.actions for ep in coordinator.buffer.episodes])
    assert actions[:300].std() < 0.7 and actions[300:].std() > 3.0
    coordinator.close()


@pytest.mark.parametrize("target,factors", [(1e-12, [1, 1 / 1.5, 1 / 1.5 ** 2]),   # every update too large
                                            (1e12, [1, 1, 1])])                   # never above the initial
def test_learning_rate_follows_the_update_kl(tmp_path, target, factors):
    config = replace(TINY, learner=replace(TINY.learner, learning_rate=1e-3), target_update_kl=target,
                     open_loop_states=0)
    recorder = RecordLearningRate()
    coordinator = Coordinator(config, tmp_path, verbose=0).learn(600, callback=recorder, progress_bar=False)
    assert recorder.rates == pytest.approx([1e-3 * f for f in factors])
    saved = json.loads((find_checkpoint(tmp_path) / "state.json").read_text())
    assert saved["learning_rate"] == pytest.approx(1e-3 * factors[-1] * (1 / 1.5 if target < 1 else 1))
    coordinator.close()


def test_imagined_episodes_start_from_the_newest_real_states(tmp_path):
    config = replace(TINY, start_state_window=40, open_loop_states=0)
    coordinator = Coordinator(config, tmp_path, verbose=0).learn(500, progress_bar=False)
    starts, _ = coordinator._imagined.reset(seed=3)
    stored = coordinator.buffer.start_observations()  # 503 rows: episodes of 300 (prefill), 100, 100
    distance = np.abs(starts[:, None, :] - stored[None, :, :]).max(axis=-1)
    assert distance.min(axis=1).max() == 0.0  # every start is a stored real observation
    row = distance.argmin(axis=1)
    # the last update (at 500 steps) saw the first 402 rows (the newest episode was stored after it)
    assert row.min() >= 402 - 40 and row.max() < 402
    coordinator.close()
