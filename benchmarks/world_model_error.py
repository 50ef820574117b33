"""Open-loop trajectory error and generation cost: PolyGRAD vs autoregressive baselines.

One run, one policy, one data set:
1. A fixed stochastic SB3 PPO `MlpPolicy`, seeded and untrained, with `log_std_init=-0.5` (std 0.61,
   so few actions are clipped) and `ortho_init=False` (so its mean, of size ~0.4, depends on the
   state and guidance has something to follow).
2. Training data collected with that policy; held-out evaluation episodes with other reset seeds.
3. PolyGRAD (`fit_world_model`), the MBPO-style MLP ensemble and autoregressive (AR) diffusion, all
   trained for the same number of Adam steps of batch 256 (PolyGRAD: windows of H+1 rows; AR
   diffusion: transitions; ensemble: transitions per member). Both diffusion models share one
   denoiser size and optimiser (`Budget.diffusion_lr`); the ensemble keeps MBPO's (Adam 1e-3).
4. PolyGRAD's guidance scale is set, per chain length, to the fixed point of its own online rule (std
   of standardised actions = 1) by bisection on training start states; the rule itself moves it too
   slowly for a one-off benchmark. The unset initial scale is reported as an ablation.
5. From N held-out real start states every model generates H steps following the policy. MuJoCo is
   reset to each start state (qpos, qvel) and the generated actions, clipped, are executed open-loop;
   the table gives the MSE of observations at steps k = 1..H (environment units, averaged over
   dimensions, over trajectories that neither the simulator nor the model has ended before step k;
   `imagined_env.evaluation.open_loop_error`) and the reward MSE at step 1. `s_k=s_0` is the error of
   predicting no motion against the same real trajectories, a scale for what an error means. Every
   model samples, as a world model for RL must, except the ensemble's elite-mean row: a point
   estimate, shown because squared error favours a mean over any sample.
6. Cost, measured in the same run: wall-clock and network passes per imagined transition (a pass
   advances every trajectory of the batch by one call), FLOPs per transition (`FlopCounterMode`,
   denoiser / ensemble only, not the policy) and the floor those FLOPs take at this machine's
   measured dense matmul rate.

`--quick`: 20k real steps, 3k Adam steps per model, width 512 x 4 blocks, 200 start states (minutes on
a CPU). The full mode: 100k real steps, 20k Adam steps, the paper's width 1024 x 6 blocks, 500 start
states (hours on a CPU; almost all of it is training). Runtimes: docs/benchmarks.md.

    python benchmarks/world_model_error.py --quick
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from torch.utils.flop_counter import FlopCounterMode

from agents.sb3_guidance import sb3_guide
from agents.sb3_sampling import sb3_sampler
from imagined_env.baselines import ARDiffusionConfig, EnsembleConfig, fit_ar_diffusion, fit_mlp_ensemble
from imagined_env.baselines.mlp_ensemble import ENSEMBLE_TRAIN
from imagined_env.data.buffer import EpisodeBuffer
from imagined_env.data.collect import buffer_for_env, collect_episodes
from imagined_env.diffusion.denoiser import DenoiserConfig
from imagined_env.diffusion.guidance import GaussianPolicyFn, policy_moments
from imagined_env.evaluation import OpenLoopError, open_loop_error, real_start_obs
from imagined_env.training import TrainConfig, fit_world_model, spec_from_env
from imagined_env.utils import atomic_path, resolve_device
from imagined_env.world_model import EnvSpec, Imagination, WorldModel, WorldModelConfig

Generate = Callable[[torch.Tensor, torch.Generator], Imagination]
"""start_obs [B, obs] -> B imagined trajectories of H steps that follow the benchmark policy."""


@dataclass(frozen=True)
class Budget:
    """Sizes of one benchmark mode."""

    real_steps: int
    """Real transitions collected with the policy for training."""
    eval_steps: int
    """Real transitions of held-out episodes the start states are drawn from."""
    n_starts: int
    """Evaluated trajectories per model (the paper: 500)."""
    grad_steps: int
    """Adam steps for every model."""
    width: int
    depth: int
    """Denoiser width and residual blocks, shared by PolyGRAD and AR diffusion."""
    diffusion_lr: float
    """Adam step of both diffusion models. The paper's 3e-4 is tuned for 1.5M steps; in 3k steps it
    leaves PolyGRAD's H=10 error at 2.03 where 1e-3 (MBPO's rate) reaches 1.65 (seed 0)."""
    calibration_starts: int = 64
    """Training start states used to set the guidance scale."""


QUICK = Budget(real_steps=20_000, eval_steps=3_000, n_starts=200, grad_steps=3_000, width=512, depth=4,
               diffusion_lr=1e-3)
FULL = Budget(real_steps=100_000, eval_steps=10_000, n_starts=500, grad_steps=20_000, width=1024, depth=6,
              diffusion_lr=3e-4)


@dataclass(frozen=True)
class Variant:
    """One row of the table: how to generate, and the FLOPs of one network pass (its unit of cost)."""

    name: str
    generate: Generate
    flops_per_pass: float
    """For one trajectory (batch of 1)."""
    guidance_scale: float | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget (minutes on a CPU)")
    parser.add_argument("--horizon", type=int, default=10, help="imagined steps H")
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strided-steps", type=int, default=16, help="chain length of strided PolyGRAD")
    parser.add_argument("--out", default="benchmarks/results/world_model_error.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 0: torch's default. On a shared CPU two threads "
                             "spin against other jobs and run ~3x slower than one")
    return parser.parse_args(argv)


def collect(env_id: str, agent: PPO, n_steps: int, seed: int) -> tuple[EpisodeBuffer, dict[str, float]]:
    env = gym.make(env_id)
    buffer = buffer_for_env(env, env_id)
    stats = collect_episodes(env, buffer, n_steps, sb3_sampler(agent), seed=seed)
    env.close()
    return buffer, stats


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train_models(buffer: EpisodeBuffer, spec: EnvSpec, budget: Budget, horizon: int, seed: int,
                 device: torch.device) -> tuple[dict[str, object], dict[str, dict[str, float]]]:
    """Fit the three models on `buffer` with the same number of Adam steps; returns models and, per
    model, training seconds and the mean loss of the last 100 steps."""
    denoiser = DenoiserConfig(width=budget.width, depth=budget.depth)
    diffusion_train = TrainConfig(lr=budget.diffusion_lr, seed=seed)
    fits = {
        "polygrad": lambda: fit_world_model(buffer, spec, budget.grad_steps,
                                            WorldModelConfig(horizon=horizon, denoiser=denoiser),
                                            diffusion_train, device=device),
        "ar_diffusion": lambda: fit_ar_diffusion(buffer, spec, budget.grad_steps,
                                                 ARDiffusionConfig(denoiser=denoiser), diffusion_train,
                                                 device=device),
        "mlp_ensemble": lambda: fit_mlp_ensemble(buffer, spec, budget.grad_steps, EnsembleConfig(),
                                                 TrainConfig(**{**asdict(ENSEMBLE_TRAIN), "seed": seed}),
                                                 device=device),
    }
    models, info = {}, {}
    for name, fit in fits.items():
        (model, losses), seconds = timed(fit)
        models[name] = model
        info[name] = {"seconds": seconds, "final_loss": float(np.mean(losses[-100:]))}
        print(f"trained {name}: {seconds:.0f} s, final loss {info[name]['final_loss']:.4f}", flush=True)
    return models, info


def calibrate_guidance(model: WorldModel, starts: torch.Tensor, policy: GaussianPolicyFn,
                       n_sample_steps: int | None, seed: int, iterations: int = 8) -> tuple[float, float]:
    """Bisect log(lambda) until imagined actions have the policy's spread (standardised std = target).

    Larger lambda pulls actions harder toward the policy mean, so the spread falls with lambda up to
    lambda = std^2, beyond which one guidance step overshoots the mean: that is the upper end.
    Returns (lambda, spread at lambda); the model keeps lambda.
    """
    _, std = policy_moments(policy, starts, model.config.guidance.std_floor)
    lo, hi = math.log(1e-4), 2.0 * math.log(float(std.min()))
    target = model.config.guidance.target_std
    for _ in range(iterations):
        model.log_guidance_scale = 0.5 * (lo + hi)
        out = model.imagine(starts, policy, generator=torch.Generator(model.device).manual_seed(seed),
                            n_sample_steps=n_sample_steps)
        lo, hi = (model.log_guidance_scale, hi) if out.spread > target else (lo, model.log_guidance_scale)
    model.log_guidance_scale = 0.5 * (lo + hi)
    out = model.imagine(starts, policy, generator=torch.Generator(model.device).manual_seed(seed),
                        n_sample_steps=n_sample_steps)
    return model.guidance_scale, out.spread


def polygrad_generate(model: WorldModel, policy: GaussianPolicyFn, n_sample_steps: int | None,
                      log_scale: float) -> Generate:
    def generate(starts: torch.Tensor, generator: torch.Generator) -> Imagination:
        model.log_guidance_scale = log_scale
        return model.imagine(starts, policy, generator=generator, n_sample_steps=n_sample_steps)

    return generate


def flops(call: Callable[..., object], *inputs: object) -> float:
    """FLOPs of `call(*inputs)`, e.g. one network pass or a whole generation (multiply-adds count 2), as
    counted by torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call(*inputs)
    return float(counter.get_total_flops())


def build_variants(models: dict[str, object], spec: EnvSpec, policy: GaussianPolicyFn, horizon: int,
                   strided: int, calibration: torch.Tensor, seed: int) -> list[Variant]:
    """The table's rows, with PolyGRAD's guidance scale set per chain length."""
    wm, ar, ens = models["polygrad"], models["ar_diffusion"], models["mlp_ensemble"]
    dev, rows, T = wm.device, horizon + 1, wm.schedule.n_steps
    one = lambda *shape: torch.zeros(*shape, device=dev)
    step0 = torch.zeros(1, dtype=torch.long, device=dev)
    wm_flops = flops(wm.ema, one(1, rows, spec.obs_dim + 2), one(1, rows, spec.act_dim), step0)
    ar_flops = flops(ar.ema, one(1, 1, spec.obs_dim + 2), one(1, 1, spec.obs_dim + spec.act_dim), step0)
    ens_flops = flops(ens.net, one(ens.config.n_members, 1, spec.obs_dim + spec.act_dim))
    initial = math.log(wm.config.guidance.initial_scale)
    variants = []
    for name, n_steps in ((f"PolyGRAD full T={T}", None), (f"PolyGRAD strided {strided}", strided)):
        scale, spread = calibrate_guidance(wm, calibration, policy, n_steps, seed)
        print(f"{name}: guidance scale {scale:.4g} (calibration spread {spread:.3f})", flush=True)
        variants.append(Variant(name, polygrad_generate(wm, policy, n_steps, math.log(scale)), wm_flops,
                                scale))
    variants.append(Variant(f"PolyGRAD full, initial lambda {math.exp(initial):g}",
                            polygrad_generate(wm, policy, None, initial), wm_flops, math.exp(initial)))
    variants.append(Variant(f"AR diffusion T={T}/step", lambda s, g: ar.rollout(s, policy, horizon, g),
                            ar_flops))
    variants.append(Variant("MLP ensemble (MBPO)", lambda s, g: ens.rollout(s, policy, horizon, g),
                            ens_flops))
    variants.append(Variant("MLP ensemble, elite mean (no sampling)",
                            lambda s, g: ens.rollout(s, policy, horizon, g, deterministic=True),
                            ens_flops))
    return variants


def trajectory_errors(imagined: Imagination, error: OpenLoopError) -> dict[str, object]:
    """Per-step observation MSE (k = 1..H), step-1 reward MSE, the no-motion reference (averaged over
    every compared (trajectory, step), so weighted by `n_valid`), and how on-policy the generated actions
    were (spread)."""
    seen = error.n_valid > 0
    return {"obs_mse_per_step": error.obs_mse.tolist(), "obs_mse_mean": float(np.mean(error.obs_mse)),
            "reward_mse_step1": float(error.reward_mse[0]),
            "reward_mse_mean": float(np.mean(error.reward_mse)),
            "no_motion_ref_mean": float(np.average(error.no_motion_mse[seen], weights=error.n_valid[seen])),
            "action_spread": imagined.spread}


def evaluate(variant: Variant, env: gym.Env, starts: tuple[np.ndarray, np.ndarray, np.ndarray],
             horizon: int, seed: int, device: torch.device) -> dict[str, object]:
    """Generate from every start state (timed; its FLOPs counted on an untimed repeat), replay open-loop,
    score. Network calls are in passes of one trajectory (the generation's FLOPs over `flops_per_pass`), so
    a read-out fed token by token counts the part of a pass it computes."""
    obs0 = torch.as_tensor(starts[0], dtype=torch.float32, device=device)
    variant.generate(obs0[:8], torch.Generator(device).manual_seed(seed))  # warm-up: allocations, caches
    imagined, seconds = timed(lambda: variant.generate(obs0, torch.Generator(device).manual_seed(seed)))
    generation_flops = flops(variant.generate, obs0, torch.Generator(device).manual_seed(seed))
    transitions = len(obs0) * horizon
    calls = generation_flops / variant.flops_per_pass / len(obs0)
    result = trajectory_errors(imagined, open_loop_error(env, imagined, starts[1], starts[2]))
    result.update({
        "guidance_scale": variant.guidance_scale,
        "generation_seconds": seconds,
        "seconds_per_transition": seconds / transitions,
        "network_calls": calls,
        "network_calls_per_transition": calls / horizon,
        "flops_per_transition": generation_flops / transitions,
        "start_obs_max_abs_diff": float(np.abs(real_start_obs(env, starts[1], starts[2]) - starts[0]).max()),
    })
    return result


def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Dense float32 matmul rate of this machine now: the best of `repeats` timed products."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    best = math.inf
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def format_tables(results: dict[str, dict[str, object]], horizon: int, flops_rate: float) -> str:
    ks = sorted({1, 2, max(1, horizon // 2), horizon})
    head = "".join(f"{'k=' + str(k):>9}" for k in ks)
    lines = [f"Open-loop observation MSE at step k (env units), mean over k=1..{horizon}, reward MSE at k=1",
             f"{'model':<40}{head}{'mean':>9}{'rew k=1':>9}{'spread':>8}{'s_k=s_0':>9}"]
    for name, r in results.items():
        steps = "".join(f"{r['obs_mse_per_step'][k - 1]:9.3f}" for k in ks)
        lines.append(f"{name:<40}{steps}{r['obs_mse_mean']:9.3f}{r['reward_mse_step1']:9.3f}"
                     f"{r['action_spread']:8.3f}{r['no_motion_ref_mean']:9.3f}")
    lines += ["", f"Cost per imagined transition (matmul rate measured: {flops_rate / 1e9:.1f} GFLOP/s)",
              f"{'model':<40}{'ms':>9}{'passes':>9}{'MFLOP':>9}{'floor ms':>10}{'x floor':>9}"]
    for name, r in results.items():
        floor = r["flops_per_transition"] / flops_rate
        lines.append(f"{name:<40}{1e3 * r['seconds_per_transition']:9.3f}"
                     f"{r['network_calls_per_transition']:9.2f}"
                     f"{r['flops_per_transition'] / 1e6:9.2f}{1e3 * floor:10.4f}"
                     f"{r['seconds_per_transition'] / floor:9.1f}")
    return "\n".join(lines)


def cost_ratios(results: dict[str, dict[str, object]]) -> dict[str, dict[str, float]]:
    """AR diffusion over each PolyGRAD chain (calibrated rows), per imagined transition."""
    ar = next(r for name, r in results.items() if name.startswith("AR diffusion"))
    keys = ("seconds_per_transition", "network_calls_per_transition", "flops_per_transition")
    return {name: {k: ar[k] / r[k] for k in keys} for name, r in results.items()
            if name.startswith("PolyGRAD") and "initial" not in name}


@dataclass
class FixedPolicyData:
    """The benchmarks' shared setup: one seeded, untrained stochastic PPO policy and the training and
    held-out real data it collects."""

    env: gym.Env
    spec: EnvSpec
    policy: GaussianPolicyFn
    train_buffer: EpisodeBuffer
    eval_buffer: EpisodeBuffer
    train_stats: dict[str, object]
    eval_stats: dict[str, object]


def fixed_policy_data(env_id: str, seed: int, real_steps: int, eval_steps: int, t0: float) -> FixedPolicyData:
    env = gym.make(env_id)
    env.reset(seed=seed)
    agent = PPO("MlpPolicy", gym.make(env_id), seed=seed, device="cpu",
                policy_kwargs={"log_std_init": -0.5, "ortho_init": False})
    agent.policy.set_training_mode(False)
    train_buffer, train_stats = collect(env_id, agent, real_steps, seed)
    eval_buffer, eval_stats = collect(env_id, agent, eval_steps, seed + 10_000)
    print(f"collected {train_buffer.n_transitions} training and {eval_buffer.n_transitions} held-out "
          f"transitions ({time.perf_counter() - t0:.0f} s)", flush=True)
    return FixedPolicyData(env, spec_from_env(env, env_id), sb3_guide(agent.policy), train_buffer,
                           eval_buffer, train_stats, eval_stats)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    budget, device, t0 = (QUICK if args.quick else FULL), resolve_device(args.device), time.perf_counter()
    data = fixed_policy_data(args.env, args.seed, budget.real_steps, budget.eval_steps, t0)
    env, spec, policy = data.env, data.spec, data.policy
    train_buffer, eval_buffer = data.train_buffer, data.eval_buffer
    train_stats, eval_stats = data.train_stats, data.eval_stats
    models, training = train_models(train_buffer, spec, budget, args.horizon, args.seed, device)
    rng = np.random.default_rng(args.seed)
    calibration = torch.as_tensor(train_buffer.start_states(rng, budget.calibration_starts)[0], device=device)
    variants = build_variants(models, spec, policy, args.horizon, args.strided_steps, calibration, args.seed)
    starts = eval_buffer.start_states(rng, budget.n_starts)
    results = {v.name: evaluate(v, env, starts, args.horizon, args.seed, device) for v in variants}
    rate = matmul_flops_per_second(device)
    print(format_tables(results, args.horizon, rate))
    ratios = cost_ratios(results)
    for name, r in ratios.items():
        print(f"AR diffusion / {name}: wall-clock x{r['seconds_per_transition']:.1f}, "
              f"passes x{r['network_calls_per_transition']:.1f}, FLOPs x{r['flops_per_transition']:.1f}")
    report = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
        "env": args.env, "horizon": args.horizon, "seed": args.seed,
        "mode": "quick" if args.quick else "full",
        "device": str(device), "torch_threads": torch.get_num_threads(), "budget": asdict(budget),
        "policy": "SB3 PPO MlpPolicy, untrained, seeded; log_std_init=-0.5, ortho_init=False",
        "data": {"train": train_stats, "eval": eval_stats}, "training": training,
        "matmul_flops_per_second": rate, "results": results, "ar_over_polygrad": ratios,
        "total_seconds": time.perf_counter() - t0,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} (total {report['total_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
