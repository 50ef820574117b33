"""Which world-model settings make imagined returns follow the actions? A fixed baseline world model
against variants of its `WorldModelConfig`, in one run.

The learner only ever sees imagined rewards, and a policy gradient needs them to rank actions as the
simulator does, which the open-loop MSE alone does not show. One run:
1. Data: a fixed stochastic SB3 policy (as `world_model_error.py`: untrained, `log_std_init=-0.5`),
   training episodes and held-out episodes with other reset seeds.
2. For every seed, the baseline (the cpu preset's world model with actions scaled as the paper: H = 5,
   width 256 x 3 blocks, lr 1e-3, 32-step chain) and
   every variant (e.g. `scale_actions=false`: actions at full strength; `reward_loss_weight=5`) are
   fitted for the same number of Adam steps.
3. Each model is measured from the same held-out real states: open-loop observation MSE over k = 1..H
   and reward MSE over k = 1..H of trajectories guided by the policy
   (`imagined_env.evaluation.open_loop_error`), and the action sensitivity
   (`imagined_env.evaluation.action_sensitivity`): two uniform-random action sequences a and
   b = clip(a + N(0, 0.5^2)) replayed by the model and by MuJoCo; the correlation of the H-step return
   differences R(a) - R(b), imagined against real. And the return noise: the std of the difference
   between two model samples of R(a), same actions, relative to the std of the real R(a) - R(b), i.e.
   how much of the signal the learner has to resolve the model's own sampling noise covers.
The table is per variant (mean over seeds); ratios are against the preset in the same run. Variants
name fields of `WorldModelConfig` or, one level down, of its parts (`denoiser.width=512`).

    python benchmarks/world_model_variants.py --variants scale_actions=false reward_loss_weight=5
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

from agents.coordinator import CoordinatorConfig
from agents.sb3_guidance import sb3_guide
from imagined_env.evaluation import action_sensitivity, open_loop_error
from imagined_env.training import TrainConfig, fit_world_model, spec_from_env
from imagined_env.utils import atomic_path
from imagined_env.world_model import WorldModelConfig

SAMPLE_STEPS = 32
"""Diffusion passes per imagination of the baseline (the cpu-v1 preset's chain)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--variants", nargs="+", default=["scale_actions=false"], metavar="FIELD=VALUE[,...]",
                        help="each a variant of the preset's WorldModelConfig: top-level fields, "
                             "values as JSON")
    parser.add_argument("--seeds", default="0,1", help="comma-separated model seeds (the data is seed 0's)")
    parser.add_argument("--real-steps", type=int, default=20_000, help="training transitions")
    parser.add_argument("--grad-steps", type=int, default=4_000, help="Adam steps per model")
    parser.add_argument("--n-starts", type=int, default=500, help="held-out start states")
    parser.add_argument("--out", default="benchmarks/results/world_model_variants.json")
    return parser.parse_args(argv)


def measure(model, env, policy, starts, pairs, seed: int, n_sample_steps: int | None) -> dict[str, float]:
    _, qpos, qvel = starts
    generator = torch.Generator().manual_seed(seed)
    error = open_loop_error(env, model, qpos, qvel, policy=policy, generator=generator,
                            n_sample_steps=n_sample_steps)
    sensitivity = action_sensitivity(env, model, qpos, qvel, *pairs, generator=generator,
                                     n_sample_steps=n_sample_steps)
    twice = [model.imagine(starts[0], actions=pairs[0], generator=generator, n_sample_steps=n_sample_steps)
             for _ in range(2)]
    noise = float((twice[0].rewards.sum(1) - twice[1].rewards.sum(1)).std())
    return {"obs_mse": float(np.nanmean(error.obs_mse)), "reward_mse": float(np.nanmean(error.reward_mse)),
            "return_difference_correlation": sensitivity.correlation, "pairs": sensitivity.n,
            "return_noise_to_signal": noise / sensitivity.real_std}


def parse_variant(text: str) -> dict[str, object]:
    """"scale_actions=false,denoiser.width=512" -> {"scale_actions": False, "denoiser": {"width": 512}}:
    top-level fields of WorldModelConfig, or one level into its parts (denoiser, schedule, ...)."""
    fields: dict[str, object] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        top, _, sub = name.partition(".")
        part = getattr(WorldModelConfig(), top, None) if sep else None
        known = sep and top in WorldModelConfig.__dataclass_fields__ and (
            not sub or sub in getattr(part, "__dataclass_fields__", {}))
        if not known:
            raise SystemExit(f"variant {item!r}: expected FIELD=VALUE or PART.FIELD=VALUE with FIELD one of "
                             f"{sorted(WorldModelConfig.__dataclass_fields__)}")
        if sub:
            fields.setdefault(top, {})[sub] = json.loads(value)
        else:
            fields[top] = json.loads(value)
    return fields


def apply_variant(config: WorldModelConfig, fields: dict[str, object]) -> WorldModelConfig:
    """`config` with the variant's fields replaced (parts field by field)."""
    return replace(config, **{k: replace(getattr(config, k), **v) if isinstance(v, dict) else v
                              for k, v in fields.items()})


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    variants = {"preset": {}, **{text: parse_variant(text) for text in args.variants}}
    seeds = [int(s) for s in args.seeds.split(",")]
    env = gym.make(args.env)
    spec = spec_from_env(env, args.env)
    agent = PPO("MlpPolicy", gym.make(args.env), seed=0, device="cpu",
                policy_kwargs={"log_std_init": -0.5, "ortho_init": False})
    agent.policy.set_training_mode(False)
    policy = sb3_guide(agent.policy)
    train_buffer, _ = collect(args.env, agent, args.real_steps, 0)
    eval_buffer, _ = collect(args.env, agent, 3_000, 10_000)
    cpu = CoordinatorConfig()
    base_model = replace(cpu.world_model, scale_actions=True)
    horizon = base_model.horizon
    starts = eval_buffer.start_states(np.random.default_rng(0), args.n_starts)
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (args.n_starts, horizon, spec.act_dim)).astype(np.float32)
    pairs = (a, np.clip(a + rng.normal(0, 0.5, a.shape), -1, 1).astype(np.float32))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for seed in seeds:
        for name, fields in variants.items():
            config = apply_variant(base_model, fields)
            model, _ = fit_world_model(train_buffer, spec, args.grad_steps, config,
                                       TrainConfig(lr=cpu.train.lr, batch_size=cpu.train.batch_size,
                                                   seed=seed),
                                       device="cpu", progress=False)
            model.adapt_guidance(model.imagine(starts[0][:64], policy, n_sample_steps=SAMPLE_STEPS))
            row = measure(model, env, policy, starts, pairs, seed, SAMPLE_STEPS)
            rows[name].append(row)
            print(f"seed {seed} {name}: {row} ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()}
    base = table["preset"]
    width = max(len(name) for name in table) + 2
    print(f"\n{'variant':>{width}}{'obs MSE':>10}{'reward MSE':>12}{'return-diff corr':>18}"
          f"{'noise/signal':>14}{'obs MSE ratio':>15}{'reward MSE ratio':>18}{'corr ratio':>12}")
    for name, r in table.items():
        print(f"{name:>{width}}{r['obs_mse']:>10.3f}{r['reward_mse']:>12.4f}{r['return_difference_correlation']:>18.3f}"
              f"{r['return_noise_to_signal']:>14.3f}"
              f"{r['obs_mse'] / base['obs_mse']:>15.2f}{r['reward_mse'] / base['reward_mse']:>18.2f}"
              f"{r['return_difference_correlation'] / base['return_difference_correlation']:>12.2f}")
    report = {"command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
              "env": args.env, "seeds": seeds, "grad_steps": args.grad_steps, "real_steps": args.real_steps,
              "world_model": "cpu preset, actions scaled (H 5, width 256 x 3, lr 1e-3, 32-step chain)",
              "variants": variants, "per_seed": rows, "mean": table,
              "total_seconds": time.perf_counter() - t0}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
