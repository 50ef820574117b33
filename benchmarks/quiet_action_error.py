"""How wrong a world model is where a near-deterministic learner starts: from the task's own reset states,
plans of zero-mean Gaussian actions N(0, width^2) chained for a whole imagined episode (each plan from
the last imagined state, as the imagined env does), imagined beside MuJoCo running the same actions.
Prints, per width, the reward per step of the first plan and of the last ones, imagined and real, and
the members' disagreement against the model's limit; writes JSON. A learner such as the RL Zoo's PPO
(log_std_init -2) acts near zero for its first updates: where the model is wrong there and its members
agree, the learner is taught by the error and no pessimism flags it.

    python benchmarks/quiet_action_error.py --env HalfCheetah-v4
    python benchmarks/quiet_action_error.py --env HalfCheetah-v4 --model out/  # beside the shipped model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from shipped_envs import model_paths, quiet, write_report  # a sibling benchmark (its folder is on the path)

from agents.real_evaluation import make_quietly
from imagined_env.world_model import WorldModel


def chained(model: WorldModel, env_id: str, width: float, n_envs: int, n_plans: int, seed: int
            ) -> dict[str, Any]:
    """Imagined and real reward per step of each plan (mean over the steps before either side ended an
    env's episode), the share of envs alive at each plan's start, and the imagined plans' mean
    disagreement, for up to `n_plans` chained plans of N(0, width^2) actions from reset states (fewer
    when every episode has ended)."""
    h, act_dim = model.horizon, model.spec.act_dim
    envs = [make_quietly(env_id) for _ in range(n_envs)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    rng = np.random.default_rng(seed)
    state, alive = torch.as_tensor(obs), np.ones(n_envs, bool)
    imagined, real, doubt, alive_share = [], [], [], []
    for _ in range(n_plans):
        if not alive.any():
            break
        actions = np.clip(width * rng.standard_normal((n_envs, h, act_dim)), low, high).astype(np.float32)
        with torch.no_grad():
            out = model.imagine(state, actions=torch.as_tensor(actions))
        model_reward, model_end = out.rewards.numpy(), out.ended.numpy()
        real_reward, real_end = np.zeros((n_envs, h)), np.zeros((n_envs, h), bool)
        for i, env in enumerate(envs):
            for k in range(h):
                if alive[i] and not real_end[i, :k].any():
                    _, real_reward[i, k], real_end[i, k], _, _ = env.step(actions[i, k])
        # a step counts while neither side has ended the episode before it (the ending step counts)
        ended_before = np.cumsum(model_end | real_end, axis=1) - (model_end | real_end) > 0
        counted = alive[:, None] & ~ended_before
        alive_share.append(float(alive.mean()))
        imagined.append(float(model_reward[counted].mean()))
        real.append(float(real_reward[counted].mean()))
        if out.disagreement is not None:
            doubt.append(float(out.disagreement.numpy()[counted].mean()))
        alive &= ~model_end.any(1) & ~real_end.any(1)
        state = out.observations[:, -1]
    for env in envs:
        env.close()
    return {"width": width, "imagined_reward": imagined, "real_reward": real, "disagreement": doubt,
            "alive": alive_share, "alive_at_end": float(alive.mean())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4", help="a task with a shipped model [HalfCheetah-v4]")
    p.add_argument("--model", help="also measure the model of an export or build-model folder")
    p.add_argument("--widths", default="0,0.1,0.3,1", help="action noise widths [0,0.1,0.3,1]")
    p.add_argument("--envs", type=int, default=64, help="reset states (seeds 0..N-1) [64]")
    p.add_argument("--plans", type=int, default=40, help="chained plans: 40 of H = 5 is 200 steps [40]")
    p.add_argument("--out", type=Path,
                   help="JSON to write [benchmarks/results/quiet_action_error/<env>.json]")
    args = p.parse_args(argv)
    try:
        widths = [float(w) for w in args.widths.split(",")]
    except ValueError:
        p.error(f"--widths must be comma-separated numbers, got {args.widths!r}")
    if args.model is not None and Path(args.model).resolve().name == "shipped":
        p.error(f"--model {args.model}: a folder named 'shipped' would be read as the shipped model's row")
    if any(not 0 <= w < float("inf") for w in widths) or args.envs < 1 or args.plans < 1:
        p.error(f"--widths must be finite numbers >= 0 and --envs, --plans >= 1, got {args.widths}, "
                f"{args.envs}, {args.plans}")
    quiet()
    torch.set_num_threads(1)
    models = {"shipped": None, **({Path(args.model).resolve().name: args.model} if args.model else {})}
    report: dict[str, Any] = {"command": " ".join(["python", "benchmarks/quiet_action_error.py",
                                                   *(sys.argv[1:] if argv is None else argv)]),
                              "env": args.env, "models": {}}
    print(f"{args.env}: reward per step, imagined / real, at plans 1, the middle one and the last one "
          f"(of {args.plans}, fewer when every episode ended; alive: share of envs at the last one)")
    for name, folder in models.items():
        model = WorldModel.load(model_paths(args.env, folder)[0], device="cpu", env_id=args.env)
        limit = model.config.disagreement_limit
        rows = [chained(model, args.env, w, args.envs, args.plans, seed=0) for w in widths]
        report["models"][name] = {"limit": limit, "rows": rows}
        for r in rows:
            n = len(r["real_reward"])
            picks = [0, max(n // 2 - 1, 0), n - 1]
            cells = "  ".join(f"{i + 1:>2}: {r['imagined_reward'][i]:6.2f} / {r['real_reward'][i]:6.2f}"
                              for i in picks)
            doubt = np.mean(r["disagreement"]) if r["disagreement"] else float("nan")
            print(f"  {name:>12}  width {r['width']:<5g} {cells}   alive {r['alive'][-1]:.2f}   disagreement "
                  f"{doubt:.3f} (limit {limit if limit is not None else float('nan'):.3f})")
    out = args.out or Path(f"benchmarks/results/quiet_action_error/{args.env}.json")
    return write_report(out, report)


if __name__ == "__main__":
    main()
