"""What the learner sees: the world model a preset trains, against other world models on the same data,
by open-loop error and by how well imagined returns rank the policy's own actions.

One run, one policy, one data set:
1. The fixed stochastic policy of `world_model_error.py` (an untrained, seeded SB3 PPO `MlpPolicy`,
   `log_std_init=-0.5`, `ortho_init=False`) collects training episodes and held-out episodes.
2. Models, each trained for the same number of Adam steps of batch 256 on the same data:
   - the preset's world model (`--preset`, default the newest cpu preset) with its optimiser and chain
     length, read out from the chain and with `readout="mean"` (the same weights), a causal denoiser also
     with `readout="rollout"`;
   - the paper preset's world model at the same horizon (so every H-step return is comparable) with its
     optimiser and full chain; in quick mode at the preset's width (256 x 3 blocks), as the paper's
     size does not train in minutes on a shared CPU; also read out both ways;
   - the preset's world model as an ensemble of `--members` denoisers, read out as their mean;
   - autoregressive (AR) diffusion with the preset's optimiser and chain length per step, and its
     denoiser if that is not causal, else a residual MLP of 256 x 3 blocks (`ar_denoiser`);
   - the MBPO-style MLP ensemble (MBPO's optimiser), sampled (a random elite per step) and as the
     elites' mean.
3. Guided open-loop error (`imagined_env.evaluation.open_loop_error`): from held-out real states
   every model imagines H steps following the policy (the diffusion models' guidance scale set to
   its online rule's fixed point by bisection, as `world_model_error.py` does), MuJoCo replays the
   imagined actions; observation and reward MSE averaged over k = 1..H.
4. Ranking (`imagined_env.evaluation.action_ranking`): from the same real states the policy's own
   action sequences a are sampled step by step in MuJoCo; the models replay a and clip(a + N(0,
   sigma^2)), sigma 0.1 and 0.3, with independent model noise (as the learner sees returns) and with
   common noise; the correlation with MuJoCo's return differences, the noise/signal ratio and the leak.
5. Cost per imagined transition of the guided generation: wall-clock, network passes, FLOPs.
6. For the ensemble: the correlation of its members' disagreement with its real open-loop error, the
   policy's actions replayed from the same real states.
Ratios are against the preset's row (chain read-out) of the same run.

`--quick`: 20k real steps, 4k Adam steps, 200 start states, 3 ensemble members (minutes on a CPU). The
full mode: 100k real steps, 20k Adam steps, the paper's width for its row, 500 start states, 5 members.

    python benchmarks/world_model_ranking.py --quick
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import gymnasium as gym
import numpy as np
import torch
from world_model_error import (
    Variant,
    calibrate_guidance,
    evaluate,
    fixed_policy_data,
    flops,
    matmul_flops_per_second,
    polygrad_generate,
    timed,
)

from agents.presets import build_preset, resolve
from imagined_env.baselines import (
    ARDiffusionConfig,
    EnsembleConfig,
    StepwiseImaginer,
    fit_ar_diffusion,
    fit_mlp_ensemble,
)
from imagined_env.baselines.mlp_ensemble import ENSEMBLE_TRAIN
from imagined_env.data.collect import set_mujoco_state
from imagined_env.diffusion.denoiser import CAUSAL_KINDS, DenoiserConfig
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.diffusion.schedule import SamplerConfig
from imagined_env.evaluation import action_ranking
from imagined_env.training import fit_world_model
from imagined_env.utils import atomic_path, resolve_device
from imagined_env.world_model import WorldModel

SIGMAS = (0.1, 0.3)


@dataclass(frozen=True)
class Budget:
    """Sizes of one benchmark mode."""

    real_steps: int
    """Real transitions collected with the policy for training."""
    eval_steps: int
    """Real transitions of held-out episodes the start states are drawn from."""
    n_starts: int
    """Held-out start states, for the open-loop error and the ranking."""
    grad_steps: int
    """Adam steps for every model."""
    paper_denoiser: DenoiserConfig | None
    """The paper row's denoiser; None: the paper preset's own."""
    members: int
    """Denoisers of the ensemble row (< 2: no such row), unless `--members` says otherwise."""
    calibration_starts: int = 64
    """Training start states used to set the guidance scale."""


QUICK = Budget(real_steps=20_000, eval_steps=3_000, n_starts=200, grad_steps=4_000,
               paper_denoiser=DenoiserConfig(width=256, depth=3, time_dim=64), members=3)
FULL = Budget(real_steps=100_000, eval_steps=10_000, n_starts=500, grad_steps=20_000, paper_denoiser=None,
              members=5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget (minutes on a CPU)")
    parser.add_argument("--preset", default="cpu", help="the preset whose world model is measured")
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper preset's rows")
    parser.add_argument("--members", type=int, default=None,
                        help="denoisers of the ensemble row (< 2: no such row; default: the mode's)")
    parser.add_argument("--denoiser", action="append", default=[], metavar="KIND:WIDTHxDEPTH",
                        help="an extra row: the preset's world model with this denoiser, e.g. "
                        "causal-transformer:128x3 (repeatable)")
    parser.add_argument("--out", default=None, help="JSON report (default: benchmarks/results/"
                        "world_model_ranking/ENV/MODE_seed-SEED.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 0: torch's default (on a shared CPU, 1 is fastest)")
    return parser.parse_args(argv)


def parse_denoiser(text: str, base: DenoiserConfig) -> DenoiserConfig:
    """'causal-transformer:128x3' -> the base denoiser with that kind, width and depth."""
    try:
        kind, size = text.split(":")
        width, depth = (int(v) for v in size.split("x"))
    except ValueError:
        raise SystemExit(f"--denoiser must look like KIND:WIDTHxDEPTH (e.g. causal-transformer:128x3), "
                         f"got {text!r}") from None
    return replace(base, kind=kind, width=width, depth=depth)


def ar_denoiser(preset: DenoiserConfig) -> DenoiserConfig:
    """The denoiser of the AR diffusion row beside a preset's: the same when it is not causal, else the
    residual MLP of 256 x 3 blocks with its time embedding (a causal one cannot model one transition)."""
    if preset.kind not in CAUSAL_KINDS:
        return preset
    return replace(preset, kind="mlp", width=256, depth=3, dropout=0.0)


def with_readout(model: WorldModel, readout: str) -> WorldModel:
    """The same trained weights, normaliser and guidance scale, read out another way."""
    other = WorldModel(model.spec, replace(model.config, readout=readout), model.normaliser, model.device)
    other.denoiser, other.ema, other.log_guidance_scale = model.denoiser, model.ema, model.log_guidance_scale
    return other


@dataclass(frozen=True)
class PolicyRollouts:
    """The policy's own actions [B, H, act] from real states and what MuJoCo made of them: next
    observations [B, H, obs], and valid [B, H]: steps before any real termination."""

    actions: np.ndarray
    next_obs: np.ndarray
    valid: np.ndarray


def policy_rollouts(env: gym.Env, policy: GaussianPolicyFn, qpos: np.ndarray, qvel: np.ndarray, horizon: int,
                    rng: np.random.Generator) -> PolicyRollouts:
    """Actions sampled step by step in MuJoCo from each real state (after a termination, from the last
    observation, not stepped)."""
    sim, low, high = env.unwrapped, env.action_space.low, env.action_space.high
    batch, obs_dim = len(qpos), env.observation_space.shape[0]
    actions = np.zeros((batch, horizon, env.action_space.shape[0]), np.float32)
    next_obs, valid = np.zeros((batch, horizon, obs_dim), np.float32), np.zeros((batch, horizon), bool)
    for b in range(batch):
        obs, ended = set_mujoco_state(env, qpos[b], qvel[b]), False
        for k in range(horizon):
            with torch.no_grad():
                mean, std = (v[0].numpy() for v in policy(torch.as_tensor(obs, dtype=torch.float32)[None]))
            actions[b, k] = mean + std * rng.standard_normal(mean.shape)
            valid[b, k] = not ended
            if not ended:
                obs, _, ended, _, _ = sim.step(np.clip(actions[b, k], low, high))
            next_obs[b, k] = obs
    return PolicyRollouts(actions, next_obs, valid)


def disagreement_vs_error(model: WorldModel, starts: np.ndarray, rollouts: PolicyRollouts
                          ) -> dict[str, float]:
    """Does an ensemble's disagreement u track its real open-loop error? The policy's actions replayed from
    real start observations [B, obs]; Pearson correlation of u with the squared observation error over
    (trajectory, step), and Pearson and Spearman over trajectories of their means over steps."""
    out = model.imagine(starts, actions=rollouts.actions)
    error = ((out.observations[:, 1:].cpu().numpy() - rollouts.next_obs) ** 2).mean(axis=-1)
    u, keep = out.disagreement.cpu().numpy(), rollouts.valid
    full = keep.all(axis=1)
    rank = lambda v: np.argsort(np.argsort(v))
    per_u, per_error = u[full].mean(axis=1), error[full].mean(axis=1)
    return {"pearson_steps": float(np.corrcoef(u[keep], error[keep])[0, 1]),
            "pearson_trajectories": float(np.corrcoef(per_u, per_error)[0, 1]),
            "spearman_trajectories": float(np.corrcoef(rank(per_u), rank(per_error))[0, 1]),
            "mean_disagreement": float(u[keep].mean())}


@dataclass(frozen=True)
class Row:
    """One model of the table: its guided generation (for the open-loop error and the cost) and its
    `imagine` (for the ranking)."""

    variant: Variant
    imaginer: object
    """A `WorldModel` or `StepwiseImaginer`."""
    n_sample_steps: int | None = None
    """The chain length the imaginer replays actions with (None: its own)."""


def train_and_build_rows(args: argparse.Namespace, budget: Budget, train_buffer, spec, policy,
                         calibration: torch.Tensor, device: torch.device
                         ) -> tuple[list[Row], dict[str, dict[str, float]], int]:
    """Fit every model on `train_buffer` for `budget.grad_steps`; the table's rows in order, training
    seconds and final loss per model, and the horizon."""
    preset = build_preset(args.preset, args.env)
    horizon, chain = preset.world_model.horizon, preset.n_sample_steps
    paper = build_preset("paper", args.env)
    paper_wm = replace(paper.world_model, horizon=horizon,
                       denoiser=budget.paper_denoiser or paper.world_model.denoiser)
    n_members = budget.members if args.members is None else args.members
    ensemble_wm = replace(preset.world_model, n_members=max(n_members, 1), readout="mean")
    quiet = {"device": device, "progress": False}
    fits = {
        "preset": lambda: fit_world_model(train_buffer, spec, budget.grad_steps, preset.world_model,
                                          replace(preset.train, seed=args.seed), **quiet),
        "ar_diffusion": lambda: fit_ar_diffusion(
            train_buffer, spec, budget.grad_steps,
            ARDiffusionConfig(denoiser=ar_denoiser(preset.world_model.denoiser),
                              schedule=preset.world_model.schedule,
                              sampler=SamplerConfig(n_sample_steps=chain)),
            replace(preset.train, seed=args.seed), **quiet),
        "mlp_ensemble": lambda: fit_mlp_ensemble(train_buffer, spec, budget.grad_steps, EnsembleConfig(),
                                                 replace(ENSEMBLE_TRAIN, seed=args.seed), **quiet),
    }
    if not args.no_paper:
        fits["paper"] = lambda: fit_world_model(train_buffer, spec, budget.grad_steps, paper_wm,
                                                replace(paper.train, seed=args.seed), **quiet)
    for spec_text in args.denoiser:
        wm = replace(preset.world_model, denoiser=parse_denoiser(spec_text, preset.world_model.denoiser))
        fits[f"denoiser {spec_text}"] = (lambda wm=wm: fit_world_model(
            train_buffer, spec, budget.grad_steps, wm, replace(preset.train, seed=args.seed), **quiet))
    if n_members > 1:
        fits["ensemble"] = lambda: fit_world_model(train_buffer, spec, budget.grad_steps, ensemble_wm,
                                                   replace(preset.train, seed=args.seed), **quiet)
    models, training = {}, {}
    for name, fit in fits.items():
        (model, losses), seconds = timed(fit)
        models[name] = model
        training[name] = {"seconds": seconds, "final_loss": float(np.mean(losses[-100:]))}
        print(f"trained {name}: {seconds:.0f} s, final loss {training[name]['final_loss']:.4f}", flush=True)

    dev, one = device, lambda *shape: torch.zeros(*shape, device=device)
    step0 = torch.zeros(1, dtype=torch.long, device=dev)
    rows: list[Row] = []

    def diffusion_rows(label: str, wm: WorldModel, n_steps: int | None,
                       readouts: tuple[str, ...] | None = None) -> None:
        if readouts is None:
            causal = wm.config.denoiser.kind in CAUSAL_KINDS
            readouts = ("chain", "mean", "rollout") if causal else ("chain", "mean")
        # a rollout draws no guided chain, so its scale is set on the same weights read out by their mean
        guided = with_readout(wm, "mean") if wm.config.readout == "rollout" else wm
        scale, spread = calibrate_guidance(guided, calibration, policy, n_steps, args.seed)
        print(f"{label}: guidance scale {scale:.4g} (calibration spread {spread:.3f})", flush=True)
        wm_flops = flops(wm.ema, one(1, wm.n_rows, spec.obs_dim + 2), one(1, wm.n_rows, spec.act_dim), step0)
        chain_name = f"{n_steps}-step chain" if n_steps else f"full T={wm.schedule.n_steps} chain"
        for readout in readouts:
            model = wm if wm.config.readout == readout else with_readout(wm, readout)
            rows.append(Row(Variant(f"{label} ({chain_name}, read-out {readout})",
                                    polygrad_generate(model, policy, n_steps, math.log(scale)), wm_flops,
                                    scale), model, n_steps))

    diffusion_rows(resolve(args.preset), models["preset"], chain)
    if "paper" in models:
        width = paper_wm.denoiser
        # the paper feeds actions scaled by the noise level, so the mean read-out would be blind to them
        diffusion_rows(f"{resolve('paper')} {width.width}x{width.depth}", models["paper"], None, ("chain",))
    for spec_text in args.denoiser:
        diffusion_rows(f"{resolve(args.preset)} {spec_text}", models[f"denoiser {spec_text}"], chain)
    if "ensemble" in models:
        diffusion_rows(f"{resolve(args.preset)} x{n_members} members", models["ensemble"], chain,
                       ("mean",))
    ar = models["ar_diffusion"]
    ar_flops = flops(ar.ema, one(1, 1, spec.obs_dim + 2), one(1, 1, spec.obs_dim + spec.act_dim), step0)
    rows.append(Row(Variant(f"AR diffusion ({chain}-step chain a step)",
                            lambda s, g: ar.rollout(s, policy, horizon, g), ar_flops),
                    StepwiseImaginer(lambda s, a, g: ar.step(s, a, g), spec, horizon, dev)))
    ens = models["mlp_ensemble"]
    ens_flops = flops(ens.net, one(ens.config.n_members, 1, spec.obs_dim + spec.act_dim))
    for deterministic, label in ((False, "MLP ensemble (MBPO, sampled)"), (True, "MLP ensemble, elite mean")):
        rows.append(Row(Variant(label, lambda s, g, d=deterministic: ens.rollout(s, policy, horizon, g, d),
                                ens_flops),
                        StepwiseImaginer(lambda s, a, g, d=deterministic: ens.step(s, a, g, d), spec, horizon,
                                         dev)))
    return rows, training, horizon


def measure(row: Row, env: gym.Env, starts: tuple[np.ndarray, np.ndarray, np.ndarray], actions: np.ndarray,
            horizon: int, seed: int, device: torch.device) -> dict[str, object]:
    """Open-loop error and cost of the guided generation, then the ranking of the policy's actions."""
    result = evaluate(row.variant, env, starts, horizon, seed, device)
    ranking, seconds = timed(lambda: action_ranking(env, row.imaginer, starts[1], starts[2], actions,
                                                    np.random.default_rng(seed + 1), sigmas=SIGMAS, seed=seed,
                                                    n_sample_steps=row.n_sample_steps))
    result.update({f"ranking_{s:g}": ranking.ranking_independent[s] for s in SIGMAS})
    result.update({f"ranking_{s:g}_common": ranking.ranking_common[s] for s in SIGMAS})
    result.update({"noise_to_signal": ranking.noise_to_signal, "leak": ranking.leak,
                   "ranking_seconds": seconds})
    return result


COLUMNS = (("obs_mse_mean", "obs MSE", "9.3f"), ("reward_mse_mean", "rew MSE", "9.3f"),
           ("ranking_0.1", "rank.1", "8.2f"), ("ranking_0.1_common", "crn.1", "8.2f"),
           ("ranking_0.3", "rank.3", "8.2f"), ("ranking_0.3_common", "crn.3", "8.2f"),
           ("noise_to_signal", "N/S", "7.2f"), ("leak", "leak", "7.2f"),
           ("seconds_per_transition", "ms/tr", "8.3f"), ("network_calls_per_transition", "passes", "8.1f"),
           ("flops_per_transition", "MFLOP", "8.1f"))
SCALE = {"seconds_per_transition": 1e3, "flops_per_transition": 1e-6}


def format_table(results: dict[str, dict[str, object]], horizon: int) -> str:
    width = max(len(n) for n in results) + 2
    title = (f"Open-loop MSE (k = 1..{horizon}), ranking of the policy's actions at sigma 0.1 / 0.3 "
             "(rank: independent model noise, crn: common), noise/signal, leak, cost per transition")
    lines = [title,
             f"{'model':<{width}}" + "".join(f"{head:>{int(fmt.split('.')[0])}}" for _, head, fmt in COLUMNS)]
    for name, r in results.items():
        lines.append(f"{name:<{width}}" + "".join(format(SCALE.get(k, 1.0) * float(r[k]), fmt)
                                                  for k, _, fmt in COLUMNS))
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, object]], reference: str) -> dict[str, dict[str, float]]:
    """Every row's figures over the reference row's."""
    ref = results[reference]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {name: {k: float(np.float64(r[k]) / np.float64(ref[k])) for k, _, _ in COLUMNS}
                for name, r in results.items()}


def bars(results: dict[str, dict[str, object]], preset: str) -> dict[str, object]:
    """The acceptance bars, for each read-out of the preset's model."""
    chain = next(r for n, r in results.items() if n.startswith(preset) and n.endswith("read-out chain)"))
    ar = next(r for n, r in results.items() if n.startswith("AR diffusion"))
    out = {}
    for name, r in results.items():
        if name.startswith(preset):
            out[name] = {"ranking_0.1 >= AR diffusion's": r["ranking_0.1"] >= ar["ranking_0.1"],
                         "noise_to_signal <= 0.3": r["noise_to_signal"] <= 0.3,
                         "obs MSE <= chain read-out's": r["obs_mse_mean"] <= chain["obs_mse_mean"]}
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    budget, device, t0 = (QUICK if args.quick else FULL), resolve_device(args.device), time.perf_counter()
    data = fixed_policy_data(args.env, args.seed, budget.real_steps, budget.eval_steps, t0)
    env, spec, policy = data.env, data.spec, data.policy
    train_buffer, eval_buffer = data.train_buffer, data.eval_buffer
    train_stats, eval_stats = data.train_stats, data.eval_stats
    rng = np.random.default_rng(args.seed)
    calibration = torch.as_tensor(train_buffer.start_states(rng, budget.calibration_starts)[0], device=device)
    rows, training, horizon = train_and_build_rows(args, budget, train_buffer, spec, policy, calibration,
                                                   device)
    starts = eval_buffer.start_states(rng, budget.n_starts)
    rollouts = policy_rollouts(env, policy, starts[1], starts[2], horizon, np.random.default_rng(args.seed))
    results = {}
    for row in rows:
        results[row.variant.name] = measure(row, env, starts, rollouts.actions, horizon, args.seed, device)
        if isinstance(row.imaginer, WorldModel) and row.imaginer.config.n_members > 1:
            results[row.variant.name]["disagreement_vs_error"] = disagreement_vs_error(
                row.imaginer, starts[0], rollouts)
        print(f"measured {row.variant.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(format_table(results, horizon))
    for name, r in results.items():
        if "disagreement_vs_error" in r:
            print(f"{name}: disagreement vs real open-loop error: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["disagreement_vs_error"].items()))
    reference = rows[0].variant.name
    preset_id = resolve(args.preset)
    report = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
        "env": args.env, "preset": preset_id, "horizon": horizon, "seed": args.seed,
        "mode": "quick" if args.quick else "full", "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "budget": asdict(budget), "sigmas": list(SIGMAS),
        "policy": "SB3 PPO MlpPolicy, untrained, seeded; log_std_init=-0.5, ortho_init=False",
        "data": {"train": train_stats, "eval": eval_stats}, "training": training,
        "matmul_flops_per_second": matmul_flops_per_second(device), "results": results,
        "ratio_to": reference, "ratios": ratios(results, reference), "bars": bars(results, preset_id),
        "total_seconds": time.perf_counter() - t0,
    }
    for name, checks in report["bars"].items():
        print(f"bars, {name}: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    out = args.out or (f"benchmarks/results/world_model_ranking/{args.env}/"
                       f"{report['mode']}_seed-{args.seed}.json")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} (total {report['total_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
