"""Do the final HalfCheetah policies of some runs run upright or on their backs?

HalfCheetah's best-known local optimum is a flipped gait: the cheetah turns over early and learns to
run on its back, which caps the return far below an upright gait. A mean over few seeds mixes the
two, so this script sorts runs by posture. For every coordinator run folder given (the `runs/<algo>_seed<S>`
folders `imagined-env compare` writes, or `imagined-env train`'s run dir) it loads the last
checkpoint, plays deterministic episodes on the real task, and reports the return and the fraction of
steps with the torso upside down (root angle qpos[2] beyond +-pi/2, i.e. the back toward the floor).
For coordinator runs it also reads the real episodes stored in the checkpoint's buffer and prints, per
block of ten, how many ran mostly upside down: when the cheetah first turned over, in the data the
world model learns from (the first five are the uniform-random prefill).
`--zoo-seeds` first trains the model-free baseline of `imagined-env compare` (RL Zoo tuned PPO with
VecNormalize) for `--steps` real steps per seed and measures its final policy the same way.

    python benchmarks/halfcheetah_posture.py runs/cmp_s0/runs/imagination-ppo_seed0 ... --out results.json
    python benchmarks/halfcheetah_posture.py --zoo-seeds 0,1,2 --steps 50000 --out zoo.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from agents.compare import make_model_free
from agents.real_evaluation import frozen_eval_env, load_learner
from agents.run_files import find_checkpoint, read_state
from agents.zoo import zoo_settings
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.utils import atomic_path

ENV_ID = "HalfCheetah-v4"


def run_posture(run_dir: Path, episodes: int, seed: int) -> dict[str, Any]:
    """Posture of the last checkpoint's policy of a coordinator run folder."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise SystemExit(f"{run_dir}: no checkpoint (expected a coordinator run folder)")
    state = read_state(checkpoint)
    if not state["env_id"].startswith("HalfCheetah"):
        raise SystemExit(f"{run_dir}: a run of {state['env_id']}, not HalfCheetah")
    stats_path = checkpoint / "vec_normalize.npz"
    learner, stats = load_learner(checkpoint / "learner.zip", state["config"]["algo"], state["env_id"], seed,
                                  stats_path if stats_path.is_file() else None)
    collected = collected_upside_down(EpisodeBuffer.load(checkpoint / "buffer.npz"))
    return {"real_steps": state["real_steps"], **posture(learner, state["env_id"], stats, episodes, seed),
            "collected_upside_down": collected}


def collected_upside_down(buffer: EpisodeBuffer) -> list[float]:
    """Fraction of steps upside down in each stored real episode, oldest first."""
    return [float(np.mean(upside_down(episode.qpos))) for episode in buffer.episodes]


def upside_down(qpos: np.ndarray) -> np.ndarray:
    """Whether the torso is upside down in each state: root angle qpos[..., 2] beyond +-pi/2."""
    return np.abs(qpos[..., 2]) > np.pi / 2


def flipped_per_ten(fractions: list[float]) -> str:
    """'0 4 9 ...': per block of ten episodes, how many were upside down for over half their steps."""
    return " ".join(str(sum(f > 0.5 for f in fractions[i:i + 10])) for i in range(0, len(fractions), 10))


def zoo_posture(seed: int, steps: int, episodes: int, eval_seed: int) -> dict[str, float]:
    """Posture of `imagined-env compare`'s model-free PPO after `steps` real steps."""
    learner = make_model_free(zoo_settings("ppo", ENV_ID), ENV_ID, seed)
    learner.learn(total_timesteps=steps)
    return {"real_steps": steps, **posture(learner, ENV_ID, learner.get_env(), episodes, eval_seed)}


def posture(learner: BaseAlgorithm, env_id: str, stats: VecEnv | None, episodes: int,
            seed: int) -> dict[str, float]:
    """Mean return and fraction of steps upside down over deterministic episodes."""
    env = frozen_eval_env(env_id, seed, stats)
    sim = env.unwrapped.envs[0].unwrapped       # the MuJoCo env under VecNormalize, DummyVecEnv, Monitor
    returns, flipped = [], []
    for _ in range(episodes):
        obs, done, total, flipped_steps, steps = env.reset(), False, 0.0, 0, 0
        while not done:
            action, _ = learner.predict(obs, deterministic=True)
            obs, reward, dones, _ = env.step(action)
            total, done, steps = total + float(reward[0]), bool(dones[0]), steps + 1
            flipped_steps += int(upside_down(sim.data.qpos))   # after an episode's end: the reset state
        returns.append(total)
        flipped.append(flipped_steps / steps)
    return {"mean_return": float(np.mean(returns)), "upside_down_fraction": float(np.mean(flipped))}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="coordinator run folders")
    parser.add_argument("--zoo-seeds", default="",
                        help="comma-separated seeds of Zoo PPO runs to train first")
    parser.add_argument("--steps", type=int, default=50_000, help="real steps of each Zoo PPO run")
    parser.add_argument("--episodes", type=int, default=3, help="deterministic episodes per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation env")
    parser.add_argument("--out", default="benchmarks/results/halfcheetah_posture.json")
    args = parser.parse_args(argv)
    zoo_seeds = [int(seed) for seed in args.zoo_seeds.split(",") if seed]
    if not args.runs and not zoo_seeds:
        parser.error("give run folders, --zoo-seeds, or both")
    rows = {f"zoo-ppo_seed{seed}": zoo_posture(seed, args.steps, args.episodes, args.seed)
            for seed in zoo_seeds}
    rows.update({str(run): run_posture(run, args.episodes, args.seed) for run in args.runs})
    width = max(len(name) for name in rows) + 2
    print(f"{'run':<{width}}{'real steps':>12}{'return':>10}{'upside down':>13}  posture  "
          "real episodes flipped, per 10")
    for name, r in rows.items():
        flipped = r["upside_down_fraction"]
        collected = flipped_per_ten(r["collected_upside_down"]) if "collected_upside_down" in r else "-"
        print(f"{name:<{width}}{r['real_steps']:>12}{r['mean_return']:>10.1f}{flipped:>13.2f}  "
              f"{'flipped' if flipped > 0.5 else 'upright':<9}{collected}")
    report = {"command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
              "episodes": args.episodes, "seed": args.seed, "runs": rows}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    main()
