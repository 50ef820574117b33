"""Autoregressive world models that PolyGRAD is measured against, trained on the same `EpisodeBuffer`.

Each returns the `Imagination` of `WorldModel.imagine`, so a benchmark treats all models alike:
- `MLPEnsemble`: MBPO-style probabilistic MLP ensemble, one network call per imagined step
  (`EnsembleTrainer` refits it as a buffer grows);
- `ARDiffusion`: the PolyGRAD denoiser family on single transitions, one full chain per step;
- `StepwiseImaginer`: either one behind `WorldModel.imagine`'s interface (replay of given actions included).
"""
from imagined_env.baselines.autoregressive_diffusion import ARDiffusion, ARDiffusionConfig, fit_ar_diffusion
from imagined_env.baselines.common import StepwiseImaginer
from imagined_env.baselines.mlp_ensemble import (
    EnsembleConfig,
    EnsembleTrainer,
    MLPEnsemble,
    fit_mlp_ensemble,
    new_mlp_ensemble,
)

__all__ = [
    "ARDiffusion",
    "ARDiffusionConfig",
    "EnsembleConfig",
    "EnsembleTrainer",
    "MLPEnsemble",
    "StepwiseImaginer",
    "fit_ar_diffusion",
    "fit_mlp_ensemble",
    "new_mlp_ensemble",
]
