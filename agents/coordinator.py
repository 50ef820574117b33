"""Training in imagination end to end: real data -> world model -> imagined on-policy updates -> real data.

One `Coordinator` owns one run folder. Its loop: a uniform-random prefill, the normaliser and an initial
world-model fit, then per iteration: collect `policy_every` real steps with the current stochastic policy,
fit the world model to its ratio of gradient steps per real step, imagine one rollout of
`n_imagined_envs` x H policy-guided steps from real start states and update the learner on it; on their
schedules, a normaliser refit, an evaluation on the real task and a checkpoint.

Run folder: config.json; progress.csv and TensorBoard events (one row per iteration, x-axis = real
steps); evaluations.csv (one row per evaluation); world_model.pt (the latest, loadable by
`ImaginedVectorEnv(world_model=...)`); checkpoint/ (see `agents.run_files`), replaced atomically.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import set_random_seed
from tqdm.auto import tqdm

from agents.config import ACTIVATIONS, IMAGINATION_LEARNERS, SUPPORTED_TASKS, CoordinatorConfig
from agents.diagnostics import Critic, SpreadProbe, record_evaluation, record_progress, world_model_errors
from agents.imagined_learner import build_learner, check_learner_settings, run_learning_rate
from agents.real_evaluation import evaluate_real, make_quietly
from agents.run_files import (
    RUN_STATE,
    RunState,
    existing_checkpoint_message,
    find_checkpoint,
    read_state,
    sweep_litter,
    write_checkpoint,
)
from agents.run_log import make_logger, write_rows
from agents.safe_writes import check_writable, writing
from agents.saved_run import SavedRun, read_checkpoint, read_config, resumable_failures
from agents.sb3_guidance import sb3_guide, sb3_value
from agents.sb3_sampling import sb3_sampler
from imagined_env.data.collect import RealCollector, buffer_for_env
from imagined_env.data.normaliser import Normaliser
from imagined_env.training import WorldModelTrainer, spec_from_env
from imagined_env.utils import atomic_path
from imagined_env.world_model import WorldModel

__all__ = ["ACTIVATIONS", "IMAGINATION_LEARNERS", "SUPPORTED_TASKS", "Coordinator", "CoordinatorConfig",
           "find_checkpoint"]

MaybeCallback = BaseCallback | list[BaseCallback] | None


def _from_state(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.state, name), doc=doc)


class Coordinator:
    """Runs `CoordinatorConfig` in `run_dir`: `learn(budget)`, `resume(run_dir)`, `evaluate()`.

    Before `learn` has prefilled, `world_model`, `trainer` and `learner` are None. Every input error
    (task, run_dir, budget, learner settings, device, a foreign or damaged checkpoint) raises ValueError
    before anything is trained or written; a failed write raises `WriteFailed` naming the file.
    """

    real_steps = _from_state("real_steps", "Real environment steps taken, prefill included.")
    policy_updates = _from_state("policy_updates", "Learner updates on imagined rollouts.")
    budget = _from_state("budget", "Real steps `learn` runs to (None before the first `learn`).")
    history = _from_state("history", "One row per evaluation, as in evaluations.csv.")
    buffer = _from_state("buffer", "Every real transition collected.")
    world_model = _from_state("world_model", "The world model the learner imagines with.")
    trainer = _from_state("trainer", "The world model's optimisation.")
    learner = _from_state("learner", "The SB3 learner (ImaginationPPO or ImaginationA2C).")

    def __init__(self, config: CoordinatorConfig, run_dir: str | os.PathLike, *, verbose: int = 1):
        _check_settings(config)  # before the run folder is created, so a refused start leaves nothing
        check_writable(Path(run_dir))
        existing = find_checkpoint(run_dir)
        if existing is not None:
            raise ValueError(existing_checkpoint_message(Path(run_dir), read_state(existing), config.env_id))
        self._open(config, Path(run_dir), verbose, keep_progress_until=None)
        set_random_seed(config.seed)
        self.state = RunState(buffer_for_env(self._real_env, config.env_id), run_learning_rate(config))
        self.collector = RealCollector(self._real_env, self.buffer, seed=config.seed)

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, *, env_id: str | None = None,
               verbose: int = 1) -> Coordinator:
        """Continue the run of the last checkpoint in `run_dir`; `env_id`, when given, must be its task.

        The real episode in progress at the checkpoint is not restored: collection restarts with a reset.
        Nothing in the run folder is unpickled: the learner is built from the run's config, and only the
        tensors of its learner.zip are loaded into it.
        """
        check_writable(Path(run_dir))
        checkpoint = find_checkpoint(run_dir)
        if checkpoint is None:
            raise ValueError(f"no checkpoint in {run_dir}; start a run with Coordinator(config, run_dir)")
        config = read_config(checkpoint)
        if env_id is not None and env_id != config.env_id:
            raise ValueError(f"the checkpoint in {run_dir} is of task {config.env_id!r}, not {env_id!r}")
        _check_settings(config)
        saved = read_checkpoint(checkpoint, config)
        coordinator = cls.__new__(cls)
        coordinator._open(config, Path(run_dir), verbose,
                          keep_progress_until=saved.state["progress"]["real_steps"])
        try:
            coordinator._restore(saved)
        except BaseException:
            coordinator.close()  # the checkpoint is untouched: resume can be tried again
            raise
        return coordinator

    # ---- public ------------------------------------------------------------------------
    def learn(self, total_real_steps: int | None = None, callback: MaybeCallback = None,
              progress_bar: bool = True) -> Coordinator:
        """Train until `total_real_steps` real steps in all (None: the budget of the resumed run).

        `callback`: SB3 callbacks, bound to the learner; `on_step` runs once per loop iteration (every
        `policy_every` real steps, after that iteration's policy update) and returning False stops the
        run early (it is checkpointed). Their `locals["coordinator"]` is this object.
        """
        self.state.budget = self.state.checked_budget(total_real_steps, self.config.prefill_steps)
        self._progress = progress_bar
        with resumable_failures(self.run_dir):
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
        return evaluate_real(self.learner, cfg.env_id, n_episodes or cfg.eval_episodes,
                             cfg.seed + self.real_steps, self.state.vec_normalize, cfg.eval_max_episode_steps)

    def save_checkpoint(self) -> Path:
        """Write everything needed to resume into run_dir/checkpoint, atomically; returns its path."""
        self.collector.flush()
        target = write_checkpoint(self.state, self.run_dir, self.config.to_dict())
        self._checkpoint_steps = self.real_steps
        with writing(self.run_dir / "world_model.pt"):
            self.world_model.save(self.run_dir / "world_model.pt")
        return target

    def close(self) -> None:
        """Close the log files and the environments (the run folder stays resumable)."""
        self.logger.close()
        for env in (self._real_env, self._sim):
            env.close()

    # ---- setup -------------------------------------------------------------------------
    def _open(self, config: CoordinatorConfig, run_dir: Path, verbose: int,
              keep_progress_until: int | None) -> None:
        """What a fresh and a resumed run share: envs, then (the folder's litter swept) config file, logger
        and per-iteration records."""
        self.config, self.run_dir, self.verbose = config, run_dir, verbose
        self._real_env = make_quietly(config.env_id)
        self._sim = make_quietly(config.env_id)  # open-loop replays overwrite its state
        self.spec = spec_from_env(self._real_env, config.env_id)
        sweep_litter(run_dir)
        with writing(run_dir / "config.json"), atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(config.to_dict(), indent=2))
        with writing(run_dir / "progress.csv"):
            self.logger = make_logger(run_dir, keep_progress_until, console=verbose > 0)
        self._probe = SpreadProbe(config.world_model.guidance.std_floor)
        self._losses: list[float] = []
        self._real_returns: list[float] = []
        self._checkpoint_steps, self._progress = -1, True

    def _start(self) -> None:
        """Uniform-random prefill, normaliser fit, initial world-model training, then the learner."""
        cfg, state = self.config, self.state
        self._collect(cfg.prefill_steps, policy=None)
        self.collector.flush()  # the random segment ends where the policy takes over
        low, high = np.array(self.spec.action_low), np.array(self.spec.action_high)
        normaliser = Normaliser.fit(self.buffer, low, high)
        state.world_model = WorldModel(self.spec, cfg.world_model, normaliser, cfg.device)
        state.trainer = WorldModelTrainer(state.world_model, replace(cfg.train, seed=cfg.seed))
        self._losses += state.trainer.train(self.buffer, cfg.initial_world_model_steps,
                                            progress=self._progress)
        self._build_learner(checkpoint=None)

    def _build_learner(self, checkpoint: Path | None) -> None:
        built = build_learner(self.config, self.world_model, self._start_states(), self.state.learning_rate,
                              self.logger, checkpoint)
        self._imagined = built.imagined
        self.state.learner, self.state.vec_normalize = built.learner, built.vec_normalize
        normalize_obs = None if built.vec_normalize is None else built.vec_normalize.normalize_obs
        self._sampler = sb3_sampler(built.learner, normalize_obs, self.config.collection_noise_std,
                                    self.config.collection_std_scale)

    def _restore(self, saved: SavedRun) -> None:
        cfg, progress = self.config, saved.state["progress"]
        self.state = state = RunState(saved.buffer, run_learning_rate(cfg, progress["learning_rate"]))
        state.world_model = saved.world_model
        state.trainer = WorldModelTrainer(state.world_model, replace(cfg.train, seed=cfg.seed))
        self._build_learner(saved.checkpoint)
        self.collector = RealCollector(self._real_env, saved.buffer, seed=cfg.seed + progress["real_steps"])
        try:
            state.load_state_dict(saved.state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise ValueError(f"checkpoint file {saved.checkpoint / RUN_STATE} does not fit the run (the run "
                             f"folder is damaged): {err!r}") from None
        self._checkpoint_steps = progress["real_steps"]

    def _init_callback(self, callback: MaybeCallback) -> BaseCallback:
        callbacks = callback if isinstance(callback, list) else [] if callback is None else [callback]
        hooks = CallbackList(callbacks)
        hooks.init_callback(self.learner)
        hooks.on_training_start({"coordinator": self}, {})
        return hooks

    # ---- the loop ----------------------------------------------------------------------
    def _iteration(self, n: int) -> None:
        """Collect n real steps, fit the world model, imagine and update, then the schedules."""
        cfg, before = self.config, self.real_steps
        self._collect(n, self._sampler)
        self._fit_world_model(refit=_crossed(before, self.real_steps, cfg.normaliser_refit_every))
        if self.real_steps >= cfg.prefill_steps + cfg.learning_starts:
            self._imagine_and_update()
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
        self.state.real_steps += n

    def _fit_world_model(self, refit: bool) -> None:
        """Refit the normaliser when due, then train to the gradient steps due at this real step."""
        cfg, trainer = self.config, self.trainer
        if refit:
            trainer.refit_normaliser(self.buffer)
        every = cfg.normaliser_refit_every
        refits = self.real_steps // every - cfg.prefill_steps // every
        due = (cfg.initial_world_model_steps + refits * cfg.refit_world_model_steps
               + int(cfg.world_model_steps_per_real_step * (self.real_steps - cfg.prefill_steps)))
        self._losses += trainer.train(self.buffer, max(due - trainer.steps, 0))

    def _start_states(self) -> np.ndarray:
        return self.buffer.start_observations(last=self.config.start_state_window)

    def _imagine_and_update(self) -> None:
        """One rollout of n_imagined_envs x n_steps guided imagined steps from real start states, the
        learner's train on it, and the learning rate of the next update."""
        cfg, learner, rate = self.config, self.learner, self.state.learning_rate
        self._imagined.set_start_states(self._start_states())
        if cfg.final_learning_rate is not None:
            rate.decay(cfg.final_learning_rate, cfg.prefill_steps + cfg.learning_starts, self.budget,
                       self.real_steps)
        learner.learn(learner.n_steps * learner.n_envs, callback=self._probe, log_interval=None,
                      reset_num_timesteps=False)
        self.state.policy_updates += 1
        if cfg.target_update_kl is not None:
            rate.adapt(self.logger.latest["train/approx_kl"], cfg.target_update_kl)

    def _evaluate_and_record(self) -> None:
        mean, std = self.evaluate()
        row = {"real_steps": self.real_steps, "mean_return": mean, "std_return": std,
               "policy_updates": self.policy_updates, "world_model_steps": self.trainer.steps,
               "guidance_scale": self.world_model.guidance_scale, "elapsed_s": self.state.elapsed()}
        errors = None
        if self.config.open_loop_states:
            policy, stats = self.learner.policy, self.state.vec_normalize
            critic = Critic(sb3_value(policy, stats), self.learner.gamma, self.learner.gae_lambda)
            errors = world_model_errors(self._sim, self.world_model, self.buffer, sb3_guide(policy, stats),
                                        self.config.open_loop_states, self.config.n_sample_steps,
                                        seed=(self.config.seed, self.real_steps), critic=critic)
        self.history.append(record_evaluation(self.logger, row, errors))
        with writing(self.run_dir / "evaluations.csv"):
            write_rows(self.run_dir / "evaluations.csv", self.history)

    def _dump(self, show: bool) -> None:
        """One progress row at the current real step; `show` also prints it (after evaluations)."""
        counters = {"real_steps": self.real_steps, "world_model_steps": self.trainer.steps,
                    "policy_updates": self.policy_updates, "elapsed_s": self.state.elapsed()}
        record_progress(self.logger, counters, self.world_model.guidance_scale, self._probe, self._losses,
                        self._real_returns)
        with writing(self.run_dir / "progress.csv"):
            self.logger.dump(step=self.real_steps, show=show)
        self._losses, self._real_returns = [], []


class UnsavedCoordinator(Coordinator):
    """The loop with a stand-in for the world model that keeps no model file (MuJoCo, a baseline model):
    its run folder keeps the logs and evaluations but no resumable checkpoint."""

    def save_checkpoint(self) -> None:  # type: ignore[override]
        """Nothing to resume from: only remember that this step is done."""
        self._checkpoint_steps = self.real_steps


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]."""
    return after // every > before // every


def _check_settings(config: CoordinatorConfig) -> None:
    """The device and the learner settings, checked against the task's spaces before anything is written."""
    env = make_quietly(config.env_id)
    try:
        check_learner_settings(config, spec_from_env(env, config.env_id))
    finally:
        env.close()
