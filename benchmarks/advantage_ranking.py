"""What the learner sees of its world model, read from coordinator runs' checkpoints.

For each run folder (a `runs/<algo>_seed<S>` folder of `imagined-env compare`, or `imagined-env train`'s
run dir) this loads the last checkpoint (world model, learner, VecNormalize statistics, real data) and,
from real start states of its buffer, ranks changes N(0, sigma^2) of the policy's own action sequences
(`imagined_env.evaluation.action_ranking`): by the H-step return, with independent and common model noise,
and by the advantage the learner computes from the same trajectories, its TD(lambda) return through its own
critic at the imagined states against the real ones. A control column repeats that ranking with the critic
set to 0 (the same discounted rewards, no values): the advantage column minus it is what the critic adds.
Beside them, the model's open-loop error from the same states (observation MSE averaged over steps).
The sigmas default to 0.1, 0.3 and 1.0: the last is the scale of a policy that still explores with a std
near 1, as PPO does early in a run.

    python benchmarks/advantage_ranking.py runs/cmp_s0/runs/imagination-ppo_seed0 ... --out ranking.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.diagnostics import Critic, world_model_errors
from agents.run_files import find_checkpoint
from agents.saved_run import read_checkpoint, read_config, read_learner
from agents.sb3_guidance import sb3_guide, sb3_value
from agents.vec_normalize_stats import STATS_FILE, frozen_vec_normalize, read_stats
from imagined_env.utils import atomic_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="coordinator run folders")
    parser.add_argument("--states", type=int, default=256, help="real start states per run")
    parser.add_argument("--sigmas", default="0.1,0.3,1.0", help="comma-separated action-change scales")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)
    try:
        args.sigmas = tuple(float(s) for s in args.sigmas.split(","))
    except ValueError:
        args.sigmas = ()
    if not args.sigmas or not all(s > 0 for s in args.sigmas) or len(set(args.sigmas)) != len(args.sigmas):
        parser.error(f"--sigmas must be distinct positive numbers, comma-separated, got {args.sigmas!r}")
    if args.states < 2:
        parser.error(f"--states must be >= 2 (a correlation needs two), got {args.states}")
    for run in args.runs:
        if find_checkpoint(run) is None:
            parser.error(f"{run} holds no checkpoint (expected {run}/checkpoint/state.json)")
    return args


def rank_run(run_dir: Path, states: int, sigmas: tuple[float, ...], seed: int) -> dict[str, Any]:
    checkpoint = find_checkpoint(run_dir)
    assert checkpoint is not None
    config = read_config(checkpoint)
    saved, learner = read_checkpoint(checkpoint, config), read_learner(checkpoint, config)
    real = gym.make(config.env_id)
    stats, reward_scale = None, 1.0
    if config.normalize:   # the critic learnt rewards divided by the return std, when they were normalised
        saved_stats = read_stats(checkpoint / STATS_FILE)
        stats = frozen_vec_normalize(checkpoint / STATS_FILE, DummyVecEnv([lambda: real]))
        if saved_stats["norm_reward"]:
            reward_scale = float(np.sqrt(saved_stats["return_var"] + saved_stats["epsilon"]))
    critic = Critic(sb3_value(learner.policy, stats, reward_scale), config.learner.gamma,
                    config.learner.gae_lambda)
    sim = gym.make(config.env_id)
    sim.reset(seed=seed)
    guide = sb3_guide(learner.policy, stats)
    errors = world_model_errors(sim, saved.world_model, saved.buffer, guide, states, config.n_sample_steps,
                                seed=(seed,), critic=critic, sigmas=sigmas)
    sim.close()
    real.close()
    ranking = errors.ranking
    assert ranking is not None
    return {"real_steps": int(saved.state["progress"]["real_steps"]), "states": ranking.n,
            "ranking": ranking.ranking_independent, "ranking_common": ranking.ranking_common,
            "advantage_ranking": ranking.advantage_ranking,
            "advantage_ranking_without_critic": ranking.advantage_ranking_without_critic,
            "obs_mse": float(np.nanmean(errors.open_loop.obs_mse)),
            "reward_mse": float(np.nanmean(errors.open_loop.reward_mse))}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    report = {str(run): rank_run(run, args.states, args.sigmas, args.seed) for run in args.runs}
    print(f"{'run':<50} {'steps':>6} {'obs MSE':>8} {'sigma':>5} {'return':>7} {'common':>7} "
          f"{'advantage':>9} {'V = 0':>6}")
    for run, row in report.items():
        for sigma in args.sigmas:
            print(f"{run[-50:]:<50} {row['real_steps']:>6} {row['obs_mse']:>8.3f} {sigma:>5g} "
                  f"{row['ranking'][sigma]:>7.2f} {row['ranking_common'][sigma]:>7.2f} "
                  f"{row['advantage_ranking'][sigma]:>9.2f} "
                  f"{row['advantage_ranking_without_critic'][sigma]:>6.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        given = sys.argv[1:] if argv is None else argv
        payload = {"command": "python benchmarks/advantage_ranking.py " + " ".join(given),
                   "states": args.states, "sigmas": list(args.sigmas), "seed": args.seed, "runs": report}
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
