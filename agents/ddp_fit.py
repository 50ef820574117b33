"""Fit a preset's world model on a stored `data.npz` with N data-parallel workers, launched by `torchrun` or
by Ray Train; rank 0 writes `OUT_DIR/world_model.pt` (the usual model file) and `OUT_DIR/fit.json`.

    torchrun --standalone --nproc_per_node=2 -m agents.ddp_fit DATA.npz OUT_DIR [--steps N] [flags]
    python -m agents.ddp_fit DATA.npz OUT_DIR --ray 2 [--address auto] [--gpus]
    python -m agents.ddp_fit DATA.npz OUT_DIR          # one process

The fit is `imagined_env.distributed_fit.train_data_parallel`: the same model as a one-process fit of the
same settings, whatever the number of workers. Every worker reads DATA.npz and rank 0 writes OUT_DIR, so
across machines both must be on storage every node sees.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from agents.config import CoordinatorConfig
from agents.config_flags import add_config_flags, given_flags, leaf_paths, leaf_values
from agents.presets import build_preset, preset_ids, resolve
from agents.real_evaluation import make_quietly
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.distributed_fit import backend_for, rank_rows, train_data_parallel
from imagined_env.training import WorldModelTrainer, new_trainer, spec_from_env
from imagined_env.utils import atomic_path, resolve_device
from imagined_env.world_model import EnvSpec

MODEL_FILE, REPORT_FILE = "world_model.pt", "fit.json"
FLAG_SECTIONS = ("world_model.", "train.")
"""The preset's fields a fit can change: the model and its optimiser."""
RAY_MISSING = "the Ray launcher needs Ray Train: pip install 'imagined-env[ray]'"


@dataclass(frozen=True)
class FitJob:
    """One fit: where the data are and the model goes, and the preset's world model and optimiser."""

    data: str
    """A `data.npz` written by `EpisodeBuffer.save` (e.g. build-model's work folder)."""
    out_dir: str
    preset: str = "cpu"
    steps: int | None = None
    """Adam steps (None: the preset's initial_world_model_steps)."""
    changes: dict[str, Any] = field(default_factory=dict)
    """{dotted path under world_model. or train.: value} over the preset."""
    device: str = "auto"
    """"auto": each worker's own GPU when there are GPUs (NCCL between them), else CPU (gloo)."""
    threads: int | None = None
    """Torch CPU threads per worker (None: as the launcher set them; torchrun and Ray set 1)."""
    progress: bool = False


@dataclass(frozen=True)
class _Plan:
    """A checked job: everything a worker needs to start fitting."""

    buffer: EpisodeBuffer
    spec: EnvSpec
    config: CoordinatorConfig
    steps: int


def plan(job: FitJob, world_size: int) -> _Plan:
    """Check `job` for `world_size` workers and load its data; ValueError naming what is wrong."""
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"the number of workers must be an integer >= 1, got {world_size!r}")
    resolve(job.preset)
    outside = sorted(path for path in job.changes if not path.startswith(FLAG_SECTIONS))
    if outside:
        raise ValueError(f"a fit changes only world_model.* and train.* fields, got {outside}")
    buffer = EpisodeBuffer.load(job.data)
    if buffer.env_id is None:
        raise ValueError(f"{job.data} records no task, so its action bounds are unknown")
    config = build_preset(job.preset, buffer.env_id, job.changes)
    steps = config.initial_world_model_steps if job.steps is None else job.steps
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if job.threads is not None and job.threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {job.threads}")
    rank_rows(config.train.batch_size, 0, world_size)
    env = make_quietly(buffer.env_id)
    spec = spec_from_env(env, buffer.env_id)
    env.close()
    return _Plan(buffer, spec, config, steps)


def worker_device(job: FitJob) -> torch.device:
    """This worker's device: with "auto" and GPUs, the one of its local rank."""
    device = resolve_device(job.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def run_worker(job: FitJob, checked: _Plan | None = None, device: torch.device | None = None,
               on_step: Callable[[WorldModelTrainer, float], None] | None = None) -> None:
    """One worker's share of the fit, in the process group torchrun or Ray Train set up (a group of one is
    made when there is none); rank 0 writes the model and the report. `checked`: the job's plan for this
    group, when already made; `on_step`: called after every step with the trainer and this rank's loss."""
    device = worker_device(job) if device is None else device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    own_group = not dist.is_initialized()
    if own_group:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
            dist.init_process_group(backend_for(device))
        else:
            dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)
    try:
        checked = plan(job, dist.get_world_size()) if checked is None else checked
        trainer = new_trainer(checked.buffer, checked.spec, checked.config.world_model,
                              checked.config.train, device=device)
        start = time.perf_counter()
        watch = None if on_step is None else lambda _, loss: on_step(trainer, loss)
        losses = train_data_parallel(trainer, checked.buffer, checked.steps, progress=job.progress,
                                     on_loss=watch, log_every=1 if watch else 50)
        seconds = time.perf_counter() - start
        if dist.get_rank() == 0:
            write_outputs(job, checked, trainer.model, losses, seconds)
        dist.barrier()
    finally:
        if own_group:
            dist.destroy_process_group()


def write_outputs(job: FitJob, checked: _Plan, model: Any, losses: list[float], seconds: float) -> None:
    """The model file (samples with the preset's chain, as build-model's do) and what made it."""
    chain = checked.config.n_sample_steps
    model.set_default_chain(chain)
    out = Path(job.out_dir)
    model.save(out / MODEL_FILE)
    world_size = dist.get_world_size()
    report = {"job": asdict(job), "task": checked.spec.env_id, "transitions": checked.buffer.n_transitions,
              "workers": world_size, "backend": dist.get_backend(), "device": str(model.device),
              "threads_per_worker": torch.get_num_threads(), "steps": checked.steps,
              "batch_size": checked.config.train.batch_size,
              "batch_per_worker": checked.config.train.batch_size // world_size,
              "fit_seconds": seconds, "steps_per_second": checked.steps / seconds,
              "final_loss": sum(losses[-100:]) / len(losses[-100:])}
    with atomic_path(out / REPORT_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2))


def _ray_worker(config: dict[str, Any]) -> None:
    from ray.train.torch import get_device

    run_worker(config["job"], device=get_device() if config["use_gpu"] else torch.device("cpu"))


def fit_with_ray(job: FitJob, workers: int, *, use_gpu: bool = False, address: str | None = None,
                 storage: str | None = None) -> Path:
    """The fit on `workers` Ray Train workers (one GPU each with `use_gpu`), on the Ray cluster at
    `address` (None: the running one, else a local one); returns the model file. Ray Train keeps its run
    records under `storage` (None: Ray's default)."""
    plan(job, workers)
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    if not ray.is_initialized():
        ray.init(address=address)
    trainer = TorchTrainer(_ray_worker, train_loop_config={"job": job, "use_gpu": use_gpu},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                           run_config=RunConfig(name=f"ddp-fit-{time.strftime('%Y%m%d-%H%M%S')}",
                                                storage_path=storage))
    trainer.fit()
    return Path(job.out_dir) / MODEL_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agents.ddp_fit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\nUnder torchrun every process is one worker; with --ray "
                    "the workers are Ray Train's; otherwise one process fits alone.")
    parser.add_argument("data", metavar="DATA.npz", help="episodes written by EpisodeBuffer.save")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for world_model.pt and fit.json")
    parser.add_argument("--preset", default="cpu", choices=preset_ids(), metavar="ID",
                        help=f"world model and optimiser settings: {', '.join(preset_ids())} [default cpu]")
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps [default: the preset's initial_world_model_steps]")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda [default auto]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker [default: as the launcher set them]")
    parser.add_argument("--progress", action="store_true", help="a progress bar on rank 0")
    ray = parser.add_argument_group("ray", "launch through Ray Train instead of torchrun")
    ray.add_argument("--ray", type=int, metavar="N", default=None, help="Ray Train workers")
    ray.add_argument("--address", default=None, help="Ray cluster address, e.g. auto [default: a local one]")
    ray.add_argument("--gpus", action="store_true", help="one GPU per Ray worker (NCCL)")
    ray.add_argument("--storage", default=None, help="Ray Train's run records [default: Ray's]")
    exclude = frozenset(path for path, _, _ in leaf_paths(CoordinatorConfig)
                        if not path.startswith(FLAG_SECTIONS))
    add_config_flags(parser, CoordinatorConfig, {"cpu": leaf_values(build_preset("cpu"))}, exclude)
    return parser


def job_from_args(args: argparse.Namespace) -> FitJob:
    return FitJob(args.data, args.out_dir, args.preset, args.steps, given_flags(args), args.device,
                  args.threads, args.progress)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    job = job_from_args(args)
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    try:
        if args.ray is not None:
            if under_torchrun:
                raise ValueError("--ray starts its own workers: run it with python, not torchrun")
            model_file = fit_with_ray(job, args.ray, use_gpu=args.gpus, address=args.address,
                                      storage=args.storage)
            print(f"wrote {model_file}")
        else:
            checked = plan(job, int(os.environ.get("WORLD_SIZE", "1")))  # every rank fails alike, early
            run_worker(job, checked)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"wrote {Path(job.out_dir) / MODEL_FILE}")
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
