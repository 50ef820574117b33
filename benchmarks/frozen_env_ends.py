"""What PPO meets in a frozen shipped imagined env as it trains (README snippet form, one seed), beside
what its policy does on the real task: at each checkpoint the real return and episode length
(deterministic), the imagined episodes' return and length (the last 100 finished, as SB3 logs them), and
why the plans generated since the last checkpoint ended (first end: the ensemble's disagreement past the
model's limit, or a task / learned termination) with the mean disagreement of their first transition
against the limit. A policy that falls at once on the real task while its imagined episodes grow long,
and few plans end at the limit, is exploiting an error the members agree on. And where every real episode
begins, the task's own reset states: the share of imagined episodes started there that end within a few
plans, first at the limit or by a task end, against real episodes running the same actions open-loop. If
the limit ends them all, the learner is never taught how a real episode begins.

    python benchmarks/frozen_env_ends.py --env Hopper-v4 --seed 3
    python benchmarks/frozen_env_ends.py --env HalfCheetah-v4 --steps 5000,10000 --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from shipped_envs import int_list, model_paths, quiet, write_report  # a sibling benchmark (on the path)
from stable_baselines3.common.evaluation import evaluate_policy

from agents import ImaginationPPO
from agents.real_evaluation import make_quietly, real_env
from agents.sb3_guidance import sb3_guide
from imagined_env.world_model import Imagination, WorldModel


class EndCounter:
    """Stands in for the env's world model and counts why its policy-guided plans end (a plan regenerated
    around a taken action is not counted: its first action is not the policy's draw)."""

    def __init__(self, model: WorldModel):
        self.model = model
        self.limit = model.config.disagreement_limit
        self.counts: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "model":     # not set yet (a copy being made): no delegation to fall back on
            raise AttributeError(name)
        return getattr(self.model, name)

    def imagine(self, *args: Any, **kwargs: Any) -> Imagination:
        out = self.model.imagine(*args, **kwargs)
        if kwargs.get("actions") is None and out.disagreement is not None and self.limit is not None:
            self.count(out.disagreement.cpu(), out.terminations.cpu())
        return out

    def count(self, u: torch.Tensor, ended: torch.Tensor) -> None:
        """Add plans [B, H]: `ended` holds both kinds of end (with unsure ends terminating, as shipped), so a
        task end on a step past the limit counts as an unsure end."""
        unsure = u > self.limit
        task = ended & ~unsure
        h = u.shape[1]
        first_unsure = torch.where(unsure.any(1), unsure.float().argmax(1), torch.tensor(h))
        first_task = torch.where(task.any(1), task.float().argmax(1), torch.tensor(h))
        c = self.counts
        c["plans"] = c.get("plans", 0) + len(u)
        c["unsure_first"] = c.get("unsure_first", 0) + int((first_unsure < first_task).sum())
        c["task_first"] = c.get("task_first", 0) + int((first_task < first_unsure).sum())
        c["u_first_sum"] = c.get("u_first_sum", 0.0) + float(u[:, 0].sum())

    def take(self) -> dict[str, float]:
        """The shares since the last call, and reset."""
        c, self.counts = self.counts, {}
        n = c.get("plans", 0)
        if not n:
            return {"plans": 0}
        return {"plans": int(n), "ended_unsure_first": c["unsure_first"] / n,
                "ended_task_first": c["task_first"] / n, "first_disagreement": c["u_first_sum"] / n,
                "limit": float(self.limit)}


def from_resets(learner: ImaginationPPO, model: WorldModel, env_id: str, n_starts: int = 128,
                n_plans: int = 4, seed: int = 10_000) -> dict[str, float]:
    """Imagined episodes of `n_plans` chained policy-guided plans from `n_starts` reset states of the task
    (seeds `seed`..), and real envs from the same states running the same actions open-loop: the share of
    episodes ended within the plans, first at the disagreement limit or by a task end (as `EndCounter`),
    and of real ones ended."""
    envs = [make_quietly(env_id) for _ in range(n_starts)]
    starts = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    state = torch.as_tensor(starts, dtype=torch.float32)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    counter = EndCounter(model)
    policy = sb3_guide(learner.policy, None)
    u_all, ended_all, real = [], [], np.zeros(n_starts, bool)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n_plans):
        with torch.no_grad():
            out = model.imagine(state, policy, generator=generator)
        u_all.append(out.disagreement.cpu())
        ended_all.append(out.terminations.cpu())
        for i, env in enumerate(envs):
            for action in out.actions[i].cpu().numpy():
                if real[i]:
                    break
                real[i] = env.step(np.clip(action, low, high))[2]
        state = out.observations[:, -1]
    for env in envs:
        env.close()
    counter.count(torch.cat(u_all, 1), torch.cat(ended_all, 1))
    shares = counter.take()
    return {"reset_ended_unsure_first": shares["ended_unsure_first"],
            "reset_ended_task_first": shares["ended_task_first"], "reset_real_ended": float(real.mean())}


def run(env_id: str, seed: int, steps: list[int], n_episodes: int, model_dir: str | None = None
        ) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    world_model, starts = model_paths(env_id, model_dir)
    given = None if model_dir is None else {"world_model": str(world_model), "start_states": str(starts)}
    model = ImaginationPPO("MlpPolicy", env_id, seed=seed, verbose=0, env_kwargs=given)
    assert model.imagined is not None
    counter = EndCounter(model.imagined.model)
    if counter.limit is None:
        raise SystemExit(f"{env_id}'s model ({model_dir or 'shipped'}) has no disagreement limit: nothing to "
                         "count")
    model.imagined.replay.model = counter     # type: ignore[assignment]  (generation goes through the replay)
    rows = []
    for target in steps:
        t0 = time.perf_counter()
        model.learn(target - model.num_timesteps, reset_num_timesteps=False)
        env = real_env(env_id, seed)
        returns, lengths = evaluate_policy(model, env, n_eval_episodes=n_episodes, deterministic=True,
                                           return_episode_rewards=True, warn=False)
        env.close()
        episodes = list(model.ep_info_buffer)
        row = {"steps": target, "real_return": float(np.mean(returns)),
               "real_length": float(np.mean(lengths)),
               "imagined_return": float(np.mean([e["r"] for e in episodes])),
               "imagined_length": float(np.mean([e["l"] for e in episodes])),
               "policy_std": float(torch.exp(model.policy.log_std.detach()).mean()),
               **counter.take(), **from_resets(model, counter.model, env_id),
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(" ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v4", help="a task with a shipped model [Hopper-v4]")
    p.add_argument("--seed", type=int, default=0, help="PPO seed [0]")
    p.add_argument("--steps", default="25000,50000,75000,100000,150000,200000",
                   help="imagined-step checkpoints of one continuing run [25000,50000,75000,100000,150000,"
                        "200000]")
    p.add_argument("--episodes", type=int, default=5, help="real evaluation episodes [5]")
    p.add_argument("--model", help="the model of an export or build-model folder in place of the shipped one")
    p.add_argument("--out", type=Path, help="JSON to write [benchmarks/results/shipped_envs/ends/"
                   "<env>_seed<seed>.json]")
    quiet()
    args = p.parse_args(argv)
    steps = int_list(args.steps)
    if any(s < 1 for s in steps) or steps != sorted(set(steps)):
        p.error(f"--steps must be increasing positive checkpoints, got {args.steps}")
    out = args.out or Path(f"benchmarks/results/shipped_envs/ends/{args.env}_seed{args.seed}.json")
    rows = run(args.env, args.seed, steps, args.episodes, args.model)
    report = {"command": " ".join(["python", "benchmarks/frozen_env_ends.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "env": args.env, "seed": args.seed, "model": args.model or "shipped", "checkpoints": rows}
    return write_report(out, report)


if __name__ == "__main__":
    main()
