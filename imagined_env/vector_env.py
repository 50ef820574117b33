"""The imagined task as a `gymnasium.vector.VectorEnv`: episode bookkeeping (horizon, truncation,
autoreset, final observations) over the batched plan-replay core."""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.pretrained import pretrained_paths, serves
from imagined_env.replay import PlanReplay, ReplayConfig
from imagined_env.world_model import WorldModel

StartStates = EpisodeBuffer | np.ndarray | str | os.PathLike

OFF_PLAN_WARNING = (
    "The agent sent actions that differ from the imagined plan, so the env regenerated those "
    "trajectories conditioned on the actions taken (one full diffusion chain per step: slow). "
    "For the one-call speed let the learner follow the plan: agents.ImaginationPPO / "
    "agents.ImaginationA2C, or send env.unwrapped.planned_actions() "
    "(info['planned_action'] from gym.make_vec)."
)


DEFAULT_TORCH_THREADS = 1
"""Torch threads of a generation: its tensors are small, and on a CPU shared with the learner or other
processes extra OpenMP threads wait more than they work (benchmarks/imagined_throughput.py measures)."""


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (None: leave torch's setting), then restore it."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def autoreset_mode_of(mode: AutoresetMode | str) -> AutoresetMode:
    """`mode` as an AutoresetMode (its name or value also accepted); only SAME_STEP and NEXT_STEP exist
    here."""
    supported = (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP)
    for m in supported:
        if mode in (m, m.value, m.name):
            return m
    raise ValueError(f"autoreset_mode must be AutoresetMode.SAME_STEP or NEXT_STEP, got {mode!r}")


def load_world_model(world_model: WorldModel | str | os.PathLike | None, env_id: str | None,
                     device: str | torch.device) -> WorldModel:
    if world_model is None:
        raise ValueError("no world model given: pass world_model=<file> (train one with "
                         "`imagined-env train --env <task>`; it writes world_model.pt in its run folder)")
    if isinstance(world_model, (str, os.PathLike)):
        return WorldModel.load(world_model, device=device, env_id=env_id)
    if env_id is not None and not serves(world_model.spec.env_id, env_id):
        raise ValueError(f"world model was trained on {world_model.spec.env_id!r}, not {env_id!r}")
    return world_model


def without_pessimism(model: WorldModel) -> WorldModel:
    """`model` imagining with no disagreement penalty or limit: itself when it has neither, else a shallow
    copy (the same networks; its own config and guidance scale), so the model passed in stays as it was.
    A model without a config (a simulator standing in for one) has nothing to switch off."""
    config = getattr(model, "config", None)
    if config is None or (config.disagreement_penalty == 0 and config.disagreement_limit is None):
        return model
    plain = copy.copy(model)
    plain.config = replace(model.config, disagreement_penalty=0.0, disagreement_limit=None)
    return plain


def load_start_array(path: str | os.PathLike) -> np.ndarray:
    """The array of a `.npy` file of start observations, as written by `numpy.save`."""
    name = f"start states file {os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise ValueError(f"{name} does not exist or is not a file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{name} is truncated or corrupt: {err}") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise ValueError(f"{name} is an .npz archive, not one array [n, obs] as numpy.save writes it")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold a numeric array [n, obs], got dtype {arr.dtype}")
    return arr


def start_state_array(start_states: StartStates | None, model: WorldModel) -> np.ndarray:
    """Real start observations [n, obs] from a buffer, a buffer `.npz` file, a `.npy` array file or an array,
    checked against `model`: a buffer must be of a task the model serves (tasks can share an observation
    width), and every observation within the range the model was trained on (far outside it the model
    returns NaN or nonsense)."""
    obs_dim = model.spec.obs_dim
    if start_states is None:
        raise ValueError("start_states is required: an EpisodeBuffer, a buffer .npz file, a .npy file or an "
                         "array [n, obs] of real observations (the data the world model was trained on)")
    if isinstance(start_states, (str, os.PathLike)):
        is_array = Path(start_states).suffix == ".npy"
        start_states = load_start_array(start_states) if is_array else EpisodeBuffer.load(start_states)
    if isinstance(start_states, EpisodeBuffer):
        task = start_states.env_id
        if task is not None and not serves(model.spec.env_id, task):
            start_states.check_task(model.spec.env_id)
        arr = start_states.start_observations()
    else:
        arr = np.asarray(start_states, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != obs_dim or len(arr) == 0:
        raise ValueError(f"start states must have shape [n >= 1, {obs_dim}] to match the world model, "
                         f"got {arr.shape}")
    model.check_start_states(arr)
    return np.asarray(arr, dtype=np.float32)


class ImaginedVectorEnv(VectorEnv):
    """`num_envs` imagined episodes of at most H steps, generated in batched world-model calls.

    `world_model` is a WorldModel or a file; with none, the pretrained model shipped for `env_id`
    (and its start states) is used. `start_states`: the real data to start episodes from.
    `pessimism`: True imagines with the model's disagreement penalty and limit (shipped models carry
    them); False with neither, leaving the model passed in unchanged.

    Plans are guided by `policy` (states -> (mean, std)); the learner that follows them (reads
    `planned_actions()`, or `info["planned_action"]` with `planned_action_info=True`) gets the one-call
    speed. Any other action is honoured exactly, by regenerating that env's trajectory from its current
    state with the action fixed. Episodes end at a predicted termination, else are truncated after
    `episode_steps` (None: H, one plan); with pessimism they also end where the model is too unsure to go
    on, terminated or truncated as `WorldModelConfig.unsure_ends` says. A longer episode continues with a
    new plan from its own imagined state every H steps, so the learner also meets the states its policy
    reaches, not only the start states.

    `autoreset_mode`: SAME_STEP (the default, what the SB3 adapter needs) returns a finished env's first
    new observation at once, its last one in `info["final_obs"]`; NEXT_STEP (Gymnasium's own default,
    what its vector wrappers such as NormalizeObservation need) returns the last observation, and the
    next step ignores that env's action and returns the new episode's first observation with reward 0.
    `torch_threads`: torch CPU threads during generation (None: torch's current setting).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}  # noqa: RUF012 (gymnasium's)

    def __init__(self, world_model: WorldModel | str | os.PathLike | None = None, num_envs: int = 1, *,
                 start_states: StartStates | None = None, policy: GaussianPolicyFn | None = None,
                 env_id: str | None = None, replay: ReplayConfig | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
                 planned_action_info: bool = False, torch_threads: int | None = DEFAULT_TORCH_THREADS,
                 pessimism: bool = True, episode_steps: int | None = None,
                 device: str | torch.device = "auto", render_mode: str | None = None):
        if render_mode is not None:  # TypeError: SB3's PPO("MlpPolicy", env_id) then retries without it
            raise TypeError(f"render_mode={render_mode!r}: an imagined env has no simulator to render; "
                            "use render_mode=None")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if torch_threads is not None and not (isinstance(torch_threads, int) and torch_threads >= 1):
            raise ValueError(f"torch_threads must be None or an int >= 1, got {torch_threads!r}")
        if not isinstance(pessimism, bool):
            raise ValueError(f"pessimism must be True or False, got {pessimism!r}")
        if episode_steps is not None and not (isinstance(episode_steps, int) and episode_steps >= 1):
            raise ValueError(f"episode_steps must be None or an int >= 1, got {episode_steps!r}")
        mode = autoreset_mode_of(autoreset_mode)
        if world_model is None and env_id is not None:
            world_model, shipped_starts = pretrained_paths(env_id)
            start_states = shipped_starts if start_states is None else start_states
        self.model = load_world_model(world_model, env_id, device)
        if not pessimism:
            self.model = without_pessimism(self.model)
        spec = self.model.spec
        self._starts = start_state_array(start_states, self.model)
        self.num_envs = num_envs
        self.render_mode = None
        self.horizon = self.model.horizon
        self.episode_steps = self.horizon if episode_steps is None else episode_steps
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float64)
        self.single_action_space = spaces.Box(np.array(spec.action_low, np.float32),
                                              np.array(spec.action_high, np.float32), dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.replay = PlanReplay(self.model, num_envs, self._sample_starts, replay or ReplayConfig())
        self.replay.set_policy(policy)
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.planned_action_info = planned_action_info
        self.torch_threads = torch_threads
        self.elapsed = np.zeros(num_envs, np.int64)
        self._pending_reset = np.zeros(num_envs, bool)
        """NEXT_STEP mode: envs whose episode ended at the last step (already restarted underneath)."""
        self._needs_reset = True
        self._warned = False
        self.closed = False

    # ---- guidance ----------------------------------------------------------------------
    def set_policy(self, policy: GaussianPolicyFn | None) -> None:
        """Guide plans by `policy` from now on (existing plans are regenerated)."""
        self._check_usable()
        self.replay.set_policy(policy)

    def replan(self) -> None:
        """The policy changed (e.g. after a learner update): regenerate from the current states."""
        self._check_usable()
        self.replay.invalidate()

    def set_start_states(self, start_states: StartStates) -> None:
        """Draw future episode starts from `start_states` (e.g. a buffer that has grown since)."""
        self._check_usable()
        self._starts = start_state_array(start_states, self.model)

    def start_observations(self) -> np.ndarray:
        """[n, obs] the real observations episodes start from (a copy)."""
        return self._starts.copy()

    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self.metadata["autoreset_mode"]

    def planned_actions(self) -> np.ndarray:
        """[N, act] the action each env's plan takes next (policy units, unclipped). Through Gymnasium
        wrappers: `env.unwrapped.planned_actions()`, or `info["planned_action"]` (planned_action_info)."""
        self._check_usable()
        if self._needs_reset:
            raise RuntimeError("call reset() before planned_actions()")
        with torch_threads(self.torch_threads):
            return self.replay.planned_actions()

    # ---- gymnasium API -----------------------------------------------------------------
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """`seed`: an int, or one int per env (all of them seed the one batched generator); `options`
        are not used."""
        self._check_usable()
        if isinstance(seed, (list, tuple)):  # one batched generator: every per-env seed enters it
            if not all(isinstance(s, (int, np.integer)) for s in seed):
                raise ValueError(f"seed must be an int or a list of ints, got {seed!r}")
            seed = int(np.random.SeedSequence([int(s) for s in seed]).generate_state(1)[0])
        super().reset(seed=seed)
        self.replay.seed(int(self.np_random.integers(2 ** 62)))
        self.replay.invalidate()
        self.replay.restart(np.ones(self.num_envs, bool))
        self.elapsed[:] = 0
        self._pending_reset[:] = False
        self._needs_reset = False
        info: dict[str, Any] = {}
        self._add_planned_actions(info)
        return self.replay.current_obs().astype(np.float64), info

    def step(self, actions: np.ndarray):
        """One step of every env, with autoreset as `autoreset_mode` says."""
        pending = self._pending_reset.copy()
        obs, rewards, terminated, truncated, info = self.advance(actions, active=~pending)
        done = terminated | truncated
        if done.any():
            self.replay.restart(done)
            self.elapsed[done] = 0
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = np.full(self.num_envs, None, dtype=object)
                for i in np.flatnonzero(done):
                    final_obs[i] = obs[i]
                info["final_obs"], info["_final_obs"] = final_obs, done.copy()
                obs = self.replay.current_obs().astype(np.float64)
        self._pending_reset = done if self.autoreset_mode == AutoresetMode.NEXT_STEP else pending
        self._add_planned_actions(info)
        return obs, rewards, terminated, truncated, info

    def advance(self, actions: np.ndarray, active: np.ndarray | None = None):
        """One step without autoreset: (next_obs, reward, terminated, truncated, info) batched. Envs
        outside `active` (default: all) ignore their action, stay put and get reward 0."""
        self._check_usable()
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = self._checked_actions(actions)
        active = np.ones(self.num_envs, bool) if active is None else active
        with torch_threads(self.torch_threads):
            next_obs, rewards, terminated, cut, off_plan = self.replay.advance(actions, active)
        if off_plan.any() and not self._warned:
            warnings.warn(OFF_PLAN_WARNING, stacklevel=3)
            self._warned = True
        self.elapsed += active
        truncated = ((self.elapsed >= self.episode_steps) | cut) & ~terminated & active
        info = {"off_plan": off_plan, "_off_plan": np.ones(self.num_envs, bool)}
        return next_obs.astype(np.float64), rewards.astype(np.float64), terminated, truncated, info

    def render(self) -> None:
        return None

    def close_extras(self, **kwargs: Any) -> None:
        """Drop the model and plans so their memory (GPU included) can be freed."""
        self.replay = None  # type: ignore[assignment]
        self.model = None  # type: ignore[assignment]
        self.closed = True

    # ---- checks ------------------------------------------------------------------------
    def _add_planned_actions(self, info: dict[str, Any]) -> None:
        if self.planned_action_info:
            info["planned_action"] = self.planned_actions()
            info["_planned_action"] = np.ones(self.num_envs, bool)

    def _sample_starts(self, n: int) -> np.ndarray:
        return self._starts[self.np_random.integers(len(self._starts), size=n)]

    def _check_usable(self) -> None:
        if self.closed:
            raise RuntimeError("this ImaginedVectorEnv is closed; make a new one")

    def _checked_actions(self, actions: Any) -> np.ndarray:
        arr = np.asarray(actions)
        expected = (self.num_envs, self.model.spec.act_dim)
        if arr.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"actions must be a numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr).all(1)).tolist()
            raise ValueError(f"actions contain NaN or inf (envs {bad})")
        return arr
