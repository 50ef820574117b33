"""On-policy learning in imagination with SB3: learners that record exactly the planned actions.

`ImaginationPPO` / `ImaginationA2C` are drop-in replacements for SB3's PPO / A2C. On an imagined
env they (1) guide the env's plans by their own policy, wired once by reference, (2) record the
planned action (whose consequences the env generated) with its log-probability under the current
policy, (3) make the env re-plan after every update, so no update sees an older policy's
trajectories, and (4) skip an optimizer step whose gradients are not finite (`FiniteSteps`, logged as
`train/nonfinite_steps_skipped`). On any other env they behave exactly like SB3's classes.

The swap is one line: a task id with an imagined twin ("HalfCheetah-v4" or "Imagined-HalfCheetah-v4")
builds the batched imagined env on the shipped model (`n_envs`, `env_kwargs` to change it), and
`n_steps` defaults to the model horizon H, so that one rollout is one imagined episode per env.
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from agents.env_factory import DEFAULT_N_ENVS, make_imagined_vec_env
from agents.sb3_guidance import sb3_guide
from agents.sb3_vec_env import ImaginedSB3VecEnv
from imagined_env.registration import imagined_id
from imagined_env.single_env import ImaginedEnv
from imagined_env.vector_env import ImaginedVectorEnv, torch_threads

OBS_CLIP = 10.0
"""Normalised observations are clipped to +-OBS_CLIP, as SB3's VecNormalize clips them."""
OBS_MIN_STD = 1e-2
"""Floor of the observation stds: a dimension constant over the start states must not blow up."""


class NormalisingFlatten(FlattenExtractor):
    """SB3's flattening features extractor after a fixed z-scoring and a clip to +-OBS_CLIP (identity until
    `fit`). Every path of an SB3 policy (rollout, update, `predict`, values) goes through its features
    extractors, so this is where the policy's own normalisation lives."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    obs_fitted: torch.Tensor

    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space)
        shape = observation_space.shape
        if len(shape) != 1:
            raise ValueError(f"normalize_observations needs flat Box observations, got {observation_space}; "
                             "pass policy_kwargs={'normalize_observations': False}")
        self.register_buffer("obs_mean", torch.zeros(shape))
        self.register_buffer("obs_std", torch.ones(shape))
        self.register_buffer("obs_fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, observations: np.ndarray) -> None:
        """Fix the statistics to the mean and std (floored at OBS_MIN_STD) of `observations` [n, obs]."""
        obs = np.asarray(observations, dtype=np.float64)
        self.obs_mean.copy_(torch.as_tensor(obs.mean(0)))
        self.obs_std.copy_(torch.as_tensor(np.maximum(obs.std(0), OBS_MIN_STD)))
        self.obs_fitted.fill_(True)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        normalised = ((observations - self.obs_mean) / self.obs_std).clamp(-OBS_CLIP, OBS_CLIP)
        # where, not `if`: reading the flag on the host would synchronise a GPU at every call
        return super().forward(torch.where(self.obs_fitted, normalised, observations))


class PlanFollowingPolicy(ActorCriticPolicy):
    """An MlpPolicy whose rollout action is the imagined plan's next action, when wired to a plan.

    With `normalize_observations` (the imagination learners' default on an imagined env; files saved
    before it existed load without it) the policy z-scores its observations, clipped to
    +-OBS_CLIP (`NormalisingFlatten`), by fixed statistics: those of the start states (real data) of the
    first imagined env it is wired to. Raw MuJoCo observations mix positions near 0.1 with velocities
    near 10; on HalfCheetah, with MuJoCo in place of the model, SB3's default PPO learnt far slower on
    them (benchmarks/RESULTS.md). Statistics that kept following the imagined rollouts measured worse in
    a pilot. Unlike a VecNormalize wrapper the statistics live in the policy and travel with
    it: `predict` and `evaluate_policy` on the real task's raw observations just work. Until fitted (any
    other env) it is SB3's MlpPolicy.
    """

    plan_source: ImaginedVectorEnv | None = None
    plan_observer: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    """Called with the observations and planned actions of each rollout step that follows a plan."""

    def __init__(self, *args: Any, normalize_observations: bool = False, **kwargs: Any):
        if normalize_observations:
            if kwargs.get("features_extractor_class", NormalisingFlatten) is not NormalisingFlatten:
                raise ValueError(f"normalize_observations replaces the features extractor; to use "
                                 f"{kwargs['features_extractor_class'].__name__}, pass "
                                 "policy_kwargs={'normalize_observations': False}")
            kwargs["features_extractor_class"] = NormalisingFlatten
        self.normalize_observations = normalize_observations
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(),
                "normalize_observations": self.normalize_observations}

    def _normalisers(self) -> list[NormalisingFlatten]:
        extractors = {id(e): e for e in (self.features_extractor, self.pi_features_extractor,
                                         self.vf_features_extractor)}
        return [e for e in extractors.values() if isinstance(e, NormalisingFlatten)]

    @property
    def observations_fitted(self) -> bool:
        """Whether the policy normalises its observations (on, and fitted)."""
        return any(bool(e.obs_fitted) for e in self._normalisers())

    def fit_observations(self, observations: np.ndarray) -> bool:
        """Fix the normalisation to the statistics of `observations` [n, obs] unless it is off or already
        fitted (a loaded policy keeps its own); True when fitted now."""
        if not self._normalisers() or self.observations_fitted:
            return False
        for extractor in self._normalisers():
            extractor.fit(observations)
        return True

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
            task = getattr(env.envs[0].spec, "id", None) or "Imagined-HalfCheetah-v4"
            n = env.num_envs
            raise ValueError(f"{n} separate imagined envs (e.g. make_vec_env({task!r}, n_envs={n})) "
                             f"would each generate alone, one call per env. "
                             f"For one batched call per rollout write "
                             f"ImaginationPPO('MlpPolicy', {task!r}, n_envs={n}), or pass "
                             f"env=agents.make_imagined_vec_env({task!r}, n_envs={n})")
        return cast(ImaginedEnv, env.envs[0].unwrapped).vec, vec_normalize  # the one env is imagined
    return None, vec_normalize


def imagined_task(env_id: str) -> str | None:
    """The registered imagined id of a task id (real or imagined), None if it has no imagined twin."""
    candidate = env_id if env_id.startswith("Imagined-") else imagined_id(env_id)
    return candidate if candidate in gym.registry else None


def imagination_env(env: Any, n_envs: int | None, env_kwargs: dict[str, Any] | None) -> Any:
    """What the learner trains in: a task id with an imagined twin becomes the batched imagined VecEnv
    (`n_envs` envs, `env_kwargs` to the env); a bare `ImaginedVectorEnv` gets the SB3 adapter; anything
    else is SB3's to handle."""
    task = imagined_task(env) if isinstance(env, str) else None
    if task is not None:
        return make_imagined_vec_env(task, DEFAULT_N_ENVS if n_envs is None else n_envs, **(env_kwargs or {}))
    if n_envs is not None or env_kwargs is not None:
        raise ValueError(f"n_envs and env_kwargs build an imagined env from a task id with an imagined twin "
                         f"(e.g. 'Imagined-HalfCheetah-v4'); got env={env!r}")
    if isinstance(env, ImaginedVectorEnv):
        return VecMonitor(ImaginedSB3VecEnv(env))
    return env


def imagined_horizon(env: Any) -> int | None:
    """The model horizon H of an imagined env (single, vector, under SB3 wrappers), None for other envs."""
    if isinstance(env, gym.Env) and isinstance(env.unwrapped, ImaginedEnv):
        return env.unwrapped.vec.horizon
    if isinstance(env, VecEnv):
        imagined, _ = find_imagined(env)
        return None if imagined is None else imagined.horizon
    return None


def n_steps_for(horizon: int, n_steps: int | None) -> int:
    """`n_steps` for an imagined env: H when not given. A value that is not a multiple of H warns: it stays
    correct, but every update then re-plans episodes midway and discards the rest of their plans."""
    if n_steps is None:
        return horizon
    if n_steps % horizon:
        wasted = horizon - n_steps % horizon
        warnings.warn(f"n_steps={n_steps} is not a multiple of the world model's horizon H={horizon}: each "
                      f"update re-plans the episodes it cuts, discarding up to {wasted} generated steps of "
                      f"each; leave n_steps out (it defaults to H={horizon}) or use a multiple of {horizon}",
                      UserWarning, stacklevel=3)
    return n_steps


class BatchedBootstrap(BaseCallback):
    """Wraps the learner's callbacks for one rollout: after them, at each step, adds gamma x V(last
    observation) to the reward of every env truncated at that step, in one batched value call, and
    marks it handled (SB3's rollout would bootstrap each such env in a call of its own)."""

    def __init__(self, inner: BaseCallback, learner: Any):
        super().__init__()
        self.inner, self.learner = inner, learner

    def on_rollout_start(self) -> None:
        self.inner.on_rollout_start()

    def on_rollout_end(self) -> None:
        self.inner.on_rollout_end()

    def update_locals(self, locals_: dict[str, Any]) -> None:
        self.inner.update_locals(locals_)
        self.locals = locals_

    def on_step(self) -> bool:
        if not self.inner.on_step():
            return False
        rewards, dones, infos = self.locals["rewards"], self.locals["dones"], self.locals["infos"]
        idx = [i for i in np.flatnonzero(dones) if infos[i].get("terminal_observation") is not None
               and infos[i].get("TimeLimit.truncated", False)]
        if idx:
            policy = self.learner.policy
            last_obs = policy.obs_to_tensor(np.stack([infos[i]["terminal_observation"] for i in idx]))[0]
            with torch.no_grad():
                values = policy.predict_values(last_obs).flatten().cpu().numpy()
            rewards[idx] += self.learner.gamma * values
            for i in idx:
                # bootstrapped above: SB3's loop must not add it again
                infos[i]["TimeLimit.truncated"] = False
        return True

    def _on_step(self) -> bool:
        return True


STALLED_UPDATES = 3
"""Updates in a row whose every optimizer step had non-finite gradients before the learner gives up."""


class FiniteSteps:
    """Replaces an optimizer's `step`: a step whose gradients hold NaN or inf is skipped (its gradients
    dropped) and counted. One minibatch whose probability ratio overflows (an imagined action far off the
    policy) would otherwise write NaN into every weight and end the run."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.calls, self.skipped, self._step = optimizer, 0, 0, optimizer.step
        optimizer.step = self  # type: ignore[method-assign]

    @classmethod
    def on(cls, optimizer: torch.optim.Optimizer) -> FiniteSteps:
        """The guard of `optimizer`, installed once."""
        step = optimizer.step
        return step if isinstance(step, cls) else cls(optimizer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return self._step(*args, **kwargs)
        self.skipped += 1
        self.optimizer.zero_grad()
        return None


class _ImaginationMixin:
    """Wiring shared by the PPO and A2C variants."""

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # SB3's own declaration
        "MlpPolicy": PlanFollowingPolicy, "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy}
    imagined: ImaginedVectorEnv | None = None
    finite_steps: FiniteSteps | None = None
    """On an imagined env: the guard on the policy's optimizer; `.skipped` counts the steps it dropped."""
    _stalled_updates = 0

    def __init__(self, policy: Any, env: Any, *, n_envs: int | None = None,
                 env_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        env = imagination_env(env, n_envs, env_kwargs)
        horizon = imagined_horizon(env)
        if horizon is not None:
            kwargs["n_steps"] = n_steps_for(horizon, kwargs.get("n_steps"))
            plan_following = isinstance(policy, type) and issubclass(policy, PlanFollowingPolicy)
            given = kwargs.get("policy_kwargs") or {}
            # a features extractor of the caller's own replaces the normalising one: then it stays off
            if (policy == "MlpPolicy" or plan_following) and "features_extractor_class" not in given:
                kwargs["policy_kwargs"] = {"normalize_observations": True, **given}
        elif kwargs.get("n_steps", 0) is None:
            del kwargs["n_steps"]  # not imagined: SB3's own default
        super().__init__(policy, env, **kwargs)  # type: ignore[call-arg]

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        self._wire(self.env)  # type: ignore[attr-defined]

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        self._check_normalised_once(env)
        super().set_env(env, force_reset)  # type: ignore[misc]
        self._wire(self.env)  # type: ignore[attr-defined]

    def _check_normalised_once(self, env: Any) -> None:
        """ValueError when a policy that normalises its own observations meets a VecNormalize that also
        normalises them (at `set_env`, and before each rollout, which covers `load(..., env=)`):
        observations would be normalised twice."""
        policy = getattr(self, "policy", None)
        _, vec_normalize = find_imagined(env) if isinstance(env, VecEnv) else (None, None)
        if isinstance(policy, PlanFollowingPolicy) and policy.observations_fitted and \
                vec_normalize is not None and vec_normalize.norm_obs:
            raise ValueError("this policy normalises its observations itself (policy_kwargs "
                             "normalize_observations=True), so its env must not: wrap it in "
                             "VecNormalize(..., norm_obs=False), or drop the VecNormalize")

    def _wire(self, env: VecEnv | None) -> None:
        imagined, vec_normalize = find_imagined(env)
        self.imagined = imagined
        policy = self.policy  # type: ignore[attr-defined]
        if isinstance(policy, PlanFollowingPolicy):
            policy.plan_source = imagined
        if imagined is not None:
            observations_raw = vec_normalize is None or not vec_normalize.norm_obs  # rewards alone: raw
            if isinstance(policy, PlanFollowingPolicy) and observations_raw \
                    and self.num_timesteps == 0:  # type: ignore[attr-defined]  # weights trained on raw ones
                policy.fit_observations(imagined.start_observations())
            imagined.set_policy(sb3_guide(policy, vec_normalize))
            self.finite_steps = FiniteSteps.on(policy.optimizer)

    def _excluded_save_params(self) -> list[str]:
        """The env wiring is rebuilt by `set_env`, not saved (the guard would pickle the optimizer)."""
        return [*super()._excluded_save_params(), "imagined", "finite_steps",  # type: ignore[misc]
                "_stalled_updates"]

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, *args: Any, **kwargs: Any) -> bool:
        """On an imagined env: the rollout's small forward passes run with the env's torch threads, as
        its generation does, and truncated envs (every env at H) are bootstrapped in one batch."""
        if self.imagined is None:
            return super().collect_rollouts(env, callback, *args, **kwargs)  # type: ignore[misc]
        self._check_normalised_once(env)
        with torch_threads(self.imagined.torch_threads):
            return super().collect_rollouts(env, BatchedBootstrap(callback, self), *args,  # type: ignore[misc]
                                            **kwargs)

    def train(self) -> None:
        """SB3's update; on an imagined env the rollout must be finite (the world model imagined it), the
        steps with non-finite gradients are skipped and logged, and STALLED_UPDATES updates in a row that
        could take no step end the run with an error instead of freezing the policy."""
        guard = self.finite_steps
        if self.imagined is None or guard is None:
            super().train()  # type: ignore[misc]
            return
        buffer = self.rollout_buffer  # type: ignore[attr-defined]
        for name in ("rewards", "values", "advantages"):
            if not np.isfinite(getattr(buffer, name)).all():
                raise ValueError(f"the imagined rollout's {name} hold NaN or inf: the world model imagined "
                                 f"non-finite rewards or states (check its training loss and start states)")
        calls, skipped = guard.calls, guard.skipped
        super().train()  # type: ignore[misc]
        self.logger.record("train/nonfinite_steps_skipped", guard.skipped - skipped)  # type: ignore[attr-defined]
        stalled = guard.calls > calls and guard.skipped - skipped == guard.calls - calls
        self._stalled_updates = self._stalled_updates + 1 if stalled else 0
        if self._stalled_updates == STALLED_UPDATES:
            raise RuntimeError(f"every optimizer step of the last {STALLED_UPDATES} updates had NaN or inf "
                               f"gradients, so the policy could not change (its weights are still finite)")
        self.imagined.replan()


def _signature(base: type) -> inspect.Signature:
    """`base`'s constructor signature as the imagination learner takes it: keywords after policy and env,
    n_steps defaulting to None (the model horizon), and n_envs, env_kwargs."""
    params = list(inspect.signature(base).parameters.values())
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[2:]]
    keyword = [p.replace(default=None, annotation=int | None) if p.name == "n_steps" else p for p in keyword]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
             for name in ("n_envs", "env_kwargs")]
    return inspect.Signature(params[:2] + keyword + extra)


class ImaginationPPO(_ImaginationMixin, PPO):
    """SB3 PPO that follows imagined plans (see module docstring)."""

    __signature__ = _signature(PPO)


class ImaginationA2C(_ImaginationMixin, A2C):
    """SB3 A2C that follows imagined plans (see module docstring)."""

    __signature__ = _signature(A2C)
