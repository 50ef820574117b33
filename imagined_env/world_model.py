"""The PolyGRAD world model: denoiser + EMA copy + schedule + normaliser, its loss, guided
imagination in environment units, guidance-scale tuning, and a one-file save format."""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imagined_env.config_tree import from_tree
from imagined_env.data.buffer import Windows
from imagined_env.data.normaliser import Normaliser
from imagined_env.diffusion.denoiser import CAUSAL_KINDS, DenoiserConfig, build_denoiser, members
from imagined_env.diffusion.guidance import (
    GaussianPolicyFn,
    GuidanceConfig,
    update_log_scale,
    update_row_offsets,
)
from imagined_env.diffusion.sampler import ActionBounds, ActionInput, GuidedSampler
from imagined_env.diffusion.schedule import DiffusionSchedule, SamplerConfig, ScheduleConfig
from imagined_env.fitting import ema_copy, ema_update
from imagined_env.pretrained import serves
from imagined_env.task_terminations import termination_rule
from imagined_env.utils import atomic_path, resolve_device

FORMAT_VERSION = 3
"""Version 3 files say whether they are compact (only the EMA weights, as float16); version 2 files carry a
SHA-256 checksum of their content; version 1 files, written before it, load without one."""
FLOAT16_MAX = float(torch.finfo(torch.float16).max)
READOUTS = ("chain", "mean", "rollout")
TERMINATIONS = ("learned", "task")
UNSURE_ENDS = ("terminate", "truncate")


def check_terminations(value: object) -> None:
    """ValueError unless `value` is one of TERMINATIONS."""
    if value not in TERMINATIONS:
        raise ValueError(f"terminations must be one of {', '.join(TERMINATIONS)}, got {value!r}")


@dataclass(frozen=True)
class EnvSpec:
    """What the model was trained on: the task id and the spaces it must be used with."""

    env_id: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {self.obs_dim} and {self.act_dim}")
        if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
            raise ValueError(f"action bounds must have act_dim={self.act_dim} entries, got {self}")
        if not all(low <= high for low, high in zip(self.action_low, self.action_high)):  # NaN fails too
            raise ValueError(f"action bounds must be numbers with action_low <= action_high, got action_low "
                             f"{self.action_low} and action_high {self.action_high}")


@dataclass(frozen=True)
class WorldModelConfig:
    """Everything that defines a world model's architecture and sampling; defaults follow PolyGRAD."""

    horizon: int = 10
    """H: imagined transitions per trajectory (the model diffuses H + 1 rows)."""
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    ema_decay: float = 0.99
    """Decay of the EMA copy used for imagination."""
    terminal_threshold: float = 0.5
    """A generated terminal channel above this (environment units) ends the episode."""
    reward_loss_weight: float = 1.0
    """Weight of the reward channel in the x0 loss relative to every other entry (1: a plain MSE); the
    reward alone drives the learner, so a weight above 1 trades a little state accuracy for it."""
    scale_actions: bool = True
    """Feed actions to the denoiser scaled by sqrt(alpha_bar_t), as noisy as the states; False feeds them
    at full strength, so the model sees them at high noise, where the trajectory's shape is decided."""
    condition_on_last_action: bool = True
    """The denoiser sees the last row's action a_H; False shows the mean action instead. Nothing read from
    the window depends on a_H, but in policy data it reveals s_H, so imagined returns can vary with it."""
    readout: str = "chain"
    """Imagined rows: "chain" sample, "mean" E[x0 | s0, a] (no noise), or "rollout" (no chain: "mean",
    a_k drawn by the policy at row k; causal)."""
    n_members: int = 1
    """K denoisers on the same data, imagined as their mean (needs readout "mean" or "rollout")."""
    disagreement_penalty: float = 0.0
    """lambda: imagined rewards r - lambda u, u the members' disagreement (std)."""
    terminations: str = "learned"
    """End episodes by the learned flag, or also by the task's rule ("task": Hopper, Walker2d)."""
    disagreement_limit: float | None = None
    """End imagined episodes where u exceeds this (None: never)."""
    unsure_ends: str = "terminate"
    """Episodes at the disagreement limit "terminate" or "truncate". A terminated end has no value after it;
    a truncated one is bootstrapped from the learner's critic, as at a time limit, so the critic's guess
    about states the model cannot imagine stands in for them: in frozen shipped models PPO then ended lower
    (benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not self.reward_loss_weight > 0:
            raise ValueError(f"reward_loss_weight must be > 0, got {self.reward_loss_weight}")
        check_terminations(self.terminations)
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}")
        if self.n_members > 1 and self.readout == "chain":
            raise ValueError(f"an ensemble (n_members={self.n_members}) is read out by its members' mean: "
                             f"set readout='mean' or 'rollout', got {self.readout!r}")
        if self.readout == "rollout" and self.denoiser.kind not in CAUSAL_KINDS:
            raise ValueError(f"readout='rollout' needs a causal denoiser ({', '.join(CAUSAL_KINDS)}), got "
                             f"denoiser.kind={self.denoiser.kind!r}: with another, a later action moves "
                             "earlier states")
        if not self.disagreement_penalty >= 0:
            raise ValueError(f"disagreement_penalty must be >= 0, got {self.disagreement_penalty}")
        if self.disagreement_limit is not None and not self.disagreement_limit > 0:
            raise ValueError(f"disagreement_limit must be > 0 or None, got {self.disagreement_limit}")
        if self.unsure_ends not in UNSURE_ENDS:
            raise ValueError(f"unsure_ends must be one of {', '.join(UNSURE_ENDS)}, got {self.unsure_ends!r}")
        if (self.disagreement_penalty > 0 or self.disagreement_limit is not None) and self.n_members < 2:
            raise ValueError("a disagreement penalty or limit needs an ensemble: set n_members >= 2")
        if self.readout != "chain" and self.scale_actions:
            signal = float(DiffusionSchedule(self.schedule).alpha_bar_f64[-1].sqrt())
            raise ValueError(f"readout={self.readout!r} needs scale_actions=False: the mean read-out is "
                             f"one pass at t = T-1, where scaled actions are multiplied by {signal:.2g}, "
                             "so it barely sees them")
        chain, steps = self.schedule.n_steps, self.sampler.n_sample_steps
        if steps is not None and steps > chain:
            raise ValueError(f"sampler.n_sample_steps ({steps}) exceeds the chain's length "
                             f"(schedule.n_steps = {chain}); give at most {chain}, "
                             "or None for the full chain")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> WorldModelConfig:
        """The config `to_dict` wrote; left-out fields take their defaults, and a value of the wrong type is a
        ValueError naming its path (prefixed by `where`, e.g. "world_model.")."""
        if not isinstance(d, dict):
            raise ValueError(f"{where.rstrip('.') or 'a world model config'} must be a dict, got {d!r}")  # noqa: TRY004
        d = {"readout": "chain", **d}   # files written before the read-out option sampled from the chain
        return from_tree(cls, d, where)


@dataclass(frozen=True)
class Imagination:
    """A batch of imagined trajectories in environment units (torch, on the model's device).

    observations [B, H+1, obs]; actions [B, H, act] (policy units, unclipped); rewards [B, H];
    terminations [B, H] bool (rows after the first end are padding); truncations [B, H] bool: where the
    episode is cut without the task ending (the members' disagreement past the limit; None when nothing
    is cut so); `ended`: either end; spread: std of
    standardised actions (nan when unguided); row_spread: the same per row [H + 1], when known;
    disagreement [B, H]: of an ensemble's members about each transition (`transition_disagreement`).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminations: torch.Tensor
    spread: float
    row_spread: torch.Tensor | None = None
    disagreement: torch.Tensor | None = None
    truncations: torch.Tensor | None = None

    @property
    def ended(self) -> torch.Tensor:
        """[B, H] bool: the episode ends at this transition, terminated or cut."""
        return self.terminations if self.truncations is None else self.terminations | self.truncations


class WorldModel:
    """Trained with `loss` + `update_ema`; used through `imagine` (EMA weights)."""

    def __init__(self, spec: EnvSpec, config: WorldModelConfig, normaliser: Normaliser,
                 device: str | torch.device = "auto"):
        for name, width in (("obs", spec.obs_dim), ("action", spec.act_dim)):
            if len(getattr(normaliser, f"{name}_mean")) != width:
                raise ValueError(f"the normaliser's {name} statistics have "
                                 f"{len(getattr(normaliser, f'{name}_mean'))} "
                                 f"entries, but the task's {name} width is {width}")
        self.spec, self.config, self.normaliser = spec, config, normaliser
        self.device = resolve_device(device)
        self.n_rows = config.horizon + 1
        self.denoiser = build_denoiser(self.n_rows, spec.obs_dim + 2, spec.act_dim, config.denoiser,
                                       config.n_members)
        self.denoiser.to(self.device)
        self.ema = ema_copy(self.denoiser)
        self.schedule = DiffusionSchedule(config.schedule, self.device)
        self.bounds = ActionBounds(
            torch.tensor(spec.action_low, dtype=torch.float32, device=self.device),
            torch.tensor(spec.action_high, dtype=torch.float32, device=self.device),
        )
        self.action_input = ActionInput(config.scale_actions, config.condition_on_last_action)
        self.log_guidance_scale = math.log(config.guidance.initial_scale)
        self.row_scale_offsets = torch.zeros(self.n_rows)
        """log(lambda_k / lambda) per row; stays 0 unless `config.guidance.per_row`."""
        self._channel_weight = torch.ones(spec.obs_dim + 2, device=self.device)
        self._channel_weight[spec.obs_dim] = config.reward_loss_weight  # rows are [s, r, d]

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def guidance_scale(self) -> float:
        """lambda, common to all rows."""
        return math.exp(self.log_guidance_scale)

    @property
    def row_guidance_scales(self) -> torch.Tensor:
        """lambda_k of each row [H + 1]."""
        return self.guidance_scale * self.row_scale_offsets.exp()

    def set_default_chain(self, n_sample_steps: int | None) -> None:
        """Make `n_sample_steps` the chain length `imagine` uses when given none (None: the full chain), so
        that a saved model samples as the run or preset that made it did."""
        sampler = replace(self.config.sampler, n_sample_steps=n_sample_steps)
        self.config = replace(self.config, sampler=sampler)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def loss(self, windows: Windows, generator: torch.Generator | None = None,
             rows: slice | None = None) -> torch.Tensor:
        """x0-prediction MSE over all entries of B windows, with the start state inpainted; the reward
        channel weighted by `reward_loss_weight`, normalised so that equal weights give the plain MSE.
        Each ensemble member draws its own steps and noise on the same windows; their losses are averaged.
        `rows`: the loss of these windows only, with the draws of all B made and sliced, so that one part of
        a data-parallel batch sees the same noise as in the whole batch."""
        obs_dim, dev, part = self.spec.obs_dim, self.device, slice(None) if rows is None else rows
        as_t = lambda v: torch.as_tensor(v[part], dtype=torch.float32, device=dev)
        x0 = self.normaliser.normalise_rows(as_t(windows.states), as_t(windows.rewards),
                                            as_t(windows.terminals))
        cond = self.normaliser.normalise_action(self.bounds.clip(as_t(windows.actions)))
        batch, weight, losses = len(windows.states), self._channel_weight, []
        for net in members(self.denoiser):
            t = torch.randint(0, self.schedule.n_steps, (batch,), device=dev, generator=generator)[part]
            noise = torch.randn((batch, *x0.shape[1:]), device=dev, generator=generator)[part]
            xt = self.schedule.q_sample(x0, t, noise)
            xt[:, 0, :obs_dim] = x0[:, 0, :obs_dim]
            pred = net(xt, self.action_input(cond, self.schedule.signal_scale(t)), t)
            pred = _inpaint_start(pred, x0[:, 0, :obs_dim])
            losses.append(((pred - x0).pow(2) * weight).mean() / weight.mean())
        return torch.stack(losses).mean()

    def update_ema(self) -> None:
        ema_update(self.ema, self.denoiser, self.config.ema_decay)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trained denoiser's parameters (the EMA copy follows them)."""
        return self.denoiser.parameters()

    def imagine(
        self,
        start_obs: torch.Tensor | np.ndarray,
        policy: GaussianPolicyFn | None = None,
        *,
        generator: torch.Generator | None = None,
        actions: torch.Tensor | np.ndarray | None = None,
        n_sample_steps: int | None = None,
    ) -> Imagination:
        """B guided trajectories of H steps from start observations [B, obs], in one batched call.

        `policy` maps states [N, obs] to (mean, std) [N, act]; `actions` [B, k, act] with k <= H fixes
        a_0..a_{k-1} (k = 1: an action the agent took; k = H: the model replays a given action sequence
        open-loop); the other actions follow the policy.
        `n_sample_steps` overrides the configured chain length (None: use the config).
        With `readout` "mean", states, rewards and terminals are read out from (s0, final actions); a
        replay of H given actions then needs no chain when the last row's action is hidden. With "rollout"
        the policy's actions are its own draws at the read-out's states (`GuidedSampler.policy_rollout`):
        no chain, nothing to guide (spread NaN); without a policy it imagines as "mean" does. An ensemble
        reads out its members' mean, lowers rewards by `disagreement_penalty` times their disagreement and
        ends episodes where it exceeds `disagreement_limit`, as `unsure_ends` says. With `terminations`
        "task", episodes also end where the task's healthy check fails on the imagined next observation.
        The guidance scale is left as it is: tuning it is the caller's explicit `adapt_guidance` call.
        """
        s0 = self._checked(start_obs, self.spec.obs_dim, "start_obs")
        fixed = None if actions is None else torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        if fixed is not None:
            if (fixed.dim() != 3 or not 1 <= fixed.shape[1] <= self.horizon
                    or fixed.shape[2] != self.spec.act_dim):
                raise ValueError(f"actions must have shape [B, k, {self.spec.act_dim}] with 1 <= k <= "
                                 f"{self.horizon}, got {tuple(fixed.shape)}")
            if fixed.shape[0] != s0.shape[0]:
                raise ValueError(f"actions has {fixed.shape[0]} rows, expected {s0.shape[0]} "
                                 "(one per start state)")
            if not torch.isfinite(fixed).all():
                raise ValueError("actions contains NaN or inf")
        sampler, h = self.sampler(n_sample_steps), self.horizon
        mean_readout = self.config.readout != "chain"
        if (mean_readout and fixed is not None and fixed.shape[1] == h
                and not self.config.condition_on_last_action):
            actions = torch.cat([fixed, torch.zeros_like(fixed[:, :1])], dim=1)   # a_H is never seen
            x0, spread, row_spread = sampler.readout(s0, actions), float("nan"), None
        elif self.config.readout == "rollout" and policy is not None:
            actions, x0 = sampler.policy_rollout(s0, policy, self.n_rows, generator=generator,
                                                 fixed_actions=fixed)
            spread, row_spread = float("nan"), None
        else:
            out = sampler.sample(
                s0, self.n_rows, policy=policy, generator=generator, fixed_actions=fixed,
                scale=self.row_guidance_scales if self.config.guidance.per_row else self.guidance_scale)
            actions, spread, row_spread = out.actions, out.spread, out.row_spread
            if mean_readout and policy is not None:
                n_fixed = 0 if fixed is None else fixed.shape[1]
                actions = sampler.policy_consistent(s0, actions, policy, h, n_fixed)
            x0 = sampler.readout(s0, actions) if mean_readout else out.x0[None]
        states, rewards, terminals = self.normaliser.unnormalise_rows(x0.mean(0))
        states = torch.cat([s0[:, None], states[:, 1:]], dim=1)
        rewards, ended = rewards[:, :h], terminals[:, :h] > self.config.terminal_threshold
        rule = (termination_rule(self.spec.env_id, self.spec.obs_dim) if self.config.terminations == "task"
                else None)
        if rule is not None:
            ended = ended | rule(states[:, 1:h + 1])
        u = transition_disagreement(x0, self.spec.obs_dim) if self.config.n_members > 1 else None
        cut = None
        if u is not None:
            rewards = rewards - self.config.disagreement_penalty * u
            if self.config.disagreement_limit is not None:
                unsure = u > self.config.disagreement_limit
                if self.config.unsure_ends == "terminate":
                    ended = ended | unsure
                else:
                    cut = unsure & ~ended
        return Imagination(observations=states, actions=actions[:, :h], rewards=rewards, terminations=ended,
                           spread=spread, row_spread=row_spread, disagreement=u, truncations=cut)

    def check_start_states(self, observations: np.ndarray) -> None:
        """ValueError naming the first start observation [n, obs] (row and dimension) that is not finite or
        lies far outside the data the model was trained on: there it would imagine NaN or nonsense."""
        self.normaliser.check_start_states(observations)

    def adapt_guidance(self, imagination: Imagination) -> None:
        """One tuning step of the guidance scale (and, with `per_row`, of each row's factor) toward the
        target spread, from the action spread of a policy-guided imagination; unguided ones change nothing.

        Only imaginations whose actions all follow the policy measure its spread: not those with given
        actions.
        """
        guidance = self.config.guidance
        self.log_guidance_scale = update_log_scale(self.log_guidance_scale, imagination.spread, guidance)
        if imagination.row_spread is not None:
            self.row_scale_offsets = update_row_offsets(self.row_scale_offsets, imagination.row_spread,
                                                        imagination.spread, guidance)

    def sampler(self, n_sample_steps: int | None = None) -> GuidedSampler:
        """The guided sampler of the EMA weights; `n_sample_steps` overrides the configured chain length."""
        config = self.config.sampler
        if n_sample_steps is not None:
            config = replace(config, n_sample_steps=n_sample_steps)
        return GuidedSampler(self.ema, self.schedule, self.normaliser, self.bounds, self.action_input,
                             self.config.guidance, config)

    def _checked(self, v: torch.Tensor | np.ndarray, dim: int, name: str) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float32, device=self.device)
        if t.dim() != 2 or t.shape[1] != dim or t.shape[0] < 1:
            raise ValueError(f"{name} must have shape [B, {dim}] with B >= 1, got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        return t

    def save(self, path: str | os.PathLike, compact: bool = False) -> None:
        """One file: network, EMA, normaliser, spec, config, guidance scale, format version and a checksum
        of all of them. `compact`: only the EMA weights (what `imagine` uses), as float16, for a model to
        ship rather than to train on: about a quarter of the full file."""
        if not isinstance(compact, bool):
            raise ValueError(f"compact must be True or False, got {compact!r}")
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "compact": compact,
            "spec": asdict(self.spec),
            "config": self.config.to_dict(),
            "normaliser": self.normaliser.to_dict(),
            "log_guidance_scale": self.log_guidance_scale,
            "row_scale_offsets": self.row_scale_offsets.tolist(),
        }
        if compact:
            payload["ema"] = _half_weights(self.ema.state_dict())
        else:
            payload["denoiser"], payload["ema"] = self.denoiser.state_dict(), self.ema.state_dict()
        payload["checksum"] = content_checksum(payload)
        # written through a handle: given a path, torch names the archive's records after the (temporary)
        # file, so the same model would be saved as different bytes each time
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(payload, handle)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "auto",
             env_id: str | None = None) -> WorldModel:
        """Load a file written by `save` (full or compact); `env_id`, when given, must be one the file's model
        serves (`imagined_env.pretrained.serves`). Any problem of the file (damage, a missing or ill-typed
        field, a hostile pickle) is a one-line ValueError naming it."""
        path = Path(path)
        payload = _read_model_file(path)
        with _naming_the_file(path):
            spec = from_tree(EnvSpec, _field(payload, "spec", dict), "spec.")
        if env_id is not None and not serves(spec.env_id, env_id):
            raise ValueError(f"world model file {path} was trained on {spec.env_id!r}, not {env_id!r}")
        with _naming_the_file(path):
            config = WorldModelConfig.from_dict(_field(payload, "config", dict), "config.")
            normaliser = Normaliser.from_dict({key: _finite_numbers(f"normaliser.{key}", value)
                                               for key, value in _field(payload, "normaliser", dict).items()})
            log_scale = _field(payload, "log_guidance_scale", float)
            offsets = payload.get("row_scale_offsets")  # absent in files of format 1 without per-row tuning
            if offsets is not None:
                offsets = _finite_numbers("row_scale_offsets", offsets)
                if len(offsets) != config.horizon + 1:
                    raise ValueError(f"{len(offsets)} row guidance factors for {config.horizon + 1} rows")
            compact = _field(payload, "compact", bool) if payload["format_version"] >= 3 else False
            model = cls(spec, config, normaliser, device)
            if compact:  # the EMA weights, widened back to float32, also start any further fitting
                ema = {key: value.float() if value.is_floating_point() else value
                       for key, value in _checked_weights("ema", _field(payload, "ema", dict)).items()}
                model.denoiser.load_state_dict(ema)
                model.ema.load_state_dict(ema)
            else:
                for name, net in (("denoiser", model.denoiser), ("ema", model.ema)):
                    net.load_state_dict(_checked_weights(name, _field(payload, name, dict)))
        model.log_guidance_scale = log_scale
        if offsets is not None:
            model.row_scale_offsets = torch.tensor(offsets, dtype=torch.float32)
        return model


def content_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of everything in a model file's payload but its checksum, in a fixed order: each tensor's
    dtype, shape and bytes, dict entries sorted by key, list items in order, every other value as JSON."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"tensor {t.dtype} {list(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)}\n".encode())
            for key in sorted(value, key=repr):
                digest.update(f"{key!r}\n".encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"list {len(value)}\n".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{json.dumps(value, default=repr)}\n".encode())

    feed({k: v for k, v in payload.items() if k != "checksum"})
    return "sha256:" + digest.hexdigest()


def _read_model_file(path: Path) -> dict[str, Any]:
    """The payload of a model file, its format version and checksum verified."""
    if path.is_dir():
        raise ValueError(f"world model file {path} is a directory, not a file")
    if not path.is_file():
        raise ValueError(f"world model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        planted = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if planted:
            raise ValueError(f"world model file {path} holds a pickled object ({planted[1]}) "
                             "that no model file contains; "
                             "it was refused and nothing in it was run") from None
        raise ValueError(f"world model file {path} is truncated or corrupt: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001  (torch raises several types for truncated/corrupt archives)
        raise ValueError(f"world model file {path} is truncated or corrupt: {_one_line(exc)}") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{path} is not a world model file (no format_version)")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"world model file {path}: format_version must be an integer >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"world model file {path} has format version {version}; this imagined-env "
                         f"reads up to {FORMAT_VERSION}: upgrade imagined-env")
    checksum = payload.get("checksum")
    if checksum is None and version >= 2:
        raise ValueError(f"world model file {path} is damaged: "
                         f"it lacks the checksum of format version {version}")
    if checksum is not None and checksum != content_checksum(payload):
        raise ValueError(f"world model file {path} is damaged: its content does not match its checksum")
    return payload


@contextmanager
def _naming_the_file(path: Path) -> Iterator[None]:
    """Turn any error about a model file's content into one line naming the file."""
    try:
        yield
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"world model file {path} is inconsistent: {_one_line(exc)}") from exc


def _field(payload: dict[str, Any], name: str, kind: type) -> Any:
    """payload[name], which must be of type `kind` (dict, or float: any finite real number)."""
    if name not in payload:
        raise ValueError(f"it lacks the field {name!r}")
    value = payload[name]
    if kind is float:
        if not _is_finite_number(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")  # noqa: TRY004
    return value


def _finite_numbers(name: str, values: Any) -> list[float]:
    """`values`, a list or tuple of finite real numbers, as floats; else a ValueError naming the entry."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list of numbers, got {type(values).__name__}")  # noqa: TRY004
    for i, v in enumerate(values):
        if not _is_finite_number(v):
            raise ValueError(f"{name}[{i}] must be a finite number, got {v!r}")
    return [float(v) for v in values]


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _checked_weights(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """A state dict of finite tensors, the first offending entry named."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}.{key} must be a tensor, got {type(value).__name__}")  # noqa: TRY004
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}.{key} holds NaN or inf")
    return state


def _half_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's floating tensors as float16; ValueError naming the first one float16 cannot hold."""
    for key, value in state.items():
        if value.is_floating_point() and value.numel() and value.abs().max() > FLOAT16_MAX:
            raise ValueError(f"ema.{key} holds values up to {float(value.abs().max()):.3g}, beyond float16's "
                             f"{FLOAT16_MAX:g}: save it with compact=False")
    return {key: value.half() if value.is_floating_point() else value for key, value in state.items()}


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, without terminal colour codes, at most `limit` characters; of
    torch's long weights-only text only the line that says what failed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    detail = re.search(r"WeightsUnpickler error: (.*)", text)
    text = " ".join((detail[1] if detail else text).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def transition_disagreement(predictions: torch.Tensor, obs_dim: int) -> torch.Tensor:
    """u [B, H] of members' predictions [K, B, H+1, obs+2] (normalised rows [s, r, d]): for transition k,
    the root mean over channels of the members' variance of its outcome, s_{k+1} (row k+1) and r_k (row k)."""
    var = predictions.var(dim=0, correction=0)
    outcome = torch.cat([var[:, 1:, :obs_dim], var[:, :-1, obs_dim:obs_dim + 1]], dim=-1)
    return outcome.mean(-1).sqrt()


def _inpaint_start(x: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """Replace the states of row 0 by s0 without an in-place write on a graph tensor."""
    obs_dim = s0.shape[-1]
    row0 = torch.cat([s0, x[:, 0, obs_dim:]], dim=-1)
    return torch.cat([row0[:, None], x[:, 1:]], dim=1)
