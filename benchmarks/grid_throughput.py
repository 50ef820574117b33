"""Grid throughput of `imagined-env compare`: the same small grid with --backend local (the runs one after
another) and --backend ray (one Ray Tune trial per method and seed, as many at once as the CPUs allow), in
one run on this machine. Each is timed as a whole command in a fresh process (imports and, for Ray,
starting and stopping a local Ray instance included). Prints trials, wall seconds, trials per hour and the
ratio ray/local, checks that both wrote the same compare.csv, and writes JSON.

    python benchmarks/grid_throughput.py                       # PPO (RL Zoo), HalfCheetah-v4, 4 seeds
    python benchmarks/grid_throughput.py --quick               # a grid of seconds: the overheads alone
    python benchmarks/grid_throughput.py --seeds 0,1,2,3,4,5,6,7 --steps 20000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from imagined_env.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]


def command(args: argparse.Namespace, backend: str, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "agents.cli", "compare", "--env", args.env, "--algos", args.algos,
            "--seeds", args.seeds, "--steps", str(args.steps), "--eval-every", str(args.eval_every),
            "--eval-episodes", str(args.eval_episodes), "--max-episode-steps", str(args.max_episode_steps),
            "--threads", "1", "--no-progress", "--out", str(out), "--backend", backend]
    return argv + (["--cpus-per-trial", str(args.cpus_per_trial)] if backend == "ray" else [])


def timed(argv: list[str], log: Path) -> float:
    """Wall seconds of one command; its output goes to `log`, and a failure stops the benchmark."""
    start = time.perf_counter()
    with open(log, "ab") as out:
        done = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out,
                              stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[2:])} failed (exit {done.returncode}); see {log}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--algos", default="ppo", help="model-free methods of the grid [default ppo]")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--steps", type=int, default=5000, help="real steps per trial [default 5000]")
    p.add_argument("--eval-every", type=int, default=2500)
    p.add_argument("--eval-episodes", type=int, default=2)
    p.add_argument("--max-episode-steps", type=int, default=200)
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="600 real steps per trial, evaluations of 50 steps")
    p.add_argument("--out", type=Path, help="JSON to write [default benchmarks/results/grid_throughput/"
                   "<env>/<algos>_seeds-<n>_steps-<steps>.json]")
    args = p.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.max_episode_steps = 600, 300, 50
    trials = len(args.algos.split(",")) * len(args.seeds.split(","))
    name = f"{args.algos.replace(',', '+')}_seeds-{len(args.seeds.split(','))}_steps-{args.steps}.json"
    out = args.out or REPO / "benchmarks/results/grid_throughput" / args.env / name
    rows, commands, load = {}, {}, {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="grid-throughput-") as work:
        for backend in ("local", "ray"):
            argv = command(args, backend, Path(work) / backend)
            commands[backend] = " ".join(["imagined-env", *argv[3:]]).replace(work, "OUT")
            seconds = timed(argv, Path(work) / "log.txt")
            rows[backend] = {"trials": trials, "wall_seconds": seconds,
                             "trials_per_hour": trials * 3600 / seconds}
        same = all((Path(work) / "local" / f).read_bytes() == (Path(work) / "ray" / f).read_bytes()
                   for f in ("compare.csv", "compare_summary.csv"))
    load["end"] = os.getloadavg()
    ratio = rows["ray"]["trials_per_hour"] / rows["local"]["trials_per_hour"]

    print(f"\n{args.env}, {args.algos} x seeds {args.seeds}, {args.steps} real steps per trial, "
          f"{os.cpu_count()} CPUs, {args.cpus_per_trial} CPU per Ray trial; load average "
          f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end")
    print(f"{'backend':<8} {'trials':>6} {'wall s':>8} {'trials/hour':>12}")
    for backend, row in rows.items():
        print(f"{backend:<8} {row['trials']:>6} {row['wall_seconds']:>8.1f} {row['trials_per_hour']:>12.1f}")
    print(f"ratio ray/local (trials per hour): {ratio:.2f}; same compare.csv on both: {same}")
    result = {"env_id": args.env, "algos": args.algos, "seeds": args.seeds, "steps": args.steps,
              "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
              "max_episode_steps": args.max_episode_steps, "cpus_per_trial": args.cpus_per_trial,
              "cpus": os.cpu_count(), "load_average": load, "platform": platform.platform(),
              "python": platform.python_version(), "ray": version("ray"), "commands": commands,
              "backends": rows, "ratio_ray_over_local": ratio, "same_results": same}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
