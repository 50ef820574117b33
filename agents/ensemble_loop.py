"""The imagination loop with an MBPO-style MLP ensemble in place of PolyGRAD: a reference for what the
standard one-step model gives the same learner, from the same real data, schedules and start states.

`EnsembleCoordinator` is the coordinator with `EnsembleModel`: the ensemble is refitted at the config's
world-model steps per real step (`EnsembleTrainer`, MBPO's optimiser and elites), and each imagined row's
action is drawn from the policy's Gaussian at the model's own state, the next state being the elites' mean
prediction (a point estimate: the ensemble's lowest-error read-out, `world_model_ranking.py`).
"""
from __future__ import annotations

import numpy as np
import torch

from agents.coordinator import UnsavedCoordinator
from imagined_env.baselines.common import StepwiseImaginer, UnguidedModel, checked_start
from imagined_env.baselines.mlp_ensemble import EnsembleConfig, EnsembleTrainer, MLPEnsemble, new_mlp_ensemble
from imagined_env.diffusion.guidance import GaussianPolicyFn
from imagined_env.world_model import Imagination

ENSEMBLE = EnsembleConfig()
"""MBPO's MuJoCo ensemble: 7 members of 200 x 4, the 5 with the lowest held-out error imagine."""


class EnsembleModel(UnguidedModel):
    """An `MLPEnsemble` behind the world model's interface (`spec`, `horizon`, `device`, `imagine`,
    `guidance_scale`, `adapt_guidance`, `check_start_states`), imagining with its elites' mean."""

    def __init__(self, ensemble: MLPEnsemble, horizon: int):
        self.ensemble, self.horizon = ensemble, horizon
        self.spec, self.device = ensemble.spec, ensemble.device
        self._imaginer = StepwiseImaginer(lambda s, a, g: ensemble.step(s, a, g, deterministic=True),
                                          ensemble.spec, horizon, ensemble.device)

    def imagine(self, start_obs: torch.Tensor | np.ndarray, policy: GaussianPolicyFn | None = None, *,
                generator: torch.Generator | None = None, actions: torch.Tensor | np.ndarray | None = None,
                n_sample_steps: int | None = None) -> Imagination:
        """`WorldModel.imagine` answered by the ensemble, one step at a time (`n_sample_steps`: unused, a
        one-step model has no chain)."""
        return self._imaginer.imagine(start_obs, policy, generator=generator, actions=actions)

    def check_start_states(self, observations: np.ndarray) -> None:
        """ValueError for start states of the wrong shape or not finite."""
        checked_start(observations, self.spec.obs_dim, self.device)


class EnsembleCoordinator(UnsavedCoordinator):
    """The coordinator's loop (same config, prefill, start states, learner, schedules, diagnostics and
    evaluation) with `EnsembleModel` in place of the world model: of the config's world-model fields only
    the horizon (and the spread probe's std floor) count, and its world-model steps schedule the ensemble's
    Adam steps (`world_model/loss` then logs the ensemble's Gaussian NLL, which can be negative). Like the
    oracle's, its run folder keeps the logs and evaluations but no resumable checkpoint."""

    def _start(self) -> None:
        cfg = self.config
        self._collect(cfg.prefill_steps, policy=None)
        self.collector.flush()
        torch.manual_seed(cfg.seed)  # the ensemble's weights
        ensemble = new_mlp_ensemble(self.buffer, self.spec, ENSEMBLE, cfg.device)
        model = EnsembleModel(ensemble, cfg.world_model.horizon)
        # duck-typed stand-ins: what the loop uses of a world model and its trainer
        self.state.world_model = model  # type: ignore[assignment]
        self.state.trainer = trainer = EnsembleTrainer(ensemble, seed=cfg.seed)  # type: ignore[assignment]
        self._losses += trainer.train(self.buffer, cfg.initial_world_model_steps, progress=self._progress)
        self._build_learner(checkpoint=None)
