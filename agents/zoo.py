"""The model-free baselines a fair comparison uses: RL Baselines3 Zoo's tuned MuJoCo settings, as data.

Values are those of the Zoo's `hyperparams/ppo.yml` (identical for the v3 and v4 tasks; used for v5 too),
all with `normalize: true` (VecNormalize of observations and rewards, its gamma = the algorithm's) and
one env. The Zoo gives Walker2d no `policy_kwargs`, so its network is SB3's default (Tanh, [64, 64],
log_std_init 0, orthogonal init); we keep that rather than invent a tuning the Zoo did not publish.
A2C in the Zoo's MuJoCo benchmark is SB3's defaults plus VecNormalize. SAC follows the Zoo's
`hyperparams/sac.yml` for the v3 MuJoCo tasks (used for v4 too), without normalisation, as the Zoo.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

ZOO_POLICY_KWARGS: dict[str, Any] = {
    "log_std_init": -2.0,
    "ortho_init": False,
    "activation_fn": nn.ReLU,
    "net_arch": {"pi": [256, 256], "vf": [256, 256]},
}
"""`policy_kwargs` of the Zoo's tuned HalfCheetah and Hopper PPO."""

ZOO_PPO: dict[str, dict[str, Any]] = {
    "HalfCheetah": {
        "n_steps": 512, "batch_size": 64, "gamma": 0.98, "learning_rate": 2.0633e-05,
        "ent_coef": 0.000401762, "clip_range": 0.1, "n_epochs": 20, "gae_lambda": 0.92,
        "max_grad_norm": 0.8, "vf_coef": 0.58096, "policy_kwargs": ZOO_POLICY_KWARGS,
    },
    "Hopper": {
        "n_steps": 512, "batch_size": 32, "gamma": 0.999, "learning_rate": 9.80828e-05,
        "ent_coef": 0.00229519, "clip_range": 0.2, "n_epochs": 5, "gae_lambda": 0.99,
        "max_grad_norm": 0.7, "vf_coef": 0.835671, "policy_kwargs": ZOO_POLICY_KWARGS,
    },
    "Walker2d": {
        "n_steps": 512, "batch_size": 32, "gamma": 0.99, "learning_rate": 5.05041e-05,
        "ent_coef": 0.000585045, "clip_range": 0.1, "n_epochs": 20, "gae_lambda": 0.95,
        "max_grad_norm": 1.0, "vf_coef": 0.871923,
    },
}
"""Tuned PPO keyword arguments per task (Zoo `ppo.yml`, 1M steps)."""

ZOO_SAC: dict[str, dict[str, Any]] = {task: {"learning_starts": 10_000}
                                     for task in ("HalfCheetah", "Hopper", "Walker2d")}
"""Tuned SAC keyword arguments per task (Zoo `sac.yml`, HalfCheetah-v3, Hopper-v3 and Walker2d-v3 share
one block, 1M steps): 10k uniform-random steps before learning; everything else is SB3's default SAC."""

ZOO_RETURNS_1M: dict[str, dict[str, float]] = {
    "ppo": {"HalfCheetah": 5819.0, "Hopper": 2410.0, "Walker2d": 3479.0},
    "a2c": {"HalfCheetah": 3041.0, "Hopper": 733.0, "Walker2d": 582.0},
}
"""The Zoo's published 1M-step returns, for context in reports."""


@dataclass(frozen=True)
class BaselineSettings:
    """One model-free baseline: algorithm, its keyword arguments, and the VecNormalize it needs."""

    algo: str
    task: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    norm_obs: bool = True
    norm_reward: bool = True

    @property
    def gamma(self) -> float:
        """SB3's defaults are 0.99 for PPO, A2C and SAC; VecNormalize discounts rewards with the same
        gamma."""
        return float(self.kwargs.get("gamma", 0.99))

    @property
    def normalized(self) -> bool:
        return self.norm_obs or self.norm_reward

    def describe(self) -> str:
        """One line naming the source of the settings, for tables and plot legends."""
        norm = " + VecNormalize" if self.normalized else ", no normalisation"
        if not self.kwargs:
            return f"SB3 default {self.algo.upper()}{norm} (as the RL Zoo)"
        shown = {k: v for k, v in self.kwargs.items() if k != "policy_kwargs"}
        tuned = "policy_kwargs" in self.kwargs
        net = "ReLU [256,256], log_std_init -2, no ortho init" if tuned else "SB3 default network"
        rest = "; SB3 defaults otherwise" if self.algo == "sac" else ""
        items = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        return f"RL Zoo tuned {self.task} {self.algo.upper()} ({items}; {net}{rest}){norm}"


def task_name(env_id: str) -> str:
    """"HalfCheetah-v4" -> "HalfCheetah"."""
    return env_id.rsplit("-v", 1)[0]


def zoo_settings(algo: str, env_id: str) -> BaselineSettings:
    """The Zoo's settings of `algo` ("ppo", "a2c" or "sac") on `env_id`; ValueError if the Zoo has none."""
    task = task_name(env_id)
    if algo == "a2c":
        return BaselineSettings("a2c", task)
    tuned = {"ppo": ZOO_PPO, "sac": ZOO_SAC}
    if algo not in tuned:
        raise ValueError(f"no RL Zoo baseline for algorithm {algo!r}; choose 'ppo', 'a2c' or 'sac'")
    if task not in tuned[algo]:
        raise ValueError(f"the RL Zoo has no tuned {algo.upper()} for {env_id!r}; tuned tasks: "
                         f"{', '.join(tuned[algo])}")
    normalized = algo != "sac"
    return BaselineSettings(algo, task, dict(tuned[algo][task]), norm_obs=normalized, norm_reward=normalized)
