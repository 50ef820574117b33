"""Real return of PPO trained only in a shipped, frozen imagined env, in the README's snippet form
(`ImaginationPPO("MlpPolicy", task, seed=seed)`, 256 imagined envs, `learn` continued to each checkpoint),
evaluated on the real task (deterministic episodes): do the shipped models teach a policy that is good on
the real task, and does longer training keep it? Rows on the same seeds: the shipped env as it ships
(pessimism on), with pessimism off (what the guard buys), the same env and start states with MuJoCo in
place of the world model (the ceiling these learner settings reach, so the table reads "fraction of the
oracle reached"), and uniform random actions (the floor); on request, the shipped env with the episodes
its model is unsure of truncated (bootstrapped) instead of terminated. `--learner zoo` trains the RL Zoo's
tuned PPO of the task (with VecNormalize, 16 envs, rollouts of 8 plans) in place of the snippet's SB3
defaults: how much of the gap to a bar is the learner's; `sb3-norm`, `sb3-norm-obs` and
`sb3-norm-reward` put the snippet's PPO over VecNormalize (its own normalisation then off): which
normalisation matters. Prints a table with the shipped models' bars,
writes JSON and a plot. Each (task, row, seed) run writes its result as it ends; `--resume` skips those.

    python benchmarks/shipped_envs.py                     # every shipped task, seeds 0,1,2, 50k/100k/200k
    python benchmarks/shipped_envs.py --quick             # smoke run: one task, one seed, 2 short checkpoints
    python benchmarks/shipped_envs.py --resume --jobs 2   # continue a stopped run
    python benchmarks/shipped_envs.py --envs HalfCheetah-v4 --model out/  # an export or build-model folder
    python benchmarks/shipped_envs.py --envs HalfCheetah-v4 --rows shipped,oracle --learner zoo
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import MISSING, asdict, dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecNormalize

from agents import ImaginationA2C, ImaginationPPO, make_imagined_vec_env
from agents.demo import random_return
from agents.env_factory import DEFAULT_N_ENVS
from agents.plan_following import imagined_horizon
from agents.real_evaluation import evaluate_real
from agents.simulator_model import ORACLE_TASKS, SimulatorModel
from agents.zoo import zoo_settings
from imagined_env.pretrained import pretrained_paths, serves
from imagined_env.utils import atomic_path
from imagined_env.world_model import WorldModel

TASKS = ("HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
ROWS = {"shipped": "shipped model", "no-pessimism": "shipped model, pessimism off",
        "oracle": "MuJoCo oracle", "random": "random actions",
        "unsure-truncates": "shipped model, unsure ends truncated"}
DEFAULT_ROWS = ("shipped", "no-pessimism", "oracle", "random")
QUICK_STEPS = (2_560, 5_120)
TARGETS = {"HalfCheetah": ("at", 50_000, 1500.0), "Hopper": ("within", 200_000, 1000.0),
           "Walker2d": ("within", 200_000, 1000.0)}
"""Bars of the shipped row: the real return to reach at, or at some checkpoint within, the imagined steps."""
HOLD = (50_000, 200_000, 0.10)
"""The return at 200k imagined steps may be lower than at 50k by at most 10% (of |return at 50k|)."""
LEARNERS = {"sb3": "the README snippet's ImaginationPPO (SB3's defaults, its own observation normalisation, "
                   "256 envs)",
            "sb3-raw": "the README snippet's ImaginationPPO with SB3's policy exactly (no observation "
                       "normalisation)",
            "a2c": "the README snippet with ImaginationA2C (SB3's defaults, its own observation "
                   "normalisation)",
            "a2c-raw": "the README snippet with ImaginationA2C and SB3's policy exactly",
            "sb3-norm": "the README snippet's ImaginationPPO over VecNormalize of observations and rewards",
            "sb3-norm-obs": "the README snippet's ImaginationPPO over VecNormalize of observations",
            "sb3-norm-reward": "the README snippet's ImaginationPPO over VecNormalize of rewards (no "
                               "normalised observations)",
            "zoo": "the RL Zoo's tuned PPO + VecNormalize (16 envs, n_steps 8 H)"}
ZOO_N_ENVS = 16
"""Envs of the `zoo` learner: with n_steps 8 H, a rollout of 128 H transitions, near the Zoo's 512 and a
multiple of its mini-batches."""


@dataclass(frozen=True)
class Unit:
    """One independent run: a task, a row, a seed, and what makes its result reusable."""

    env_id: str
    row: str
    seed: int
    steps: tuple[int, ...]
    n_episodes: int
    model: str
    """Digest of the world model and start states measured (a part of another model is stale)."""
    pessimism_option: bool
    """Whether the env has the pessimism option (without it, "shipped model" runs with none)."""
    episode_steps: int | None = None
    """Imagined steps per episode (None: the registered ids' own)."""
    model_dir: str | None = None
    """A folder `imagined-env export` or `build-model` wrote, measured in place of the shipped model (None:
    shipped)."""
    learner: str = "sb3"
    """A key of LEARNERS."""

    @property
    def name(self) -> str:
        return f"{self.env_id}_{self.row}_seed{self.seed}"


def shipped_tasks() -> list[str]:
    """The tasks among TASKS for which a model ships."""
    found = []
    for env_id in TASKS:
        try:
            pretrained_paths(env_id)
        except ValueError:
            continue
        found.append(env_id)
    return found


def row_label(row: str, model_dir: str | None) -> str:
    """The row's name in tables and plots: the shipped rows name the exported model when one is given."""
    if model_dir is not None and row in ("shipped", "no-pessimism", "unsure-truncates"):
        return ROWS[row].replace("shipped model", f"model of {Path(model_dir).resolve().name}")
    return ROWS[row]


def model_paths(env_id: str, model_dir: str | None) -> tuple[Path, Path]:
    """(world model, start states) measured for `env_id`: the given folder's (an `imagined-env export`
    folder holds start_states.npz, a `build-model` folder start_states.npy), or the shipped ones."""
    if model_dir is None:
        return pretrained_paths(env_id)
    folder = Path(model_dir)
    exported = folder / "start_states.npz"
    return folder / "world_model.pt", exported if exported.is_file() else folder / "start_states.npy"


def model_digest(env_id: str, model_dir: str | None = None) -> str:
    """First 16 hex digits of the sha256 of the world model and start states measured for `env_id`."""
    digest = hashlib.sha256()
    for path in model_paths(env_id, model_dir):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def has_pessimism_option(env_id: str) -> bool:
    """Whether the shipped imagined env takes `pessimism=`: False when it refuses the keyword."""
    try:
        make_imagined_vec_env(env_id, 1, pessimism=False).close()
    except TypeError as err:
        if "pessimism" in str(err):
            return False
        raise
    return True


def env_kwargs(unit: Unit) -> dict[str, Any] | None:
    """What the row (and `--episode-steps`) changes in the shipped env (None: the README snippet exactly)."""
    kwargs = row_kwargs(unit)
    if unit.episode_steps is None:
        return kwargs
    return {**(kwargs or {}), "episode_steps": unit.episode_steps}


def row_kwargs(unit: Unit) -> dict[str, Any] | None:
    wm_path, starts = model_paths(unit.env_id, unit.model_dir)
    given = None if unit.model_dir is None else {"world_model": str(wm_path), "start_states": str(starts)}
    if unit.row == "no-pessimism":
        return {**(given or {}), "pessimism": False}
    if unit.row == "unsure-truncates":
        # episodes at the disagreement limit are truncated (bootstrapped), not terminated as shipped
        model = WorldModel.load(wm_path, device="auto", env_id=unit.env_id)
        if model.config.disagreement_limit is None:
            raise ValueError(f"{unit.name}: the model has no disagreement limit, so this row would be the "
                             "shipped one")
        model.config = replace(model.config, unsure_ends="truncate")
        return {"world_model": model, "start_states": str(starts)}
    if unit.row == "oracle":
        horizon = WorldModel.load(wm_path, device="cpu").horizon
        # No pessimism against an exact model: the oracle is the ceiling of the learner settings.
        off = {"pessimism": False} if unit.pessimism_option else {}
        return {"world_model": SimulatorModel(unit.env_id, horizon), "start_states": starts, **off}
    return given


def quiet() -> None:
    """The v4 tasks' out-of-date notices say nothing about a measurement."""
    gym.logger.min_level = 40
    warnings.filterwarnings("ignore", message=r".*is out of date", category=DeprecationWarning)


def run_unit(unit: Unit, parts: Path) -> dict[str, Any]:
    """Run `unit` (one torch thread), write its result to `parts/<name>.json` and return it: the real
    return (mean, std over deterministic episodes) after each checkpoint of one continuing `learn`, or of
    uniform random actions for the random row."""
    torch.set_num_threads(1)
    quiet()
    t0 = time.perf_counter()
    result: dict[str, Any] = {"unit": asdict(unit)}
    if unit.row == "random":
        result["real_return"] = random_return(unit.env_id, unit.n_episodes, unit.seed)
    else:
        try:
            model = learner(unit)
        except TypeError as err:
            if "pessimism" in str(err):
                raise ValueError(f"{unit.name}: the imagined env refuses pessimism= ({err}); "
                                 f"this row needs the env's pessimism option") from None
            raise
        checkpoints = []
        for target in unit.steps:
            t1 = time.perf_counter()
            if not checkpoints:
                model.learn(target)  # the README snippet's call
            elif target > model.num_timesteps:
                model.learn(target - model.num_timesteps, reset_num_timesteps=False)
            t2 = time.perf_counter()
            mean, std = evaluate_real(model, unit.env_id, unit.n_episodes, unit.seed, model.get_env())
            checkpoints.append({"steps": target, "imagined_steps": int(model.num_timesteps),
                                "real_return": mean, "real_return_std": std, "learn_seconds": t2 - t1,
                                "eval_seconds": time.perf_counter() - t2})
        model.env.close()
        result["checkpoints"] = checkpoints
    result["seconds"] = time.perf_counter() - t0
    with atomic_path(parts / f"{unit.name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def learner(unit: Unit) -> ImaginationPPO | ImaginationA2C:
    """The unit's learner on its env: the README snippet's PPO, or A2C in its place, each with SB3's
    policy exactly on request (`-raw`); the snippet's PPO over VecNormalize (`sb3-norm*`, the
    policy's own normalisation then off); or the Zoo's tuned PPO of the task over VecNormalize
    (observations and rewards, its gamma the learner's). VecNormalize learners are evaluated with its frozen
    statistics, and their env has no VecMonitor (SB3 copies statistics between identical wrapper stacks),
    so they log no imagined episode returns."""
    if unit.learner in ("sb3", "sb3-raw", "a2c", "a2c-raw"):
        algo = ImaginationA2C if unit.learner.startswith("a2c") else ImaginationPPO
        raw = {"policy_kwargs": {"normalize_observations": False}} if unit.learner.endswith("-raw") else {}
        return algo("MlpPolicy", unit.env_id, seed=unit.seed, env_kwargs=env_kwargs(unit), verbose=0, **raw)
    if unit.learner.startswith("sb3-norm"):
        imagined = make_imagined_vec_env(unit.env_id, **(env_kwargs(unit) or {}))
        norm = VecNormalize(imagined.venv, norm_obs=unit.learner != "sb3-norm-reward",
                            norm_reward=unit.learner != "sb3-norm-obs")
        # no observation normalisation at all for `sb3-norm-reward`: the policy's own is turned off too
        return ImaginationPPO("MlpPolicy", norm, seed=unit.seed, verbose=0,
                              policy_kwargs={"normalize_observations": False})
    kwargs = zoo_settings("ppo", unit.env_id).kwargs
    imagined = make_imagined_vec_env(unit.env_id, ZOO_N_ENVS, **(env_kwargs(unit) or {}))
    kwargs["n_steps"] = 8 * imagined_horizon(imagined)
    # on the SB3 adapter itself: evaluation copies the statistics by walking both wrapper stacks in step
    venv = VecNormalize(imagined.venv, gamma=kwargs["gamma"])
    return ImaginationPPO("MlpPolicy", venv, seed=unit.seed, verbose=0, **kwargs)


def read_part(path: Path, unit: Unit) -> dict[str, Any]:
    """A finished unit's result; ValueError when it was measured with other settings or another model."""
    part = json.loads(path.read_text())
    defaults = {f.name: f.default for f in fields(Unit) if f.default is not MISSING}   # fields added later
    stored = {**defaults, **part["unit"], "steps": tuple(part["unit"]["steps"])}
    if stored != asdict(unit):
        changed = {k: (stored.get(k), v) for k, v in asdict(unit).items() if stored.get(k) != v}
        raise ValueError(f"{path} was measured with other settings (stored, asked: {changed}); "
                         f"remove it, run without --resume, or use another --out")
    return part


def returns_at(parts: list[dict[str, Any]], step: int | None) -> dict[str, float]:
    """seed (as JSON keys it) -> real return at `step` (None: the random row's step-free return)."""
    out = {}
    for part in parts:
        seed = str(part["unit"]["seed"])
        if step is None:
            out[seed] = part["real_return"]
        else:
            out[seed] = next(c["real_return"] for c in part["checkpoints"] if c["steps"] == step)
    return out


def spread(per_seed: dict[str, float]) -> dict[str, Any]:
    values = np.array(list(per_seed.values()), float)
    return {"mean": float(values.mean()), "std": float(values.std()), "per_seed": per_seed}


def summarise(results: dict[str, dict[str, Any]], units: list[Unit]) -> dict[str, Any]:
    """Per task and row: mean, std and per-seed returns at each checkpoint, ratio to the oracle, bars."""
    tasks: dict[str, Any] = {}
    for env_id in dict.fromkeys(u.env_id for u in units):
        task_units = [u for u in units if u.env_id == env_id]
        n_seeds = len({u.seed for u in task_units})
        rows: dict[str, Any] = {}
        for row in dict.fromkeys(u.row for u in task_units):
            parts = [results[u.name] for u in task_units if u.row == row and u.name in results]
            if not parts:
                continue
            complete = len(parts) == n_seeds
            if row == "random":
                rows[row] = {**spread(returns_at(parts, None)), "complete": complete}
            else:
                steps = task_units[0].steps
                rows[row] = {"complete": complete,
                             "steps": {str(s): spread(returns_at(parts, s)) for s in steps}}
        oracle = rows.get("oracle")
        for row, summary in rows.items():
            if row in ("oracle", "random") or oracle is None:
                continue
            for step, cell in summary["steps"].items():
                ceiling = oracle["steps"][step]["mean"]
                cell["oracle_fraction"] = cell["mean"] / ceiling if ceiling > 0 else None
        tasks[env_id] = {"pessimism_option": task_units[0].pessimism_option, "model": task_units[0].model,
                         "model_dir": task_units[0].model_dir,
                         "rows": rows,
                         "bars": bars(env_id, rows.get("shipped"),     # the targets are the snippet's
                                      task_units[0].model_dir is None and task_units[0].learner == "sb3")}
    return tasks


def bars(env_id: str, shipped: dict[str, Any] | None, targets: bool = True) -> list[dict[str, Any]]:
    """The bars on the shipped row's mean over seeds: passed True/False, or None when the steps or seeds
    measured do not decide it. `targets` False keeps only the hold bar (the return targets are the shipped
    models')."""
    task = env_id.rsplit("-v", 1)[0]
    complete = shipped is not None and shipped["complete"]
    means = {int(s): c["mean"] for s, c in shipped["steps"].items()} if complete else {}
    out = []
    if targets and task in TARGETS:
        when, by, target = TARGETS[task]
        if when == "at":
            value = means.get(by)
            passed = None if value is None else value >= target
        else:
            within = [m for s, m in means.items() if s <= by]
            value = max(within) if within else None
            passed = True if value is not None and value >= target else (False if by in means else None)
        name = (f"real return at {by:,} imagined steps >= {target:.0f}" if when == "at"
                else f"best real return within {by:,} imagined steps >= {target:.0f}")
        out.append({"bar": name, "value": value, "passed": passed})
    early, late, drop = HOLD
    value = passed = None
    if early in means and late in means:
        value = means[late] - means[early]
        passed = value >= -drop * abs(means[early])
    out.append({"bar": f"return at {late:,} not lower than at {early:,} by more than {drop:.0%}",
                "value": value, "passed": passed})
    return out


def table(tasks: dict[str, Any], seeds: list[int], steps: tuple[int, ...], n_episodes: int,
          learner_key: str = "sb3") -> str:
    """The printed table: rows by task, a column per checkpoint, wide enough for every seed's return."""
    seed_cells = [" ".join(f"{v:.1f}" for v in cell["per_seed"].values())
                  for task in tasks.values() for row, summary in task["rows"].items()
                  for cell in ([summary] if row == "random" else summary["steps"].values())]
    width = max([24, *(len(cell) + 3 for cell in seed_cells)])
    lines = [f"Real return of the learner trained in the frozen imagined env over {n_episodes} deterministic "
             f"real episode{'s' * (n_episodes != 1)}; mean +- std over seeds {','.join(map(str, seeds))}",
             f"learner: {LEARNERS[learner_key]}"]
    for env_id, task in tasks.items():
        labels = {row: row_label(row, task.get("model_dir")) + ("" if summary["complete"]
                                                                else " (some seeds missing)")
                  for row, summary in task["rows"].items()}
        first = max([30, *(len(label) + 2 for label in labels.values())])   # the label column
        lines += ["", f"{env_id}  (model {task['model']})"
                  + ("" if task["pessimism_option"] else "  [the env has no pessimism option: the shipped "
                     "row runs without it]"),
                  f"{'':<{first}}" + "".join(f"{s:>{width},}" for s in steps)]
        for row, summary in task["rows"].items():
            cells = [summary] if row == "random" else [summary["steps"][str(s)] for s in steps]
            lines.append(f"{labels[row]:<{first}}" + "".join(
                f"{c['mean']:.1f} +- {c['std']:.1f}".rjust(width) for c in cells))
            lines.append(f"{'  per seed':<{first}}" + "".join(
                f"{' '.join(f'{v:.1f}' for v in c['per_seed'].values()):>{width}}" for c in cells))
            if any(c.get("oracle_fraction") is not None for c in cells):
                fractions = ["-" if c.get("oracle_fraction") is None else f"{c['oracle_fraction']:.2f}"
                             for c in cells]
                lines.append(f"{'  fraction of the oracle':<{first}}" + "".join(f"{x:>{width}}"
                                                                             for x in fractions))
        for bar in task["bars"]:
            verdict = {True: "yes", False: "NO", None: "n/a (not measured)"}[bar["passed"]]
            value = "" if bar["value"] is None else f" ({bar['value']:.1f})"
            lines.append(f"bar: {bar['bar']}: {verdict}{value}")
    return "\n".join(lines)


def plot(tasks: dict[str, Any], seeds: list[int], steps: tuple[int, ...], path: Path,
         learner_key: str = "sb3") -> bool:
    """Real return vs imagined steps, a panel per task, a line per row with a band of +- std over seeds;
    False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, (env_id, task) in zip(axes[0], tasks.items(), strict=True):
        for row, summary in task["rows"].items():
            if row == "random":
                ax.axhline(summary["mean"], color="grey", linestyle="--", label=ROWS[row])
                continue
            mean = np.array([summary["steps"][str(s)]["mean"] for s in steps])
            std = np.array([summary["steps"][str(s)]["std"] for s in steps])
            color = f"C{list(ROWS).index(row)}"  # a row's colour is the same in every panel
            ax.plot(steps, mean, marker="o", color=color, label=row_label(row, task.get("model_dir")))
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        learner_note = "" if learner_key == "sb3" else f", {learner_key} learner"
        ax.set_title(f"{env_id}: seeds {','.join(map(str, seeds))}, band +- std{learner_note}", fontsize=10)
        ax.set_xlabel("imagined steps")
        ax.set_xticks(steps, [f"{s / 1000:g}k" for s in steps])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)   # panels hold different rows (no oracle for some tasks)
    axes[0][0].set_ylabel("real return")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """`report` written as JSON to `out` (its folder made, the file replaced atomically), said, and returned:
    the end of this folder's one-file diagnostics."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


def int_list(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", help="comma-separated task ids [default: every shipped one among "
                   f"{', '.join(TASKS)}; --quick: the first of them]")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                   help=f"rows to run, some of {','.join(ROWS)} [default {','.join(DEFAULT_ROWS)}]")
    p.add_argument("--seeds", type=int_list, help="[default 0,1,2; --quick: 0]")
    p.add_argument("--steps", type=int_list, help="imagined-step checkpoints of one continuing run "
                   f"[default 50000,100000,200000; --quick: {','.join(map(str, QUICK_STEPS))}]")
    p.add_argument("--episodes", type=int, default=5, help="real evaluation episodes [default 5]")
    p.add_argument("--learner", choices=list(LEARNERS), default="sb3",
                   help="; ".join(f"{k}: {v}" for k, v in LEARNERS.items()) + " [default sb3]")
    p.add_argument("--episode-steps", type=int, default=None,
                   help="imagined steps per episode [default: the registered ids' own]; e.g. 5 for "
                        "episodes of one plan")
    p.add_argument("--model", metavar="DIR",
                   help="measure the model of an `imagined-env export` or `build-model` folder "
                        "(world_model.pt, start_states.npz or .npy) in place of the shipped one; one task "
                        "in --envs")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each [default 2]")
    p.add_argument("--quick", action="store_true", help="smoke run (see --envs, --seeds, --steps)")
    p.add_argument("--resume", action="store_true", help="reuse the results of runs already finished")
    p.add_argument("--out", type=Path, help="JSON to write [default benchmarks/results/shipped_envs/"
                   "<quick|full>.json]; runs' results go to <out without .json>.parts/, the plot to .png")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; expected some of {', '.join(ROWS)}")
    args.rows = rows
    if args.model is not None:
        args.model = os.path.normpath(args.model)   # "out/" and "out" are one model (and one --resume)
        wm_path, starts = model_paths("", args.model)
        missing = [str(f) for f in (wm_path, starts) if not f.is_file()]
        if not starts.is_file():    # neither start states file: name both kinds of folder's
            missing[-1] = str(starts.with_suffix(".npz or .npy"))
        if missing:
            p.error(f"--model {args.model}: missing {', '.join(missing)}; expected a folder "
                    "`imagined-env export` or `build-model` wrote")
        task = WorldModel.load(wm_path, device="cpu").spec.env_id
        args.envs = args.envs or task
        if "," in args.envs or args.envs not in TASKS or not serves(task, args.envs):
            p.error(f"--envs {args.envs}: the model of --model {args.model} was fitted on {task}; "
                    f"expected one task it serves among {', '.join(TASKS)}")
    shipped = shipped_tasks()
    if args.envs is None:
        if not shipped:
            p.error(f"no model ships for any of {', '.join(TASKS)}")
        args.envs = shipped[:1] if args.quick else shipped
    else:
        args.envs = args.envs.split(",")
        missing = [e for e in args.envs if e not in shipped and args.model is None]
        if missing:
            p.error(f"--envs: no shipped model for {missing}; shipped: {shipped or 'none'}")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.steps = tuple(args.steps or (QUICK_STEPS if args.quick else (50_000, 100_000, 200_000)))
    if any(s < 1 for s in args.steps) or list(args.steps) != sorted(set(args.steps)):
        p.error(f"--steps must be increasing positive checkpoints, got {','.join(map(str, args.steps))}")
    if args.episodes < 1 or args.jobs < 1:
        p.error(f"--episodes and --jobs must be >= 1, got {args.episodes} and {args.jobs}")
    if args.episode_steps is not None and args.episode_steps < 1:
        p.error(f"--episode-steps must be >= 1, got {args.episode_steps}")
    args.out = args.out or Path(f"benchmarks/results/shipped_envs/{'quick' if args.quick else 'full'}.json")
    return args


def plan(args: argparse.Namespace) -> list[Unit]:
    """Every (task, row, seed) unit; rows the env cannot run are left out with a message."""
    units = []
    for env_id in args.envs:
        option = has_pessimism_option(env_id)
        digest = model_digest(env_id, args.model)
        for row in args.rows:
            if row == "no-pessimism" and not option:
                print(f"{env_id}: row '{ROWS[row]}' left out: the imagined env refuses pessimism= "
                      "(it has no pessimism option yet)")
                continue
            if row == "oracle" and env_id.rsplit("-v", 1)[0] not in ORACLE_TASKS:
                print(f"{env_id}: row '{ROWS[row]}' left out: its observation does not determine the "
                      f"simulator state (oracle tasks: {', '.join(ORACLE_TASKS)})")
                continue
            units += [Unit(env_id, row, seed, args.steps, args.episodes, digest, option, args.episode_steps,
                           args.model, args.learner) for seed in args.seeds]
    return units


def describe(result: dict[str, Any]) -> str:
    if "real_return" in result:
        return f"{result['real_return']:.1f}"
    return ", ".join(f"{c['steps']:,}: {c['real_return']:.1f}" for c in result["checkpoints"])


def run_all(units: list[Unit], parts: Path, jobs: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Results of `units` by name, run in `jobs` spawned processes (in this one when jobs is 1), and the
    errors of those that failed (the others still run)."""
    results, failed = {}, {}

    def report(unit: Unit, result: dict[str, Any] | None, error: BaseException | None) -> None:
        done = len(results) + len(failed) + 1
        if error is None:
            results[unit.name] = result
            print(f"[{done}/{len(units)}] {unit.name}: {describe(result)} ({result['seconds']:.0f} s)",
                  flush=True)
        else:
            failed[unit.name] = f"{type(error).__name__}: {error}"
            print(f"[{done}/{len(units)}] {unit.name} FAILED: {failed[unit.name]}", flush=True)

    if jobs == 1 or len(units) <= 1:
        for unit in units:
            try:
                report(unit, run_unit(unit, parts), None)
            except Exception as err:  # noqa: BLE001  (one failed run must not lose the others)
                report(unit, None, err)
        return results, failed
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                             initializer=end_with_driver, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_unit, unit, parts): unit for unit in units}
        for future in as_completed(futures):
            error = future.exception()
            report(futures[future], None if error else future.result(), error)
    return results, failed


def end_with_driver(driver: int) -> None:
    """Run in each worker: on Linux the kernel sends it SIGTERM when the driver dies, so a killed driver
    leaves no worker training on (`--resume` reruns what was cut). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != driver:      # the driver died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    quiet()
    args = parse_args(argv)
    units = plan(args)
    parts = args.out.parent / f"{args.out.stem}.parts"
    results = {}
    if args.resume:
        results = {u.name: read_part(parts / f"{u.name}.json", u) for u in units
                   if (parts / f"{u.name}.json").is_file()}
        print(f"resuming: {len(results)} of {len(units)} runs already finished")
    t0 = time.perf_counter()
    new, failed = run_all([u for u in units if u.name not in results], parts, args.jobs)
    results.update(new)
    tasks = summarise(results, units)
    print("\n" + table(tasks, args.seeds, args.steps, args.episodes, args.learner))
    png = args.out.with_suffix(".png")
    plotted = plot(tasks, args.seeds, args.steps, png, args.learner)
    command = ["python", "benchmarks/shipped_envs.py", *(sys.argv[1:] if argv is None else argv)]
    report = {"command": " ".join(command),
              "settings": {"envs": args.envs, "rows": args.rows, "seeds": args.seeds,
                           "steps": list(args.steps), "eval_episodes": args.episodes,
                           "episode_steps": args.episode_steps, "model": args.model, "jobs": args.jobs,
                           "learner": args.learner,
                           "n_envs": ZOO_N_ENVS if args.learner == "zoo" else DEFAULT_N_ENVS,
                           "torch_threads": 1},
              "tasks": tasks, "runs": {u.name: results[u.name] for u in units if u.name in results},
              "failed": failed, "seconds": time.perf_counter() - t0}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}" + (f" and {png}" if plotted else " (no plot: matplotlib is not installed)"))
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return report


if __name__ == "__main__":
    main()
