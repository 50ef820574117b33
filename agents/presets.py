"""Versioned presets of `CoordinatorConfig`: each is a diff from its parent (a root's parent is the
dataclass defaults), so a cited id keeps meaning the same config when newer versions are added.

Changing a `CoordinatorConfig` default means adding a preset version, not editing one: the defaults
must equal the newest cpu preset (a test checks), and a root's diff must keep its old values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.config import CoordinatorConfig, LearnerConfig, PolicyConfig, apply
from imagined_env.training import TrainConfig
from imagined_env.world_model import WorldModelConfig


@dataclass(frozen=True)
class Preset:
    """One registered preset: `changes` ({dotted field: value}) applied over `parent`'s config."""

    id: str
    parent: str | None
    changes: dict[str, Any]
    description: str


_SB3_POLICY = PolicyConfig(pi=(64, 64), vf=(64, 64), activation="tanh", log_std_init=0.0, ortho_init=True)

_PRESETS: dict[str, Preset] = {p.id: p for p in (
    Preset("cpu-v1", None, {
        "initial_world_model_steps": 2000, "n_sample_steps": 32, "open_loop_states": 16,
        "refit_world_model_steps": 0, "world_model.scale_actions": True,
        "world_model_steps_per_real_step": 0.5, "world_model.guidance.scale_lr": 0.03,
        "world_model.condition_on_last_action": True, "learner.ent_coef": 0.0,
        "world_model.denoiser.kind": "mlp", "world_model.denoiser.width": 256,
        "world_model.denoiser.depth": 3, "world_model.readout": "chain",
    }, "PPO on a small world model (H 5, width 256, depth 3) that learns on 2 CPU cores"),
    Preset("cpu-v2", "cpu-v1", {
        "initial_world_model_steps": 4000, "n_sample_steps": 16, "open_loop_states": 128,
        "refit_world_model_steps": 500, "world_model.scale_actions": False,
        "world_model_steps_per_real_step": 1.0,
    }, "actions at full strength in the denoiser, 1 world-model step per real step, retraining after refits"),
    Preset("cpu-v3", "cpu-v2", {"world_model.guidance.scale_lr": 0.2},
           "guidance scale adapts faster (scale_lr 0.2)"),
    Preset("cpu-v4", "cpu-v3", {"world_model.condition_on_last_action": False},
           "the last row's action is hidden from the denoiser"),
    Preset("cpu-v5", "cpu-v4", {"learner.ent_coef": 0.03}, "entropy bonus 0.03"),
    Preset("cpu-v6", "cpu-v5", {
        "world_model.denoiser.kind": "causal-mlp", "world_model.denoiser.width": 64,
        "world_model.readout": "rollout",
    }, "a causal MLP denoiser (64 per transition) read out by its policy rollout"),
    Preset("cpu-v7", "cpu-v6", {
        "world_model.denoiser.kind": "causal-recurrent", "world_model.denoiser.width": 128,
        "world_model.denoiser.depth": 2,
    }, "a causal recurrent denoiser (a 128-wide state, 2 layers per step)"),
    Preset("paper-v1", None, {
        "prefill_steps": 5000, "initial_world_model_steps": 1000, "world_model_steps_per_real_step": 1.0,
        "policy_every": 4, "learning_starts": 0, "n_imagined_envs": 1024, "n_sample_steps": None,
        "normalize": False, "eval_every": 10_000, "eval_episodes": 20, "checkpoint_every": 50_000,
        "world_model": WorldModelConfig(), "train": TrainConfig(), "algo": "a2c",
        "learner": LearnerConfig(learning_rate=3e-4, ent_coef=1e-5, max_grad_norm=0.1,
                                 normalize_advantage=True, use_rms_prop=False, policy=_SB3_POLICY),
    }, "the paper's ratios and model sizes with a one-step actor-critic (A2C with Adam): a GPU recipe"),
)}

ALIASES = {"cpu": "cpu-v7", "paper": "paper-v1"}
"""Short names: `cpu` is the newest cpu preset."""

TASK_DEFAULTS: dict[str, dict[str, Any]] = {"Hopper": {"world_model.schedule.tau": 0.1}}
"""Per task, fields every preset sets before the caller's overrides (Hopper: the paper's schedule)."""


def preset_ids() -> list[str]:
    """Every accepted name: the aliases, then the versioned ids."""
    return [*ALIASES, *_PRESETS]


def resolve(name: str) -> str:
    """The versioned id of `name` (an id or an alias); ValueError listing the choices otherwise."""
    name = ALIASES.get(name, name)
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_ids())}")
    return name


def describe(name: str) -> str:
    preset = _PRESETS[resolve(name)]
    return f"{preset.parent} + {preset.description}" if preset.parent else preset.description


def preset_changes(name: str) -> list[dict[str, Any]]:
    """The diffs from the root to `name`, in the order they apply."""
    chain: list[dict[str, Any]] = []
    current = _PRESETS[resolve(name)]
    while True:
        chain.insert(0, current.changes)
        if current.parent is None:
            return chain
        current = _PRESETS[current.parent]


def task_defaults(env_id: str) -> dict[str, Any]:
    return TASK_DEFAULTS.get(env_id.rsplit("-v", 1)[0], {})


def build_preset(name: str, env_id: str = CoordinatorConfig.env_id,
                 overrides: dict[str, Any] | None = None) -> CoordinatorConfig:
    """The preset `name` for `env_id`: its diffs, then the task's defaults, then `overrides` (nested or
    dotted; a change to one world-model field keeps the task's other ones)."""
    config = CoordinatorConfig(env_id=env_id)
    for changes in preset_changes(name):
        config = apply(config, changes)
    return apply(apply(config, task_defaults(env_id)), overrides or {})
