"""`imagined-env`: train | evaluate | compare | demo. This module only parses and checks arguments;
the work is in `agents.coordinator`, `agents.compare`, `agents.real_evaluation` and `agents.demo`.

Every input error (unknown task, budget below the prefill, unreadable config, unwritable output
directory, damaged run folder, ...) is reported as a usage error (exit code 2, one line) before anything
is trained; a write that fails during a run (e.g. a full disk) likewise, naming the file.
"""
from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

import imagined_env  # noqa: F401  (registers the Imagined-* ids)
from agents.compare import (
    IMAGINATION,
    CompareSpec,
    combine_comparisons,
    compare_dir,
    imagination_run_dir,
    parse_methods,
    run_comparison,
    summary_lines,
    write_outputs,
)
from agents.config import SUPPORTED_TASKS, CoordinatorConfig, apply, upgrade_tree
from agents.config_flags import add_config_flags, given_flags, leaf_values, override, read_config_file
from agents.coordinator import Coordinator
from agents.demo import DemoConfig, run_demo
from agents.presets import ALIASES, build_preset, describe, preset_ids, resolve
from agents.real_evaluation import evaluate_real, frozen_statistics, load_learner
from agents.run_files import LEARNER_FILE, find_checkpoint, read_state
from agents.safe_writes import WriteFailed, check_writable
from agents.saved_run import read_config, read_learner
from agents.vec_normalize_stats import STATS_FILE, read_stats
from agents.zoo import zoo_settings

DESCRIPTION = ("PolyGRAD trajectory-diffusion world models as Gymnasium envs: train SB3 PPO/A2C in "
               "imagination, evaluate on the real task, compare with the RL Zoo's tuned model-free "
               "baselines, or run the demo. `imagined-env <command> --help` lists every option.")
Job = Callable[[], int]
CONFIG_ALIASES = {"env_id": ["--env"]}
COMPARE_OWNED = frozenset({"env_id", "algo", "seed", "eval_every", "eval_episodes", "eval_max_episode_steps"})
"""Config fields `compare` sets itself, identically for every method."""
TRUSTED = ("A learner .zip given by itself must come from a trusted source: SB3 unpickles it (and a "
           "VecNormalize .pkl) when loading, which can run code. A run folder is read without unpickling: "
           "of its learner.zip only the tensors are loaded, into a learner built from the run's config.")
DEFAULT_THREADS = 1
"""Torch CPU threads: the small-batch work of this package gains little from more, and threads that
compete with other processes on a shared machine slow it down."""


# ---- small parsers and checks ---------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); repeats are an error (they would be the same run twice)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers, got {text!r}")
    return values


def check_task(env_id: str, imagined: bool) -> None:
    """The task must be a registered Gymnasium id, and one the coordinator supports when `imagined`."""
    if env_id not in gym.registry:
        real_ids = [k for k in gym.registry if not k.startswith("Imagined-")]
        close = difflib.get_close_matches(env_id, real_ids, 3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown task id {env_id!r}{hint}")
    if imagined and env_id not in SUPPORTED_TASKS:
        raise ValueError(f"task {env_id!r} has no imagined version; supported: {', '.join(SUPPORTED_TASKS)}")


def writable_dir(path: Path) -> Path:
    check_writable(path, "output directory")
    return path


def check_budget(steps: int, config: CoordinatorConfig) -> None:
    if steps < config.prefill_steps:
        raise ValueError(f"--steps {steps} is below prefill_steps {config.prefill_steps} (the uniform-random "
                         "real steps before any learning); raise --steps or lower --prefill-steps")


# ---- configs --------------------------------------------------------------------------------------
def read_config_layer(path: str) -> tuple[dict[str, Any], str | None]:
    """The config fields a --config file sets, and the preset it names: a run's config.json (or any part
    of one) names none; a compare.json gives its `imagination_config` and `preset`."""
    data = read_config_file(path)
    if "imagination_config" not in data:
        return upgrade_tree(data), None
    if data["imagination_config"] is None:
        raise ValueError(f"{path} is a comparison without imagination runs: it holds no imagination config")
    preset = data.get("preset")
    return upgrade_tree(data["imagination_config"]), preset if preset in preset_ids() else None


def build_config(preset: str | None, config_file: str | None, flags: dict[str, Any],
                 fixed: dict[str, Any] | None = None) -> tuple[CoordinatorConfig, str]:
    """(config, versioned preset id): preset < config file < flags < `fixed` (values a subcommand sets).

    The preset defaults to the one a compare.json names, else cpu; it is built for the final task, so
    the task's defaults (Hopper's schedule) apply under every later layer.
    """
    layer, file_preset = read_config_layer(config_file) if config_file else ({}, None)
    preset_id = resolve(preset or file_preset or "cpu")
    env_ids = [d["env_id"] for d in (layer, flags, fixed or {}) if "env_id" in d]
    config = build_preset(preset_id, env_ids[-1] if env_ids else CoordinatorConfig.env_id)
    for changes in (layer, flags, fixed or {}):
        config = apply(config, changes)
    return config, preset_id


def add_config_options(parser: argparse.ArgumentParser, exclude: frozenset[str] = frozenset()) -> None:
    aliases = ", ".join(f"{alias} = {target}" for alias, target in ALIASES.items())
    parser.add_argument("--preset", choices=preset_ids(), metavar="ID",
                        help=f"starting values of every config field, an id below or an alias ({aliases}) "
                             "[default: the preset a compare.json --config names, else cpu]")
    parser.add_argument("--config", metavar="FILE.json",
                        help="JSON config over the preset: a run's config.json, any part of one, or a "
                             "compare.json (its imagination config); the flags below override it")
    defaults = {name: leaf_values(build_preset(name)) for name in ALIASES}
    add_config_flags(parser, CoordinatorConfig, defaults, exclude, CONFIG_ALIASES)


# ---- train ------------------------------------------------------------------------------------------
def prepare_train(args: argparse.Namespace) -> Job:
    flags = given_flags(args)
    if args.resume:
        return prepare_resume(args, flags)
    if args.steps is None:
        raise ValueError("--steps (the real-step budget) is required for a new run")
    config, _ = build_config(args.preset, args.config, flags)
    check_budget(args.steps, config)
    coordinator = Coordinator(config, args.run_dir or default_run_dir(config), verbose=args.verbose)
    return lambda: finish_train(coordinator.learn(args.steps, progress_bar=args.progress))


def prepare_resume(args: argparse.Namespace, flags: dict[str, Any]) -> Job:
    if flags or args.config or args.preset or args.run_dir:
        raise ValueError("--resume continues a run with its own config.json: drop --preset/--config/"
                         f"--run-dir and config flags (given: {', '.join(sorted(flags)) or 'none'})")
    run_dir = Path(args.resume)
    checkpoint = find_checkpoint(run_dir) if run_dir.is_dir() else None
    if checkpoint is None:
        raise ValueError(f"--resume {run_dir}: no checkpoint there (expected "
                         f"{run_dir}/checkpoint/state.json)")
    if args.steps is not None:  # checked before the resume touches the folder
        check_budget(args.steps, read_config(checkpoint))
        taken = read_state(checkpoint).get("real_steps", 0)  # a damaged state is named by the resume
        if args.steps < taken:
            raise ValueError(f"--steps {args.steps} is below the {taken} real steps taken")
    coordinator = Coordinator.resume(run_dir, verbose=args.verbose)
    return lambda: finish_train(coordinator.learn(args.steps, progress_bar=args.progress))


def default_run_dir(config: CoordinatorConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.env_id}_{config.algo}_seed{config.seed}_{stamp}"


def finish_train(coordinator: Coordinator) -> int:
    if coordinator.history:
        last = coordinator.history[-1]
        print(f"{coordinator.config.env_id}: real return {last['mean_return']:.1f} +- "
              f"{last['std_return']:.1f} after {coordinator.real_steps} real steps")
    print(f"run folder: {coordinator.run_dir} (continue: imagined-env train --resume {coordinator.run_dir})")
    return 0


# ---- evaluate ---------------------------------------------------------------------------------------
def prepare_evaluate(args: argparse.Namespace) -> Job:
    target = Path(args.target)
    model: BaseAlgorithm
    stats: VecEnv | None
    if target.is_dir():
        checkpoint, config, stats_path = run_dir_files(target, args.env)
        env_id = config.env_id
        check_task(env_id, imagined=False)
        model = read_learner(checkpoint, config)
        stats = None if stats_path is None else frozen_statistics(stats_path, env_id, args.seed)
    elif target.suffix == ".zip" and target.is_file():
        if args.env is None:
            raise ValueError("--env is required to evaluate a learner .zip")
        model, stats = load_zip(target, args)
        stats_path, env_id = args.vecnormalize, args.env
    else:
        raise ValueError(f"{target} is neither a run folder nor a learner .zip file")

    def job() -> int:
        try:
            mean, std = evaluate_real(model, env_id, args.episodes, args.seed, stats, args.max_episode_steps)
        finally:
            if stats is not None:
                stats.close()
        frozen = f", frozen VecNormalize statistics from {stats_path}" if stats_path else ""
        print(f"{env_id}: mean return {mean:.1f} +- {std:.1f} over {args.episodes} deterministic episodes "
              f"(seed {args.seed}{frozen})")
        return 0

    return job


def load_zip(path: Path, args: argparse.Namespace) -> tuple[BaseAlgorithm, VecEnv | None]:
    """A learner .zip given by the user, loaded by SB3 (which unpickles it), and its --vecnormalize."""
    check_task(args.env, imagined=False)
    stats_path = args.vecnormalize
    if stats_path is not None and not Path(stats_path).is_file():
        raise ValueError(f"VecNormalize statistics file {stats_path} does not exist")
    if stats_path is not None and Path(stats_path).suffix == ".npz":
        read_stats(Path(stats_path))  # its own errors name the fault
    try:
        return load_learner(path, args.algo, args.env, args.seed, stats_path)
    except Exception as err:  # noqa: BLE001  (SB3 and pickle raise many types for foreign or corrupt files)
        files = f"{path} / {stats_path}" if stats_path else f"{path}"
        raise ValueError(f"cannot load {files}: {err}") from None


def run_dir_files(run_dir: Path, env_id: str | None) -> tuple[Path, CoordinatorConfig, Path | None]:
    """(last checkpoint, its run's config, its vec_normalize.npz or None) of a run folder, checked to
    be there; the learner file is checked as it is read."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} is not a run folder with a checkpoint (no checkpoint/state.json)")
    config = read_config(checkpoint)
    if env_id is not None and env_id != config.env_id:
        raise ValueError(f"the run in {run_dir} is of task {config.env_id!r}, not {env_id!r}")
    stats = checkpoint / STATS_FILE
    if config.normalize and not stats.is_file():
        pickled = checkpoint / "vec_normalize.pkl"
        if pickled.is_file():  # written by an older version
            raise ValueError(f"{checkpoint} holds its VecNormalize statistics only as a pickle ({pickled}), "
                             f"which can run code when loaded; if the folder comes from a trusted source, "
                             f"evaluate it with: imagined-env evaluate {checkpoint / LEARNER_FILE} --env "
                             f"{config.env_id} --algo {config.algo} --vecnormalize {pickled}")
        raise ValueError(f"VecNormalize statistics file {stats} is missing (the run folder is damaged)")
    if stats.is_file():
        read_stats(stats)  # its own errors name the fault
    return checkpoint, config, stats if stats.is_file() else None


# ---- compare ----------------------------------------------------------------------------------------
def prepare_compare(args: argparse.Namespace) -> Job:
    methods = parse_methods(args.algos)
    imagined = any(m in IMAGINATION for m in methods)
    check_task(args.env, imagined)
    for method in methods:
        if method not in IMAGINATION:
            zoo_settings(method, args.env)
    config, preset = None, None
    if imagined:
        fixed = {"env_id": args.env, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
                 "eval_max_episode_steps": args.max_episode_steps}
        config, preset = build_config(args.preset, args.config, given_flags(args), fixed)
        check_budget(args.steps, config)
    elif given_flags(args) or args.config or args.preset:
        raise ValueError("--preset, --config and config flags shape the imagination runs; --algos has none")
    if args.eval_every > args.steps:
        raise ValueError(f"--eval-every {args.eval_every} exceeds --steps {args.steps}: only the final "
                         "evaluation would run")
    ray_options = grid_options(args)
    out_dir = writable_dir(args.out or compare_dir(args.env, config, preset, args.seeds))
    spec = CompareSpec(args.env, methods, args.seeds, args.steps, args.eval_every, args.eval_episodes, config,
                       preset, args.max_episode_steps)
    if ray_options is None:
        run = lambda: run_comparison(spec, out_dir, progress=args.progress)
    else:  # its checks first: a stored grid is named as such
        run = ray_backend().prepare_grid(spec, out_dir, ray_options)
    # oracle and ensemble runs keep no checkpoint: their evaluations mark them
    earlier = [d for m in methods if m in IMAGINATION for s in args.seeds
               if find_checkpoint(d := imagination_run_dir(out_dir, m, s)) is not None
               or (d / "evaluations.csv").is_file()]
    if earlier and not args.resume:
        raise ValueError(f"{out_dir} holds runs of an earlier comparison ({earlier[0]}); use another --out")

    def job() -> int:
        points = run()
        print("\n".join(summary_lines(points)))
        print(f"wrote {out_dir / 'compare.csv'}, {out_dir / 'compare.json'}, {out_dir / 'compare.png'}")
        return 0

    return job


RAY_ONLY = ("address", "cpus_per_trial", "gpus_per_trial", "storage", "resume")
RAY_MISSING = 'the Ray backend needs the ray extra: pip install "imagined-env[ray]"'


def grid_options(args: argparse.Namespace) -> Any:
    """`agents.tune_grid.RayGridOptions` for --backend ray (None for local, which takes no Ray option)."""
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) not in (None, False)]
    if args.backend == "local":
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --backend ray")
        return None
    options = {name: getattr(args, name) for name in RAY_ONLY if getattr(args, name) is not None}
    return ray_backend().RayGridOptions(**options, threads=args.threads)


def ray_backend() -> Any:
    """`agents.tune_grid`, which imports Ray: only for --backend ray, and a usage error without the extra."""
    try:
        from agents import tune_grid
    except ImportError as err:
        if (err.name or "").split(".")[0] != "ray":
            raise
        raise ValueError(RAY_MISSING) from None
    return tune_grid


# ---- demo -------------------------------------------------------------------------------------------
def prepare_demo(args: argparse.Namespace) -> Job:
    config = override(DemoConfig(), given_flags(args))
    check_task(config.env_id, imagined=True)

    def job() -> int:
        run_demo(config, progress=args.progress)
        return 0

    return job


# ---- merge ------------------------------------------------------------------------------------------
def prepare_merge(args: argparse.Namespace) -> Job:
    points, spec = combine_comparisons([Path(d) for d in args.in_dirs], args.budget,
                                       parse_methods(args.methods) if args.methods else None)
    out_dir = writable_dir(args.out or compare_dir(spec.env_id, spec.imagination, spec.preset, spec.seeds))

    def job() -> int:
        write_outputs(points, spec, out_dir)
        print("\n".join(summary_lines(points)))
        print(f"wrote {out_dir / 'compare.csv'}, compare.json, compare.png")
        return 0

    return job


# ---- export -----------------------------------------------------------------------------------------
def prepare_export(args: argparse.Namespace) -> Job:
    from agents.export import checkpoint_to_export, export_run

    checkpoint_to_export(Path(args.run_dir))
    writable_dir(Path(args.out_dir))

    def job() -> int:
        out = export_run(args.run_dir, args.out_dir, args.start_episodes,
                         command="imagined-env " + " ".join(sys.argv[1:]))
        print((out / "COMMAND.txt").read_text())
        return 0

    return job


# ---- build-model ------------------------------------------------------------------------------------
def prepare_build_model(args: argparse.Namespace) -> Job:
    from agents.build_model import BuildConfig, build_model

    config = override(BuildConfig(), given_flags(args))
    check_task(args.env, imagined=True)  # the model's settings come from a preset for this task
    work = Path(args.work or f"runs/build-model/{args.env}")
    writable_dir(Path(args.out_dir))
    writable_dir(work)

    def job() -> int:
        command = "imagined-env " + " ".join(sys.argv[1:])
        out = build_model(args.env, args.out_dir, work, config, command=command, progress=args.progress)
        print((out / "COMMAND.txt").read_text())
        return 0

    return job


# ---- parser -----------------------------------------------------------------------------------------
WIDTH = max(100, min(120, shutil.get_terminal_size().columns))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines start at column 40, so most flags and their help share a line."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=50, width=WIDTH)


def paragraphs(*texts: str) -> str:
    return "\n\n".join(textwrap.fill(t, WIDTH - 2) for t in texts)


def presets_epilog() -> str:
    lines = [textwrap.fill(describe(name), WIDTH - 2, initial_indent=f"  {name:<10}",
                           subsequent_indent=" " * 12)
             for name in preset_ids() if name not in ALIASES]
    return "presets (each a diff from its parent):\n" + "\n".join(lines)


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS, metavar="N",
                        help="torch CPU threads; more only help on an idle machine with many cores "
                             f"[default {DEFAULT_THREADS}]")
    parent.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show progress bars [default on]")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagined-env", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,evaluate,compare,merge,demo,export}")
    parent = common_options()
    add_train_parser(sub, parent)
    add_evaluate_parser(sub, parent)
    add_compare_parser(sub, parent)
    add_merge_parser(sub, parent)
    add_demo_parser(sub, parent)
    add_export_parser(sub, parent)
    add_build_model_parser(sub, parent)
    return parser


def add_train_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[parent], formatter_class=HelpFormatter,
                       usage="imagined-env train [--steps N] [--run-dir DIR | --resume DIR] [--preset ID] "
                             "[--config FILE.json] [--FIELD VALUE ...]", epilog=presets_epilog(),
                       help="train a learner in imagination (the coordinator loop)",
                       description=paragraphs(
                           "Real data -> world model -> PPO/A2C in imagination -> real data, for a "
                           "budget of real environment steps. Precedence: preset < --config < flags.",
                           "--resume reads the run folder without unpickling: of its learner.zip only the "
                           "tensors are loaded, into a learner built from the run's config."))
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="real-step budget in all, prefill included (required for a new run; with --resume "
                        "[default: the run's own budget])")
    p.add_argument("--run-dir", type=Path, help="run folder [default runs/<task>_<algo>_seed<seed>_<time>]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--verbose", type=int, default=1, help="1: print a table at each evaluation; 0: quiet")
    add_config_options(p)
    p.set_defaults(prepare=prepare_train)


def add_evaluate_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[parent], formatter_class=HelpFormatter,
                       help="real-task return of a run folder or a learner .zip",
                       description=paragraphs(
                           "Mean and std of the real-task return over deterministic episodes; a "
                           "VecNormalize'd learner is evaluated with its frozen statistics.", TRUSTED))
    p.add_argument("target", help="a run folder (uses its last checkpoint) or a learner .zip")
    p.add_argument("--vecnormalize", metavar="STATS",
                   help="VecNormalize statistics of the .zip: a run's vec_normalize.npz, or SB3's .pkl "
                        "(a pickle: trusted files only)")
    p.add_argument("--env", help="task id (required with a .zip; checked against a run folder's)")
    p.add_argument("--algo", choices=("ppo", "a2c"), default="ppo",
                   help="algorithm of the .zip [default ppo]")
    p.add_argument("--episodes", type=positive_int, default=10, help="deterministic episodes [default 10]")
    p.add_argument("--max-episode-steps", type=positive_int, help="episode time limit [default: the task's]")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes [default 0]")
    p.set_defaults(prepare=prepare_evaluate)


def add_compare_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[parent], formatter_class=HelpFormatter,
                       usage="imagined-env compare --steps N [--env ID] [--algos A,B] [--seeds 0,1,2] "
                             "[--out DIR] [--backend {local,ray} ...] [--preset ID] [--config FILE.json] "
                             "[--FIELD VALUE ...]",
                       epilog=presets_epilog(),
                       help="model-free (RL Zoo tuned) vs imagination, same budget",
                       description=paragraphs(
                           "Runs each method for the same real-step budget and seeds, one after "
                           "another, evaluating every --eval-every real steps; writes compare.csv, "
                           "compare.json and compare.png. Model-free PPO uses the RL Baselines3 "
                           "Zoo's tuned settings for the task, A2C SB3's defaults, both with "
                           "VecNormalize (as the Zoo). The config options below shape the "
                           "imagination runs."))
    p.add_argument("--env", default="HalfCheetah-v4", help="task id [default HalfCheetah-v4]")
    p.add_argument("--algos", default="ppo,imagination-ppo",
                   help="comma-separated methods: ppo, a2c, sac (model-free), imagination-ppo, "
                        "imagination-a2c, oracle-ppo (MuJoCo as the model; HalfCheetah, Hopper), "
                        "ensemble-ppo (an MLP ensemble as the model) [default ppo,imagination-ppo]")
    p.add_argument("--steps", type=positive_int, required=True, metavar="N",
                   help="real-step budget of every run")
    p.add_argument("--seeds", type=int_list, default=(0, 1, 2), help="comma-separated seeds [default 0,1,2]")
    p.add_argument("--eval-every", type=positive_int, default=5000, metavar="N",
                   help="real steps between evaluations [default 5000]")
    p.add_argument("--eval-episodes", type=positive_int, default=5, metavar="N",
                   help="deterministic episodes per evaluation [default 5]")
    p.add_argument("--max-episode-steps", type=positive_int, metavar="N",
                   help="time limit of evaluation episodes, both sides [default: the task's]")
    p.add_argument("--out", type=Path,
                   help="output folder [default runs/compare/<task>/<preset>/seeds-<first>-<last>]")
    ray = p.add_argument_group("Ray backend (pip install \"imagined-env[ray]\"; docs/ray.md)")
    ray.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="local: the runs one after another in this process; ray: one Ray Tune trial per "
                          "method and seed, in parallel on this machine or a Ray cluster [default local]")
    ray.add_argument("--address", metavar="ADDR",
                     help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 [default: start Ray "
                          "here]")
    ray.add_argument("--cpus-per-trial", type=positive_int, metavar="N",
                     help="CPUs Ray reserves per trial, at least --threads [default 1]")
    ray.add_argument("--gpus-per-trial", type=non_negative_float, metavar="X",
                     help="GPUs per trial, fractions share one (e.g. 0.25) [default 0]")
    ray.add_argument("--storage", metavar="PATH",
                     help="where Tune keeps the grid's experiment, seen by every node (shared path or "
                          "s3://...) [default OUT/tune]")
    ray.add_argument("--resume", action="store_true",
                     help="continue the grid stored in --storage after its driver died: finished trials are "
                          "not run again (give the options it was started with)")
    add_config_options(p, exclude=COMPARE_OWNED)
    p.set_defaults(prepare=prepare_compare)


def add_demo_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[parent], formatter_class=HelpFormatter,
                       help="PPO in imagination on the pretrained HalfCheetah model",
                       description=paragraphs(
                           "Loads the pretrained HalfCheetah-v4 world model, trains PPO purely in "
                           "imagination, and prints the real-task return before and after."))
    defaults = {"default": leaf_values(DemoConfig())}
    add_config_flags(p, DemoConfig, defaults, aliases=CONFIG_ALIASES)
    p.set_defaults(prepare=prepare_demo)


def add_merge_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("merge", parents=[parent], formatter_class=HelpFormatter,
                       help="one table and plot from comparisons run apart",
                       description=paragraphs(
                           "Combines the compare.json of comparisons run separately (e.g. seeds in "
                           "parallel processes) with the same task, budget and settings into one "
                           "compare.csv/json/png."))
    p.add_argument("in_dirs", nargs="+", metavar="COMPARE_DIR",
                   help="output folders of `imagined-env compare`")
    p.add_argument("--out", type=Path, help="folder to write the merged outputs to [default "
                   "runs/compare/<task>/<preset>/seeds-<first>-<last>]")
    p.add_argument("--budget", type=int, metavar="STEPS",
                   help="cut every part to its evaluations up to STEPS real steps first, so longer runs "
                   "join shorter ones (refused for runs whose learning rate decays to the budget)")
    p.add_argument("--methods", metavar="M1,M2",
                   help="keep only these methods of every part (e.g. the model-free runs of a stored "
                   "comparison beside imagination runs of other settings)")
    p.set_defaults(prepare=prepare_merge)


def add_export_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[parent], formatter_class=HelpFormatter,
                       help="a run's world model + start states, ready to ship",
                       description=paragraphs(
                           "Writes OUT_DIR/world_model.pt, start_states.npz and COMMAND.txt from the "
                           "last checkpoint of RUN_DIR; usable as world_model=/start_states= of the "
                           "imagined env (this is how imagined_env/pretrained/ is made)."))
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `imagined-env train` or `compare`")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write")
    p.add_argument("--start-episodes", type=positive_int, default=6,
                   help="real episodes, spread over the run's buffer, kept as start states [default 6]")
    p.set_defaults(prepare=prepare_export)


def add_build_model_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    from agents.build_model import BuildConfig

    p = sub.add_parser("build-model", parents=[parent], formatter_class=HelpFormatter,
                       help="a world model to ship, from real data it collects",
                       description=paragraphs(
                           "Collects real episodes of every skill level: by default a training run in "
                           "imagination (uniform random actions, then the improving policy with its "
                           "exploration noise), or with --source broad RL Zoo PPO (SAC with --data.algo "
                           "sac) through its training, its final policy with noise and random actions. "
                           "Then fits an ensemble world model with a disagreement penalty, and writes "
                           "OUT_DIR/world_model.pt, "
                           "start_states.npy and COMMAND.txt (this is how imagined_env/pretrained/ is "
                           "made). Stages are kept in the work folder (the data run in WORK/run): a killed "
                           "build resumes there."))
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write")
    p.add_argument("--env", required=True, help="real task, e.g. Hopper-v4")
    p.add_argument("--work", default=None, help="work folder [default runs/build-model/ENV]")
    add_config_flags(p, BuildConfig, {"default": leaf_values(BuildConfig())})
    p.set_defaults(prepare=prepare_build_model)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        job = args.prepare(args)
    except (ValueError, WriteFailed) as err:
        usage_error(parser, args.command, err)
    try:
        return job()
    except (ValueError, OSError, WriteFailed) as err:  # bad files met while working, a full disk: one line
        usage_error(parser, args.command, err)


def usage_error(parser: argparse.ArgumentParser, command: str, err: Exception) -> NoReturn:
    """Exit 2 with the error on one line."""
    parser.exit(2, f"{parser.prog} {command}: error: {' '.join(str(err).split())}\n")


if __name__ == "__main__":
    sys.exit(main())
