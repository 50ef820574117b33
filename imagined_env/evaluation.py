"""A world model measured against the simulator, from real start states.

Open-loop error (the PolyGRAD paper's protocol): reset MuJoCo to real states, execute the actions the
model generated, open-loop, and compare its observations and rewards with the real ones step by step.
Action ranking: does the model order action sequences by return as the simulator does, and, given the
learner's critic, by the advantage the learner computes from them? That is what a policy gradient needs
from it. Pure of training: nothing here updates a model or its guidance scale.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import gymnasium as gym
import numpy as np
import torch

from imagined_env.data.collect import action_bounds, mujoco_env, mujoco_state, set_mujoco_state
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.world_model import Imagination, WorldModel

ValueFn = Callable[[np.ndarray], np.ndarray]
"""A critic in environment units: observations [N, obs] -> values [N] in reward units."""


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
        imagination = source.imagine(starts, policy, generator=generator, n_sample_steps=n_sample_steps)
    obs, actions, rewards, terms = (t.detach().cpu().numpy() for t in (
        imagination.observations, imagination.actions, imagination.rewards, imagination.ended))
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
    sim = mujoco_env(env)
    low, high = action_bounds(env)
    next_obs = np.zeros((batch, horizon, *cast(tuple[int], env.observation_space.shape)), np.float32)
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
            raise ValueError("action sequences must have shape "
                             f"{(len(starts), model.horizon, model.spec.act_dim)}, "
                             f"got {np.shape(actions)}")
        out = model.imagine(starts, actions=actions, generator=generator, n_sample_steps=n_sample_steps)
        _, real_rewards, real_terms = _execute(env, qpos, qvel, np.asarray(actions, np.float32))
        imagined.append(out.rewards.sum(dim=1).cpu().numpy())
        real.append(real_rewards.sum(axis=1))
        ended |= real_terms.any(axis=1) | out.ended.any(dim=1).cpu().numpy()
    keep = ~ended
    d_imagined, d_real = (imagined[0] - imagined[1])[keep], (real[0] - real[1])[keep]
    correlation = float(np.corrcoef(d_imagined, d_real)[0, 1]) if keep.sum() > 1 else float("nan")
    return ActionSensitivity(correlation=correlation, real_std=float(d_real.std()),
                             imagined_std=float(d_imagined.std()), n=int(keep.sum()))


@dataclass(frozen=True)
class ActionRanking:
    """Does the model rank the policy's own action sequences a against nearby ones as the simulator does?

    b = clip(a + N(0, sigma^2)); R is an H-step return up to and including the first termination.
    ranking_independent, ranking_common {sigma: r}: Pearson correlation over start states of imagined
    against real R(b) - R(a), with the model noise of a and b drawn independently (as a learner in
    imagination sees returns) or shared (common random numbers: the model's knowledge of the actions
    without its sampling noise). 0 where the imagined differences do not vary at all (the model ranks
    nothing, e.g. it ignores the actions), NaN where the real ones do not (there is nothing to rank).
    noise_to_signal: std of the difference of two independent imagined returns of the same a, over the
    std of the real R(b) - R(a) at the smallest sigma; near 1, sampling noise hides the actions' effect.
    leak_by_row {k: leak}: when only a_k changes (to b's a_k at the largest sigma), the mean absolute
    imagined change of the rewards of rows before k (common noise) over the mean absolute real change
    of r_k; the real rows before k cannot change, so an exact model has 0. n: start states.
    advantage_ranking {sigma: r}, given the learner's critic V: the same correlation (independent noise)
    for the first action's TD(lambda) return over the H rows (`lambda_returns`), whose V(s_1..s_H) read the
    imagined states, as the learner's advantage does; empty without a critic. The critic turns state
    errors into advantage errors that the reward-only ranking cannot see.
    advantage_ranking_without_critic {sigma: r}: its control from the same runs, the TD(lambda) return with
    V = 0 (the same discounted rewards, no values): the difference is what the critic adds.
    """

    ranking_independent: dict[float, float]
    ranking_common: dict[float, float]
    noise_to_signal: float
    leak_by_row: dict[int, float]
    n: int
    advantage_ranking: dict[float, float] = field(default_factory=dict)
    advantage_ranking_without_critic: dict[float, float] = field(default_factory=dict)

    @property
    def leak(self) -> float:
        """The leak at the latest changed row (by default H - 1, the row the most rows precede)."""
        return self.leak_by_row[max(self.leak_by_row)] if self.leak_by_row else float("nan")

    def as_log_dict(self) -> dict[str, float]:
        """The figures under their logged names: world_model/ranking_{sigma} and ..._common,
        world_model/advantage_ranking_{sigma} (with a critic), world_model/noise_to_signal, world_model/leak
        (and world_model/leak_row{k} for several rows)."""
        out = {}
        for sigma, r in self.ranking_independent.items():
            out[f"world_model/ranking_{sigma:g}"] = r
            out[f"world_model/ranking_{sigma:g}_common"] = self.ranking_common[sigma]
            if sigma in self.advantage_ranking:
                out[f"world_model/advantage_ranking_{sigma:g}"] = self.advantage_ranking[sigma]
        out["world_model/noise_to_signal"] = self.noise_to_signal
        if self.leak_by_row:
            out["world_model/leak"] = self.leak
        if len(self.leak_by_row) > 1:
            out.update({f"world_model/leak_row{k}": v for k, v in self.leak_by_row.items()})
        return out


def action_ranking(
    env: gym.Env,
    model: WorldModel,
    qpos: np.ndarray,
    qvel: np.ndarray,
    actions: np.ndarray,
    rng: np.random.Generator,
    *,
    sigmas: Sequence[float] = (0.1, 0.3),
    seed: int = 0,
    leak_rows: Sequence[int] | None = None,
    n_sample_steps: int | None = None,
    value: ValueFn | None = None,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> ActionRanking:
    """The `ActionRanking` of the policy's action sequences actions [B, H, act] (environment units,
    sampled by the caller, B >= 2) from real states qpos [B, nq], qvel [B, nv].

    `rng` draws the perturbations: one N(0, sigma^2) array of the actions' shape per sigma, in order.
    `seed` seeds the model noise: every common-noise run starts from it, the independent runs continue
    one stream from it. `leak_rows`: the rows k changed one at a time, each in 1..H-1 (None: H - 1).
    `value`, `gamma`, `gae_lambda`: the learner's critic and its discount and GAE lambda, for the
    advantage ranking (no further model or simulator calls: it reads the same runs' states).
    Cost: 2 + 2 len(sigmas) + len(leak_rows) batched `imagine` calls and 1 + len(sigmas) + len(leak_rows)
    open-loop runs in `env`, whose state is overwritten as in `open_loop_error`.
    """
    rows = _checked_ranking_input(env, model, qpos, qvel, actions, sigmas, leak_rows, gamma, gae_lambda)
    a = np.asarray(actions, np.float32)
    low, high = action_bounds(env)
    perturbed = {float(s): np.clip(a + rng.normal(0.0, s, a.shape), low, high).astype(np.float32)
                 for s in sigmas}
    starts = real_start_obs(env, qpos, qvel)

    def imagined(sequences: np.ndarray, generator: torch.Generator) -> Outcome:
        out = model.imagine(starts, actions=sequences, generator=generator, n_sample_steps=n_sample_steps)
        terms = out.ended.detach().cpu().numpy()
        return Outcome(_received(out.rewards.detach().cpu().numpy(), terms), terms,
                       out.observations[:, 1:].detach().cpu().numpy())

    def common() -> torch.Generator:
        return torch.Generator(device=model.device).manual_seed(seed)

    def real(sequences: np.ndarray) -> Outcome:
        next_obs, rewards, terms = _execute(env, qpos, qvel, sequences)
        return Outcome(rewards, terms, next_obs)

    def advantage(outcome: Outcome, critic: ValueFn) -> np.ndarray:
        states = outcome.next_obs
        values = np.asarray(critic(states.reshape(-1, states.shape[-1])), np.float64)
        return lambda_returns(outcome.rewards, values.reshape(states.shape[:2]), outcome.terminations, gamma,
                              gae_lambda)

    with_critic: dict[float, float] = {}
    without_critic: dict[float, float] = {}
    no_value: ValueFn = lambda obs: np.zeros(len(obs))  # noqa: E731  (the control)
    critics = [] if value is None else [(value, with_critic), (no_value, without_critic)]

    stream = common()
    imagined_a = imagined(a, stream)        # also a's common-noise run: the stream starts from the seed
    noise = np.std(imagined(a, stream).total - imagined_a.total)
    real_a = real(a)
    advantage_a = [(advantage(imagined_a, v), advantage(real_a, v)) for v, _ in critics]
    independent, shared, signal = {}, {}, {}
    for sigma, b in perturbed.items():
        real_b, imagined_b = real(b), imagined(b, stream)
        d_real = real_b.total - real_a.total
        signal[sigma] = np.std(d_real)
        independent[sigma] = _correlation(imagined_b.total - imagined_a.total, d_real)
        shared[sigma] = _correlation(imagined(b, common()).total - imagined_a.total, d_real)
        for (v, figures), (imagined_adv, real_adv) in zip(critics, advantage_a):
            figures[sigma] = _correlation(advantage(imagined_b, v) - imagined_adv,
                                          advantage(real_b, v) - real_adv)
    leak = {}
    for k in rows:
        changed = a.copy()
        changed[:, k] = perturbed[max(perturbed)][:, k]
        earlier = np.abs(imagined(changed, common()).rewards[:, :k] - imagined_a.rewards[:, :k]).mean()
        real_change = np.abs(real(changed[:, :k + 1]).rewards[:, k] - real_a.rewards[:, k]).mean()
        leak[k] = _ratio(earlier, real_change)
    return ActionRanking(ranking_independent=independent, ranking_common=shared,
                         noise_to_signal=_ratio(noise, signal[min(signal)]), leak_by_row=leak, n=len(a),
                         advantage_ranking=with_critic, advantage_ranking_without_critic=without_critic)


@dataclass(frozen=True)
class Outcome:
    """What a run of action sequences gives a learner: rewards [B, H] (0 after a termination),
    terminations [B, H] and the states reached, next_obs [B, H, obs]."""

    rewards: np.ndarray
    terminations: np.ndarray
    next_obs: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """The undiscounted H-step return [B]."""
        return self.rewards.sum(axis=1)


def lambda_returns(rewards: np.ndarray, next_values: np.ndarray, terminations: np.ndarray, gamma: float,
                   lam: float) -> np.ndarray:
    """TD(lambda) return of the first row of B H-row episodes cut at H, as GAE computes it (advantage of
    a_0 plus V(s_0)): G_k = r_k + gamma (1 - d_k) [(1 - lam) V(s_{k+1}) + lam G_{k+1}], G_H = V(s_H), where
    d_k says row k ended the episode (s_{k+1} is terminal: no value after it).
    rewards, next_values V(s_1..s_H), terminations d: [B, H] -> [B]."""
    g = next_values[:, -1]
    for k in reversed(range(rewards.shape[1])):
        g = rewards[:, k] + gamma * (1.0 - terminations[:, k]) * ((1.0 - lam) * next_values[:, k] + lam * g)
    return g


def _checked_ranking_input(env: gym.Env, model: WorldModel, qpos: np.ndarray, qvel: np.ndarray,
                           actions: np.ndarray, sigmas: Sequence[float], leak_rows: Sequence[int] | None,
                           gamma: float, gae_lambda: float) -> tuple[int, ...]:
    """Raise ValueError on inputs `action_ranking` cannot measure; the rows to change for the leak."""
    nq, nv = (len(v) for v in mujoco_state(env))
    horizon, act_dim = model.horizon, model.spec.act_dim
    if np.ndim(qpos) != 2 or np.shape(qpos)[1] != nq:
        raise ValueError(f"qpos must have shape [B, {nq}], got {np.shape(qpos)}")
    batch = np.shape(qpos)[0]
    if batch < 2:
        raise ValueError(f"a correlation needs B >= 2 start states, got B = {batch}")
    if np.shape(qvel) != (batch, nv):
        raise ValueError(f"qvel must have shape {(batch, nv)} (one row per qpos row), got {np.shape(qvel)}")
    if env.action_space.shape != (act_dim,):
        raise ValueError(f"env actions have shape {env.action_space.shape}, the model's {(act_dim,)}")
    if np.shape(actions) != (batch, horizon, act_dim):
        raise ValueError(f"actions must have shape {(batch, horizon, act_dim)} ([B, H, act]), "
                         f"got {np.shape(actions)}")
    if not np.all(np.isfinite(actions)):
        raise ValueError("actions contains NaN or inf")
    if (len(sigmas) == 0 or len(set(sigmas)) != len(sigmas)
            or not all(np.isfinite(s) and s > 0 for s in sigmas)):
        raise ValueError(f"sigmas must be distinct, finite and > 0 (at least one), got {tuple(sigmas)}")
    if not (0 <= gamma <= 1 and 0 <= gae_lambda <= 1):
        raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {gamma} and {gae_lambda}")
    rows = (horizon - 1,) if leak_rows is None else tuple(leak_rows)
    if len(set(rows)) != len(rows) or not all(isinstance(k, (int, np.integer)) and 1 <= k < horizon
                                               for k in rows):
        raise ValueError(f"leak_rows must be distinct rows in 1..{horizon - 1} (rows before k must exist; "
                         f"() skips the leak), got {rows}")
    return rows


def _received(rewards: np.ndarray, terminations: np.ndarray) -> np.ndarray:
    """Rewards [B, H] as a learner receives them: 0 after the first termination (padding)."""
    ended_before = np.cumsum(terminations, axis=1) - terminations
    return np.where(ended_before == 0, rewards, 0.0)


def _correlation(imagined: np.ndarray, real: np.ndarray) -> float:
    """Pearson correlation; 0 when `imagined` is constant (no ranking at all), NaN when `real` is."""
    if np.ptp(real) == 0:
        return float("nan")
    if np.ptp(imagined) == 0:
        return 0.0
    return float(np.corrcoef(imagined, real)[0, 1])


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, inf or NaN (not an exception) when the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(numerator) / np.float64(denominator))
