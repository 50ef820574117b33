"""The tasks' termination rules against the MuJoCo simulator itself, and a world model that uses them."""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from imagined_env.data.normaliser import Normaliser
from imagined_env.pretrained import pretrained_paths
from imagined_env.task_terminations import termination_rule
from imagined_env.world_model import EnvSpec, WorldModel, WorldModelConfig
from tests.conftest import TINY_CONFIG


def simulated(env_id: str, n_steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(next observations [n, obs], terminated [n]) of uniform random actions, episodes restarted."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    observations, ended = [], []
    for _ in range(n_steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(obs)
        ended.append(terminated)
        if terminated or truncated:
            env.reset()
    env.close()
    return np.array(observations, np.float32), np.array(ended)


@pytest.mark.parametrize("env_id", ["Hopper-v4", "Hopper-v5", "Walker2d-v4", "Walker2d-v5"])
def test_the_rule_of_an_observation_says_what_the_simulator_says(env_id):
    observations, terminated = simulated(env_id, 1500, seed=0)
    rule = termination_rule(env_id, observations.shape[1])
    assert rule is not None
    assert 20 <= terminated.sum() < len(terminated)                # both outcomes occur, many times
    np.testing.assert_array_equal(rule(torch.as_tensor(observations)).numpy(), terminated)


@pytest.mark.parametrize("env_id,obs_dim", [("HalfCheetah-v4", 17), ("Hopper-v4", 12), ("Hopper-v3", 11),
                                            ("Walker2d-v5", 11), ("Linear-v0", 3)])
def test_tasks_without_a_known_rule_or_with_other_observations_get_none(env_id, obs_dim):
    assert termination_rule(env_id, obs_dim) is None


def hopper_model(terminations: str) -> WorldModel:
    spec = EnvSpec("Hopper-v4", 11, 3, (-1.0,) * 3, (1.0,) * 3)
    normaliser = Normaliser(obs_mean=np.array([1.2, 0.0, *[0.0] * 9], np.float32),
                            obs_std=np.array([0.3, 0.3, *[1.0] * 9], np.float32),
                            action_mean=np.zeros(3, np.float32), action_std=np.ones(3, np.float32),
                            reward_mean=np.zeros(1, np.float32), reward_std=np.ones(1, np.float32),
                            terminal_mean=np.zeros(1, np.float32), terminal_std=np.ones(1, np.float32))
    config = dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False,
                                 condition_on_last_action=False, terminations=terminations)
    torch.manual_seed(0)
    return WorldModel(spec, config, normaliser, "cpu")


def test_a_model_with_task_terminations_also_ends_where_its_imagined_observations_are_unhealthy():
    task, learned = hopper_model("task"), hopper_model("learned")
    learned.ema.load_state_dict(task.ema.state_dict())
    s0 = np.zeros((64, 11), np.float32)
    s0[:, 0] = 1.25
    actions = np.random.default_rng(0).uniform(-1, 1, (64, task.horizon, 3)).astype(np.float32)
    out_task, out_learned = task.imagine(s0, actions=actions), learned.imagine(s0, actions=actions)
    torch.testing.assert_close(out_task.observations, out_learned.observations)
    nxt = out_task.observations[:, 1:].numpy()
    # reference: Gymnasium's healthy ranges for Hopper, written out on the observation entries
    healthy = (nxt[..., 0] > 0.7) & (np.abs(nxt[..., 1]) < 0.2) & (np.abs(nxt[..., 1:]) < 100).all(-1)
    assert healthy.any() and (~healthy).any()
    learned_flag = out_learned.terminations.numpy()
    assert (~healthy & ~learned_flag).any()                        # the rule adds ends the flag misses
    np.testing.assert_array_equal(out_task.terminations.numpy(), learned_flag | ~healthy)


def test_terminations_are_saved_and_files_without_them_read_the_learned_flag(tmp_path):
    model = hopper_model("task")
    model.save(tmp_path / "wm.pt")
    assert WorldModel.load(tmp_path / "wm.pt", device="cpu").config.terminations == "task"
    stored = model.config.to_dict()
    del stored["terminations"]
    assert WorldModelConfig.from_dict(stored).terminations == "learned"
    with pytest.raises(ValueError, match="terminations must be one of learned, task, got 'rule'"):
        WorldModelConfig(terminations="rule")


@pytest.mark.parametrize("env_id", ["HalfCheetah-v4", "Hopper-v4", "Hopper-v5", "Walker2d-v4", "Walker2d-v5"])
def test_the_shipped_models_end_by_the_task_rule_where_the_task_has_one(env_id):
    model_file, _ = pretrained_paths(env_id)
    model = WorldModel.load(model_file, device="cpu", env_id=env_id)
    assert model.config.terminations == "task"
    has_rule = termination_rule(env_id, model.spec.obs_dim) is not None
    assert has_rule == (not env_id.startswith("HalfCheetah"))     # HalfCheetah: the learned flag alone
