"""A comparison grid as Ray Tune trials, one per (method, seed), on this machine or a Ray cluster.

Each trial runs what the local backend runs for that method and seed (`agents.compare.run_method`) with the
same torch threads, so its evaluations are the same; the driver writes the same compare.csv/json/png with
`agents.compare.write_outputs` after every finished trial and keeps `tune_trials.json` (the grid's settings,
and per finished trial its node, start time, duration and evaluations). `--resume` restores Tune's
experiment; a trial the record already holds reports its stored evaluations instead of running again, so a
trial that finished shortly before the driver died (before Tune saved its state) is not re-run either.

Imported only for `--backend ray`: it needs the `ray` extra.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import ray
import torch
from ray import tune

from agents.compare import IMAGINATION, CompareSpec, EvalPoint, imagination_run_dir, run_method, write_outputs
from agents.safe_writes import check_writable
from imagined_env.registration import register_envs
from imagined_env.utils import atomic_path

EXPERIMENT = "compare"
"""Tune's experiment folder under the storage."""
RECORD_FILE = "tune_trials.json"


@dataclass(frozen=True)
class RayGridOptions:
    """Where and with what the trials run; what they run is the `CompareSpec`."""

    address: str | None = None
    """Ray cluster to join ("auto", "HOST:6379", "ray://HOST:10001"); None starts Ray on this machine."""
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    storage: str | None = None
    """Tune's experiment (every node must see it on a cluster: a shared path or s3://); None: OUT/tune."""
    resume: bool = False
    threads: int = 1
    """Torch threads per trial, like --threads of a local run; at most `cpus_per_trial`."""

    def __post_init__(self) -> None:
        if self.cpus_per_trial < 1:
            raise ValueError(f"--cpus-per-trial {self.cpus_per_trial}: expected a positive integer")
        if not self.gpus_per_trial >= 0:
            raise ValueError(f"--gpus-per-trial {self.gpus_per_trial}: expected a number >= 0 (e.g. 0.25)")
        if self.threads > self.cpus_per_trial:
            raise ValueError(f"--threads {self.threads} exceeds --cpus-per-trial {self.cpus_per_trial}: each "
                             "trial would run more torch threads than the CPUs Ray reserves for it")


# ---- the trial (runs in a Ray worker) ---------------------------------------------------------------
def trial_key(method: str, seed: int) -> str:
    return f"{method} seed {seed}"


def run_trial(config: dict[str, Any], spec: CompareSpec, out_dir: str, threads: int,
              done: dict[str, dict[str, Any]]) -> None:
    """One method on one seed, set up as the local CLI sets up its process; a trial the grid's record
    holds already reports that instead."""
    method, seed = str(config["method"]), int(config["seed"])
    stored = done.get(trial_key(method, seed))
    if stored is not None:
        tune.report({**stored, "points": json.dumps(stored["points"]), "reused": True})
        return
    torch.set_num_threads(threads)
    register_envs()  # idempotent: importing this module registered the Imagined-* ids in the worker
    run_dir = imagination_run_dir(Path(out_dir), method, seed)
    if method in IMAGINATION and run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished attempt of this trial (driver killed): start it afresh
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sb3-log-") as logdir:
        os.environ["SB3_LOGDIR"] = logdir  # SB3 would leave one empty folder per model under $TMPDIR
        points = run_method(method, spec, seed, Path(out_dir), progress=False)
    tune.report({"method": method, "seed": seed, "node_id": ray.get_runtime_context().get_node_id(),
                 "started": started, "seconds": time.time() - started,
                 "points": json.dumps([asdict(p) for p in points]), "reused": False})


# ---- the record of the grid -------------------------------------------------------------------------
def grid_settings(spec: CompareSpec, threads: int) -> dict[str, Any]:
    """Everything that decides a trial's evaluations, as JSON values: a resumed grid must match it."""
    fields = {k: getattr(spec, k) for k in ("env_id", "methods", "seeds", "budget", "eval_every",
                                            "eval_episodes", "max_episode_steps", "preset")}
    fields["imagination"] = None if spec.imagination is None else spec.imagination.to_dict()
    return json.loads(json.dumps({**fields, "threads": threads}))


def read_record(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RECORD_FILE
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"grid", "trials"} <= set(record):
            raise ValueError("expected an object with 'grid' and 'trials'")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable grid record: {' '.join(str(err).split())}") from None
    return record


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    with atomic_path(out_dir / RECORD_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def ordered_points(rows: list[dict[str, Any]], spec: CompareSpec) -> list[EvalPoint]:
    """Evaluations in the local backend's order: methods, then seeds, as the spec lists them."""
    order = {(m, s): i for i, (m, s) in enumerate((m, s) for m in spec.methods for s in spec.seeds)}
    rows = sorted(rows, key=lambda r: order[(r["method"], int(r["seed"]))])
    return [EvalPoint(**p) for r in rows for p in r["points"]]


def result_row(metrics: dict[str, Any]) -> dict[str, Any]:
    row = {k: metrics[k] for k in ("method", "seed", "node_id", "started", "seconds")}
    return {**row, "points": json.loads(metrics["points"])}


class RecordTrials(tune.Callback):
    """In the driver: each finished trial goes into the record, then the tables and plot are rewritten."""

    def __init__(self, spec: CompareSpec, out_dir: Path):
        self.spec, self.out_dir = spec, out_dir

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        record = read_record(self.out_dir)  # the file, not memory: a restored callback starts empty
        row = result_row(trial.last_result)
        record["trials"][trial_key(row["method"], row["seed"])] = row
        if not trial.last_result.get("reused"):
            write_record(self.out_dir, record)
        write_outputs(ordered_points(list(record["trials"].values()), self.spec), self.spec, self.out_dir)
        final = row["points"][-1]["mean_return"] if row["points"] else float("nan")
        print(f"[{len(record['trials'])}/{len(self.spec.methods) * len(self.spec.seeds)}] "
              f"{trial_key(row['method'], row['seed'])}: final return {final:.1f} "
              f"({row['seconds']:.0f} s, node {row['node_id'][:8]})", flush=True)


# ---- the driver -------------------------------------------------------------------------------------
def storage_root(options: RayGridOptions, out_dir: Path) -> str:
    """Absolute path or URI under which Tune keeps the experiment."""
    if options.storage is None:
        return str(out_dir.resolve() / "tune")
    return options.storage if "://" in options.storage else str(Path(options.storage).resolve())


def prepare_grid(spec: CompareSpec, out_dir: Path, options: RayGridOptions) -> Callable[[], list[EvalPoint]]:
    """Checks the storage and, for --resume, the stored grid (ValueError naming what is wrong) before
    anything runs; returns the job."""
    root = storage_root(options, out_dir)
    if "://" not in root:
        check_writable(Path(root), "Tune storage folder")
    experiment = f"{root.rstrip('/')}/{EXPERIMENT}"
    stored = tune.Tuner.can_restore(experiment)
    settings = grid_settings(spec, options.threads)
    if options.resume:
        if not stored:
            raise ValueError(f"--resume: no Ray Tune experiment to continue in {experiment}; start the grid "
                             "without --resume (or give the --storage it was started with)")
        record = read_record(out_dir)
        differ = [k for k in settings if record["grid"].get(k) != settings[k]]
        if differ:
            raise ValueError(f"--resume: the grid in {out_dir} was started with other settings "
                             f"({', '.join(differ)} differ); give the options it was started with")
        done = record["trials"]
    else:
        if stored or (out_dir / RECORD_FILE).exists():
            raise ValueError(f"{out_dir} or {root} holds a Ray grid already; continue it with --resume, or "
                             "give another --out / --storage")
        done = {}

    def job() -> list[EvalPoint]:
        if not options.resume:
            write_record(out_dir, {"grid": settings, "storage": root, "trials": {}})
        return run_grid(spec, out_dir, options, experiment, done)

    return job


def connect(address: str | None) -> bool:
    """Joins the cluster at `address`, or starts Ray here; False when Ray was running in this process."""
    if ray.is_initialized():
        return False
    try:
        if address is None:  # workers' warnings stay in Ray's logs: the driver prints one line per trial
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"--address {address}: cannot join a Ray cluster ({reason})") from None
    return True


def check_cluster(options: RayGridOptions) -> None:
    """A trial asking for more than the whole cluster has would wait forever."""
    available = ray.cluster_resources()
    for name, asked in (("CPU", options.cpus_per_trial), ("GPU", options.gpus_per_trial)):
        if asked > available.get(name, 0):
            raise ValueError(f"--{name.lower()}s-per-trial {asked:g} exceeds the cluster's "
                             f"{available.get(name, 0):g} {name}s: no trial could start")


def run_grid(spec: CompareSpec, out_dir: Path, options: RayGridOptions, experiment: str,
             done: dict[str, dict[str, Any]]) -> list[EvalPoint]:
    """Every method x seed as a Tune trial; the evaluations in the local backend's order."""
    started_here = connect(options.address)
    try:
        check_cluster(options)
        trial = tune.with_parameters(run_trial, spec=spec, out_dir=str(out_dir.resolve()),
                                     threads=options.threads, done=done)
        trainable = tune.with_resources(trial, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        if options.resume:
            tuner = tune.Tuner.restore(experiment, trainable=trainable, restart_errored=True)
        else:
            root, _, name = experiment.rpartition("/")
            tuner = tune.Tuner(trainable,
                               param_space={"method": tune.grid_search(list(spec.methods)),
                                            "seed": tune.grid_search(list(spec.seeds))},
                               run_config=tune.RunConfig(name=name, storage_path=root, verbose=0,
                                                         callbacks=[RecordTrials(spec, out_dir.resolve())]))
        results = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    trials = [results[i] for i in range(len(results))]
    # Ray types a result's metrics and config as optional; read here as a trial's reported row (it had no
    # error) and the config Tune records with each trial's metrics
    rows = [result_row(cast(dict[str, Any], r.metrics)) for r in trials if r.error is None]
    points = ordered_points(rows, spec)
    write_outputs(points, spec, out_dir)
    configs = [(cast(dict[str, Any], r.config), r.error) for r in trials if r.error is not None]
    failed = [f"{config['method']} seed {config['seed']}: {str(error).strip().splitlines()[-1]}"
              for config, error in configs]
    if failed:
        raise ValueError(f"{len(failed)} trial(s) failed ({'; '.join(failed)}); the others are in {out_dir}: "
                         "run the same command with --resume to retry the failed ones")
    return points
