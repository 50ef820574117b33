"""The configuration of a coordinator run: `CoordinatorConfig`, its checks and the learner's SB3 arguments."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import nn

from agents.plan_following import ImaginationA2C, ImaginationPPO
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.guidance import GuidanceConfig
from imagined_env.registration import TASKS, VERSIONS
from imagined_env.training import TrainConfig
from imagined_env.utils import resolve_device
from imagined_env.world_model import WorldModelConfig

SUPPORTED_TASKS = tuple(f"{task}-{version}" for task in TASKS for version in VERSIONS)
IMAGINATION_LEARNERS: dict[str, type[OnPolicyAlgorithm]] = {"ppo": ImaginationPPO, "a2c": ImaginationA2C}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
"""Names allowed for `policy_kwargs["activation_fn"]` in `learner_kwargs` (the config stays JSON)."""
_RESERVED_KWARGS = ("policy", "env", "seed", "device", "verbose", "tensorboard_log")


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
        from agents.presets import _PRESETS

        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(_PRESETS)}")
        fields = {**_PRESETS[name](), **overrides}
        if str(fields.get("env_id", "")).startswith("Hopper") and "world_model" not in overrides:
            wm = fields.get("world_model", _cpu_world_model())
            fields["world_model"] = replace(wm, schedule=replace(wm.schedule, tau=0.1))
        return cls(**fields)



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


def _learner_kwargs(config: CoordinatorConfig) -> dict[str, Any]:
    defaults = {"gamma": 0.99, "gae_lambda": 0.9, "n_steps": config.world_model.horizon}
    kwargs = {**defaults, **config.learner_kwargs}
    policy_kwargs = dict(kwargs.get("policy_kwargs", {}))
    if "activation_fn" in policy_kwargs:
        policy_kwargs["activation_fn"] = ACTIVATIONS[policy_kwargs["activation_fn"]]
    return {**kwargs, "policy_kwargs": policy_kwargs}
