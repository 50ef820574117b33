"""Named presets of `CoordinatorConfig`: each maps to the fields it sets over the defaults."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagined_env.training import TrainConfig
from imagined_env.world_model import WorldModelConfig


def _paper_preset() -> dict[str, Any]:
    """The paper's code runs a one-gradient-step actor-critic per imagined batch (Adam, grad clip 0.1,
    normalised advantages, entropy 1e-5, initial std 1): SB3's A2C with Adam is the closest learner."""
    return {"prefill_steps": 5000, "initial_world_model_steps": 1000, "world_model_steps_per_real_step": 1.0,
            "policy_every": 4, "learning_starts": 0, "n_imagined_envs": 1024, "n_sample_steps": None,
            "normalize": False, "eval_every": 10_000, "eval_episodes": 20, "checkpoint_every": 50_000,
            "world_model": WorldModelConfig(), "train": TrainConfig(), "algo": "a2c",
            "learner_kwargs": {"gamma": 0.99, "gae_lambda": 0.9, "learning_rate": 3e-4, "ent_coef": 1e-5,
                               "max_grad_norm": 0.1, "normalize_advantage": True, "use_rms_prop": False}}


def _cpu_preset() -> dict[str, Any]:
    """The field defaults, measured on HalfCheetah-v4 on 2 shared CPU cores (README, section 4): 50k real
    steps in ~25 min with three runs sharing the cores (~40 min with six); deterministic return 2197.1 /
    1269.4 / 1590.0 / 1005.9 / 1234.7 / 1230.4 / 1025.8 / 1115.2 (seeds 0-7) at 50k, mean 1333.6 (1685.5
    over seeds 0-2, above the Zoo's tuned PPO's 1591.2; over eight seeds below its 1466.6).

    Why these values: with MuJoCo itself as the model the same loop reaches ~3500 by 25k steps, so the
    world model is the bottleneck. A 0.35M-parameter residual MLP (width 256, depth 3) trains at ~10-15
    ms/step and width 512 was no more faithful per second of CPU. Actions enter the denoiser at full
    strength (`scale_actions=False`: 29% less state error, 31% better action ranking than the paper's
    sqrt(alpha_bar_t) scaling, benchmarks/world_model_variants.py). A short horizon (H = 5: within-state
    correlation of imagined and real returns 0.43 vs 0.22 at H = 10), so each update imagines 1024 x 5
    steps; 16 strided passes of the 128-step chain are as faithful as 32 or 128 and leave CPU for the
    paper's 1 world-model step per real step after 4k initial ones, at lr 1e-3 (half the open-loop
    error of 3e-4 after 2k steps). PPO every 250 real steps (180 updates), 5 epochs of minibatch 256,
    target_kl 0.1 (without it the Gaussian's mean drifts far outside the action bounds in imagination
    and PPO diverged), initial std 1 as the paper. The guidance scale adapts at the paper's rate per
    real step (0.2 per imagination ~ its 3e-3 x the 62.5x fewer imaginations): at 0.03 it lagged the
    shrinking policy std, the imagined actions kept only 0.5-0.7 of the policy's spread and the std
    collapsed to ~0.2 (seed mean 1104.1 at 50k, against 1337.8 at 0.2). The last row's action is hidden
    from the denoiser (`condition_on_last_action=False`): it reveals the last state in a policy's data,
    and the model's imagined returns varied with it; hidden, their sampling noise falls by 43% and the
    eight-seed mean at 50k rose from 1197.7 to 1312.9. An entropy bonus of 0.03 keeps the policy's std
    near 0.7 at 50k instead of 0.33. The model ranks large action changes far better than small ones,
    so we read it as keeping the policy's trials within what the model resolves; a lower initial std
    (0.37 or 0.14) ended at 786 and 453 over seeds 0-2. With it the seed spread fell from
    622 to 368 and the curve still climbs at 50k, though it trails the previous preset from 20k to 40k.
    """
    return {}


_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"cpu": _cpu_preset, "paper": _paper_preset}

