"""The configuration of a coordinator run: typed frozen dataclasses, their checks, and the learner's SB3
keyword arguments.

A config round-trips through JSON (`to_dict`/`from_dict`). Files written before the learner settings
were typed hold them as an SB3 `learner_kwargs` dict; `from_dict` and `upgrade_tree` convert it.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import nn

from agents.config_flags import override
from agents.plan_following import ImaginationA2C, ImaginationPPO
from imagined_env.config_tree import flatten, from_tree
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.guidance import GuidanceConfig
from imagined_env.registration import TASKS, VERSIONS
from imagined_env.training import TrainConfig
from imagined_env.utils import resolve_device
from imagined_env.world_model import WorldModelConfig

SUPPORTED_TASKS = tuple(f"{task}-{version}" for task in TASKS for version in VERSIONS)
IMAGINATION_LEARNERS: dict[str, type[OnPolicyAlgorithm]] = {"ppo": ImaginationPPO, "a2c": ImaginationA2C}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
"""Names allowed for `PolicyConfig.activation`."""


@dataclass(frozen=True)
class PolicyConfig:
    """The learner's actor-critic network (SB3 `policy_kwargs`)."""

    pi: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor."""
    vf: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the critic."""
    activation: str = "relu"
    """Activation of the hidden layers: relu, tanh, elu or gelu."""
    log_std_init: float = 0.0
    """Initial log std of the Gaussian policy (0: std 1, the scale of the action bounds)."""
    ortho_init: bool = False
    """Orthogonal initialisation of the weights, as SB3 does by default."""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; "
                             f"choose one of {', '.join(ACTIVATIONS)}")
        for name in ("pi", "vf"):
            sizes = getattr(self, name)
            if not all(isinstance(n, int) and n >= 1 for n in sizes):
                raise ValueError(f"policy.{name} must be a list of positive integers, got {sizes!r}")


@dataclass(frozen=True)
class LearnerConfig:
    """ImaginationPPO / ImaginationA2C settings; n_steps is the world model's horizon, so one rollout is
    one imagined trajectory per env. Fields marked PPO or A2C are ignored by the other algorithm."""

    learning_rate: float = 3e-4
    """Adam (or RMSprop) step size; see also final_learning_rate and target_update_kl."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.9
    """GAE lambda of the advantage estimate."""
    ent_coef: float = 0.03
    """Weight of the entropy bonus: keeps the policy's std from collapsing."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Clip of the global gradient norm."""
    normalize_advantage: bool = True
    """Standardise advantages within each batch."""
    n_epochs: int = 5
    """PPO: passes over each rollout."""
    batch_size: int = 256
    """PPO: minibatch size."""
    clip_range: float = 0.2
    """PPO: clip of the probability ratio."""
    target_kl: float | None = 0.1
    """PPO: stop an update's epochs once the approximate KL exceeds 1.5 x this (None: never)."""
    use_rms_prop: bool = True
    """A2C: RMSprop as SB3's default; False uses Adam."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The actor-critic network."""

    def __post_init__(self) -> None:
        positive = {"learning_rate": self.learning_rate, "max_grad_norm": self.max_grad_norm,
                    "n_epochs": self.n_epochs, "batch_size": self.batch_size, "clip_range": self.clip_range}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"learner.{name} must be > 0, got {value}")
        for name, value in {"gamma": self.gamma, "gae_lambda": self.gae_lambda}.items():
            if not 0 <= value <= 1:
                raise ValueError(f"learner.{name} must lie in [0, 1], got {value}")
        if not (self.ent_coef >= 0 and self.vf_coef >= 0):
            raise ValueError("learner.ent_coef and vf_coef must be >= 0, "
                             f"got {self.ent_coef}, {self.vf_coef}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"learner.target_kl must be None or > 0, got {self.target_kl}")


def _cpu_world_model() -> WorldModelConfig:
    denoiser = DenoiserConfig(kind="causal-recurrent", width=128, depth=2, time_dim=64)
    return WorldModelConfig(horizon=5, denoiser=denoiser,
                            guidance=GuidanceConfig(scale_lr=0.2), scale_actions=False,
                            condition_on_last_action=False, readout="rollout")


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything that defines a run; never mutated. Schedules count real environment steps, prefill
    included. The defaults are the newest cpu preset for HalfCheetah; `agents.presets` holds the others."""

    env_id: str = "HalfCheetah-v4"
    """Real MuJoCo task."""
    algo: str = "ppo"
    """Learner trained in imagination: ppo or a2c."""
    seed: int = 0
    """Seeds the learner, the real env, the world-model trainer and the global RNGs."""
    prefill_steps: int = 5000
    """Uniform-random steps before any learning."""
    initial_world_model_steps: int = 4000
    """World-model gradient steps right after the prefill."""
    world_model_steps_per_real_step: float = 1.0
    """World-model gradient steps per real step after the prefill."""
    policy_every: int = 250
    """Real steps between policy updates; also the collection chunk of the loop."""
    # Why: on HalfCheetah a policy std near 1 turns the real cheetah over in almost every episode, and
    # the world model then learns mostly from a cheetah on its back.
    collection_std_scale: float = 1.0
    """Real collection narrows the policy's noise by this factor; imagination keeps the policy's std."""
    collection_noise_std: float = 0.0
    """Std of extra Gaussian noise on the actions of real collection (action units)."""
    start_state_window: int | None = None
    """Imagined episodes start from the newest this-many real observations (None: the whole buffer)."""
    learning_starts: int = 0
    """Real steps after the prefill with the initial policy, before its first update."""
    n_imagined_envs: int = 1024
    """Imagined trajectories per policy update, in one batched world-model call."""
    n_sample_steps: int | None = 16
    """Diffusion passes per imagination: an even strided subset of the chain (None: all of it)."""
    normalize: bool = True
    """Wrap the imagined env in VecNormalize; collection, guidance and evaluation use its statistics."""
    normaliser_refit_every: int = 10_000
    """Real steps between refits of the world model's normaliser."""
    refit_world_model_steps: int = 500
    """World-model gradient steps right after each normaliser refit, so the model is retrained under the
    statistics it decodes with."""
    eval_every: int = 5000
    """Real steps between evaluations on the real task; one more at the end."""
    eval_episodes: int = 5
    """Deterministic episodes per evaluation."""
    eval_max_episode_steps: int | None = None
    """Time limit of evaluation episodes (None: the task's own)."""
    open_loop_states: int = 128
    """Real start states for the world model's open-loop error and action sensitivity at each
    evaluation (0: skip these diagnostics)."""
    checkpoint_every: int = 10_000
    """Real steps between checkpoints; one more at the end."""
    world_model: WorldModelConfig = field(default_factory=_cpu_world_model)
    """Architecture, schedule, sampler and guidance of the world model."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, batch_size=256))
    """Optimisation of the world model."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Settings of the on-policy learner."""
    final_learning_rate: float | None = None
    """Decay the learning rate linearly in real steps to this value at the budget (None: constant)."""
    target_update_kl: float | None = None
    """PPO: adapt the learning rate (x or / 1.5, at most learner.learning_rate) toward this mean approx_kl
    per policy update (None: no adaptation)."""
    device: str = "auto"
    """Torch device of the world model and the learner."""

    def __post_init__(self) -> None:
        if self.env_id not in SUPPORTED_TASKS:
            raise ValueError(f"unknown task {self.env_id!r}; supported: {', '.join(SUPPORTED_TASKS)}")
        if self.algo not in IMAGINATION_LEARNERS:
            raise ValueError(f"unknown algo {self.algo!r}; supported: {', '.join(IMAGINATION_LEARNERS)}")
        _check_counts(self)
        chain = self.world_model.schedule.n_steps
        if self.n_sample_steps is not None and self.n_sample_steps > chain:
            raise ValueError(f"n_sample_steps ({self.n_sample_steps}) exceeds the world model's chain "
                             f"(world_model.schedule.n_steps = {chain}); "
                             f"give at most {chain}, or none for all")
        if self.prefill_steps <= self.world_model.horizon:
            raise ValueError(f"prefill_steps ({self.prefill_steps}) must exceed the world model horizon "
                             f"({self.world_model.horizon}) so that training windows exist")
        try:
            resolve_device(self.device)
        except RuntimeError as err:
            raise ValueError(f"device {self.device!r} is not a torch device: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Nested dicts of JSON types (tuples become lists), as written to config.json."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoordinatorConfig:
        """The config `to_dict` wrote; a left-out field takes the default of its own dataclass, and a
        `learner_kwargs` dict of older files the value SB3 used where it is silent."""
        if "learner_kwargs" in data:
            base, given = (_sb3_learner_defaults(data.get("algo", cls.algo)),
                           legacy_learner(data["learner_kwargs"]))
            old = {**base, **given, "policy": {**base["policy"], **given.get("policy", {})}}
            data = {**{k: v for k, v in data.items() if k != "learner_kwargs"}, "learner": old}
        return from_tree(cls, data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CoordinatorConfig:
        """The preset `name` (an id or alias of `agents.presets`) for `overrides.get("env_id")`, with
        `overrides` (field names, dotted paths allowed via `agents.presets.build_preset`) applied."""
        from agents.presets import build_preset

        return build_preset(name, overrides.pop("env_id", cls.env_id), overrides)


def _check_counts(config: CoordinatorConfig) -> None:
    at_least = {"seed": 0, "prefill_steps": 1, "initial_world_model_steps": 0, "policy_every": 1,
                "learning_starts": 0, "n_imagined_envs": 1, "normaliser_refit_every": 1,
                "refit_world_model_steps": 0, "eval_every": 1, "eval_episodes": 1, "open_loop_states": 0,
                "checkpoint_every": 1}
    for name, low in at_least.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name in ("n_sample_steps", "eval_max_episode_steps", "start_state_window"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    if not config.collection_std_scale >= 0:
        raise ValueError(f"collection_std_scale must be >= 0, got {config.collection_std_scale}")
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


# ---- the learner's SB3 arguments, and the untyped dict of older files --------------------------------------
def _learner_kwargs(config: CoordinatorConfig) -> dict[str, Any]:
    """The keyword arguments of IMAGINATION_LEARNERS[config.algo] besides policy, env, seed and device."""
    learner, policy = config.learner, config.learner.policy
    kwargs: dict[str, Any] = {
        "n_steps": config.world_model.horizon, "learning_rate": learner.learning_rate, "gamma": learner.gamma,
        "gae_lambda": learner.gae_lambda, "ent_coef": learner.ent_coef, "vf_coef": learner.vf_coef,
        "max_grad_norm": learner.max_grad_norm, "normalize_advantage": learner.normalize_advantage,
        "policy_kwargs": {"net_arch": {"pi": list(policy.pi), "vf": list(policy.vf)},
                          "activation_fn": ACTIVATIONS[policy.activation],
                          "log_std_init": policy.log_std_init, "ortho_init": policy.ortho_init,
                          # the run normalises by VecNormalize (`normalize`) or not at all, as its
                          # presets were measured; not by the policy's own statistics
                          "normalize_observations": False},
    }
    if config.algo == "ppo":
        kwargs.update(n_epochs=learner.n_epochs, batch_size=learner.batch_size, clip_range=learner.clip_range,
                      target_kl=learner.target_kl)
    else:
        kwargs["use_rms_prop"] = learner.use_rms_prop
    return kwargs


_LEGACY_POLICY = {"activation_fn": "activation", "log_std_init": "log_std_init", "ortho_init": "ortho_init"}


def legacy_learner(kwargs: Any) -> dict[str, Any]:
    """An SB3 `learner_kwargs` dict of older files -> the `learner` fields it sets (a partial nested dict);
    a key without a typed setting is a ValueError naming it."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"learner_kwargs must be a JSON object, got {kwargs!r}")  # noqa: TRY004
    plain = [f for f in LearnerConfig.__dataclass_fields__ if f != "policy"]
    unknown = [k for k in kwargs if k not in (*plain, "policy_kwargs")]
    if unknown:
        raise ValueError(f"learner_kwargs key {unknown[0]!r} has no typed setting; known: "
                         f"{', '.join(plain)}, policy_kwargs")
    out: dict[str, Any] = {k: v for k, v in kwargs.items() if k != "policy_kwargs"}
    policy_kwargs = kwargs.get("policy_kwargs", {})
    unknown = [k for k in policy_kwargs if k not in (*_LEGACY_POLICY, "net_arch")]
    if unknown:
        raise ValueError(f"learner_kwargs.policy_kwargs key {unknown[0]!r} has no typed setting; known: "
                         f"net_arch, {', '.join(_LEGACY_POLICY)}")
    policy = {_LEGACY_POLICY[k]: v for k, v in policy_kwargs.items() if k in _LEGACY_POLICY}
    net_arch = policy_kwargs.get("net_arch")
    if isinstance(net_arch, dict):
        policy.update(net_arch)
    elif net_arch is not None:
        policy.update(pi=net_arch, vf=net_arch)
    if policy:
        out["policy"] = policy
    flatten(LearnerConfig, out, "learner.")  # names an unknown net_arch key
    return out


def _sb3_learner_defaults(algo: str) -> dict[str, Any]:
    """The learner settings SB3 used where an older `learner_kwargs` was silent (gamma and gae_lambda
    were the coordinator's)."""
    if algo not in IMAGINATION_LEARNERS:
        raise ValueError(f"unknown algo {algo!r}; supported: {', '.join(IMAGINATION_LEARNERS)}")
    params = inspect.signature(IMAGINATION_LEARNERS[algo]).parameters
    out = {k: params[k].default for k in LearnerConfig.__dataclass_fields__ if k in params}
    policy = {"pi": (64, 64), "vf": (64, 64), "activation": "tanh", "log_std_init": 0.0, "ortho_init": True}
    return {**out, "gamma": 0.99, "gae_lambda": 0.9, "policy": policy}


def sb3_default_learner(algo: str) -> LearnerConfig:
    """The settings SB3 itself uses for `algo`, with the coordinator's gamma 0.99 and gae_lambda 0.9."""
    return from_tree(LearnerConfig, _sb3_learner_defaults(algo))


def upgrade_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """A partial nested config (e.g. a `--config` file) with an older `learner_kwargs` dict turned into the
    `learner` fields it sets, merged over any `learner` the tree also gives."""
    if "learner_kwargs" not in tree:
        return tree
    out = {k: v for k, v in tree.items() if k != "learner_kwargs"}
    out["learner"] = {**flatten(LearnerConfig, out.get("learner", {})),
                      **flatten(LearnerConfig, legacy_learner(tree["learner_kwargs"]))}
    return out


def apply(config: CoordinatorConfig, changes: dict[str, Any]) -> CoordinatorConfig:
    """`config` with `changes` (nested or dotted, older `learner_kwargs` allowed) applied."""
    return override(config, upgrade_tree(changes))
