"""Broad real data for a world model that a learner will exploit: episodes of many skill levels.

A model trained on one policy's data is only right near that policy's states; a learner training in the
frozen model leaves them and is rewarded for the model's errors. So the data mixes:
1. uniform random actions;
2. every skill level of a learner that improves on the real task: RL-Zoo-tuned PPO (with its
   VecNormalize) or SAC trained from scratch, each of its episodes recorded with the exploration noise of
   its stochastic policy (SAC's first 10,000 steps: uniform random actions), then thinned evenly over its
   training steps;
3. the final policy's deterministic action plus Gaussian noise of several widths, around the best states
   seen.
`collect_quiet_actions` adds, for either source of a build, zero-mean Gaussian actions of small widths.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.real_evaluation import make_quietly
from agents.zoo import ZOO_SAC, zoo_settings
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, mujoco_state

DATA_ALGOS = {"ppo": PPO, "sac": SAC}
"""Learners whose training `collect_broad_data` can record."""
ZOO_SAC_WARM_UP = min(settings["learning_starts"] for settings in ZOO_SAC.values())
"""Steps of uniform random actions before the Zoo's SAC learns (the same on every task)."""


@dataclass(frozen=True)
class BroadDataConfig:
    """How much of each kind of data to collect (real steps)."""

    random_episodes: int = 10
    """Episodes of uniform random actions."""
    algo: str = "ppo"
    """The RL-Zoo-tuned learner whose training is recorded: "ppo" or "sac". SAC learns to hop in fewer real
    steps (on Hopper PPO's training can stop at standing still, so its data holds no hops), but takes a
    gradient step per real step (slower on CPU) and acts uniformly at random for its first 10,000."""
    ppo_steps: int = 300_000
    """Real steps of the learner's training (`algo`, PPO by default), all recorded, then thinned to
    `ppo_kept_steps`."""
    ppo_kept_steps: int = 150_000
    """Transitions of the learner's training episodes kept, whole episodes spread evenly over its
    training."""
    final_noise_stds: tuple[float, ...] = (0.1, 0.3)
    """Widths of the Gaussian noise added to the final policy's deterministic action (policy units)."""
    final_steps_per_noise: int = 10_000
    """Real steps of the final policy at each noise width."""
    seed: int = 0
    """Seeds the random actions, the learner (`algo`) and the noise of the final policy; with either
    source, also the quiet actions, the ensemble's fit and the windows its disagreement limit is calibrated
    on."""

    def __post_init__(self) -> None:
        counts = {"random_episodes": self.random_episodes, "ppo_steps": self.ppo_steps,
                  "ppo_kept_steps": self.ppo_kept_steps, "final_steps_per_noise": self.final_steps_per_noise,
                  "seed": self.seed}
        for name, value in counts.items():
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.algo not in DATA_ALGOS:
            raise ValueError(f"algo must be one of {', '.join(DATA_ALGOS)}, got {self.algo!r}")
        stds = self.final_noise_stds
        if self.algo == "sac" and self.ppo_steps <= ZOO_SAC_WARM_UP and (self.ppo_steps or stds):
            raise ValueError(f"ppo_steps must exceed SAC's {ZOO_SAC_WARM_UP} steps of uniform random "
                             f"actions, or its data and final policy are untrained; got {self.ppo_steps}")
        if not (isinstance(stds, tuple)
                and all(isinstance(s, (int, float)) and 0 <= s < float("inf") for s in stds)):
            raise ValueError(f"final_noise_stds must be a tuple of finite numbers >= 0, got {stds!r}")


@dataclass
class RecordedEpisode:
    """One real episode as the simulator saw it (actions clipped to the bounds)."""

    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    qpos: list[np.ndarray] = field(default_factory=list)
    qvel: list[np.ndarray] = field(default_factory=list)
    terminated: bool = False

    def add_to(self, buffer: EpisodeBuffer) -> None:
        buffer.add_episode(np.stack(self.observations), np.stack(self.actions), np.asarray(self.rewards),
                           self.terminated, np.stack(self.qpos), np.stack(self.qvel))

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))


class EpisodeRecorder(gym.Wrapper):
    """Records every complete episode of the env it wraps, with simulator states, for `on_episode`.

    Steps are written into arrays kept for the recorder's life and copied out once per episode: storing
    small arrays at every step, between a learner's updates, fragmented the heap until a 200k-step SAC
    run on Walker2d grew by about 0.1 MB per step."""

    def __init__(self, env: gym.Env, on_episode: Callable[[RecordedEpisode], None]):
        super().__init__(env)
        self.on_episode = on_episode
        self._n: int | None = None       # transitions of the episode under way; None: no episode
        self._arrays: dict[str, np.ndarray] = {}

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._n = 0
        self._record_state(0, obs)
        return obs, info

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._n is None:
            raise RuntimeError("step() before reset()")
        n = self._n
        self._fit(n + 2)
        self._arrays["actions"][n] = action
        self._arrays["rewards"][n] = reward
        self._record_state(n + 1, obs)
        self._n = n + 1
        if terminated or truncated:
            self._hand_over(bool(terminated))
        return obs, reward, terminated, truncated, info

    def flush(self) -> None:
        """Hands over the episode under way, cut short (not terminated), if it has a transition."""
        if self._n:
            self._hand_over(False)
        self._n = None

    def _hand_over(self, terminated: bool) -> None:
        n, a = self._n, self._arrays
        assert n is not None
        self._n = None
        self.on_episode(RecordedEpisode(
            observations=list(a["observations"][:n + 1].copy()), actions=list(a["actions"][:n].copy()),
            rewards=a["rewards"][:n].tolist(), qpos=list(a["qpos"][:n + 1].copy()),
            qvel=list(a["qvel"][:n + 1].copy()), terminated=terminated))

    def _record_state(self, row: int, obs: np.ndarray) -> None:
        qpos, qvel = mujoco_state(self.env)
        if not self._arrays:
            rows = (self.spec.max_episode_steps if self.spec and self.spec.max_episode_steps else 1000) + 1
            action_shape = cast(gym.spaces.Box, self.action_space).shape
            self._arrays = {"observations": np.zeros((rows, *np.shape(obs)), np.float32),
                            "actions": np.zeros((rows, *action_shape), np.float32),
                            "rewards": np.zeros(rows, np.float64),
                            "qpos": np.zeros((rows, *qpos.shape), qpos.dtype),
                            "qvel": np.zeros((rows, *qvel.shape), qvel.dtype)}
        self._fit(row + 1)
        self._arrays["observations"][row] = obs
        self._arrays["qpos"][row] = qpos
        self._arrays["qvel"][row] = qvel

    def _fit(self, rows: int) -> None:
        """Doubles the arrays until they hold `rows` rows (episodes longer than the first allocation: an env
        without a time limit)."""
        while len(self._arrays["rewards"]) < rows:
            self._arrays = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self._arrays.items()}


@dataclass
class DataReport:
    """What each part of the data holds: episodes, transitions and mean return."""

    parts: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, name: str, episodes: list[RecordedEpisode]) -> None:
        returns = [e.episode_return for e in episodes]
        self.parts[name] = {"episodes": len(episodes), "transitions": sum(e.length for e in episodes),
                            "mean_return": float(np.mean(returns)) if returns else float("nan"),
                            "max_return": float(np.max(returns)) if returns else float("nan")}

    def lines(self) -> Iterator[str]:
        for name, p in self.parts.items():
            yield (f"{name}: {p['episodes']:.0f} episodes, {p['transitions']:.0f} transitions, "
                   f"return mean {p['mean_return']:.1f}, max {p['max_return']:.1f}")


def thin_evenly(episodes: list[RecordedEpisode], keep_steps: int) -> list[RecordedEpisode]:
    """Whole episodes, in order, spread evenly over the steps of the sequence (not over episodes: early
    episodes of a falling robot are short and many). With f = keep_steps / all steps, the kept steps of
    every prefix of the sequence are within half the longest episode of f times its steps; so in all they
    are at most `keep_steps` plus half the longest episode. Under budget, every episode is kept."""
    total = sum(e.length for e in episodes)
    if total <= keep_steps:
        return list(episodes)
    fraction, seen, kept_steps, kept = keep_steps / total, 0, 0, []
    for episode in episodes:
        seen += episode.length
        if kept_steps + episode.length <= fraction * seen + 0.5 * episode.length:
            kept.append(episode)
            kept_steps += episode.length
    return kept


class _Progress(BaseCallback):
    def __init__(self, report: Callable[[int], None]):
        super().__init__()
        self.report = report

    def _on_step(self) -> bool:
        if self.num_timesteps % 10_000 == 0:
            self.report(self.num_timesteps)
        return True


def collect_broad_data(env_id: str, config: BroadDataConfig, log: Callable[[str], None] = print
                       ) -> tuple[EpisodeBuffer, DataReport]:
    """Real episodes of `env_id` at every skill level (module docstring), in one buffer."""
    report, buffer = DataReport(), None
    rng = np.random.default_rng(config.seed)

    def record(into: list[RecordedEpisode]) -> Callable[[], gym.Env]:
        return lambda: Monitor(EpisodeRecorder(make_quietly(env_id), into.append))

    random_episodes: list[RecordedEpisode] = []
    env = record(random_episodes)()
    buffer = buffer_for_env(env, env_id)
    env.action_space.seed(config.seed)
    for i in range(config.random_episodes):
        env.reset(seed=config.seed + i)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    env.close()
    report.add("uniform random", random_episodes)

    training_episodes: list[RecordedEpisode] = []
    name = config.algo.upper()
    settings = zoo_settings(config.algo, env_id)
    # SAC's Zoo settings normalise nothing, which makes this wrapper pass observations through unchanged
    venv = VecNormalize(DummyVecEnv([record(training_episodes)]), norm_obs=settings.norm_obs,
                        norm_reward=settings.norm_reward, gamma=settings.gamma)
    venv.seed(config.seed)
    model = DATA_ALGOS[config.algo]("MlpPolicy", venv, seed=config.seed, device="cpu", verbose=0,
                                    **settings.kwargs)
    if config.ppo_steps:
        def progress(n: int) -> None:
            recent = [e.episode_return for e in training_episodes[-5:]] or [float("nan")]
            log(f"{name} {n}/{config.ppo_steps} real steps, last returns {np.mean(recent):.0f}")
        model.learn(config.ppo_steps, callback=_Progress(progress))
    kept = thin_evenly(training_episodes, config.ppo_kept_steps)
    report.add(f"RL Zoo {name} training ({config.ppo_steps} steps, thinned)", kept)
    venv.training = False

    finals: list[RecordedEpisode] = []
    for std in config.final_noise_stds:
        noisy: list[RecordedEpisode] = []
        env = record(noisy)()
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        action_space = cast(gym.spaces.Box, env.action_space)
        low, high = action_space.low, action_space.high
        for _ in range(config.final_steps_per_noise):
            mean, _ = model.predict(venv.normalize_obs(obs[None]), deterministic=True)
            action = np.clip(mean[0] + std * rng.standard_normal(mean.shape[1]), low, high)
            obs, _, terminated, truncated, _ = env.step(action.astype(np.float32))
            if terminated or truncated:
                obs, _ = env.reset()
        env.close()
        report.add(f"final {name} policy + N(0, {std:g}^2)", noisy)
        finals.extend(noisy)
    venv.close()
    for episode in [*random_episodes, *kept, *finals]:
        episode.add_to(buffer)
    return buffer, report


def collect_quiet_actions(env_id: str, stds: tuple[float, ...], steps_per_std: int, seed: int
                          ) -> tuple[list[RecordedEpisode], DataReport]:
    """Real episodes of zero-mean Gaussian actions N(0, std^2) (clipped to the action space),
    `steps_per_std` real steps at each width, all kept (the last episode cut short): the first actions of
    a learner whose policy starts near-deterministic, which neither uniform random actions nor a trained
    policy's data cover."""
    report, episodes = DataReport(), []
    rng = np.random.default_rng(seed)
    for std in stds:
        reset_seed = int(rng.integers(2**31))

        def act(_obs: np.ndarray, space: gym.spaces.Box, std: float = std) -> np.ndarray:
            return np.clip(std * rng.standard_normal(space.shape), space.low, space.high).astype(np.float32)

        part = record_steps(env_id, act, steps_per_std, reset_seed)
        report.add(f"random actions N(0, {std:g}^2)", part)
        episodes.extend(part)
    return episodes, report


def record_steps(env_id: str, act: Callable[[np.ndarray, gym.spaces.Box], np.ndarray], steps: int,
                 reset_seed: int) -> list[RecordedEpisode]:
    """`steps` real steps of `env_id` with the actions `act(observation, action space)`, every episode
    recorded (the first reset with `reset_seed`, the last episode cut short)."""
    episodes: list[RecordedEpisode] = []
    env = EpisodeRecorder(make_quietly(env_id), episodes.append)
    try:
        space = cast(gym.spaces.Box, env.action_space)
        obs, _ = env.reset(seed=reset_seed)
        for _ in range(steps):
            obs, _, terminated, truncated, _ = env.step(act(obs, space))
            if terminated or truncated:
                obs, _ = env.reset()
        env.flush()
    finally:
        env.close()
    return episodes
