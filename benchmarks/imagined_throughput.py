"""Imagined transitions per second delivered through SB3 PPO's rollout collection, against the raw
batched generation rate of the same world model and against the real MuJoCo task through SB3, in
one run with the same number of envs. Prints a table and writes JSON.

    python benchmarks/imagined_throughput.py            # pretrained HalfCheetah-v4 model, 256 envs
    python benchmarks/imagined_throughput.py --quick    # fewer repeats
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from agents import ImaginationPPO, ImaginedSB3VecEnv
from agents.sb3_guidance import sb3_guide
from imagined_env.pretrained import pretrained_paths
from imagined_env.utils import atomic_path
from imagined_env.vector_env import ImaginedVectorEnv


class RolloutTimer(BaseCallback):
    """Wall-clock of each rollout collection (generation + replay + SB3 bookkeeping), not of training."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._t0 = 0.0

    def _on_rollout_start(self) -> None:
        self._t0 = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def _on_step(self) -> bool:
        return True


def time_sb3(model: PPO, n_rollouts: int) -> float:
    """Median seconds per rollout over n_rollouts (the first, warm-up, rollout excluded)."""
    timer = RolloutTimer()
    model.learn(model.n_steps * model.n_envs * (n_rollouts + 1), callback=timer)
    return float(np.median(timer.times[1:]))


def time_raw(imagined: ImaginedVectorEnv, policy: PPO, n_repeats: int, seed: int) -> float:
    """Median seconds of one batched generation of num_envs trajectories guided by the same policy."""
    model = imagined.model
    guide = sb3_guide(policy.policy)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    starts = imagined._starts[np.random.default_rng(seed).integers(len(imagined._starts), size=imagined.num_envs)]
    times = []
    for _ in range(n_repeats + 1):
        t0 = time.perf_counter()
        model.imagine(starts, guide, generator=gen, n_sample_steps=imagined.replay.config.n_sample_steps)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--world-model", type=Path, help="default: the pretrained model shipped for --env")
    p.add_argument("--start-states", type=Path, help="default: the pretrained start states for --env")
    p.add_argument("--n-envs", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/imagined_throughput.json"))
    args = p.parse_args()
    repeats = 2 if args.quick else args.repeats
    torch.manual_seed(args.seed)
    wm_path, starts_path = args.world_model, args.start_states
    if wm_path is None or starts_path is None:
        wm_default, starts_default = pretrained_paths(args.env)
        wm_path, starts_path = wm_path or wm_default, starts_path or starts_default

    imagined = ImaginedVectorEnv(wm_path, args.n_envs, start_states=starts_path, env_id=args.env, device="cpu")
    horizon = imagined.horizon
    learner = ImaginationPPO("MlpPolicy", ImaginedSB3VecEnv(imagined), n_steps=horizon,
                             batch_size=args.n_envs * horizon, n_epochs=1, seed=args.seed, device="cpu")
    sb3_s = time_sb3(learner, repeats)
    raw_s = time_raw(imagined, learner, repeats, args.seed)
    real = PPO("MlpPolicy", make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed), n_steps=horizon,
               batch_size=args.n_envs * horizon, n_epochs=1, seed=args.seed, device="cpu")
    real_s = time_sb3(real, repeats)

    n = args.n_envs * horizon
    rows = {
        "raw batched generation": n / raw_s,
        "imagined env through SB3 PPO rollouts": n / sb3_s,
        f"real {args.env} through SB3 PPO rollouts": n / real_s,
    }
    overhead = 1.0 - rows["imagined env through SB3 PPO rollouts"] / rows["raw batched generation"]
    chain = (imagined.replay.config.n_sample_steps or imagined.model.config.sampler.n_sample_steps
             or imagined.model.schedule.n_steps)
    print(f"\n{args.env}, {args.n_envs} envs x H={horizon}, {chain}-step chain, {torch.get_num_threads()} threads")
    print(f"{'path':<44} {'transitions/s':>14} {'ratio to raw':>13}")
    for name, rate in rows.items():
        print(f"{name:<44} {rate:>14.0f} {rate / rows['raw batched generation']:>13.2f}")
    print(f"SB3 + env overhead over raw generation: {100 * overhead:.1f}% (target <= 20%)")
    result = {"env": args.env, "n_envs": args.n_envs, "horizon": horizon, "chain_steps": chain, "repeats": repeats,
              "transitions_per_second": rows, "sb3_overhead_fraction": overhead,
              "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()}}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    gym.logger.min_level = 40
    main()
