"""Imagined transitions per second for each torch thread setting of the env's generation: the raw batched
generation and the same through SB3 PPO's rollout collection (generation + replay + SB3 bookkeeping),
against the real MuJoCo task through SB3. The settings are measured in turns, each repeated, and medians
reported, so that a busy machine slows all of them alike. The SB3 + env overhead is timed inside each
rollout (its share not spent generating), so that it does not depend on the load of another moment.
Prints a table and writes JSON.

    python benchmarks/imagined_throughput.py                 # shipped HalfCheetah-v4 model, 256 envs
    python benchmarks/imagined_throughput.py --quick         # fewer repeats
    python benchmarks/imagined_throughput.py --threads 1,4   # other settings ("all": torch's default)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from agents import ImaginationPPO
from agents.real_evaluation import quiet_stderr
from agents.sb3_guidance import sb3_guide
from imagined_env.pretrained import pretrained_paths
from imagined_env.utils import atomic_path
from imagined_env.vector_env import ImaginedVectorEnv, torch_threads


class GenerationClock:
    """Wall-clock spent in a world model's `imagine` calls (wraps that instance's method)."""

    def __init__(self, model: Any) -> None:
        self.seconds = 0.0
        self._imagine = model.imagine
        model.imagine = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._imagine(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


class RolloutTimer(BaseCallback):
    """Wall-clock of each rollout collection (generation + replay + SB3 bookkeeping, not training), and
    the part of it spent generating when a clock is given."""

    def __init__(self, clock: GenerationClock | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []
        self.generating: list[float] = []
        self._t0 = self._g0 = 0.0

    def _on_rollout_start(self) -> None:
        self._g0 = self.clock.seconds if self.clock else 0.0
        self._t0 = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.times.append(time.perf_counter() - self._t0)
        self.generating.append(self.clock.seconds - self._g0 if self.clock else 0.0)

    def _on_step(self) -> bool:
        return True


def time_rollouts(model: PPO, n_rollouts: int, clock: GenerationClock | None = None) -> RolloutTimer:
    """Timings of n_rollouts rollout collections."""
    timer = RolloutTimer(clock)
    model.learn(model.n_steps * model.n_envs * n_rollouts, callback=timer, reset_num_timesteps=False)
    return timer


def time_raw(imagined: ImaginedVectorEnv, policy: PPO, n_repeats: int, seed: int) -> list[float]:
    """Seconds of each of n_repeats batched generations of num_envs trajectories guided by the policy."""
    model, guide = imagined.model, sb3_guide(policy.policy)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    starts = imagined._starts[
        np.random.default_rng(seed).integers(len(imagined._starts), size=imagined.num_envs)]
    times = []
    with torch_threads(imagined.torch_threads):  # one untimed call first: the thread pool settles
        for _ in range(n_repeats + 1):
            t0 = time.perf_counter()
            model.imagine(starts, guide, generator=gen, n_sample_steps=imagined.replay.config.n_sample_steps)
            times.append(time.perf_counter() - t0)
    return times[1:]


def thread_settings(text: str) -> list[int | None]:
    """"1,2,all" -> [1, 2, None] (None: torch's default thread count, left as it is)."""
    return [None if part.strip() == "all" else int(part) for part in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--world-model", type=Path, help="default: the pretrained model shipped for --env")
    p.add_argument("--start-states", type=Path, help="default: the pretrained start states for --env")
    p.add_argument("--n-envs", type=int, default=256)
    p.add_argument("--threads", type=thread_settings, default="1,2,all",
                   help="torch_threads settings of the env's generation [default 1,2,all]")
    p.add_argument("--repeats", type=int, default=7, help="turns over the settings [default 7]")
    p.add_argument("--quick", action="store_true", help="3 turns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON to write [default benchmarks/results/imagined_throughput/"
                   "<env>/threads-<settings>_turns-<turns>.json]")
    args = p.parse_args()
    repeats = 3 if args.quick else args.repeats
    labels = "-".join("all" if t is None else str(t) for t in args.threads)
    out = args.out or Path(f"benchmarks/results/imagined_throughput/{args.env}/"
                           f"threads-{labels}_turns-{repeats}.json")
    default_threads = torch.get_num_threads()
    torch.manual_seed(args.seed)
    wm_path, starts_path = args.world_model, args.start_states
    if wm_path is None or starts_path is None:
        wm_default, starts_default = pretrained_paths(args.env)
        wm_path, starts_path = wm_path or wm_default, starts_path or starts_default

    learners = {}
    for setting in args.threads:
        imagined = ImaginedVectorEnv(wm_path, args.n_envs, start_states=starts_path, env_id=args.env,
                                     device="cpu", torch_threads=setting)
        learner = ImaginationPPO("MlpPolicy", imagined, batch_size=args.n_envs * imagined.horizon, n_epochs=1,
                                 seed=args.seed, device="cpu")
        time_rollouts(learner, 1), time_raw(imagined, learner, 1, args.seed)  # warm-up
        learners[setting] = (imagined, learner, GenerationClock(imagined.model))
    horizon = imagined.horizon
    n = args.n_envs * horizon
    times: dict[int | None, dict[str, list[float]]] = {
        s: {"raw": [], "sb3": [], "in_sb3": []} for s in learners}
    for _ in range(repeats):
        for setting, (imagined, learner, clock) in learners.items():
            times[setting]["raw"] += time_raw(imagined, learner, 1, args.seed)
            timer = time_rollouts(learner, 1, clock)
            times[setting]["sb3"] += timer.times
            times[setting]["in_sb3"] += timer.generating
    with quiet_stderr():
        real_env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
    real = PPO("MlpPolicy", real_env, n_steps=horizon, batch_size=n, n_epochs=1, seed=args.seed, device="cpu")
    real_rate = n / float(np.median(time_rollouts(real, repeats + 1).times[1:]))

    chain = (imagined.replay.config.n_sample_steps or imagined.model.config.sampler.n_sample_steps
             or imagined.model.schedule.n_steps)
    print(f"\n{args.env}, {args.n_envs} envs x H={horizon}, {chain}-step chain, {repeats} turns, medians; "
          f"torch's default: {default_threads} threads; transitions/s")
    print(f"{'torch_threads':<14} {'raw generation':>15} {'through SB3 rollouts':>21} {'overhead':>9}")
    rows = {}
    for setting, t in times.items():
        raw, sb3 = (n / float(np.median(t[k])) for k in ("raw", "sb3"))
        overhead = float(np.median(1.0 - np.array(t["in_sb3"]) / np.array(t["sb3"])))  # within each rollout
        label = f"all ({default_threads})" if setting is None else str(setting)
        rows[label] = {"raw_generation": raw, "sb3_rollouts": sb3, "sb3_overhead_fraction": overhead,
                       "seconds": t}
        print(f"{label:<14} {raw:>15.0f} {sb3:>21.0f} {100 * overhead:>8.1f}%")
    print(f"real {args.env} through SB3 PPO rollouts: {real_rate:.0f} transitions/s")
    print("overhead: the share of each SB3 rollout not spent in the world model's generation, median over "
          "turns (target <= 20%)")
    result = {"env": args.env, "n_envs": args.n_envs, "horizon": horizon, "chain_steps": chain,
              "turns": repeats, "torch_threads": rows, "real_sb3_rollouts": real_rate,
              "machine": {"platform": platform.platform(), "default_threads": default_threads}}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    gym.logger.min_level = 40
    main()
