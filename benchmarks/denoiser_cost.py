"""Cost per imagined transition of each denoiser kind at several horizons, against AR diffusion.

The cost of a guided generation does not depend on what the weights learned, so every model here is
fitted for a handful of Adam steps only (to have a normaliser and an EMA copy) on uniform-random
HalfCheetah data. For each horizon H, from the same start states:
- PolyGRAD with each denoiser (`KIND:WIDTHxDEPTH`, default: the preset's MLP, the causal MLP and the causal
  transformer), the preset's strided chain, read out from the chain and by its mean pass;
- AR diffusion with the preset's denoiser (a residual MLP of 256 x 3 when the preset's is causal,
  `world_model_ranking.ar_denoiser`) and the same chain length per step (its cost per transition does
  not depend on H).
- for causal denoisers also the rollout read-out (actions drawn by the policy row after row; the causal
  MLP reads it out token by token).
Reported: wall-clock per transition (median of interleaved repeats, one torch thread), FLOPs per transition
of a whole generation (torch's FlopCounterMode, multiply-adds count 2: the denoiser's passes, the mean
read-out's clamping passes, the policy), the same in passes (over one pass's FLOPs per trajectory, measured
on the same batch, so that the time embedding it shares counts alike), and AR diffusion's cost over each
row's, for both measures. Ratios within one run are the figures to quote; absolute times depend on the
machine.

    python benchmarks/denoiser_cost.py --horizons 5,10
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from world_model_error import flops, timed
from world_model_ranking import ar_denoiser, parse_denoiser, with_readout

from agents.presets import build_preset, resolve
from imagined_env.baselines import ARDiffusionConfig, fit_ar_diffusion
from imagined_env.data.collect import buffer_for_env, collect_episodes
from imagined_env.diffusion.denoiser import CAUSAL_KINDS
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.diffusion.sampler import SamplerConfig
from imagined_env.training import fit_world_model, spec_from_env
from imagined_env.utils import atomic_path

DEFAULT_DENOISERS = ("mlp:256x3", "causal-mlp:64x3", "causal-mlp:32x3", "causal-transformer:128x3",
                     "causal-transformer:64x2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--preset", default="cpu", help="chain length, schedule and optimiser of every model")
    parser.add_argument("--horizons", default="5,10", help="comma-separated H")
    parser.add_argument("--denoiser", action="append", default=None, metavar="KIND:WIDTHxDEPTH",
                        help=f"a PolyGRAD row (repeatable; default {', '.join(DEFAULT_DENOISERS)})")
    parser.add_argument("--batch", type=int, default=512, help="trajectories per generation")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per row (median)")
    parser.add_argument("--out", default=None,
                        help="JSON report (default: benchmarks/results/denoiser_cost/ENV.json)")
    args = parser.parse_args(argv)
    try:
        args.horizons = [int(h) for h in args.horizons.split(",")]
    except ValueError:
        parser.error(f"--horizons must be comma-separated integers, got {args.horizons!r}")
    if min(args.horizons) < 1 or args.batch < 1 or args.repeats < 1:
        parser.error(f"horizons, --batch and --repeats must be >= 1, got {args.horizons}, {args.batch}, "
                     f"{args.repeats}")
    return args


def fixed_policy(obs_dim: int, act_dim: int) -> GaussianPolicyFn:
    """A seeded linear-tanh Gaussian policy: guidance costs the same whatever the policy is."""
    weight = torch.randn(obs_dim, act_dim, generator=torch.Generator().manual_seed(0)) / obs_dim ** 0.5
    return lambda s: (torch.tanh(s @ weight), torch.full((len(s), act_dim), 0.5))


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(1)

    env = gym.make(args.env)
    spec = spec_from_env(env, args.env)
    buffer = buffer_for_env(env)
    collect_episodes(env, buffer, 3000, seed=0)
    starts = torch.as_tensor(np.concatenate([e.observations[:-1] for e in buffer.episodes])[:args.batch])
    policy, batch = fixed_policy(spec.obs_dim, spec.act_dim), len(starts)
    preset = build_preset(args.preset, args.env)
    chain = preset.n_sample_steps
    quiet = {"device": "cpu", "progress": False}
    texts = args.denoiser or list(DEFAULT_DENOISERS)

    results: dict[str, dict[str, dict[str, float]]] = {}
    for horizon in args.horizons:
        generators: dict[str, tuple[Callable[[torch.Generator], object], float]] = {}
        for text in texts:
            wm_config = replace(preset.world_model, horizon=horizon,
                                denoiser=parse_denoiser(text, preset.world_model.denoiser))
            model, _ = fit_world_model(buffer, spec, 2, wm_config, preset.train, **quiet)
            x = torch.zeros(batch, model.n_rows, spec.obs_dim + 2)
            a = torch.zeros(batch, model.n_rows, spec.act_dim)
            pass_flops = flops(model.ema, x, a, torch.zeros(batch, dtype=torch.long)) / batch
            causal = model.config.denoiser.kind in CAUSAL_KINDS
            for readout in ("chain", "mean", "rollout") if causal else ("chain", "mean"):
                m = model if model.config.readout == readout else with_readout(model, readout)
                generate = lambda g, m=m: m.imagine(starts, policy, generator=g, n_sample_steps=chain)  # noqa: E731
                generators[f"{text} read-out {readout}"] = (generate, pass_flops)
        ar, _ = fit_ar_diffusion(buffer, spec, 2, ARDiffusionConfig(
            denoiser=ar_denoiser(preset.world_model.denoiser), schedule=preset.world_model.schedule,
            sampler=SamplerConfig(n_sample_steps=chain)), preset.train, **quiet)
        ar_flops = flops(ar.ema, torch.zeros(batch, 1, spec.obs_dim + 2),
                         torch.zeros(batch, 1, spec.obs_dim + spec.act_dim),
                         torch.zeros(batch, dtype=torch.long)) / batch
        generators["AR diffusion"] = (lambda g: ar.rollout(starts, policy, horizon, g), ar_flops)

        times: dict[str, list[float]] = {name: [] for name in generators}
        # untimed first calls: allocations, caches, and the FLOPs of each generation
        generation_flops = {name: flops(generate, torch.Generator().manual_seed(0))
                            for name, (generate, _) in generators.items()}
        for repeat in range(args.repeats):
            for name, (generate, _) in generators.items():
                _, seconds = timed(lambda: generate(torch.Generator().manual_seed(repeat)))
                times[name].append(seconds / (len(starts) * horizon))
        transitions = len(starts) * horizon
        rows = {name: {"ms_per_transition": 1e3 * float(np.median(times[name])),
                       "passes_per_transition": generation_flops[name] / (pass_flops * transitions),
                       "mflop_per_transition": generation_flops[name] / transitions / 1e6}
                for name, (_, pass_flops) in generators.items()}
        ar_row = rows["AR diffusion"]
        for row in rows.values():
            row["ar_over_this_time"] = ar_row["ms_per_transition"] / row["ms_per_transition"]
            row["ar_over_this_flops"] = ar_row["mflop_per_transition"] / row["mflop_per_transition"]
        results[f"H={horizon}"] = rows
        print(format_table(horizon, rows), flush=True)

    given = sys.argv[1:] if argv is None else argv
    report = {"command": "python benchmarks/denoiser_cost.py " + " ".join(given),
              "env": args.env, "preset": resolve(args.preset), "chain": chain, "batch": len(starts),
              "repeats": args.repeats, "threads": 1, "results": results}
    out = Path(args.out or f"benchmarks/results/denoiser_cost/{args.env}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


def format_table(horizon: int, rows: dict[str, dict[str, float]]) -> str:
    lines = [f"H = {horizon}", f"{'model':44s}{'ms/tr':>9s}{'passes/tr':>10s}{'MFLOP/tr':>10s}"
             f"{'AR/this time':>14s}{'AR/this FLOP':>14s}"]
    for name, row in rows.items():
        lines.append(f"{name:44s}{row['ms_per_transition']:9.4f}{row['passes_per_transition']:10.2f}"
                     f"{row['mflop_per_transition']:10.2f}"
                     f"{row['ar_over_this_time']:14.2f}{row['ar_over_this_flops']:14.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
