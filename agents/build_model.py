"""Make a world model to ship: real data of many skill levels (a training run in imagination,
`agents.run_data`, or RL Zoo PPO or SAC and random actions, `agents.broad_data`), an ensemble fitted on
it, optionally refitted on real episodes of a learner trained in it (`agents.learner_data`), and the
files an imagined env loads (`imagined_env/pretrained/<name>/`).

Each stage writes its result into a work folder before the next starts, so a killed build resumes from
the last finished stage (the data run from its last checkpoint): `data.npz` (the real episodes),
`world_model.pt` (the fitted ensemble), for each round r of learner data `learner_data_<r>.npz` and
`world_model_<r>.pt`, then the shipped folder: the last model without its training-only weights, start
states, and `COMMAND.txt` (how it was made and what the data holds).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from agents.broad_data import BroadDataConfig, collect_broad_data, collect_quiet_actions
from agents.learner_data import LearnerDataConfig, collect_learner_data
from agents.presets import build_preset, resolve
from agents.real_evaluation import make_quietly
from agents.run_data import RunDataConfig, collect_run_data, final_return
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.training import fit_world_model, spec_from_env
from imagined_env.utils import atomic_path
from imagined_env.world_model import WorldModel, WorldModelConfig, check_terminations

SOURCES = ("run", "broad")


@dataclass(frozen=True)
class BuildConfig:
    """Data, model and pessimism of a shipped world model."""

    source: str = "run"
    """Where the real data comes from: "run", a training run in imagination (the states a learner from
    scratch passes through); "broad", RL Zoo PPO (or SAC) through its training and random actions."""
    run_data: RunDataConfig = field(default_factory=RunDataConfig)
    """The data run (source "run")."""
    data: BroadDataConfig = field(default_factory=BroadDataConfig)
    """The RL Zoo learner's and random data (source "broad")."""
    preset: str = "cpu-v5"
    """The world model's architecture, chain and training settings come from this preset."""
    n_members: int = 3
    """Ensemble members: their mean is imagined, their disagreement is the pessimism signal."""
    fit_steps: int = 20_000
    """Adam steps per member on the data."""
    terminations: str = "task"
    """Where imagined episodes terminate: "task" where the model's learned flag or the task's healthy check
    on the imagined observation says (Hopper, Walker2d; on Hopper the flag alone missed most falls);
    "learned" by the flag alone."""
    disagreement_penalty: float = 1.0
    """Imagined reward minus this times the members' disagreement (off with 0)."""
    disagreement_quantile: float | None = 0.99
    """Imagined episodes end where the disagreement exceeds this quantile of its values on the real data's
    own transitions (None: never), so the limit follows the model's scale of doubt rather than a guess."""
    n_start_states: int = 4096
    """Real observations shipped to start imagined episodes from, drawn evenly from all the data."""
    reset_start_share: float = 0.0
    """Share of the start states replaced (at random places) by the task's own reset observations, where
    every real episode begins. Drawn evenly from the data, hardly any start states are episode starts, so
    a learner is rarely taught the first steps of a real episode; this helps only where the data hold
    enough episode starts for the model to be sure there (else the disagreement limit ends them at once)."""
    quiet_action_stds: tuple[float, ...] = ()
    """Widths of zero-mean Gaussian random actions added to either source's data, `quiet_action_steps`
    real steps each. A learner whose policy starts near-deterministic (the RL Zoo's log_std_init -2)
    first acts near zero, which uniform random actions and trained policies never do; there the members
    agree on a wrong prediction (a HalfCheetah at rest imagined running backwards), which no disagreement
    signal can flag, only data."""
    quiet_action_steps: int = 3000
    """Real steps of random actions at each width of `quiet_action_stds`."""
    learner_data: LearnerDataConfig = field(default_factory=LearnerDataConfig)
    """Rounds of refitting on real episodes of the snippet's PPO trained in the model itself: where the
    members agree on an error the learner finds, data there is the only cure."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        resolve(self.preset)
        if not (isinstance(self.n_members, int) and self.n_members >= 2):
            raise ValueError(f"n_members must be an int >= 2 (pessimism needs an ensemble), "
                             f"got {self.n_members!r}")
        if not (isinstance(self.fit_steps, int) and self.fit_steps >= 1):
            raise ValueError(f"fit_steps must be an int >= 1, got {self.fit_steps!r}")
        if not 0 <= self.disagreement_penalty < float("inf"):
            raise ValueError(f"disagreement_penalty must be a finite number >= 0, "
                             f"got {self.disagreement_penalty}")
        if self.disagreement_quantile is not None and not 0 < self.disagreement_quantile <= 1:
            raise ValueError(f"disagreement_quantile must be in (0, 1] or None, "
                             f"got {self.disagreement_quantile}")
        if not (isinstance(self.n_start_states, int) and self.n_start_states >= 1):
            raise ValueError(f"n_start_states must be an int >= 1, got {self.n_start_states!r}")
        share = self.reset_start_share
        if isinstance(share, bool) or not (isinstance(share, (int, float)) and 0 <= share < 1):
            raise ValueError(f"reset_start_share must be in [0, 1), got {self.reset_start_share!r}")
        stds = self.quiet_action_stds
        if not (isinstance(stds, tuple) and all(isinstance(x, (int, float)) and 0 < x < float("inf")
                                                for x in stds)):
            raise ValueError(f"quiet_action_stds must be a tuple of finite numbers > 0, got {stds!r}")
        if not (isinstance(self.quiet_action_steps, int) and self.quiet_action_steps >= 1):
            raise ValueError(f"quiet_action_steps must be an int >= 1, got {self.quiet_action_steps!r}")
        check_terminations(self.terminations)


def build_model(env_id: str, out_dir: str | Path, work_dir: str | Path, config: BuildConfig, command: str,
                log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Run (or resume) the stages; returns the shipped folder (world_model.pt, start_states.npy,
    data.json: what the data holds, for references such as the demo's; COMMAND.txt)."""
    gym.spec(env_id)  # unknown ids fail here, before any work
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    preset = build_preset(config.preset, env_id)
    # an ensemble is imagined by its members' mean: the preset's rollout read-out does that already; a
    # preset that samples its chain ("chain") reads the ensemble out by the mean pass instead
    readout = "mean" if preset.world_model.readout == "chain" else preset.world_model.readout
    wm_config = replace(preset.world_model, n_members=config.n_members, readout=readout)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_file, report_file = work_dir / "data.npz", work_dir / "data.json"
    data_settings = data_stage_settings(config)
    if data_file.is_file():
        check_same(report_file, "data", data_settings, data_file)
    else:
        t0 = time.perf_counter()
        if config.source == "run":
            buffer, parts = collect_run_data(env_id, config.run_data, work_dir / "run", log, progress)
        else:
            buffer, report = collect_broad_data(env_id, config.data, log)
            parts = report.parts
        if config.quiet_action_stds:
            episodes, quiet = collect_quiet_actions(env_id, config.quiet_action_stds,
                                                    config.quiet_action_steps, config.data.seed)
            for episode in episodes:
                episode.add_to(buffer)
            parts = {**parts, **quiet.parts}
        with atomic_path(report_file) as tmp:
            tmp.write_text(json.dumps({"data": data_settings, "parts": parts,
                                       "seconds": time.perf_counter() - t0}, indent=2))
        buffer.save(data_file)
    buffer = EpisodeBuffer.load(data_file)
    buffer.check_task(env_id)
    parts = json.loads(report_file.read_text())["parts"]
    log(f"data: {buffer.n_transitions} transitions in {len(buffer)} episodes")
    # the data too: a data stage made anew must be refitted
    fit_settings = {"data": data_settings, "preset": config.preset, "n_members": config.n_members,
                    "fit_steps": config.fit_steps, "seed": config.data.seed}
    model = fit_stage(env_id, buffer, work_dir, "", fit_settings, config, wm_config, log, progress)
    rounds = config.learner_data
    for round_ in range(1, rounds.rounds + 1):
        _, _, starts, _ = ship_ready(model, buffer, config, readout, env_id)
        # what round r depends on: the model it trains in, as it ships (its file, the settings it was
        # fitted with, its pessimism and start states) and the learners
        trained_in = work_dir / f"world_model{'' if round_ == 1 else f'_{round_ - 1}'}.pt"
        digest = hashlib.sha256(trained_in.read_bytes()).hexdigest()
        fit_settings = {**fit_settings, f"learner_round_{round_}": {
            **learner_round_settings(rounds), "model_sha256": digest, **ship_settings(config)}}
        learned, parts = learner_stage(env_id, model, starts, rounds, round_, work_dir, fit_settings, buffer,
                                       parts, log)
        buffer = buffer.joined(learned)
        log(f"data with learner round {round_}: {buffer.n_transitions} transitions in {len(buffer)} episodes")
        model = fit_stage(env_id, buffer, work_dir, f"_{round_}", fit_settings, config, wm_config, log,
                          progress)
    on_data, limit, starts, n_resets = ship_ready(model, buffer, config, readout, env_id)
    # every record is made before the first file is written, so a failure leaves the folder as it was
    lines = [command, "",
             f"{env_id}: {data_origin(config)}, {buffer.n_transitions} real transitions in "
             f"{len(buffer)} episodes:",
             *(f"- {name}: {p['episodes']:.0f} episodes, {p['transitions']:.0f} transitions, return mean "
               f"{p['mean_return']:.1f}, max {p['max_return']:.1f}" for name, p in parts.items()),
             f"model: preset {config.preset} world model, {config.n_members} members of "
             f"{model.n_parameters() // config.n_members} parameters, {config.fit_steps} Adam steps each"
             + (f", refitted after {rounds.rounds} round{'s' * (rounds.rounds > 1)} of learner data"
                if rounds.rounds else "")
             + "; "
             f"members' disagreement on the data's transitions: median {np.median(on_data):.4f}, 99% "
             f"{np.quantile(on_data, 0.99):.4f}; imagined reward minus {config.disagreement_penalty:g} x "
             f"disagreement; episodes end above {'never' if limit is None else f'{limit:.4f}'}; "
             f"terminations: {config.terminations}",
             f"start states: {len(starts)} real observations drawn evenly from the data"
             + (f", {n_resets} of them replaced by the task's reset states" if n_resets else ""),
             f"build settings: {json.dumps(asdict(config))}"]
    collected = config.run_data.steps if config.source == "run" else (
        parts["uniform random"]["transitions"] + config.data.ppo_steps
        + len(config.data.final_noise_stds) * config.data.final_steps_per_noise)
    collected += len(config.quiet_action_stds) * config.quiet_action_steps
    collected += rounds.rounds * len(rounds.seeds) * rounds.checkpoints * rounds.real_steps
    record = {"env_id": env_id, "origin": data_origin(config), "real_steps_collected": int(collected),
              "transitions_kept": buffer.n_transitions, "parts": parts,
              "reference": data_reference(config, parts, work_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "world_model.pt", compact=True)
    with atomic_path(out_dir / "start_states.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, starts)
    with atomic_path(out_dir / "data.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    with atomic_path(out_dir / "COMMAND.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out_dir


def fit_stage(env_id: str, buffer: EpisodeBuffer, work_dir: Path, suffix: str, settings: dict[str, object],
              config: BuildConfig, wm_config: WorldModelConfig, log: Callable[[str], None], progress: bool
              ) -> WorldModel:
    """The ensemble fitted on `buffer` (work folder `world_model{suffix}.pt`, its settings in
    `model{suffix}.json`), fitted now unless stored with the same settings."""
    model_file, record = work_dir / f"world_model{suffix}.pt", work_dir / f"model{suffix}.json"
    if model_file.is_file():
        check_same(record, "model", settings, model_file)
    else:
        preset = build_preset(config.preset, env_id)
        env = make_quietly(env_id)
        spec = spec_from_env(env, env_id)
        env.close()
        model, losses = fit_world_model(buffer, spec, config.fit_steps, wm_config,
                                        replace(preset.train, seed=config.data.seed), device="cpu",
                                        progress=progress)
        model.set_default_chain(preset.n_sample_steps)
        with atomic_path(record) as tmp:  # first: a kill between the two files refits
            tmp.write_text(json.dumps({"model": settings}, indent=2))
        model.save(model_file)
        log(f"fitted {config.n_members} members for {config.fit_steps} steps, final loss "
            f"{np.mean(losses[-100:]):.4f}")
    return WorldModel.load(model_file, device="cpu")


def ship_settings(config: BuildConfig) -> dict[str, object]:
    """The settings `ship_ready` applies to a fitted model."""
    names = ("terminations", "disagreement_penalty", "disagreement_quantile", "n_start_states",
             "reset_start_share")
    return {name: getattr(config, name) for name in names}


def ship_ready(model: WorldModel, buffer: EpisodeBuffer, config: BuildConfig, readout: str, env_id: str
               ) -> tuple[np.ndarray, float | None, np.ndarray, int]:
    """Sets `model`'s pessimism as it ships (its limit calibrated on `buffer`); returns the members'
    disagreement on the data, the limit, the start states and how many of them are reset states."""
    on_data = data_disagreement(model, buffer, np.random.default_rng(config.data.seed))
    limit = None if config.disagreement_quantile is None else float(np.quantile(on_data,
                                                                                config.disagreement_quantile))
    # the read-out is set here too: a model stage fitted before it was part of the recipe ships it
    model.config = replace(model.config, readout=readout, terminations=config.terminations,
                           disagreement_penalty=config.disagreement_penalty, disagreement_limit=limit)
    starts = evenly_drawn_starts(buffer, config.n_start_states)
    n_resets = round(config.reset_start_share * len(starts))
    if n_resets:
        starts = with_reset_starts(starts, env_id, n_resets, config.data.seed)
    return on_data, limit, starts, n_resets


def learner_round_settings(config: LearnerDataConfig) -> dict[str, object]:
    """What one round of learner data depends on besides the model (not how many rounds follow)."""
    settings = asdict(config)
    del settings["rounds"]
    return settings


def learner_stage(env_id: str, model: WorldModel, starts: np.ndarray, config: LearnerDataConfig, round_: int,
                  work_dir: Path, settings: dict[str, object], like: EpisodeBuffer,
                  parts: dict[str, dict[str, float]], log: Callable[[str], None]
                  ) -> tuple[EpisodeBuffer, dict[str, dict[str, float]]]:
    """Round `round_`'s learner episodes in a buffer shaped `like` (work folder `learner_data_{round_}.npz`,
    recorded now unless stored with the same settings) and the data's parts with them."""
    data_file, report_file = work_dir / f"learner_data_{round_}.npz", work_dir / f"learner_data_{round_}.json"
    if data_file.is_file():
        check_same(report_file, "learner_data", settings, data_file)
    else:
        episodes, report = collect_learner_data(env_id, model, starts, config, round_, log)
        buffer = like.empty_like()
        for episode in episodes:
            episode.add_to(buffer)
        with atomic_path(report_file) as tmp:
            tmp.write_text(json.dumps({"learner_data": settings, "parts": report.parts}, indent=2))
        buffer.save(data_file)
    return EpisodeBuffer.load(data_file), {**parts, **json.loads(report_file.read_text())["parts"]}


def data_stage_settings(config: BuildConfig) -> dict[str, object]:
    """What the data stage depends on (a broad stage records its config, without `algo` when it is PPO, so
    earlier builds' records still match)."""
    # the quiet actions are recorded only when asked for, so earlier builds' records still match
    quiet = ({"quiet_action_stds": list(config.quiet_action_stds),
              "quiet_action_steps": config.quiet_action_steps, "quiet_action_seed": config.data.seed}
             if config.quiet_action_stds else {})
    if config.source == "broad":
        data = asdict(config.data)
        if data["algo"] == "ppo":
            del data["algo"]
        return {**data, **quiet}
    run = asdict(config.run_data)
    del run["skill_parts"]                       # only the report depends on it
    return {"source": "run", **run, "preset": resolve(config.run_data.preset), **quiet}


def data_origin(config: BuildConfig) -> str:
    """Where the data came from, in words, for the shipped records and the demo."""
    if config.source == "broad":
        return f"RL Zoo {config.data.algo.upper()} and random data"
    return (f"a training run in imagination (preset {resolve(config.run_data.preset)}, "
            f"{config.run_data.steps} real steps, seed {config.run_data.seed})")


def data_reference(config: BuildConfig, parts: dict[str, dict[str, float]],
                   work_dir: Path) -> dict[str, object] | None:
    """The best policy behind the data and its real return, to give a learner's return a scale."""
    if config.source == "run":
        return {"policy": "the data run's final policy, deterministic",
                "mean_return": final_return(work_dir / "run")}
    algo = config.data.algo.upper()
    finals = [(name, part) for name, part in parts.items() if name.startswith(f"final {algo} policy")]
    if not finals:
        return None
    name, part = max(finals, key=lambda item: item[1]["mean_return"])
    return {"policy": f"RL Zoo {algo}'s final policy{name.removeprefix(f'final {algo} policy')} action noise",
            "mean_return": part["mean_return"]}


def data_disagreement(model: WorldModel, buffer: EpisodeBuffer, rng: np.random.Generator,
                      n_windows: int = 4096) -> np.ndarray:
    """The members' disagreement [n] about real transitions: windows of the data replayed through the
    model with their own actions (padding past an episode's end left out)."""
    windows = buffer.sample_windows(n_windows, model.horizon, rng)
    h = model.horizon
    with torch.no_grad():
        out = model.imagine(windows.states[:, 0], actions=windows.actions[:, :h])
    if out.disagreement is None:
        raise ValueError("the model is not an ensemble: it has no disagreement to calibrate a limit on")
    return out.disagreement.cpu().numpy()[windows.valid[:, :h]]


def check_same(record: Path, key: str, settings: dict[str, object], result: Path) -> None:
    """A stage's stored result must come from the settings asked for now, or resuming would mix builds."""
    stored = json.loads(record.read_text()).get(key) if record.is_file() else None
    if stored != json.loads(json.dumps(settings)):
        raise ValueError(f"{record.parent} holds a {key} stage built with {stored}, not the {settings} asked "
                         f"for: use another work folder or delete {result} to make the stage anew")


RESET_SEED = 20_000
"""Reset seeds of the task's start observations (`with_reset_starts`): RESET_SEED, RESET_SEED + 1, ...,
apart from the seeds real evaluations reset with (10_000 and up)."""


def with_reset_starts(starts: np.ndarray, env_id: str, n: int, seed: int) -> np.ndarray:
    """A copy of `starts` with `n` rows, chosen by `seed`, replaced by the task's reset observations."""
    env = make_quietly(env_id)
    try:
        resets = np.stack([env.reset(seed=RESET_SEED + i)[0] for i in range(n)]).astype(np.float32)
    finally:
        env.close()
    out = starts.copy()
    out[np.random.default_rng(seed).choice(len(starts), n, replace=False)] = resets
    return out


def evenly_drawn_starts(buffer: EpisodeBuffer, n: int) -> np.ndarray:
    """`n` observations (float32 [n, obs]) at evenly spaced positions of all observations an episode can
    start from."""
    obs = buffer.start_observations()
    picks = np.unique(np.linspace(0, len(obs) - 1, min(n, len(obs))).round().astype(int))
    return np.asarray(obs[picks], np.float32)
