"""Scaling of the data-parallel world-model fit (`agents.ddp_fit` under torchrun, gloo): Adam steps per second
of the same fit with 1 worker on 1 thread, 1 worker on 2 threads, and 2 workers on 1 thread each. The fair
comparison is 2 workers against 1 worker on 2 threads: both use two cores; 1 thread shows the gain per
core. The settings are measured in turns, each repeated, and medians reported, so that a busy machine
slows all of them alike. The fit's own clock (`fit.json`) is reported beside the launch's wall time, which
adds the start of torch and the process group. Prints a table and writes JSON.

    python benchmarks/ddp_fit.py                    # the cpu preset on 5000 uniform-random HalfCheetah steps
    python benchmarks/ddp_fit.py --quick            # fewer steps and repeats
    python benchmarks/ddp_fit.py --data data.npz    # a stored data set (e.g. build-model's)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

from imagined_env.data.collect import buffer_for_env, collect_episodes
from imagined_env.utils import atomic_path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ((1, 1), (1, 2), (2, 1))
"""(workers, torch threads per worker)."""


def collect(task: str, steps: int, path: Path) -> None:
    """Uniform-random data of `task`, stored as build-model stores its data."""
    env = gym.make(task)
    buffer = buffer_for_env(env, task)
    collect_episodes(env, buffer, steps, seed=0)
    env.close()
    buffer.save(path)


def fit(data: Path, out: Path, workers: int, threads: int, args: argparse.Namespace) -> dict[str, float]:
    """One fit by torchrun; its fit clock and the launch's wall time."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
               "-m", "agents.ddp_fit", str(data), str(out), "--preset", args.preset,
               "--steps", str(args.steps), "--threads", str(threads), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    report = json.loads((out / "fit.json").read_text())
    return {"fit_seconds": report["fit_seconds"], "launch_seconds": wall, "final_loss": report["final_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="HalfCheetah-v4")
    parser.add_argument("--preset", default="cpu-v5")
    parser.add_argument("--data", type=Path, default=None, help="a stored data.npz [default: collect]")
    parser.add_argument("--collect-steps", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per fit [default 500; quick 150]")
    parser.add_argument("--repeats", type=int, default=None, help="fits per setting [default 3; quick 1]")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ddp_fit")
    args = parser.parse_args()
    args.steps = args.steps or (150 if args.quick else 500)
    args.repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data.npz"
        if args.data is None:
            collect(args.task, args.collect_steps, data)
        runs: dict[tuple[int, int], list[dict[str, float]]] = {s: [] for s in SETTINGS}
        for repeat in range(args.repeats):
            for workers, threads in SETTINGS:
                out = Path(tmp) / f"fit-{workers}x{threads}-{repeat}"
                runs[workers, threads].append(fit(data, out, workers, threads, args))
    rows: list[dict[str, Any]] = []
    for (workers, threads), done in runs.items():
        seconds = statistics.median(r["fit_seconds"] for r in done)
        rows.append({"workers": workers, "threads_per_worker": threads, "fit_seconds": seconds,
                     "steps_per_second": args.steps / seconds,
                     "launch_seconds": statistics.median(r["launch_seconds"] for r in done),
                     "final_loss": statistics.median(r["final_loss"] for r in done), "runs": done})
    base = {threads: row["steps_per_second"] for row in rows if row["workers"] == 1
            for threads in [row["threads_per_worker"]]}
    print(f"{args.preset} world model, {args.steps} Adam steps, data "
          f"{args.data or f'{args.collect_steps} random {args.task} steps'}, median of {args.repeats}")
    print(f"{'workers':>7} {'threads':>7} {'fit s':>7} {'steps/s':>8} {'vs 1x1':>7} {'vs 1x2':>7} "
          f"{'launch s':>9}")
    for row in rows:
        row["speedup_vs_1_worker_1_thread"] = row["steps_per_second"] / base[1]
        row["speedup_vs_1_worker_2_threads"] = row["steps_per_second"] / base[2]
        print(f"{row['workers']:>7} {row['threads_per_worker']:>7} {row['fit_seconds']:>7.1f} "
              f"{row['steps_per_second']:>8.1f} {row['speedup_vs_1_worker_1_thread']:>7.2f} "
              f"{row['speedup_vs_1_worker_2_threads']:>7.2f} {row['launch_seconds']:>9.1f}")
    result = {"task": args.task, "preset": args.preset, "steps": args.steps, "repeats": args.repeats,
              "data": str(args.data) if args.data else f"{args.collect_steps} uniform-random steps",
              "command": " ".join(["python", *sys.argv]), "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}
    path = args.out / ("quick.json" if args.quick else "ddp_fit.json")
    with atomic_path(path) as tmp_file:
        tmp_file.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
