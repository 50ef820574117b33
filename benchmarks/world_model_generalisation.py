"""Does a world model keep improving on states and actions it was not trained on? Held-out open-loop error
against Adam steps, on a buffer the size of a run's at 10k real steps, for the preset's world model (and
other denoisers) beside the MBPO-style MLP ensemble.

1. Data as a run has it at 10k real steps: 5k uniform-random transitions, then 5k of an untrained, seeded SB3
   PPO `MlpPolicy` (`log_std_init=0`, where PPO starts; `ortho_init=False`); held out: 3k transitions of
   the same policy from other seeds.
2. From 200 held-out real states the policy's action sequences are sampled step by step in MuJoCo
   (`world_model_ranking.policy_rollouts`); every model replays them open-loop.
3. Every `--every` Adam steps (batch 256, each model its own optimiser) up to `--steps`: the observation
   MSE of the replay, averaged over k = 1..H (environment units), and of the same replay from 200 states of
   the training buffer. PolyGRAD models are read out by their mean (`readout="mean"`, deterministic), the
   ensemble by its elites' mean.
4. Alongside, each model replays the recorded actions of 400 whole windows of the training buffer and of
   the held-out data: a model that fits its own windows ever better while the held-out ones stay flat
   has memorised them.
A model whose training loss keeps falling while its held-out error stays flat has stopped generalising.

    python benchmarks/world_model_generalisation.py --denoiser causal-mlp:64x3
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from world_model_error import collect
from world_model_ranking import PolicyRollouts, parse_denoiser, policy_rollouts

from agents.presets import build_preset, resolve
from agents.sb3_guidance import sb3_guide
from agents.sb3_sampling import sb3_sampler
from imagined_env.baselines.common import StepwiseImaginer
from imagined_env.baselines.mlp_ensemble import EnsembleConfig, EnsembleTrainer, new_mlp_ensemble
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, collect_episodes
from imagined_env.training import new_trainer, spec_from_env
from imagined_env.utils import atomic_path

N_STARTS = 200


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", help="the preset whose world model is measured")
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--denoiser", action="append", default=[], metavar="KIND:WIDTHxDEPTH",
                        help="the preset's world model with this denoiser instead of its own (repeatable)")
    parser.add_argument("--members", type=int, default=None,
                        help="PolyGRAD ensemble members (default: the preset's n_members)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="denoiser dropout of the PolyGRAD models (default: the preset's)")
    parser.add_argument("--steps", type=int, default=12_000, help="Adam steps of every model")
    parser.add_argument("--every", type=int, default=2_000, help="Adam steps between measurements")
    parser.add_argument("--out", default=None, help="JSON report (default: benchmarks/results/"
                        "world_model_generalisation/ENV/seed-SEED.json)")
    args = parser.parse_args(argv)
    if args.members is not None and args.members < 1:
        parser.error(f"--members must be >= 1, got {args.members}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error(f"--dropout must lie in [0, 1), got {args.dropout}")
    if args.every < 1 or args.steps < args.every:
        parser.error(f"need 1 <= --every <= --steps, got {args.every} and {args.steps}")
    return args


def replay_mse(imagined: np.ndarray, rollouts: PolicyRollouts) -> float:
    """Observation MSE of imagined next observations [B, H, obs] against MuJoCo's, over valid steps."""
    return float(((imagined - rollouts.next_obs) ** 2)[rollouts.valid].mean())


def recorded_windows(buffer: EpisodeBuffer, horizon: int, rng: np.random.Generator, n: int = 400
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start observations [N, obs], recorded actions [N, H, act] and next observations [N, H, obs] of up
    to `n` windows drawn from `buffer`, those that end before any termination."""
    drawn = buffer.sample_windows(n, horizon, rng)
    whole = drawn.valid.all(axis=1)
    return drawn.states[whole, 0], drawn.actions[whole, :horizon], drawn.states[whole, 1:]


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    env = gym.make(args.env)
    env.reset(seed=args.seed)
    agent = PPO("MlpPolicy", gym.make(args.env), seed=args.seed, device="cpu",
                policy_kwargs={"log_std_init": 0.0, "ortho_init": False})
    agent.policy.set_training_mode(False)
    buffer = buffer_for_env(env, args.env)
    collector = gym.make(args.env)
    collect_episodes(collector, buffer, 5_000, None, seed=args.seed)
    collect_episodes(collector, buffer, 5_000, sb3_sampler(agent), seed=args.seed + 1)
    held_out, _ = collect(args.env, agent, 3_000, args.seed + 10_000)
    spec, policy = spec_from_env(env, args.env), sb3_guide(agent.policy)
    preset = build_preset(args.preset, args.env)
    horizon = preset.world_model.horizon
    sets = {}
    for name, source, seed in (("held_out", held_out, args.seed), ("training", buffer, args.seed + 5)):
        obs, qpos, qvel = source.start_states(np.random.default_rng(seed), N_STARTS)
        sets[name] = (obs, policy_rollouts(env, policy, qpos, qvel, horizon, np.random.default_rng(seed)))
    windows = {name: recorded_windows(source, horizon, np.random.default_rng(args.seed + 1))
               for name, source in (("held_out", held_out), ("training", buffer))}
    print(f"data ready ({time.perf_counter() - t0:.0f} s)", flush=True)

    denoisers = [parse_denoiser(text, preset.world_model.denoiser) for text in args.denoiser] or [
        preset.world_model.denoiser]
    if args.dropout is not None:
        denoisers = [replace(denoiser, dropout=args.dropout) for denoiser in denoisers]
    models = {}
    for denoiser in denoisers:
        config = replace(preset.world_model, denoiser=denoiser, readout="mean",
                         n_members=args.members or preset.world_model.n_members)
        trainer = new_trainer(buffer, spec, config, replace(preset.train, seed=args.seed), device="cpu")
        members = f" x {config.n_members} members" if config.n_members > 1 else ""
        dropout = f", dropout {denoiser.dropout:g}" if denoiser.dropout else ""
        size = f"{denoiser.width}x{denoiser.depth}{members}{dropout}"
        label = f"{resolve(args.preset)} {denoiser.kind}:{size}, read-out mean"
        models[label] = (trainer, trainer.model)
    torch.manual_seed(args.seed)
    ensemble = new_mlp_ensemble(buffer, spec, EnsembleConfig(), "cpu")
    models["MLP ensemble, elite mean"] = (EnsembleTrainer(ensemble, seed=args.seed), StepwiseImaginer(
        lambda s, a, g: ensemble.step(s, a, g, deterministic=True), spec, horizon, ensemble.device))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for done in range(args.every, args.steps + 1, args.every):
        for name, (trainer, imaginer) in models.items():
            losses = trainer.train(buffer, args.every)
            row = {"steps": done, "loss": float(np.mean(losses[-100:]))}
            for set_name, (obs, rollouts) in sets.items():
                imagined = imaginer.imagine(obs, actions=rollouts.actions).observations[:, 1:]
                row[f"{set_name}_obs_mse"] = replay_mse(imagined.cpu().numpy(), rollouts)
            for set_name, (start, actions, target) in windows.items():
                imagined = imaginer.imagine(start, actions=actions).observations[:, 1:].cpu().numpy()
                row[f"{set_name}_windows_obs_mse"] = float(((imagined - target) ** 2).mean())
            rows[name].append(row)
        print(f"{done} Adam steps ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(format_table(rows))
    given = sys.argv[1:] if argv is None else argv
    report = {"command": "python benchmarks/world_model_generalisation.py " + " ".join(given),
              "env": args.env, "preset": resolve(args.preset), "seed": args.seed, "horizon": horizon,
              "starts": N_STARTS, "results": rows, "total_seconds": time.perf_counter() - t0}
    out = args.out or f"benchmarks/results/world_model_generalisation/{args.env}/seed-{args.seed}.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


def format_table(rows: dict[str, list[dict[str, float]]]) -> str:
    width = max(len(name) for name in rows) + 2
    steps = [row["steps"] for row in next(iter(rows.values()))]
    lines = []
    for title, prefix in (("policy rollouts from held-out states (from training-buffer states)", ""),
                          ("recorded windows, held-out (training buffer)", "_windows")):
        lines += [f"Open-loop observation MSE after N Adam steps, {title}",
                  f"{'model':<{width}}" + "".join(f"{n:>16}" for n in steps)]
        for name, series in rows.items():
            lines.append(f"{name:<{width}}" + "".join(
                f"{r[f'held_out{prefix}_obs_mse']:>8.3f} [{r[f'training{prefix}_obs_mse']:.3f}]"
                for r in series))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
