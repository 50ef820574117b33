"""Training in imagination end to end: real data -> world model -> imagined on-policy updates -> real data.

One `Coordinator` owns one run folder. Its loop (shared/polygrad.md section 5): a uniform-random
prefill, the normaliser and an initial world-model fit, then repeatedly: `policy_every` real steps
with the current stochastic policy, world-model gradient steps at the configured ratio, one policy
update on imagined data (one rollout of `n_imagined_envs` x H guided steps + the learner's train),
and, on their schedules, a normaliser refit, an evaluation on the real task and a checkpoint.

Run folder: config.json; progress.csv and TensorBoard events (SB3 logger, one row per policy update,
x-axis = real steps); evaluations.csv (one row per evaluation); world_model.pt (latest, loadable by
`ImaginedVectorEnv(world_model=...)`); checkpoint/ (learner.zip, world_model.pt, trainer.pt,
buffer.npz, vec_normalize.pkl when used, state.json), replaced atomically.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import HumanOutputFormat
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import ConstantSchedule, set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from tqdm.auto import tqdm

from agents.config import (
    ACTIVATIONS,
    IMAGINATION_LEARNERS,
    SUPPORTED_TASKS,
    CoordinatorConfig,
    _learner_kwargs,
)
from agents.presets import _PRESETS
from agents.real_evaluation import evaluate_real
from agents.run_files import (
    check_writable,
    find_checkpoint,
    make_logger,
    new_checkpoint_dir,
    read_state,
    rng_states,
    set_rng_states,
    swap_in,
    write_rows,
    write_state,
)
from agents.sb3_guidance import sb3_guide
from agents.sb3_sampling import sb3_sampler
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import RealCollector, buffer_for_env
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.guidance import row_spreads, standardised_spread
from imagined_env.evaluation import ActionSensitivity, OpenLoopError, action_sensitivity, open_loop_error
from imagined_env.replay import ReplayConfig
from imagined_env.training import WorldModelTrainer, spec_from_env
from imagined_env.utils import atomic_path
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import WorldModel

__all__ = ["ACTIVATIONS", "IMAGINATION_LEARNERS", "SUPPORTED_TASKS", "_PRESETS", "Coordinator",
           "CoordinatorConfig", "_learner_kwargs"]

MaybeCallback = BaseCallback | list[BaseCallback] | None


class Coordinator:
    """Runs `CoordinatorConfig` in `run_dir`: `learn(budget)`, `resume(run_dir)`, `evaluate()`.

    Before `learn` has prefilled, `world_model`, `trainer` and `learner` are None. Every input error
    (task, run_dir, budget, a foreign checkpoint) raises ValueError before anything is trained.
    """

    def __init__(self, config: CoordinatorConfig, run_dir: str | os.PathLike, *, verbose: int = 1):
        check_writable(Path(run_dir))
        existing = find_checkpoint(run_dir)
        if existing is not None:
            raise ValueError(_existing_checkpoint_message(Path(run_dir), read_state(existing), config.env_id))
        self._open(config, Path(run_dir), verbose, keep_progress_until=None)
        set_random_seed(config.seed)
        self.buffer = buffer_for_env(self._real_env, config.env_id)
        self.collector = RealCollector(self._real_env, self.buffer, seed=config.seed)

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, *, env_id: str | None = None,
               verbose: int = 1) -> Coordinator:
        """Continue the run of the last checkpoint in `run_dir`; `env_id`, when given, must be its task.

        The real episode in progress at the checkpoint is not restored: collection restarts with a reset.
        """
        check_writable(Path(run_dir))
        checkpoint = find_checkpoint(run_dir)
        if checkpoint is None:
            raise ValueError(f"no checkpoint in {run_dir}; start a run with Coordinator(config, run_dir)")
        state = read_state(checkpoint)
        config = CoordinatorConfig.from_dict(state["config"])
        if env_id is not None and env_id != config.env_id:
            raise ValueError(f"the checkpoint in {run_dir} is of task {config.env_id!r}, not {env_id!r}")
        coordinator = cls.__new__(cls)
        coordinator._open(config, Path(run_dir), verbose, keep_progress_until=state["real_steps"])
        coordinator._restore(checkpoint, state)
        return coordinator

    # ---- public ------------------------------------------------------------------------
    def learn(self, total_real_steps: int | None = None, callback: MaybeCallback = None,
              progress_bar: bool = True) -> Coordinator:
        """Train until `total_real_steps` real steps in all (None: the budget of the resumed run).

        `callback`: SB3 callbacks, bound to the learner; `on_step` runs once per loop iteration (every
        `policy_every` real steps, after that iteration's policy update) and returning False stops the
        run early (it is checkpointed). Their `locals["coordinator"]` is this object.
        """
        self.budget = self._checked_budget(total_real_steps)
        self._progress = progress_bar
        with tqdm(total=self.budget, initial=self.real_steps, unit="step", disable=not progress_bar,
                  desc=f"{self.config.env_id} real steps") as bar:
            if self.learner is None:
                self._start()
                bar.update(self.real_steps)
            hooks = self._init_callback(callback)
            while self.real_steps < self.budget:
                n = min(self.config.policy_every, self.budget - self.real_steps)
                self._iteration(n)
                bar.update(n)
                if not hooks.on_step():
                    break
            hooks.on_training_end()
        self._finish()
        return self

    def evaluate(self, n_episodes: int | None = None) -> tuple[float, float]:
        """Mean and std of the return over `n_episodes` (default `eval_episodes`) real episodes, with
        deterministic actions and the current (frozen) VecNormalize statistics."""
        if self.learner is None:
            raise RuntimeError("nothing to evaluate yet: learn() builds the learner after the prefill")
        cfg = self.config
        return evaluate_real(self.learner, cfg.env_id, n_episodes or cfg.eval_episodes, cfg.seed + self.real_steps,
                             self._vec_normalize, cfg.eval_max_episode_steps)

    def save_checkpoint(self) -> Path:
        """Write everything needed to resume into run_dir/checkpoint, atomically; returns its path."""
        self.collector.flush()
        tmp = new_checkpoint_dir(self.run_dir)
        self._write_checkpoint(tmp)
        target = swap_in(tmp, self.run_dir)
        self.world_model.save(self.run_dir / "world_model.pt")
        self._checkpoint_steps = self.real_steps
        return target

    def close(self) -> None:
        """Close the log files and the environments (the run folder stays resumable)."""
        self.logger.close()
        for env in (self._real_env, self._sim):
            env.close()

    # ---- setup -------------------------------------------------------------------------
    def _open(self, config: CoordinatorConfig, run_dir: Path, verbose: int,
              keep_progress_until: int | None) -> None:
        """State shared by a fresh and a resumed run: envs, logger, counters."""
        self.config, self.run_dir, self.verbose = config, run_dir, verbose
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(config.to_dict(), indent=2))
        self._real_env = gym.make(config.env_id)
        self._sim = gym.make(config.env_id)  # open-loop replays overwrite its state
        self.spec = spec_from_env(self._real_env, config.env_id)
        self.logger = make_logger(run_dir, keep_progress_until)
        self._stdout = HumanOutputFormat(sys.stdout) if verbose > 0 else None
        self.real_steps, self.policy_updates, self.budget = 0, 0, None
        self.history: list[dict[str, float]] = []
        self.world_model: WorldModel | None = None
        self.trainer: WorldModelTrainer | None = None
        self.learner: OnPolicyAlgorithm | None = None
        self._vec_normalize: VecNormalize | None = None
        self._probe = _SpreadProbe(config.world_model.guidance.std_floor)
        self._losses: list[float] = []
        self._real_returns: list[float] = []
        self._elapsed_before, self._opened_at = 0.0, time.monotonic()
        self._checkpoint_steps, self._progress = -1, True
        self._learning_rate: float | None = None  # set by final_learning_rate or target_update_kl

    def _start(self) -> None:
        """Uniform-random prefill, normaliser fit, initial world-model training, then the learner."""
        cfg = self.config
        self._collect(cfg.prefill_steps, policy=None)
        self.collector.flush()  # the random segment ends where the policy takes over
        low, high = np.array(self.spec.action_low), np.array(self.spec.action_high)
        normaliser = Normaliser.fit(self.buffer, low, high)
        self.world_model = WorldModel(self.spec, cfg.world_model, normaliser, cfg.device)
        self.trainer = WorldModelTrainer(self.world_model, replace(cfg.train, seed=cfg.seed))
        self._losses += self.trainer.train(self.buffer, cfg.initial_world_model_steps,
                                           progress=self._progress)
        self._build_learner(checkpoint=None)

    def _build_learner(self, checkpoint: Path | None) -> None:
        """The imagined env is built once around `world_model`, so refits and training are seen by it."""
        cfg = self.config
        self._imagined = ImaginedVectorEnv(self.world_model, cfg.n_imagined_envs, env_id=cfg.env_id,
                                           start_states=self._start_states(),
                                           replay=ReplayConfig(n_sample_steps=cfg.n_sample_steps))
        venv: VecEnv = ImaginedSB3VecEnv(self._imagined)
        kwargs = _learner_kwargs(cfg)
        if cfg.normalize:
            venv = (VecNormalize(venv, gamma=kwargs.get("gamma", 0.99)) if checkpoint is None
                    else VecNormalize.load(str(checkpoint / "vec_normalize.pkl"), venv))
            self._vec_normalize = venv
        algo = IMAGINATION_LEARNERS[cfg.algo]
        if checkpoint is None:
            self.learner = algo("MlpPolicy", venv, seed=cfg.seed, device=cfg.device, verbose=0, **kwargs)
        else:
            self.learner = algo.load(checkpoint / "learner.zip", env=venv, device=cfg.device)
            self.learner._last_obs = None  # a new imagined env: SB3 resets it at the next update
        self.learner.set_logger(self.logger)
        normalize_obs = None if self._vec_normalize is None else self._vec_normalize.normalize_obs
        self._sampler = sb3_sampler(self.learner, normalize_obs, cfg.collection_noise_std)

    def _restore(self, checkpoint: Path, state: dict[str, Any]) -> None:
        cfg = self.config
        self.buffer = EpisodeBuffer.load(checkpoint / "buffer.npz")
        if self.buffer.env_id != cfg.env_id or self.buffer.n_transitions != state["real_steps"]:
            raise ValueError(f"checkpoint {checkpoint} is inconsistent: its buffer holds "
                             f"{self.buffer.n_transitions} steps of {self.buffer.env_id!r}, the run "
                             f"{state['real_steps']} of {cfg.env_id!r}")
        self.real_steps, self.policy_updates = state["real_steps"], state["policy_updates"]
        self.budget, self.history = state["budget"], state["history"]
        self._elapsed_before = state["elapsed_s"]
        self._learning_rate = state.get("learning_rate")
        self.world_model = WorldModel.load(checkpoint / "world_model.pt", device=cfg.device,
                                           env_id=cfg.env_id)
        self.trainer = WorldModelTrainer(self.world_model, replace(cfg.train, seed=cfg.seed))
        saved = torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=False)
        self.trainer.load_state_dict(saved["trainer"])
        self._build_learner(checkpoint)
        self.collector = RealCollector(self._real_env, self.buffer, seed=cfg.seed + self.real_steps)
        set_rng_states(saved["rng"])
        self._checkpoint_steps = self.real_steps

    def _checked_budget(self, total: int | None) -> int:
        if total is None:
            if self.budget is None:
                raise ValueError("give total_real_steps: this run has no budget yet")
            return self.budget
        if not isinstance(total, (int, np.integer)) or total < self.config.prefill_steps:
            raise ValueError(f"total_real_steps ({total}) must be an integer >= prefill_steps "
                             f"({self.config.prefill_steps})")
        if total < self.real_steps:
            raise ValueError(f"total_real_steps ({total}) is below the {self.real_steps} real steps "
                             "already taken")
        return int(total)

    def _init_callback(self, callback: MaybeCallback) -> BaseCallback:
        callbacks = callback if isinstance(callback, list) else [] if callback is None else [callback]
        hooks = CallbackList(callbacks)
        hooks.init_callback(self.learner)
        hooks.on_training_start({"coordinator": self}, {})
        return hooks

    # ---- the loop ----------------------------------------------------------------------
    def _iteration(self, n: int) -> None:
        """Collect n real steps, train the world model to its ratio, one policy update, then schedules."""
        cfg, before = self.config, self.real_steps
        self._collect(n, self._sampler)
        if _crossed(before, self.real_steps, cfg.normaliser_refit_every):
            self.trainer.refit_normaliser(self.buffer)
        self._train_world_model()
        if self.real_steps >= cfg.prefill_steps + cfg.learning_starts:
            self._policy_update()
        evaluated = _crossed(before, self.real_steps, cfg.eval_every) or self.real_steps == self.budget
        if evaluated:
            self._evaluate_and_record()
        self._dump(show=evaluated)
        if _crossed(before, self.real_steps, cfg.checkpoint_every) or self.real_steps == self.budget:
            self.save_checkpoint()

    def _finish(self) -> None:
        """The last evaluation and checkpoint, unless this step already has them."""
        if not self.history or self.history[-1]["real_steps"] != self.real_steps:
            self._evaluate_and_record()
            self._dump(show=True)
        if self._checkpoint_steps != self.real_steps:
            self.save_checkpoint()

    def _collect(self, n: int, policy: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self._real_returns += self.collector.collect(n, policy)
        self.real_steps += n

    def _train_world_model(self) -> None:
        cfg = self.config
        refits = self.real_steps // cfg.normaliser_refit_every - cfg.prefill_steps // cfg.normaliser_refit_every
        due = (cfg.initial_world_model_steps + refits * cfg.refit_world_model_steps
               + int(cfg.world_model_steps_per_real_step * (self.real_steps - cfg.prefill_steps)))
        self._losses += self.trainer.train(self.buffer, max(due - self.trainer.steps, 0))

    def _start_states(self) -> np.ndarray:
        return self.buffer.start_observations(last=self.config.start_state_window)

    def _policy_update(self) -> None:
        """One rollout of n_imagined_envs x n_steps guided imagined steps from real start states + train."""
        cfg, learner = self.config, self.learner
        self._imagined.set_start_states(self._start_states())
        if cfg.final_learning_rate is not None:
            first = cfg.prefill_steps + cfg.learning_starts
            fraction = min(max((self.real_steps - first) / max(self.budget - first, 1), 0.0), 1.0)
            start = learner.learning_rate
            self._learning_rate = start + fraction * (cfg.final_learning_rate - start)
        if self._learning_rate is not None:
            learner.lr_schedule = ConstantSchedule(self._learning_rate)
        learner.learn(learner.n_steps * learner.n_envs, callback=self._probe, log_interval=None,
                      reset_num_timesteps=False)
        self.policy_updates += 1
        if cfg.target_update_kl is not None:
            self._adapt_learning_rate(self.logger.name_to_value["train/approx_kl"])

    def _adapt_learning_rate(self, kl: float) -> None:
        """The next update's learning rate from this update's mean approx_kl (see `target_update_kl`)."""
        target, rate = self.config.target_update_kl, self._learning_rate or self.learner.learning_rate
        if kl > 2 * target:
            rate /= 1.5
        elif kl < target / 2:
            rate = min(rate * 1.5, self.learner.learning_rate)
        self._learning_rate = rate

    def _evaluate_and_record(self) -> None:
        mean, std = self.evaluate()
        row = {"real_steps": self.real_steps, "mean_return": mean, "std_return": std,
               "policy_updates": self.policy_updates, "world_model_steps": self.trainer.steps,
               "guidance_scale": self.world_model.guidance_scale, "elapsed_s": self._elapsed()}
        self.logger.record("eval/mean_reward", mean)
        self.logger.record("eval/std_reward", std)
        if self.config.open_loop_states:
            error, sensitivity = self._world_model_errors()
            row["open_loop_mse"] = float(np.nanmean(error.obs_mse))
            row["open_loop_reward_mse"] = float(np.nanmean(error.reward_mse))
            row["return_difference_corr"] = sensitivity.correlation
            self.logger.record("world_model/open_loop_mse", row["open_loop_mse"])
            self.logger.record("world_model/open_loop_reward_mse", row["open_loop_reward_mse"])
            self.logger.record("world_model/return_difference_corr", sensitivity.correlation)
        self.history.append(row)
        write_rows(self.run_dir / "evaluations.csv", self.history)

    def _world_model_errors(self) -> tuple[OpenLoopError, ActionSensitivity]:
        """Open-loop error of policy-guided imaginations, and action sensitivity (do imagined H-step
        returns of two random action sequences differ as the real ones do?), from real buffer states:
        a fixed draw per real-step count, so a resumed run measures the same states."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, self.real_steps])
        _, qpos, qvel = self.buffer.start_states(rng, cfg.open_loop_states)
        generator = torch.Generator(device=self.world_model.device).manual_seed(int(rng.integers(2 ** 62)))
        error = open_loop_error(self._sim, self.world_model, qpos, qvel,
                                policy=sb3_guide(self.learner.policy, self._vec_normalize),
                                n_sample_steps=cfg.n_sample_steps, generator=generator)
        space = self._sim.action_space
        shape = (cfg.open_loop_states, self.world_model.horizon, space.shape[0])
        a = rng.uniform(space.low, space.high, shape).astype(np.float32)
        b = np.clip(a + rng.normal(0.0, 0.25, shape) * (space.high - space.low), space.low, space.high)
        sensitivity = action_sensitivity(self._sim, self.world_model, qpos, qvel, a, b.astype(np.float32),
                                         n_sample_steps=cfg.n_sample_steps, generator=generator)
        return error, sensitivity

    def _dump(self, show: bool) -> None:
        """One progress row at the current real step; `show` also prints it (after evaluations)."""
        record = self.logger.record
        record("time/real_steps", self.real_steps)
        record("time/world_model_steps", self.trainer.steps)
        record("time/policy_updates", self.policy_updates)
        record("time/elapsed_s", self._elapsed())
        record("guidance/scale", self.world_model.guidance_scale)
        if math.isfinite(self._probe.spread):
            record("guidance/spread", self._probe.spread)
            record("guidance/spread_first_step", self._probe.first_spread)
            record("guidance/spread_last_step", self._probe.last_spread)
        if self._losses:
            record("world_model/loss", float(np.mean(self._losses)))
        if self._real_returns:
            record("rollout/real_ep_rew_mean", float(np.mean(self._real_returns)))
        if show and self._stdout is not None:
            self._stdout.write(self.logger.name_to_value, self.logger.name_to_excluded, self.real_steps)
        self.logger.dump(step=self.real_steps)
        self._losses, self._real_returns = [], []

    # ---- checkpoints -------------------------------------------------------------------
    def _write_checkpoint(self, directory: Path) -> None:
        """All files of a checkpoint; state.json last."""
        self.learner.save(directory / "learner.zip", exclude=["imagined"])
        if self._vec_normalize is not None:
            self._vec_normalize.save(str(directory / "vec_normalize.pkl"))
        self.world_model.save(directory / "world_model.pt")
        torch.save({"trainer": self.trainer.state_dict(), "rng": rng_states()}, directory / "trainer.pt")
        self.buffer.save(directory / "buffer.npz")
        write_state(directory, {
            "env_id": self.config.env_id, "config": self.config.to_dict(), "budget": self.budget,
            "real_steps": self.real_steps, "policy_updates": self.policy_updates,
            "learning_rate": self._learning_rate, "world_model_steps": self.trainer.steps,
            "guidance_scale": self.world_model.guidance_scale,
            "elapsed_s": self._elapsed(), "history": self.history})

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._opened_at


class _SpreadProbe(BaseCallback):
    """Std of the standardised imagined actions under the policy that collected them (1 = on-policy
    spread, the target of guidance tuning), overall and at the first and last imagined step; read at
    rollout end, before the update changes the policy."""

    def __init__(self, std_floor: float):
        super().__init__()
        self.std_floor = std_floor
        self.spread = self.first_spread = self.last_spread = float("nan")

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer, policy = self.model.rollout_buffer, self.model.policy
        obs = torch.as_tensor(buffer.observations.reshape(-1, *buffer.obs_shape), device=policy.device)
        actions = torch.as_tensor(buffer.actions.reshape(-1, buffer.action_dim), device=policy.device)
        with torch.no_grad():
            dist = policy.get_distribution(obs).distribution
        mean, std = dist.mean, dist.stddev.clamp(min=self.std_floor)
        self.spread = standardised_spread(actions, mean, std)
        # the buffer is [n_steps, n_envs]: step k is row k of the imagined trajectories unless one ended early
        per_step = row_spreads(*(v.view(buffer.buffer_size, -1, buffer.action_dim).transpose(0, 1)
                                 for v in (actions, mean, std)))
        self.first_spread, self.last_spread = float(per_step[0]), float(per_step[-1])


# ---- helpers ---------------------------------------------------------------------------
def _existing_checkpoint_message(run_dir: Path, state: dict[str, Any], env_id: str) -> str:
    if state["env_id"] != env_id:
        return (f"run_dir {run_dir} holds a checkpoint of another task ({state['env_id']!r}, not "
                f"{env_id!r}); choose another run_dir")
    return (f"run_dir {run_dir} already holds a checkpoint at {state['real_steps']} real steps; continue it "
            "with Coordinator.resume(run_dir) or choose an empty run_dir")


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]."""
    return after // every > before // every
