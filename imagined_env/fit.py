"""`python -m imagined_env.fit`: collect real data and fit a world model from scratch, writing the
model, a small start-state buffer and the command that made them (how the pretrained default is built)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym

from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, collect_episodes
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.sampler import SamplerConfig
from imagined_env.training import TrainConfig, fit_world_model, spec_from_env
from imagined_env.utils import atomic_path
from imagined_env.world_model import WorldModelConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m imagined_env.fit", description=__doc__)
    p.add_argument("--env", default="HalfCheetah-v4", help="real MuJoCo task id")
    p.add_argument("--real-steps", type=int, default=30_000, help="uniform-random real steps to collect")
    p.add_argument("--train-steps", type=int, default=6_000, help="denoiser gradient steps")
    p.add_argument("--horizon", type=int, default=10, help="imagined steps per trajectory (H)")
    p.add_argument("--width", type=int, default=384, help="denoiser width")
    p.add_argument("--depth", type=int, default=3, help="denoiser residual blocks")
    p.add_argument("--sample-steps", type=int, default=16, help="default strided chain length for imagination")
    p.add_argument("--start-episodes", type=int, default=5, help="real episodes kept as the start-state file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", type=Path, required=True, help="writes world_model.pt, start_states.npz, COMMAND.txt")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = gym.make(args.env)
    buffer = buffer_for_env(env, args.env)
    t0 = time.time()
    stats = collect_episodes(env, buffer, args.real_steps, seed=args.seed)
    config = WorldModelConfig(horizon=args.horizon, denoiser=DenoiserConfig(width=args.width, depth=args.depth),
                              sampler=SamplerConfig(n_sample_steps=args.sample_steps))
    model, losses = fit_world_model(buffer, spec_from_env(env, args.env), args.train_steps, config,
                                    replace(TrainConfig(), seed=args.seed), device=args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save(args.out_dir / "world_model.pt")
    starts = EpisodeBuffer(buffer.obs_dim, buffer.act_dim, buffer.nq, buffer.nv, env_id=args.env)
    for ep in buffer.episodes[: args.start_episodes]:
        starts.add_episode(ep.observations, ep.actions, ep.rewards, ep.terminated, ep.qpos, ep.qvel)
    starts.save(args.out_dir / "start_states.npz")
    with atomic_path(args.out_dir / "COMMAND.txt") as tmp:
        tmp.write_text(
            f"python -m imagined_env.fit {shlex.join(sys.argv[1:] if argv is None else argv)}\n"
            f"real steps {buffer.n_transitions} (uniform random; mean episode return {stats['mean_return']:.1f})\n"
            f"denoiser parameters {model.n_parameters()}, final loss (mean of last 100) "
            f"{sum(losses[-100:]) / max(len(losses[-100:]), 1):.4f}, wall-clock {time.time() - t0:.0f} s\n"
        )
    print((args.out_dir / "COMMAND.txt").read_text())


if __name__ == "__main__":
    main()
