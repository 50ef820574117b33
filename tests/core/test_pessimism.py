"""`pessimism=`: on by default, the imagined env keeps its model's disagreement penalty and limit; off, it
imagines without either, leaving the caller's model as it was; the switch reaches the env from
`gym.make_vec`, `gym.make` and the imagination learners' `env_kwargs`."""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

import imagined_env  # noqa: F401  (registers the Imagined-* ids)
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.normaliser import Normaliser
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import EnvSpec, WorldModel
from tests.conftest import LINEAR_SPEC, TINY_CONFIG, H, linear_buffer

PENALTY = 0.5
N_ENVS = 6


def pessimistic_model(spec: EnvSpec = LINEAR_SPEC, normaliser: Normaliser | None = None,
                      limit: float | None = None) -> WorldModel:
    """An untrained 2-member ensemble (its members disagree) with a penalty; no predicted terminations, so
    that every env's first episode is its first plan."""
    config = dataclasses.replace(TINY_CONFIG, readout="mean", scale_actions=False, n_members=2,
                                 disagreement_penalty=PENALTY, disagreement_limit=limit,
                                 terminal_threshold=1e9)
    torch.manual_seed(0)
    return WorldModel(spec, config, normaliser or Normaliser.fit(linear_buffer(5, 10), -1.0, 1.0), "cpu")


def first_episode(env: ImaginedVectorEnv
                  ) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Reset with seed 0 and follow the plans for H steps: (first observations, the generator's state before
    the one generation, rewards [H, N], terminations [H, N], truncations [H, N])."""
    obs, _ = env.reset(seed=0)
    state = env.replay.generator.get_state()
    rewards, terminations, truncations = [], [], []
    for _ in range(H):
        _, reward, terminated, truncated, _ = env.step(env.planned_actions())
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
    return obs, state, np.array(rewards), np.array(terminations), np.array(truncations)


def imagination(model: WorldModel, obs: np.ndarray, state: torch.Tensor):
    generator = torch.Generator()
    generator.set_state(state)
    return model.imagine(obs, generator=generator)


def test_rewards_drop_by_the_penalty_times_the_disagreement_only_with_pessimism():
    model = pessimistic_model()
    config = model.config
    starts = linear_buffer(5, 10)
    on = ImaginedVectorEnv(model, N_ENVS, start_states=starts)
    off = ImaginedVectorEnv(model, N_ENVS, start_states=starts, pessimism=False)
    assert on.model is model and off.model is not model
    obs_on, state_on, rewards_on, _, _ = first_episode(on)
    obs_off, state_off, rewards_off, _, _ = first_episode(off)
    np.testing.assert_array_equal(obs_on, obs_off)
    assert torch.equal(state_on, state_off)
    # hand check: the no-penalty imagination of the same starts and generator, from a model of its own
    plain = WorldModel(LINEAR_SPEC, dataclasses.replace(config, disagreement_penalty=0.0), model.normaliser,
                       "cpu")
    plain.ema.load_state_dict(model.ema.state_dict())
    reference = imagination(plain, obs_off, state_off)
    u = reference.disagreement.numpy().T                                     # [H, N]
    assert (u > 0.01).all()
    np.testing.assert_allclose(rewards_off, reference.rewards.numpy().T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rewards_on, rewards_off - PENALTY * u, rtol=1e-6, atol=1e-6)
    assert model.config == config                                             # the caller's model untouched


@pytest.mark.parametrize("unsure_ends", ["truncate", "terminate"])
def test_the_limit_ends_episodes_only_with_pessimism_as_unsure_ends_says(unsure_ends):
    model = pessimistic_model()
    starts = linear_buffer(5, 10)
    probe = ImaginedVectorEnv(model, N_ENVS, start_states=starts)
    obs, state, _, _, _ = first_episode(probe)
    u0 = imagination(model, obs, state).disagreement[:, 0].numpy()
    limit = float(np.median(u0))
    model.config = dataclasses.replace(model.config, disagreement_limit=limit, unsure_ends=unsure_ends)
    on = ImaginedVectorEnv(model, N_ENVS, start_states=starts)
    off = ImaginedVectorEnv(model, N_ENVS, start_states=starts, pessimism=False)
    _, _, _, terminated_on, truncated_on = first_episode(on)
    _, _, _, terminated_off, truncated_off = first_episode(off)
    truncate = unsure_ends == "truncate"
    ended, other = (truncated_on, terminated_on) if truncate else (terminated_on, truncated_on)
    np.testing.assert_array_equal(ended[0], u0 > limit)
    assert 0 < ended[0].sum() < N_ENVS and not other[0].any()
    assert not terminated_off.any() and not truncated_off[:-1].any()   # one plan: the time limit at H only
    assert model.config.disagreement_limit == limit
    # what SB3 sees: a truncated end is bootstrapped from the critic (TimeLimit.truncated), a terminated not
    sb3 = ImaginedSB3VecEnv(ImaginedVectorEnv(model, N_ENVS, start_states=starts))
    sb3.seed(0)
    sb3.reset()
    _, _, dones, infos = sb3.step(sb3.imagined.planned_actions())
    np.testing.assert_array_equal(dones, u0 > limit)
    assert [infos[i]["TimeLimit.truncated"] for i in np.flatnonzero(dones)] == [truncate] * int(dones.sum())


def test_unsure_ends_must_be_known():
    with pytest.raises(ValueError, match="unsure_ends must be one of terminate, truncate, got 'stop'"):
        dataclasses.replace(TINY_CONFIG, unsure_ends="stop")


def test_a_model_without_pessimism_is_used_as_it_is():
    model = WorldModel(LINEAR_SPEC, TINY_CONFIG, Normaliser.fit(linear_buffer(5, 10), -1.0, 1.0), "cpu")
    assert ImaginedVectorEnv(model, 2, start_states=linear_buffer(5, 10), pessimism=False).model is model


@pytest.mark.parametrize("value", ["no", 0, None, np.bool_(False)])
def test_pessimism_must_be_a_bool(value):
    with pytest.raises(ValueError, match=f"pessimism must be True or False, got {value!r}"):
        ImaginedVectorEnv(pessimistic_model(), 2, start_states=linear_buffer(5, 10), pessimism=value)


HOPPER = EnvSpec("Hopper-v4", 11, 3, (-1.0,) * 3, (1.0,) * 3)


@pytest.fixture(scope="module")
def hopper_files(tmp_path_factory):
    """A tiny pessimistic model of Hopper-v4's shape (compact file) and a start_states.npy."""
    rng = np.random.default_rng(0)
    buffer = EpisodeBuffer(11, 3, 1, 1, env_id="Hopper-v4")
    for _ in range(3):
        buffer.add_episode(rng.normal(size=(9, 11)).astype(np.float32), rng.uniform(-1, 1, (8, 3)),
                           rng.normal(size=8).astype(np.float32), False, np.zeros((9, 1)), np.zeros((9, 1)))
    folder = tmp_path_factory.mktemp("hopper")
    pessimistic_model(HOPPER, Normaliser.fit(buffer, -1.0, 1.0), limit=3.0).save(folder / "world_model.pt",
                                                                                  compact=True)
    np.save(folder / "start_states.npy", buffer.start_observations())
    return {"world_model": folder / "world_model.pt", "start_states": folder / "start_states.npy"}


def switched_off(model: WorldModel) -> bool:
    config = model.config
    return config.disagreement_penalty == 0 and config.disagreement_limit is None


def test_the_switch_passes_through_make_vec_make_and_the_learners(hopper_files):
    from agents import ImaginationPPO

    venv = gym.make_vec("Imagined-Hopper-v4", num_envs=8, pessimism=False, **hopper_files)
    assert switched_off(venv.unwrapped.model)
    default = gym.make_vec("Imagined-Hopper-v4", num_envs=8, **hopper_files).unwrapped.model.config
    assert (default.disagreement_penalty, default.disagreement_limit) == (PENALTY, 3.0)
    single = gym.make("Imagined-Hopper-v5", pessimism=False, **hopper_files)   # one model serves v4 and v5
    assert switched_off(single.unwrapped.vec.model)
    single.reset(seed=0)
    learner = ImaginationPPO("MlpPolicy", "Hopper-v4", n_envs=8, batch_size=8 * H,
                             env_kwargs={"pessimism": False, **hopper_files})
    assert switched_off(learner.imagined.model)
    assert not switched_off(ImaginationPPO("MlpPolicy", "Hopper-v4", n_envs=8, batch_size=8 * H,
                                           env_kwargs=hopper_files).imagined.model)
    with pytest.raises(ValueError, match="pessimism must be True or False, got 'off'"):
        gym.make_vec("Imagined-Hopper-v4", num_envs=8, pessimism="off", **hopper_files)
