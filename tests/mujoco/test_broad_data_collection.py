"""Broad real data on a MuJoCo task: the episode recorder, and a tiny collection of every part."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.broad_data import BroadDataConfig, EpisodeRecorder, RecordedEpisode, collect_broad_data
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, set_mujoco_state

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.filterwarnings("ignore:.*is out of date"),
    pytest.mark.filterwarnings("ignore:.*settotalmass"),
]


class Simulator(gym.Wrapper):
    """Below the recorder: what the simulator got (its control inputs) and gave back, step by step."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.controls: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.observations: list[np.ndarray] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.controls, self.rewards, self.observations = [], [], [obs]
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.controls.append(self.env.unwrapped.data.ctrl.copy())
        self.rewards.append(float(out[1]))
        self.observations.append(out[0])
        return out


def recorded_run(max_episode_steps: int | None, seed: int) -> tuple[list[RecordedEpisode], Simulator, list]:
    """One episode of seeded uniform random actions through EpisodeRecorder(Simulator(Hopper-v4))."""
    episodes: list[RecordedEpisode] = []
    sim = Simulator(gym.make("Hopper-v4", max_episode_steps=max_episode_steps))
    env = EpisodeRecorder(sim, episodes.append)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    ends = []
    while not ends:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            ends.append((terminated, truncated))
    return episodes, sim, ends


def assert_matches_the_simulator(episode: RecordedEpisode, sim: Simulator) -> None:
    assert episode.length == len(sim.controls) == len(episode.rewards)
    assert len(episode.observations) == len(episode.qpos) == len(episode.qvel) == episode.length + 1
    np.testing.assert_allclose(np.stack(episode.actions), np.stack(sim.controls), rtol=0, atol=1e-7)
    assert episode.rewards == sim.rewards
    np.testing.assert_array_equal(np.stack(episode.observations),
                                  np.stack(sim.observations).astype(np.float32))
    probe = gym.make("Hopper-v4")
    probe.reset(seed=123)
    for obs, qpos, qvel in zip(episode.observations, episode.qpos, episode.qvel):
        np.testing.assert_array_equal(set_mujoco_state(probe, qpos, qvel).astype(np.float32), obs)


def test_a_falling_hopper_episode_is_recorded_whole_and_terminated():
    episodes, sim, ends = recorded_run(None, seed=0)
    assert ends == [(True, False)] and len(episodes) == 1
    episode = episodes[0]
    assert episode.terminated is True and episode.length < 1000
    assert_matches_the_simulator(episode, sim)
    assert episode.episode_return == pytest.approx(sum(sim.rewards))


def test_a_time_limit_cut_is_not_a_termination():
    episodes, sim, ends = recorded_run(5, seed=0)
    assert ends == [(False, True)] and len(episodes) == 1
    assert episodes[0].terminated is False and episodes[0].length == 5
    assert_matches_the_simulator(episodes[0], sim)


def test_only_complete_episodes_reach_the_callback_and_each_once():
    episodes: list[RecordedEpisode] = []
    env = EpisodeRecorder(gym.make("Hopper-v4", max_episode_steps=4), episodes.append)
    env.reset(seed=0)
    env.step(np.zeros(3, np.float32))                    # abandoned by the next reset: not an episode
    for seed in (1, 2):
        env.reset(seed=seed)
        for _ in range(4):
            env.step(np.full(3, 0.1 * seed, np.float32))
    assert [e.length for e in episodes] == [4, 4]
    assert episodes[0] is not episodes[1]
    # the first episode is its own, not overwritten by the second one's steps
    np.testing.assert_array_equal(episodes[0].actions, np.full((4, 3), 0.1, np.float32))
    np.testing.assert_array_equal(episodes[1].actions, np.full((4, 3), 0.2, np.float32))
    probe = gym.make("Hopper-v4")
    probe.reset(seed=1)
    first = episodes[0]
    for action, obs, qpos, qvel in zip(first.actions, first.observations[1:], first.qpos[1:], first.qvel[1:]):
        np.testing.assert_array_equal(probe.step(action)[0].astype(np.float32), obs)
        np.testing.assert_array_equal(probe.unwrapped.data.qpos, qpos)
        np.testing.assert_array_equal(probe.unwrapped.data.qvel, qvel)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(3, np.float32))                # the last episode ended: a step needs a reset


def test_a_recorded_episode_goes_into_a_buffer_unchanged():
    episodes, _, _ = recorded_run(None, seed=1)
    env = gym.make("Hopper-v4")
    buffer = buffer_for_env(env, "Hopper-v4")
    episodes[0].add_to(buffer)
    stored, recorded = buffer.episodes[0], episodes[0]
    assert stored.terminated == recorded.terminated
    np.testing.assert_array_equal(stored.observations, np.stack(recorded.observations))
    np.testing.assert_array_equal(stored.actions, np.stack(recorded.actions))
    np.testing.assert_array_equal(stored.rewards, np.asarray(recorded.rewards, np.float32))
    np.testing.assert_array_equal(stored.qpos, np.stack(recorded.qpos))
    np.testing.assert_array_equal(stored.qvel, np.stack(recorded.qvel))


# ---- collect_broad_data -----------------------------------------------------------------------------
TINY = BroadDataConfig(random_episodes=1, ppo_steps=1024, ppo_kept_steps=500, final_noise_stds=(0.1, 0.3),
                       final_steps_per_noise=200, seed=0)
PARTS = ["uniform random", "RL Zoo PPO training (1024 steps, thinned)", "final PPO policy + N(0, 0.1^2)",
         "final PPO policy + N(0, 0.3^2)"]


def collected(config: BroadDataConfig) -> tuple[EpisodeBuffer, dict, list[str]]:
    logged: list[str] = []
    buffer, report = collect_broad_data("Hopper-v4", config, log=logged.append)
    return buffer, report.parts, list(report.lines())


def test_a_tiny_collection_reports_every_part_and_holds_exactly_it():
    buffer, parts, lines = collected(TINY)
    assert list(parts) == PARTS and len(lines) == len(PARTS)
    random_part, ppo, *finals = parts.values()
    assert random_part["episodes"] == 1
    assert ppo["episodes"] >= 2
    # whole episodes thinned to 500 steps: at most half an episode more (Hopper's episodes end by 1000)
    assert 250 <= ppo["transitions"] <= 500 + 500
    for final in finals:                                  # whole episodes only: a cut one is not recorded
        assert 0 < final["transitions"] <= 200 and final["episodes"] >= 1
    assert len(buffer) == sum(p["episodes"] for p in parts.values())
    assert buffer.n_transitions == sum(p["transitions"] for p in parts.values())
    assert buffer.env_id == "Hopper-v4"
    # the parts are stored in order: the first episode is the random one, its return as reported
    assert float(buffer.episodes[0].rewards.sum()) == pytest.approx(random_part["mean_return"], rel=1e-5)
    lengths = [e.length for e in buffer.episodes]
    assert lengths[0] == random_part["transitions"]
    n_ppo = int(ppo["episodes"])
    assert sum(lengths[1:1 + n_ppo]) == ppo["transitions"]
    returns = [float(e.rewards.sum()) for e in buffer.episodes[1:1 + n_ppo]]
    assert np.mean(returns) == pytest.approx(ppo["mean_return"], rel=1e-5)
    assert max(returns) == pytest.approx(ppo["max_return"], rel=1e-5)
    # every stored state reproduces its observation in the simulator
    probe = gym.make("Hopper-v4")
    probe.reset(seed=0)
    for episode in buffer.episodes[::7]:
        for obs, qpos, qvel in zip(episode.observations, episode.qpos, episode.qvel):
            np.testing.assert_array_equal(set_mujoco_state(probe, qpos, qvel).astype(np.float32), obs)
    # actions within the bounds: the simulator saw what was recorded
    assert np.abs(buffer.transitions().actions).max() <= 1.0

    again, parts_again, _ = collected(TINY)
    assert parts_again == parts
    assert [e.length for e in again.episodes] == lengths
    np.testing.assert_array_equal(again.observations(), buffer.observations())
    np.testing.assert_array_equal(again.transitions().actions, buffer.transitions().actions)


def test_parts_can_be_left_out_and_the_seed_matters():
    buffer, parts, _ = collected(BroadDataConfig(random_episodes=2, ppo_steps=0, final_noise_stds=(),
                                                 seed=1))
    assert list(parts) == ["uniform random", "RL Zoo PPO training (0 steps, thinned)"]
    assert parts["uniform random"]["episodes"] == 2 and len(buffer) == 2
    assert parts["RL Zoo PPO training (0 steps, thinned)"]["episodes"] == 0
    other, _, _ = collected(BroadDataConfig(random_episodes=2, ppo_steps=0, final_noise_stds=(), seed=2))
    assert not np.array_equal(other.episodes[0].actions[:5], buffer.episodes[0].actions[:5])


def test_quiet_actions_are_seeded_zero_mean_draws_of_each_width_recorded_as_the_simulator_ran_them():
    from agents.broad_data import collect_quiet_actions
    episodes, report = collect_quiet_actions("HalfCheetah-v4", (0.05, 0.2), 1000, seed=5)
    again, _ = collect_quiet_actions("HalfCheetah-v4", (0.05, 0.2), 1000, seed=5)
    assert [e.length for e in episodes] == [1000, 1000]         # one whole time-limited episode per width
    assert list(report.parts) == ["random actions N(0, 0.05^2)", "random actions N(0, 0.2^2)"]
    for episode, width in zip(episodes, (0.05, 0.2)):
        actions = np.stack(episode.actions)
        assert abs(actions.std() / width - 1) < 0.05 and abs(actions.mean()) < 0.02
        assert not episode.terminated
    for a, b in zip(episodes, again):
        np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))
        np.testing.assert_array_equal(np.stack(a.observations), np.stack(b.observations))
    other, _ = collect_quiet_actions("HalfCheetah-v4", (0.05,), 1000, seed=6)
    assert not np.array_equal(np.stack(other[0].actions), np.stack(episodes[0].actions))
    cut, report = collect_quiet_actions("HalfCheetah-v4", (0.05,), 1500, seed=5)
    assert [e.length for e in cut] == [1000, 500] and not cut[1].terminated     # the tail is kept, cut
    assert report.parts["random actions N(0, 0.05^2)"]["transitions"] == 1500


def test_sac_data_is_the_zoo_sacs_training_then_its_deterministic_policy_with_noise(monkeypatch):
    """With `algo="sac"` the learner recorded is SB3's SAC with the Zoo's settings and no normalisation
    (here learning after 100 steps instead of 10,000, so that it updates); with noise 0 the final part is
    exactly its deterministic action of each recorded observation."""
    import agents.broad_data as broad
    made = []

    class Spy(broad.SAC):
        def __init__(self, *args, **kwargs):
            made.append((self, dict(kwargs)))
            super().__init__(*args, **{**kwargs, "learning_starts": 100, "batch_size": 32})

    monkeypatch.setitem(broad.DATA_ALGOS, "sac", Spy)
    monkeypatch.setattr(broad, "ZOO_SAC_WARM_UP", 100)
    config = BroadDataConfig(random_episodes=1, algo="sac", ppo_steps=400, ppo_kept_steps=400,
                             final_noise_stds=(0.0,), final_steps_per_noise=600, seed=0)
    buffer, parts, _ = collected(config)
    assert list(parts) == ["uniform random", "RL Zoo SAC training (400 steps, thinned)",
                           "final SAC policy + N(0, 0^2)"]
    (model, kwargs), = made
    assert kwargs["learning_starts"] == 10_000 and model.num_timesteps == 400 and model._n_updates > 0
    assert not (model.get_env().norm_obs or model.get_env().norm_reward)
    assert parts["RL Zoo SAC training (400 steps, thinned)"]["episodes"] >= 1
    n_final = int(parts["final SAC policy + N(0, 0^2)"]["episodes"])
    assert n_final >= 1
    for episode in buffer.episodes[-n_final:]:
        expected, _ = model.predict(episode.observations[:-1], deterministic=True)
        np.testing.assert_allclose(episode.actions, expected, atol=1e-6)
    again, parts_again, _ = collected(config)
    assert parts_again == parts
    np.testing.assert_array_equal(again.transitions().actions, buffer.transitions().actions)


def test_an_episode_longer_than_the_recorders_first_arrays_is_recorded_whole():
    """Without a time limit the recorder starts with room for 1000 steps and grows: a 1500-step
    HalfCheetah episode (it never terminates) is recorded step for step as the simulator ran it."""
    episodes: list[RecordedEpisode] = []
    sim = Simulator(gym.make("HalfCheetah-v4").env)                      # its TimeLimit removed
    env = EpisodeRecorder(sim, episodes.append)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(1500):
        env.step(rng.uniform(-1, 1, 6).astype(np.float32))
    env.flush()
    assert [e.length for e in episodes] == [1500] and not episodes[0].terminated
    episode = episodes[0]
    np.testing.assert_allclose(np.stack(episode.actions), np.stack(sim.controls), rtol=0, atol=1e-7)
    assert episode.rewards == sim.rewards
    np.testing.assert_array_equal(np.stack(episode.observations),
                                  np.stack(sim.observations).astype(np.float32))
    assert len(episode.qpos) == len(episode.qvel) == 1501
    np.testing.assert_array_equal(episode.qpos[-1], sim.unwrapped.data.qpos)
