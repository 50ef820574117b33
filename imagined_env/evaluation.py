"""World-model error against the simulator (shared/polygrad.md section 6): reset MuJoCo to real start
states, execute the *generated* actions open-loop, and compare the generated observations and rewards
with the real ones step by step. Pure of training: nothing here updates a model or its guidance scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from imagined_env.data.collect import set_mujoco_state
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.world_model import Imagination, WorldModel


@dataclass(frozen=True)
class OpenLoopError:
    """Errors per imagined step k = 0..H-1 (environment units), averaged over trajectories still alive.

    obs_mse [H]: mean over trajectories and dimensions of (generated s_{k+1} - real s_{k+1})^2;
    reward_mse [H]: of r_k; n_valid [H]: trajectories compared at step k (a trajectory stops counting
    after the first termination, real or generated); no_motion_mse [H]: of (real s_0 - real s_{k+1})^2
    over the same trajectories, the error of predicting no motion: a scale for what an error means.
    Entries with n_valid = 0 are NaN.
    """

    obs_mse: np.ndarray
    reward_mse: np.ndarray
    n_valid: np.ndarray
    no_motion_mse: np.ndarray


def real_start_obs(env: gym.Env, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """The observations [B, obs] the simulator shows at states qpos [B, nq], qvel [B, nv].

    Use them as start states when imagining with another model, so that its errors are comparable.
    """
    return np.stack([set_mujoco_state(env, p, v) for p, v in zip(qpos, qvel, strict=True)]).astype(np.float32)


def open_loop_error(
    env: gym.Env,
    source: WorldModel | Imagination,
    qpos: np.ndarray,
    qvel: np.ndarray,
    *,
    policy: GaussianPolicyFn | None = None,
    n_sample_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> OpenLoopError:
    """Open-loop error of imagined trajectories from real states qpos [B, nq], qvel [B, nv].

    `source` is a `WorldModel` (it imagines from `real_start_obs`, guided by `policy`, without tuning
    its guidance scale) or a ready `Imagination` generated from those start observations (any model,
    e.g. the autoregressive baselines). `env` is a MuJoCo env of the same task; its state is
    overwritten, and actions are clipped to its bounds as the simulator would see them.
    """
    qpos, qvel = np.atleast_2d(qpos), np.atleast_2d(qvel)
    starts = real_start_obs(env, qpos, qvel)
    if isinstance(source, Imagination):
        imagination = source
    else:
        imagination = source.imagine(starts, policy, generator=generator, n_sample_steps=n_sample_steps,
                                     adapt_guidance=False)
    obs, actions, rewards, terms = (t.detach().cpu().numpy() for t in (
        imagination.observations, imagination.actions, imagination.rewards, imagination.terminations))
    if obs.shape[0] != len(starts) or not np.allclose(obs[:, 0], starts, atol=1e-4):
        raise ValueError("the imagination does not start from the observations at the given qpos/qvel")
    real_obs, real_rewards, real_terms = _execute(env, qpos, qvel, actions)
    ended_before = np.cumsum(terms | real_terms, axis=1) - (terms | real_terms)
    valid = ended_before == 0
    obs_err, no_motion_err = (((pred - real_obs) ** 2).mean(axis=2) for pred in (obs[:, 1:], starts[:, None]))
    return OpenLoopError(obs_mse=_masked_mean(obs_err, valid),
                         reward_mse=_masked_mean((rewards - real_rewards) ** 2, valid),
                         n_valid=valid.sum(axis=0), no_motion_mse=_masked_mean(no_motion_err, valid))


def _masked_mean(errors: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over trajectories of errors [B, H] where valid [B, H]: [H], NaN where no row is valid.
    Selects rather than multiplies, so padding that diverged to inf or NaN cannot leak in."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, errors, 0.0).sum(axis=0) / valid.sum(axis=0)


def _execute(env: gym.Env, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step the bare simulator (no time limit) through actions [B, H, act] from each start state.

    Returns next observations [B, H, obs], rewards [B, H] and terminations [B, H]; steps after a real
    termination are not simulated (zeros, masked by the caller).
    """
    batch, horizon, _ = actions.shape
    sim = env.unwrapped
    low, high = env.action_space.low, env.action_space.high
    next_obs = np.zeros((batch, horizon, env.observation_space.shape[0]), np.float32)
    rewards = np.zeros((batch, horizon), np.float32)
    terms = np.zeros((batch, horizon), bool)
    for b in range(batch):
        set_mujoco_state(env, qpos[b], qvel[b])
        for k in range(horizon):
            next_obs[b, k], rewards[b, k], terms[b, k], _, _ = sim.step(np.clip(actions[b, k], low, high))
            if terms[b, k]:
                break
    return next_obs, rewards, terms


@dataclass(frozen=True)
class ActionSensitivity:
    """Does the model's return respond to a change of actions as the simulator's does?

    From each real start state two action sequences a and b are replayed open-loop, by the model and by
    the simulator. correlation: Pearson correlation over start states of the H-step return differences
    R(a) - R(b), imagined against real (1 = the model ranks action sequences as the simulator does; the
    quantity a policy gradient needs, which the open-loop MSE does not measure). real_std / imagined_std:
    spread of those differences. n: start states compared (those without a termination in either run).
    """

    correlation: float
    real_std: float
    imagined_std: float
    n: int


def action_sensitivity(
    env: gym.Env,
    model: WorldModel,
    qpos: np.ndarray,
    qvel: np.ndarray,
    actions_a: np.ndarray,
    actions_b: np.ndarray,
    *,
    n_sample_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> ActionSensitivity:
    """Paired return differences of action sequences actions_a, actions_b [B, H, act] from real states
    qpos [B, nq], qvel [B, nv] (see `ActionSensitivity`). `env` is overwritten as in `open_loop_error`."""
    qpos, qvel = np.atleast_2d(qpos), np.atleast_2d(qvel)
    starts = real_start_obs(env, qpos, qvel)
    imagined, real, ended = [], [], np.zeros(len(starts), bool)
    for actions in (actions_a, actions_b):
        if np.shape(actions) != (len(starts), model.horizon, model.spec.act_dim):
            raise ValueError(f"action sequences must have shape {(len(starts), model.horizon, model.spec.act_dim)}, "
                             f"got {np.shape(actions)}")
        out = model.imagine(starts, actions=actions, generator=generator, n_sample_steps=n_sample_steps)
        _, real_rewards, real_terms = _execute(env, qpos, qvel, np.asarray(actions, np.float32))
        imagined.append(out.rewards.sum(dim=1).cpu().numpy())
        real.append(real_rewards.sum(axis=1))
        ended |= real_terms.any(axis=1) | out.terminations.any(dim=1).cpu().numpy()
    keep = ~ended
    d_imagined, d_real = (imagined[0] - imagined[1])[keep], (real[0] - real[1])[keep]
    correlation = float(np.corrcoef(d_imagined, d_real)[0, 1]) if keep.sum() > 1 else float("nan")
    return ActionSensitivity(correlation=correlation, real_std=float(d_real.std()),
                             imagined_std=float(d_imagined.std()), n=int(keep.sum()))
