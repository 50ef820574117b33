"""Model-free vs imagination on one task: same real-step budget, same seeds, same evaluation.

Runs are sequential (one heavy process at a time). Every method is evaluated on the real task with the
deterministic policy every `eval_every` real steps; model-free learners under VecNormalize are evaluated
with a frozen copy of the training statistics. Results go to `compare.csv` (every evaluation),
`compare_summary.csv` (per method and step over seeds: mean, std, IQM and its 95% bootstrap interval),
`compare.json` (setup, settings, evaluations and that summary) and `compare.png`, rewritten after every
run so an interrupted comparison keeps what it finished.
"""
from __future__ import annotations

import csv
import json
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.config import CoordinatorConfig
from agents.config_flags import leaf_values
from agents.coordinator import Coordinator
from agents.ensemble_loop import ENSEMBLE, EnsembleCoordinator
from agents.oracle import OracleCoordinator
from agents.presets import build_preset, preset_ids, resolve
from agents.real_evaluation import LEARNERS, TqdmProgress, evaluate_real, real_env
from agents.simulator_model import ORACLE_TASKS
from agents.statistics import MIN_SEEDS_FOR_CLAIM, SeedSummary, not_a_claim_note, summarise
from agents.zoo import BaselineSettings, task_name, zoo_settings
from imagined_env.baselines.mlp_ensemble import ENSEMBLE_TRAIN
from imagined_env.utils import atomic_path

MODEL_FREE: dict[str, type[BaseAlgorithm]] = {**LEARNERS, "sac": SAC}
IMAGINATION = {"imagination-ppo": "ppo", "imagination-a2c": "a2c", "oracle-ppo": "ppo", "ensemble-ppo": "ppo"}
"""Methods run by the coordinator, and their learner; oracle-* imagine with MuJoCo (`agents.oracle`),
ensemble-* with an MBPO-style MLP ensemble (`agents.ensemble_loop`)."""
METHODS = (*MODEL_FREE, *IMAGINATION)
ENSEMBLE_LINE = (f"an MBPO-style MLP ensemble ({ENSEMBLE.n_members} members of {ENSEMBLE.width} x "
                 f"{ENSEMBLE.depth}, Gaussian NLL, Adam {ENSEMBLE_TRAIN.lr:g} with batch "
                 f"{ENSEMBLE_TRAIN.batch_size} per member and weight decay {ENSEMBLE.weight_decay:g}; "
                 f"imagining with the mean of its {ENSEMBLE.n_elites} elites)")
EVAL_SEED_OFFSET = 10_000
"""Evaluation episodes are seeded apart from training so they never replay a training reset."""


@dataclass(frozen=True)
class EvalPoint:
    """Real-task return of one method/seed after `real_steps` real environment steps."""

    method: str
    seed: int
    real_steps: int
    mean_return: float
    std_return: float


@dataclass(frozen=True)
class CompareSpec:
    """What to compare: every method x seed gets `budget` real steps and the same evaluation."""

    env_id: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: int
    eval_every: int
    eval_episodes: int
    imagination: CoordinatorConfig | None
    """Base config of the imagination runs (None when only model-free methods run); env, algo, seed and
    evaluation are set per run."""
    preset: str | None = None
    """Versioned id of the preset `imagination` started from, for the record (None: not recorded)."""
    max_episode_steps: int | None = None
    """Time limit of evaluation episodes on both sides (None: the task's own)."""

    def __post_init__(self) -> None:
        oracles = [m for m in self.methods if is_oracle(m)]
        if oracles and task_name(self.env_id) not in ORACLE_TASKS:
            raise ValueError(f"{oracles[0]} needs a task whose observation determines the simulator state; "
                             f"{self.env_id!r} is not one (oracle tasks: {', '.join(ORACLE_TASKS)})")


def is_oracle(method: str) -> bool:
    return method.startswith("oracle-")


def is_ensemble(method: str) -> bool:
    return method.startswith("ensemble-")


# ---- evaluation during model-free learning ---------------------------------------------------------
class RealEvalCallback(BaseCallback):
    """Evaluates at 0 real steps, every `eval_every` steps and at `budget`, and stops at `budget`
    exactly (SB3 would otherwise finish its current rollout)."""

    def __init__(self, method: str, spec: CompareSpec, seed: int):
        super().__init__()
        self.method, self.spec, self.seed = method, spec, seed
        self.points: list[EvalPoint] = []

    def _on_training_start(self) -> None:
        self._evaluate()

    def _on_step(self) -> bool:
        steps, spec = self.num_timesteps, self.spec
        if steps % spec.eval_every == 0 or steps == spec.budget:
            self._evaluate()
        return steps < spec.budget

    def _evaluate(self) -> None:
        spec = self.spec
        mean, std = evaluate_real(self.model, spec.env_id, spec.eval_episodes, self.seed + EVAL_SEED_OFFSET,
                                  self.training_env, spec.max_episode_steps)
        self.points.append(EvalPoint(self.method, self.seed, self.num_timesteps, mean, std))


# ---- runners --------------------------------------------------------------------------------------
def make_model_free(settings: BaselineSettings, env_id: str, seed: int, device: str = "cpu") -> BaseAlgorithm:
    """The Zoo's learner: its kwargs on one env, VecNormalize'd when the Zoo normalises (reward discount =
    the learner's gamma)."""
    venv: VecEnv = real_env(env_id, seed)
    if settings.normalized:
        venv = VecNormalize(venv, norm_obs=settings.norm_obs, norm_reward=settings.norm_reward,
                            gamma=settings.gamma)
    return MODEL_FREE[settings.algo]("MlpPolicy", venv, seed=seed, device=device, verbose=0,
                                     **settings.kwargs)


def run_model_free(method: str, spec: CompareSpec, seed: int, progress: bool = True) -> list[EvalPoint]:
    """Train the Zoo-tuned model-free learner for exactly `spec.budget` real steps."""
    model = make_model_free(zoo_settings(method, spec.env_id), spec.env_id, seed)
    evaluations = RealEvalCallback(method, spec, seed)
    bar = TqdmProgress(spec.budget, f"{method} seed {seed}", "real step", progress)
    try:
        model.learn(total_timesteps=spec.budget, callback=CallbackList([bar, evaluations]))
    finally:
        cast(VecEnv, model.get_env()).close()  # the venv the model was built with
    return evaluations.points


def imagination_config(method: str, spec: CompareSpec, seed: int) -> CoordinatorConfig:
    """The imagination side's config for one run: the base config with this run's task and seed."""
    if spec.imagination is None:
        raise ValueError(f"{method} needs CompareSpec.imagination, the base coordinator config")
    return replace(spec.imagination, env_id=spec.env_id, algo=IMAGINATION[method], seed=seed,
                   eval_every=spec.eval_every, eval_episodes=spec.eval_episodes,
                   eval_max_episode_steps=spec.max_episode_steps)


def imagination_run_dir(out_dir: Path, method: str, seed: int) -> Path:
    """Each imagination run keeps its full run folder (logs, checkpoint, world model) under `out_dir`."""
    return out_dir / "runs" / f"{method}_seed{seed}"


def run_imagination(method: str, spec: CompareSpec, seed: int, out_dir: Path,
                    progress: bool = True) -> list[EvalPoint]:
    """The coordinator (real data -> world model -> learner in imagination) for `spec.budget` real steps;
    for an oracle or ensemble method, the same loop imagining with MuJoCo or an MLP ensemble."""
    config = imagination_config(method, spec, seed)
    loop = (OracleCoordinator if is_oracle(method) else EnsembleCoordinator if is_ensemble(method)
            else Coordinator)
    coordinator = loop(config, imagination_run_dir(out_dir, method, seed), verbose=0)
    try:
        coordinator.learn(spec.budget, progress_bar=progress)
    finally:
        coordinator.close()
    return [EvalPoint(method, seed, int(r["real_steps"]), float(r["mean_return"]), float(r["std_return"]))
            for r in coordinator.history]


def run_method(method: str, spec: CompareSpec, seed: int, out_dir: Path,
               progress: bool = True) -> list[EvalPoint]:
    """One method on one seed, whichever kind it is: a unit of work of every backend."""
    if method in IMAGINATION:
        return run_imagination(method, spec, seed, out_dir, progress)
    return run_model_free(method, spec, seed, progress)


def run_comparison(spec: CompareSpec, out_dir: Path, progress: bool = True,
                   log: Callable[[str], None] = print) -> list[EvalPoint]:
    """Every method x seed in turn; the tables and the plot are rewritten after each run."""
    points: list[EvalPoint] = []
    runs = [(m, s) for m in spec.methods for s in spec.seeds]
    for i, (method, seed) in enumerate(runs, 1):
        start = time.perf_counter()
        new = run_method(method, spec, seed, out_dir, progress)
        points.extend(new)
        write_outputs(points, spec, out_dir)
        final = new[-1].mean_return if new else float("nan")
        log(f"[{i}/{len(runs)}] {method} seed {seed}: final return {final:.1f} "
            f"({time.perf_counter() - start:.0f} s)")
    return points


# ---- settings, tables and plot ----------------------------------------------------------------------
def changes_from_preset(config: CoordinatorConfig, preset: str) -> dict[str, Any]:
    """{dotted field: value} where `config` differs from `preset` (a registered id), beyond task, algo,
    seed and evaluation."""
    own = {k: getattr(config, k)
           for k in ("algo", "seed", "eval_every", "eval_episodes", "eval_max_episode_steps")}
    base = leaf_values(build_preset(preset, config.env_id, own))
    return {k: v for k, v in leaf_values(config).items() if base.get(k) != v}


def changed_from_preset(config: CoordinatorConfig, preset: str) -> bool:
    """Whether `config` differs from `preset` in more than task, algo, seed and evaluation."""
    return bool(changes_from_preset(config, preset))


def preset_label(config: CoordinatorConfig | None, preset: str | None) -> str:
    """"cpu-v5", "cpu-v5 + world_model.readout mean" or "unknown preset": what an imagination config
    started from, and what it changed."""
    if preset is None or config is None or preset not in preset_ids():
        return preset or "unknown preset"
    changes = changes_from_preset(config, preset)
    return " + ".join([preset, *(f"{k} {v}" for k, v in changes.items())])


def describe_imagination(config: CoordinatorConfig, preset: str | None, polygrad: bool = True) -> str:
    """One line with the settings that shape an imagination run (`polygrad`: with its world model's, which
    a loop with another model does not use)."""
    wm, learner = config.world_model, config.learner
    shown = {k: v for k, v in asdict(learner).items() if k != "policy"}
    kwargs = ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) + (
        f", policy {','.join(map(str, learner.policy.pi))} {learner.policy.activation} "
        f"log_std_init {learner.policy.log_std_init:g}")
    steps = "full chain" if config.n_sample_steps is None else f"{config.n_sample_steps} sample steps"
    actions = ("scaled" if wm.scale_actions else "full strength") + (
        "" if wm.condition_on_last_action else ", last action hidden")
    model = (f", {steps}, denoiser {wm.denoiser.kind} {wm.denoiser.width}x{wm.denoiser.depth} (actions "
             f"{actions})" if polygrad else "")
    training = (f", reward loss weight {wm.reward_loss_weight:g}, guidance scale lr {wm.guidance.scale_lr:g}"
                f"{' per row' if wm.guidance.per_row else ''}" if polygrad else "")
    return (f"{config.algo.upper()} in imagination ({preset_label(config, preset)}): "
            f"prefill {config.prefill_steps}, "
            f"H {wm.horizon}, {config.n_imagined_envs} imagined trajectories per update every "
            f"{config.policy_every} real steps{model}, "
            f"{config.world_model_steps_per_real_step:g} world-model steps per real step after "
            f"{config.initial_world_model_steps}{training}"
            f"{_options(config)}; learner {kwargs}")


def _options(config: CoordinatorConfig) -> str:
    """The coordinator's opt-in options that are switched on, as ', name value' each."""
    scale = config.collection_std_scale
    values = {"collection std scale": None if scale == 1 else scale,
              "collection noise std": config.collection_noise_std or None,
              "start state window": config.start_state_window,
              "final learning rate": config.final_learning_rate,
              "target update KL": config.target_update_kl}
    return "".join(f", {name} {value:g}" for name, value in values.items() if value is not None)


def method_settings(spec: CompareSpec) -> dict[str, str]:
    """Method -> the settings it used, as stated in the JSON and under the plot."""
    out = {}
    for method in spec.methods:
        if method in IMAGINATION:
            config = imagination_config(method, spec, spec.seeds[0])
            line = describe_imagination(config, spec.preset, polygrad=not is_ensemble(method))
            if is_oracle(method):
                line = f"MuJoCo in place of the world model, otherwise {line}"
            elif is_ensemble(method):
                line = f"{ENSEMBLE_LINE} in place of the world model, otherwise {line}"
            out[method] = line
        else:
            out[method] = zoo_settings(method, spec.env_id).describe()
    return out


def write_outputs(points: list[EvalPoint], spec: CompareSpec, out_dir: Path) -> None:
    write_csv(points, out_dir / "compare.csv")
    write_summary_csv(points, out_dir / "compare_summary.csv")
    write_json(points, spec, out_dir / "compare.json")
    plot_comparison(points, spec, out_dir / "compare.png")


def write_csv(points: list[EvalPoint], path: Path) -> None:
    """One row per evaluation: method, seed, real_steps, mean_return, std_return."""
    fields = list(EvalPoint.__dataclass_fields__)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)


SUMMARY_FIELDS = ("method", "real_steps", *SeedSummary.__dataclass_fields__)


def step_statistics(points: list[EvalPoint]) -> dict[str, list[tuple[int, SeedSummary]]]:
    """method -> (real steps, `SeedSummary` of the seeds evaluated there), in step order."""
    returns: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        returns[p.method][p.real_steps].append(p.mean_return)
    return {m: [(step, summarise(values)) for step, values in sorted(by_step.items())]
            for m, by_step in returns.items()}


def summary_rows(points: list[EvalPoint]) -> list[dict[str, Any]]:
    """One row per method and evaluation step, with the `SUMMARY_FIELDS`."""
    return [{"method": m, "real_steps": step, **asdict(s)}
            for m, rows in step_statistics(points).items() for step, s in rows]


def write_summary_csv(points: list[EvalPoint], path: Path) -> None:
    """compare_summary.csv: `summary_rows`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summary_rows(points))


def results_by_method(points: list[EvalPoint]) -> dict[str, dict[str, list[dict[str, float]]]]:
    """method -> seed (as a JSON key) -> evaluations in step order."""
    out: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for p in sorted(points, key=lambda p: (p.method, p.seed, p.real_steps)):
        out[p.method][str(p.seed)].append({"real_steps": p.real_steps, "mean_return": p.mean_return,
                                           "std_return": p.std_return})
    return {m: dict(seeds) for m, seeds in out.items()}


def write_json(points: list[EvalPoint], spec: CompareSpec, path: Path) -> None:
    """The comparison's setup, each method's settings, and every evaluation."""
    payload = {
        "env_id": spec.env_id, "budget": spec.budget, "seeds": list(spec.seeds),
        "eval_every": spec.eval_every, "eval_episodes": spec.eval_episodes,
        "max_episode_steps": spec.max_episode_steps, "preset": spec.preset, "settings": method_settings(spec),
        "imagination_config": None if spec.imagination is None else spec.imagination.to_dict(),
        "results": results_by_method(points),
        "summary": {m: [{"real_steps": step, **asdict(s)} for step, s in rows]
                    for m, rows in step_statistics(points).items()},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=True))


def oracle_fractions(statistics: dict[str, list[tuple[int, SeedSummary]]]) -> dict[str, float]:
    """Each non-oracle method's final IQM over the first oracle method's final IQM (none without an oracle
    or when the oracle's is not positive: a fraction of it would mean nothing)."""
    oracle = next((m for m in statistics if is_oracle(m)), None)
    if oracle is None or statistics[oracle][-1][1].iqm <= 0:
        return {}
    return {m: rows[-1][1].iqm / statistics[oracle][-1][1].iqm
            for m, rows in statistics.items() if not is_oracle(m)}


def plot_comparison(points: list[EvalPoint], spec: CompareSpec, path: Path) -> None:
    """Real-task return vs real steps: the IQM over seeds with its 95% bootstrap interval shaded, each
    method's settings below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notes = "\n".join(textwrap.fill(f"{m}: {s}", 140, subsequent_indent="    ")
                      for m, s in method_settings(spec).items())
    text_height = 0.13 * (notes.count("\n") + 1) + 0.2
    fig, (ax, text_ax) = plt.subplots(2, 1, figsize=(11, 5 + text_height),
                                      gridspec_kw={"height_ratios": [5, text_height]})
    statistics = step_statistics(points)
    fractions = oracle_fractions(statistics)
    for method in (m for m in spec.methods if m in statistics):
        steps = [step for step, _ in statistics[method]]
        iqm, low, high = ([getattr(s, f) for _, s in statistics[method]]
                          for f in ("iqm", "iqm_low", "iqm_high"))
        n_seeds = len({p.seed for p in points if p.method == method})
        share = f"; final IQM {fractions[method]:.0%} of the oracle's" if method in fractions else ""
        label = f"{method} ({n_seeds} seed{'s' if n_seeds != 1 else ''}{share})"
        (line,) = ax.plot(steps, iqm, marker="o", markersize=3, label=label)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    note = not_a_claim_note([len({p.seed for p in points if p.method == m}) for m in statistics])
    ax.set_xlabel("real environment steps")
    ax.set_ylabel(f"real-task return ({spec.eval_episodes} deterministic episodes)")
    ax.set_title(f"{spec.env_id}: real-task return vs real steps (budget {spec.budget:,} real steps, seeds "
                 f"{', '.join(map(str, spec.seeds))})\nline: IQM over seeds, band: its 95% bootstrap CI"
                 f"{'' if note is None else f'; fewer than {MIN_SEEDS_FOR_CLAIM} seeds: not a claim'}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    text_ax.axis("off")
    text_ax.text(0, 1, notes, fontsize=7, va="top", ha="left", family="monospace",
                 transform=text_ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def parse_methods(text: str) -> tuple[str, ...]:
    """"ppo,imagination-ppo" -> ("ppo", "imagination-ppo"); unknown or repeated names are a ValueError."""
    methods = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"repeated method in {text!r}")
    return methods


def final_statistics(points: list[EvalPoint]) -> dict[str, SeedSummary]:
    """method -> `SeedSummary` of each seed's last evaluation."""
    out = {}
    for method in dict.fromkeys(p.method for p in points):
        last: dict[int, EvalPoint] = {}
        for p in points:
            if p.method == method and (p.seed not in last or p.real_steps >= last[p.seed].real_steps):
                last[p.seed] = p
        out[method] = summarise([p.mean_return for p in last.values()])
    return out


def summary_lines(points: list[EvalPoint]) -> list[str]:
    """The console summary: one line per method, and one saying when the seeds are too few for a claim."""
    finals = final_statistics(points)
    lines = [f"{method:>16}: final real return {s.describe()}" for method, s in finals.items()]
    note = not_a_claim_note([s.seeds for s in finals.values()])
    return lines + ([] if note is None else [note])


def read_comparison(out_dir: Path) -> tuple[list[EvalPoint], CompareSpec]:
    """The evaluations and setup a comparison wrote to out_dir/compare.json; ValueError (one line naming
    the folder or file) when it is missing or not a comparison."""
    path = Path(out_dir) / "compare.json"
    if not path.is_file():
        what = "has no compare.json" if Path(out_dir).is_dir() else "does not exist"
        raise ValueError(f"{out_dir} is not a readable comparison: the folder {what}")
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict):
            raise TypeError(f"expected a JSON object, got {type(payload).__name__}")
        points = [EvalPoint(method, int(seed), int(r["real_steps"]), float(r["mean_return"]),
                            float(r["std_return"]))
                  for method, seeds in payload["results"].items() for seed, rows in seeds.items()
                  for r in rows]
        imagination = payload["imagination_config"]
        spec = CompareSpec(env_id=payload["env_id"], methods=tuple(payload["results"]),
                           seeds=tuple(payload["seeds"]), budget=int(payload["budget"]),
                           eval_every=int(payload["eval_every"]), eval_episodes=int(payload["eval_episodes"]),
                           imagination=(None if imagination is None
                                        else CoordinatorConfig.from_dict(imagination)),
                           preset=payload.get("preset"), max_episode_steps=payload["max_episode_steps"])
    except KeyError as err:
        raise ValueError(f"{path} is not a readable comparison: no entry {err}") from None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{path} is not a readable comparison: {reason}") from None
    return points, spec


def combine_comparisons(in_dirs: list[Path], budget: int | None = None, methods: tuple[str, ...] | None = None
                        ) -> tuple[list[EvalPoint], CompareSpec]:
    """The evaluations and common setup of comparisons run apart (e.g. seeds in parallel processes); they
    must share task, budget and evaluation, and the parts that ran imagination its settings (a
    model-free-only part has none, so it merges with any). The preset is the first one recorded.

    `budget` cuts every part to its evaluations up to that many real steps first, so longer runs join
    shorter ones: a run's first `budget` steps are a `budget`-step run's when nothing in it depends on
    its budget, which a learning rate decayed to `final_learning_rate` at the budget does (refused).
    `methods` keeps only those methods of every part, so that, say, the model-free runs of a stored
    comparison join imagination runs of other settings."""
    if budget is not None and not (isinstance(budget, int) and budget >= 1):
        raise ValueError(f"budget must be an int >= 1, got {budget!r}")
    parts = [read_comparison(d) for d in in_dirs]
    if methods is not None:
        kept = [(keep_methods(pts, spec, methods), d) for (pts, spec), d in zip(parts, in_dirs)]
        kept = [(part, d) for part, d in kept if part[1].methods]   # a part left with none drops out
        if not kept:
            raise ValueError(f"no part holds any of the methods {', '.join(methods)}")
        parts, in_dirs = [part for part, _ in kept], [d for _, d in kept]
    if budget is not None:
        parts = [cut_comparison(pts, spec, budget, d) for (pts, spec), d in zip(parts, in_dirs)]
    first = parts[0][1]
    common = lambda spec: replace(spec, methods=(), seeds=(), imagination=None, preset=None)
    imagination = next((spec.imagination for _, spec in parts if spec.imagination is not None), None)
    preset = next((spec.preset for _, spec in parts if spec.imagination is not None and spec.preset), None)
    for (_, spec), d in zip(parts[1:], in_dirs[1:]):
        if common(spec) != common(first) or spec.imagination not in (None, imagination):
            raise ValueError(f"{d} was run with other settings than {in_dirs[0]} (task, budget, evaluation "
                             "or imagination config differ): refusing to merge")
    points = [p for pts, _ in parts for p in pts]
    keys = [(p.method, p.seed, p.real_steps) for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("the comparisons overlap (a method/seed appears twice): refusing to merge")
    methods = tuple(dict.fromkeys(m for _, spec in parts for m in spec.methods))
    seeds = tuple(sorted({s for _, spec in parts for s in spec.seeds}))
    return points, replace(first, methods=methods, seeds=seeds, imagination=imagination, preset=preset)


def keep_methods(points: list[EvalPoint], spec: CompareSpec, methods: tuple[str, ...]
                 ) -> tuple[list[EvalPoint], CompareSpec]:
    """One comparison's evaluations of `methods` only; without an imagination method left, its
    imagination config and preset no longer describe anything in it and are dropped."""
    kept = tuple(m for m in spec.methods if m in methods)
    imagined = any(m in IMAGINATION for m in kept)
    return ([p for p in points if p.method in kept],
            replace(spec, methods=kept, imagination=spec.imagination if imagined else None,
                    preset=spec.preset if imagined else None))


def cut_comparison(points: list[EvalPoint], spec: CompareSpec, budget: int, where: Path
                   ) -> tuple[list[EvalPoint], CompareSpec]:
    """One comparison's evaluations up to `budget` (>= 1) real steps, as if it had run that budget;
    ValueError naming the folder when it ran fewer steps, did not evaluate at `budget`, or depends on
    its budget."""
    if budget > spec.budget:
        raise ValueError(f"{where} ran {spec.budget} real steps, fewer than the budget {budget} to cut to")
    if not any(p.real_steps == budget for p in points):
        raise ValueError(f"{where} has no evaluation at {budget} real steps (it evaluated every "
                         f"{spec.eval_every}): choose a budget it evaluated at")
    decayed = spec.imagination is not None and spec.imagination.final_learning_rate is not None
    if decayed and budget < spec.budget:
        raise ValueError(f"{where} decayed its learning rate to final_learning_rate at {spec.budget} real "
                         f"steps, so its first {budget} are not a {budget}-step run: refusing to cut it")
    return [p for p in points if p.real_steps <= budget], replace(spec, budget=budget)


def merge_comparisons(in_dirs: list[Path], out_dir: Path, budget: int | None = None,
                      methods: tuple[str, ...] | None = None) -> list[EvalPoint]:
    """`combine_comparisons` written to out_dir as one table, JSON and plot."""
    points, spec = combine_comparisons(in_dirs, budget, methods)
    write_outputs(points, spec, out_dir)
    return points


def compare_dir(env_id: str, imagination: CoordinatorConfig | None, preset: str | None,
                seeds: tuple[int, ...], root: Path = Path("runs/compare")) -> Path:
    """root/<task>/<preset>/seeds-<first>-<last> (seeds-0+2+5 when not a range); the preset part is
    "model-free" without imagination and ends in "-custom" when the config differs from the preset."""
    if imagination is None:
        label = "model-free"
    elif preset is None or preset not in preset_ids():
        label = "unknown-preset"
    else:
        label = resolve(preset) + ("-custom" if changed_from_preset(imagination, preset) else "")
    ordered = sorted(seeds)
    is_range = ordered == list(range(ordered[0], ordered[-1] + 1))
    if len(ordered) == 1:
        key = f"seeds-{ordered[0]}"
    else:
        key = f"seeds-{ordered[0]}-{ordered[-1]}" if is_range else "seeds-" + "+".join(map(str, ordered))
    return root / env_id / label / key
