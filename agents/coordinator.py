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
from dataclasses import asdict, dataclass, field, replace
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
from torch import nn
from tqdm.auto import tqdm

from agents.real_evaluation import evaluate_real
from agents.sb3_guidance import sb3_guide
from agents.plan_following import ImaginationA2C, ImaginationPPO
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
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.data.buffer import EpisodeBuffer
from agents.sb3_sampling import sb3_sampler
from imagined_env.data.collect import RealCollector, buffer_for_env
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.guidance import GuidanceConfig, row_spreads, standardised_spread
from imagined_env.evaluation import ActionSensitivity, OpenLoopError, action_sensitivity, open_loop_error
from imagined_env.registration import TASKS, VERSIONS
from imagined_env.replay import ReplayConfig
from imagined_env.training import TrainConfig, WorldModelTrainer, spec_from_env
from imagined_env.utils import atomic_path, resolve_device
from imagined_env.vector_env import ImaginedVectorEnv
from imagined_env.world_model import WorldModel, WorldModelConfig

SUPPORTED_TASKS = tuple(f"{task}-{version}" for task in TASKS for version in VERSIONS)
IMAGINATION_LEARNERS: dict[str, type[OnPolicyAlgorithm]] = {"ppo": ImaginationPPO, "a2c": ImaginationA2C}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
"""Names allowed for `policy_kwargs["activation_fn"]` in `learner_kwargs` (the config stays JSON)."""
_RESERVED_KWARGS = ("policy", "env", "seed", "device", "verbose", "tensorboard_log")

MaybeCallback = BaseCallback | list[BaseCallback] | None


def _cpu_world_model() -> WorldModelConfig:
    return WorldModelConfig(horizon=5, denoiser=DenoiserConfig(width=256, depth=3, time_dim=64),
                            guidance=GuidanceConfig(scale_lr=0.2), scale_actions=False,
                            condition_on_last_action=False)


def _cpu_learner_kwargs() -> dict[str, Any]:
    return {"gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "n_epochs": 5, "batch_size": 256,
            "clip_range": 0.2, "target_kl": 0.1, "ent_coef": 0.03, "max_grad_norm": 0.5,
            "policy_kwargs": {"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": "relu",
                              "log_std_init": 0.0, "ortho_init": False}}


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything that defines a run; JSON round trip via `to_dict`/`from_dict`, never mutated.

    Defaults are the "cpu" preset for HalfCheetah; `preset(name, env_id=...)` adapts a preset to a task.
    All schedules are counted in real environment steps, prefill included.
    """

    env_id: str = "HalfCheetah-v4"
    """Real MuJoCo task (see SUPPORTED_TASKS)."""
    algo: str = "ppo"
    """"ppo" (ImaginationPPO) or "a2c" (ImaginationA2C)."""
    seed: int = 0
    """Seeds the learner, the real env, the world-model trainer (replaces `train.seed`), the global RNGs."""
    prefill_steps: int = 5000
    """Uniform-random real steps before anything is learned (paper 5000)."""
    initial_world_model_steps: int = 4000
    """World-model gradient steps right after the prefill, before the first policy update (paper 1000)."""
    world_model_steps_per_real_step: float = 1.0
    """World-model gradient steps per real step after the prefill (paper 1.0)."""
    policy_every: int = 250
    """Real steps between policy updates (paper 4); also the collection chunk of the loop."""
    collection_noise_std: float = 0.0
    """Std of Gaussian noise added to the policy's actions when collecting real data (action units): the
    buffer keeps a spread of actions to learn their effects from after the policy's own std has shrunk."""
    start_state_window: int | None = None
    """Imagined episodes start from the newest this-many stored real observations (None: the whole
    buffer), to match the states an on-policy learner's current policy visits. On HalfCheetah-v4 it
    ended lower the narrower the window (README, section 4): the older states seem to keep the policy
    from exploiting the model where it has seen little."""
    learning_starts: int = 0
    """Real steps after the prefill, collected with the initial policy, before the first policy update."""
    n_imagined_envs: int = 1024
    """Imagined trajectories per policy update (paper 1024); one batched world-model call each."""
    n_sample_steps: int | None = 16
    """Diffusion passes per imagination: an even strided subset of the T-step chain (None: all T)."""
    normalize: bool = True
    """Wrap the imagined env in VecNormalize (observations and rewards, as the RL Zoo's MuJoCo settings);
    real collection, guidance and evaluation see observations through the same statistics."""
    normaliser_refit_every: int = 10_000
    """Real steps between refits of the world model's normaliser."""
    refit_world_model_steps: int = 500
    """World-model gradient steps right after each refit, on top of the ratio: the model is retrained
    under the statistics it decodes with before it imagines again (after 500 steps its EMA, decay
    0.99, keeps under 1% of the weights trained under the old ones)."""
    eval_every: int = 5000
    """Real steps between evaluations on the real task (paper 10k); one more at the end of `learn`."""
    eval_episodes: int = 5
    """Episodes per evaluation, deterministic actions (paper 20)."""
    eval_max_episode_steps: int | None = None
    """Time limit of evaluation episodes (None: the task's own, 1000)."""
    open_loop_states: int = 128
    """Real start states for the world model's open-loop error and action sensitivity (the correlation
    of imagined and real return differences between two random action sequences; it tells whether
    imagined returns can steer a policy) at each evaluation (0: skip)."""
    checkpoint_every: int = 10_000
    """Real steps between checkpoints; one more at the end of `learn`."""
    world_model: WorldModelConfig = field(default_factory=_cpu_world_model)
    """Architecture, schedule, sampler and guidance of the world model."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, batch_size=256))
    """Optimisation of the world model."""
    learner_kwargs: dict[str, Any] = field(default_factory=_cpu_learner_kwargs)
    """Keyword arguments of ImaginationPPO/A2C, over the coordinator's defaults gamma 0.99, gae_lambda 0.9,
    n_steps = horizon (one rollout = one imagined trajectory per env). JSON only: give
    `policy_kwargs["activation_fn"]` as a name of ACTIVATIONS; for a decaying learning rate use
    `final_learning_rate`."""
    final_learning_rate: float | None = None
    """The learner's learning rate decays linearly in real steps, from `learner_kwargs["learning_rate"]` at
    the first policy update to this value at the budget (None: constant)."""
    target_update_kl: float | None = None
    """PPO only: adapt the learning rate to this mean approx_kl per policy update. After an update above
    twice the target it is divided by 1.5; after one below half of it, multiplied by 1.5 up to
    `learner_kwargs["learning_rate"]`. As the policy's std shrinks, the same step moves it further
    (None: no adaptation)."""
    device: str = "auto"
    """Torch device of the world model and the learner."""

    def __post_init__(self) -> None:
        if self.env_id not in SUPPORTED_TASKS:
            raise ValueError(f"unknown task {self.env_id!r}; supported: {', '.join(SUPPORTED_TASKS)}")
        if self.algo not in IMAGINATION_LEARNERS:
            raise ValueError(f"unknown algo {self.algo!r}; supported: {', '.join(IMAGINATION_LEARNERS)}")
        _check_counts(self)
        if self.prefill_steps <= self.world_model.horizon:
            raise ValueError(f"prefill_steps ({self.prefill_steps}) must exceed the world model horizon "
                             f"({self.world_model.horizon}) so that training windows exist")
        _check_learner_kwargs(self.learner_kwargs)
        try:
            resolve_device(self.device)
        except RuntimeError as err:
            raise ValueError(f"device {self.device!r} is not a torch device: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoordinatorConfig:
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown coordinator config fields {sorted(unknown)}")
        parts = {"world_model": WorldModelConfig.from_dict, "train": lambda d: TrainConfig(**d)}
        return cls(**{k: parts[k](v) if k in parts else v for k, v in data.items()})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CoordinatorConfig:
        """"cpu": learns on 2 CPU cores in ~50k real steps; "paper": shared/polygrad.md section 5 ratios
        and the paper's model sizes (a GPU recipe). Hopper gets the paper's schedule tau 0.1 unless
        `world_model` is overridden. `overrides` replace fields."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(_PRESETS)}")
        fields = {**_PRESETS[name](), **overrides}
        if str(fields.get("env_id", "")).startswith("Hopper") and "world_model" not in overrides:
            wm = fields.get("world_model", _cpu_world_model())
            fields["world_model"] = replace(wm, schedule=replace(wm.schedule, tau=0.1))
        return cls(**fields)


def _paper_preset() -> dict[str, Any]:
    """The paper's code runs a one-gradient-step actor-critic per imagined batch (Adam, grad clip 0.1,
    normalised advantages, entropy 1e-5, initial std 1): SB3's A2C with Adam is the closest learner."""
    return {"prefill_steps": 5000, "initial_world_model_steps": 1000, "world_model_steps_per_real_step": 1.0,
            "policy_every": 4, "learning_starts": 0, "n_imagined_envs": 1024, "n_sample_steps": None,
            "normalize": False, "eval_every": 10_000, "eval_episodes": 20, "checkpoint_every": 50_000,
            "world_model": WorldModelConfig(), "train": TrainConfig(), "algo": "a2c",
            "learner_kwargs": {"gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "ent_coef": 1e-5,
                               "max_grad_norm": 0.1, "normalize_advantage": True, "use_rms_prop": False}}


def _cpu_preset() -> dict[str, Any]:
    """The field defaults, measured on HalfCheetah-v4 on 2 shared CPU cores (README, section 4): 50k real
    steps in ~25 min with three runs sharing the cores (~40 min with six); deterministic return 2197.1 /
    1269.4 / 1590.0 / 1005.9 / 1234.7 / 1230.4 / 1025.8 / 1115.2 (seeds 0-7) at 50k, mean 1333.6 (1685.5
    over seeds 0-2, above the Zoo's tuned PPO's 1591.2; over eight seeds below its 1466.6).

    Why these values: with MuJoCo itself as the model the same loop reaches ~3500 by 25k steps, so the
    world model is the bottleneck. A 0.35M-parameter residual MLP (width 256, depth 3) trains at ~10-15
    ms/step and width 512 was no more faithful per second of CPU. Actions enter the denoiser at full
    strength (`scale_actions=False`: 29% less state error, 31% better action ranking than the paper's
    sqrt(alpha_bar_t) scaling, benchmarks/world_model_variants.py). A short horizon (H = 5: within-state
    correlation of imagined and real returns 0.43 vs 0.22 at H = 10), so each update imagines 1024 x 5
    steps; 16 strided passes of the 128-step chain are as faithful as 32 or 128 and leave CPU for the
    paper's 1 world-model step per real step after 4k initial ones, at lr 1e-3 (half the open-loop
    error of 3e-4 after 2k steps). PPO every 250 real steps (180 updates), 5 epochs of minibatch 256,
    target_kl 0.1 (without it the Gaussian's mean drifts far outside the action bounds in imagination
    and PPO diverged), initial std 1 as the paper. The guidance scale adapts at the paper's rate per
    real step (0.2 per imagination ~ its 3e-3 x the 62.5x fewer imaginations): at 0.03 it lagged the
    shrinking policy std, the imagined actions kept only 0.5-0.7 of the policy's spread and the std
    collapsed to ~0.2 (seed mean 1104.1 at 50k, against 1337.8 at 0.2). The last row's action is hidden
    from the denoiser (`condition_on_last_action=False`): it reveals the last state in a policy's data,
    and the model's imagined returns varied with it; hidden, their sampling noise falls by 43% and the
    eight-seed mean at 50k rose from 1197.7 to 1312.9. An entropy bonus of 0.03 keeps the policy's std
    near 0.7 at 50k instead of 0.33. The model ranks large action changes far better than small ones,
    so we read it as keeping the policy's trials within what the model resolves; a lower initial std
    (0.37 or 0.14) ended at 786 and 453 over seeds 0-2. With it the seed spread fell from
    622 to 368 and the curve still climbs at 50k, though it trails the previous preset from 20k to 40k.
    """
    return {}


_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"cpu": _cpu_preset, "paper": _paper_preset}


def _check_counts(config: CoordinatorConfig) -> None:
    at_least = {"prefill_steps": 1, "initial_world_model_steps": 0, "policy_every": 1, "learning_starts": 0,
                "n_imagined_envs": 1, "normaliser_refit_every": 1, "refit_world_model_steps": 0, "eval_every": 1,
                "eval_episodes": 1, "open_loop_states": 0, "checkpoint_every": 1}
    for name, low in at_least.items():
        value = getattr(config, name)
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name in ("n_sample_steps", "eval_max_episode_steps", "start_state_window"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    if not config.collection_noise_std >= 0:
        raise ValueError(f"collection_noise_std must be >= 0, got {config.collection_noise_std}")
    if config.final_learning_rate is not None and not config.final_learning_rate >= 0:
        raise ValueError(f"final_learning_rate must be None or >= 0, got {config.final_learning_rate}")
    if config.target_update_kl is not None:
        if not config.target_update_kl > 0:
            raise ValueError(f"target_update_kl must be None or > 0, got {config.target_update_kl}")
        if config.algo != "ppo" or config.final_learning_rate is not None:
            raise ValueError("target_update_kl needs algo 'ppo' (A2C reports no approx_kl) and no "
                             f"final_learning_rate; got algo {config.algo!r}, final_learning_rate "
                             f"{config.final_learning_rate}")
    if not config.world_model_steps_per_real_step >= 0:
        raise ValueError("world_model_steps_per_real_step must be >= 0, got "
                         f"{config.world_model_steps_per_real_step}")


def _check_learner_kwargs(kwargs: dict[str, Any]) -> None:
    reserved = sorted(set(kwargs) & set(_RESERVED_KWARGS))
    if reserved:
        raise ValueError(f"learner_kwargs may not set {reserved}: the coordinator sets them (seed, device "
                         "are config fields)")
    try:
        json.dumps(kwargs)
    except TypeError as err:
        raise ValueError(f"learner_kwargs must be JSON-serialisable ({err}); give activation_fn by name, "
                         f"one of {sorted(ACTIVATIONS)}") from None
    activation = kwargs.get("policy_kwargs", {}).get("activation_fn")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation_fn {activation!r}; choose one of {sorted(ACTIVATIONS)}")


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


def _learner_kwargs(config: CoordinatorConfig) -> dict[str, Any]:
    defaults = {"gamma": 0.99, "gae_lambda": 0.9, "n_steps": config.world_model.horizon}
    kwargs = {**defaults, **config.learner_kwargs}
    policy_kwargs = dict(kwargs.get("policy_kwargs", {}))
    if "activation_fn" in policy_kwargs:
        policy_kwargs["activation_fn"] = ACTIVATIONS[policy_kwargs["activation_fn"]]
    return {**kwargs, "policy_kwargs": policy_kwargs}


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]."""
    return after // every > before // every
