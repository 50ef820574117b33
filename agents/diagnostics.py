"""What the run measures besides its returns: the spread of the imagined actions under the policy, the
world model's open-loop error, action sensitivity and on-policy action ranking on real states, and the
rows they are logged in."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents.plan_following import PlanFollowingPolicy
from agents.run_log import RunLogger
from agents.simulator_model import policy_rollout
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.diffusion.guidance import GaussianPolicyFn, row_spreads, standardised_spread
from imagined_env.evaluation import (
    ActionRanking,
    ActionSensitivity,
    OpenLoopError,
    ValueFn,
    action_ranking,
    action_sensitivity,
    open_loop_error,
)
from imagined_env.world_model import WorldModel

SENSITIVITY_NOISE = 0.25
"""Std of the second action sequence's offset from the first, as a fraction of the action range."""


class SpreadProbe(BaseCallback):
    """Std of the standardised imagined actions under the policy that collected them (1 = on-policy
    spread, the target of guidance tuning), overall and at the first and last imagined step. The
    plan-following policy reports each rollout step; the spread is read at rollout end, before the
    update changes the policy."""

    def __init__(self, std_floor: float):
        super().__init__()
        self.std_floor = std_floor
        self.spread = self.first_spread = self.last_spread = float("nan")
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe(self, obs: torch.Tensor, planned: torch.Tensor) -> None:
        self.steps.append((obs.to(torch.float32), planned.to(torch.float32)))

    def _on_training_start(self) -> None:
        policy = self.model.policy
        if not isinstance(policy, PlanFollowingPolicy):
            raise TypeError(f"the spread probe needs a PlanFollowingPolicy, got {type(policy).__name__}")
        policy.plan_observer = self.observe

    def _on_rollout_start(self) -> None:
        self.steps = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if not self.steps:
            return
        policy = cast(PlanFollowingPolicy, self.model.policy)  # checked at training start
        obs = torch.cat([o for o, _ in self.steps]).to(policy.device)
        actions = torch.cat([a for _, a in self.steps]).to(policy.device)
        with torch.no_grad():
            dist = cast(torch.distributions.Normal, policy.get_distribution(obs).distribution)
        mean, std = dist.mean, dist.stddev.clamp(min=self.std_floor)
        self.spread = standardised_spread(actions, mean, std)
        # step k of the rollout is row k of the imagined trajectories unless one ended early
        n_steps, act_dim = len(self.steps), actions.shape[-1]
        per_step = row_spreads(*(v.view(n_steps, -1, act_dim).transpose(0, 1) for v in (actions, mean, std)))
        self.first_spread, self.last_spread = float(per_step[0]), float(per_step[-1])
        self.steps = []

    def _on_training_end(self) -> None:
        cast(PlanFollowingPolicy, self.model.policy).plan_observer = None


@dataclass(frozen=True)
class Critic:
    """The learner's value function in environment units, with the discount and GAE lambda it is used with."""

    value: ValueFn
    gamma: float
    gae_lambda: float

    def as_kwargs(self) -> dict[str, Any]:
        return {"value": self.value, "gamma": self.gamma, "gae_lambda": self.gae_lambda}


@dataclass(frozen=True)
class WorldModelErrors:
    """The world model measured on real start states at one evaluation (ranking None with < 2 states)."""

    open_loop: OpenLoopError
    sensitivity: ActionSensitivity
    ranking: ActionRanking | None


def world_model_errors(sim: gym.Env, world_model: WorldModel, buffer: EpisodeBuffer, guide: GaussianPolicyFn,
                       n_states: int, n_sample_steps: int | None, seed: tuple[int, ...],
                       critic: Critic | None = None, sigmas: tuple[float, ...] = (0.1, 0.3)
                       ) -> WorldModelErrors:
    """Open-loop error of policy-guided imaginations; action sensitivity (do imagined H-step returns of
    two random action sequences differ as the real ones do?); and the on-policy `action_ranking` of the
    policy's own action sequences, from `n_states` real buffer states. A fixed draw per `seed` (run seed,
    real steps): a resumed run measures the same states. `sim` is a MuJoCo env whose state the replays
    overwrite.

    The ranked sequences are sampled step by step from the policy's Gaussian at the simulator's states
    under the actions drawn so far (`policy_rollout`): the sequences the policy would act out, not
    shaped by the model being measured, and exact policy samples where guided imagination is not.
    With the learner's `critic`, the ranking also covers the advantages the learner computes; `sigmas`: the
    scales of the ranked action changes."""
    rng = np.random.default_rng(list(seed))
    _, qpos, qvel = buffer.start_states(rng, n_states)
    generator = torch.Generator(device=world_model.device).manual_seed(int(rng.integers(2 ** 62)))
    error = open_loop_error(sim, world_model, qpos, qvel, policy=guide, n_sample_steps=n_sample_steps,
                            generator=generator)
    space = cast(gym.spaces.Box, sim.action_space)
    shape = (n_states, world_model.horizon, space.shape[0])
    a = rng.uniform(space.low, space.high, shape).astype(np.float32)
    offset = rng.normal(0.0, SENSITIVITY_NOISE, shape) * (space.high - space.low)
    b = np.clip(a + offset, space.low, space.high)
    sensitivity = action_sensitivity(sim, world_model, qpos, qvel, a, b.astype(np.float32),
                                     n_sample_steps=n_sample_steps, generator=generator)
    ranking = None
    if n_states >= 2:
        rollout = policy_rollout(sim, qpos, qvel, world_model.horizon, guide, generator)
        on_policy = np.clip(rollout.actions.numpy(), space.low, space.high)
        ranking = action_ranking(sim, world_model, qpos, qvel, on_policy, rng, sigmas=sigmas,
                                 seed=int(rng.integers(2 ** 62)),
                                 leak_rows=None if world_model.horizon > 1 else (),
                                 n_sample_steps=n_sample_steps,
                                 **({} if critic is None else critic.as_kwargs()))
    return WorldModelErrors(error, sensitivity, ranking)


def record_evaluation(logger: RunLogger, row: dict[str, Any],
                      errors: WorldModelErrors | None) -> dict[str, Any]:
    """`row` (an evaluation's real return and counters) with the world model's errors, also logged (the
    ranking's figures under their `world_model/` names in the logger, without that prefix in the row)."""
    logger.record("eval/mean_reward", row["mean_return"])
    logger.record("eval/std_reward", row["std_return"])
    if errors is not None:
        error, sensitivity = errors.open_loop, errors.sensitivity
        row["open_loop_mse"] = float(np.nanmean(error.obs_mse))
        row["open_loop_reward_mse"] = float(np.nanmean(error.reward_mse))
        row["return_difference_corr"] = sensitivity.correlation
        logger.record("world_model/open_loop_mse", row["open_loop_mse"])
        logger.record("world_model/open_loop_reward_mse", row["open_loop_reward_mse"])
        logger.record("world_model/return_difference_corr", sensitivity.correlation)
        for key, value in ({} if errors.ranking is None else errors.ranking.as_log_dict()).items():
            logger.record(key, value)
            row[key.removeprefix("world_model/")] = value
    return row


def record_progress(logger: RunLogger, counters: dict[str, float], guidance_scale: float, probe: SpreadProbe,
                    losses: list[float], real_returns: list[float]) -> None:
    """The run's own columns of a progress row (`counters` under time/); the learner adds train/."""
    for key, value in counters.items():
        logger.record(f"time/{key}", value)
    logger.record("guidance/scale", guidance_scale)
    if math.isfinite(probe.spread):
        logger.record("guidance/spread", probe.spread)
        logger.record("guidance/spread_first_step", probe.first_spread)
        logger.record("guidance/spread_last_step", probe.last_spread)
    if losses:
        logger.record("world_model/loss", float(np.mean(losses)))
    if real_returns:
        logger.record("rollout/real_ep_rew_mean", float(np.mean(real_returns)))
