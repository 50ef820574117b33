"""On-policy learning in imagination with SB3: learners that record exactly the planned actions.

`ImaginationPPO` / `ImaginationA2C` are drop-in replacements for SB3's PPO / A2C. On an imagined
env they (1) guide the env's plans by their own policy, wired once by reference, (2) record the
planned action (whose consequences the env generated) with its log-probability under the current
policy, and (3) make the env re-plan after every update, so no update sees an older policy's
trajectories. On any other env they behave exactly like SB3's classes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize

from agents.sb3_guidance import sb3_guide
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.single_env import ImaginedEnv
from imagined_env.vector_env import ImaginedVectorEnv


class PlanFollowingPolicy(ActorCriticPolicy):
    """An MlpPolicy whose rollout action is the imagined plan's next action, when wired to a plan."""

    plan_source: ImaginedVectorEnv | None = None
    plan_observer: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    """Called with the observations and planned actions of each rollout step that follows a plan."""

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        if self.plan_source is None:
            return super().forward(obs, deterministic)
        planned = torch.as_tensor(self.plan_source.planned_actions(), device=self.device)
        distribution = self.get_distribution(obs)
        if self.plan_observer is not None:
            self.plan_observer(obs, planned)
        return planned, self.predict_values(obs), distribution.log_prob(planned)


def find_imagined(env: VecEnv | None) -> tuple[ImaginedVectorEnv | None, VecNormalize | None]:
    """The imagined env under any stack of SB3 VecEnv wrappers, and the VecNormalize among them.

    A DummyVecEnv of one `ImaginedEnv` (what SB3 builds from `"Imagined-HalfCheetah-v4"`) counts: its
    single-env vector is the plan source. Several would each generate alone: that is refused.
    """
    vec_normalize = None
    while isinstance(env, VecEnvWrapper):
        if isinstance(env, VecNormalize) and vec_normalize is None:
            vec_normalize = env
        env = env.venv
    if isinstance(env, ImaginedSB3VecEnv):
        return env.imagined, vec_normalize
    if isinstance(env, DummyVecEnv) and any(isinstance(e.unwrapped, ImaginedEnv) for e in env.envs):
        if env.num_envs != 1:
            raise ValueError(f"a DummyVecEnv of {env.num_envs} imagined envs generates their trajectories "
                             "one env at a time; use agents.make_imagined_vec_env(env_id, n_envs) for one "
                             "batched call per rollout")
        return env.envs[0].unwrapped.vec, vec_normalize
    return None, vec_normalize


class _ImaginationMixin:
    """Wiring shared by the PPO and A2C variants."""

    policy_aliases: ClassVar[dict[str, type[ActorCriticPolicy]]] = {
        "MlpPolicy": PlanFollowingPolicy, "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy}
    imagined: ImaginedVectorEnv | None = None

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        self._wire(self.env)  # type: ignore[attr-defined]

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)  # type: ignore[misc]
        self._wire(self.env)  # type: ignore[attr-defined]

    def _wire(self, env: VecEnv | None) -> None:
        imagined, vec_normalize = find_imagined(env)
        self.imagined = imagined
        policy = self.policy  # type: ignore[attr-defined]
        if isinstance(policy, PlanFollowingPolicy):
            policy.plan_source = imagined
        if imagined is not None:
            imagined.set_policy(sb3_guide(policy, vec_normalize))

    def train(self) -> None:
        super().train()  # type: ignore[misc]
        if self.imagined is not None:
            self.imagined.replan()


class ImaginationPPO(_ImaginationMixin, PPO):
    """SB3 PPO that follows imagined plans (see module docstring)."""


class ImaginationA2C(_ImaginationMixin, A2C):
    """SB3 A2C that follows imagined plans (see module docstring)."""
