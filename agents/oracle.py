"""The imagination loop with MuJoCo in place of the world model: an upper reference for what a perfect
model would give the same learner, from the same real start states, for the same real-step budget.

`OracleCoordinator` is the coordinator with a `SimulatorModel` and no world-model training: each imagined
row's action is drawn from the policy's Gaussian at the simulator's current state, so the learner gets
exactly on-policy H-step trajectories through the same imagined env and SB3 learner.
"""
from __future__ import annotations

from agents.coordinator import UnsavedCoordinator
from agents.simulator_model import SimulatorModel


class _NoTraining:
    """What the loop reads of a trainer, for a model that is not trained."""

    steps = 0


class OracleCoordinator(UnsavedCoordinator):
    """The coordinator's loop (same config, prefill, start states, learner, schedules and evaluation)
    with `SimulatorModel` in place of the trained world model. Its run folder keeps the logs and
    evaluations but no resumable checkpoint: there is no model to save."""

    def _start(self) -> None:
        self._collect(self.config.prefill_steps, policy=None)
        self.collector.flush()
        # duck-typed stand-ins: what the loop uses of a world model and a trainer, nothing more
        simulator = SimulatorModel(self.config.env_id, self.config.world_model.horizon)
        self.state.world_model = simulator  # type: ignore[assignment]
        self.state.trainer = _NoTraining()  # type: ignore[assignment]
        self._build_learner(checkpoint=None)

    def _fit_world_model(self, refit: bool) -> None:
        """Nothing to fit."""

    def close(self) -> None:
        super().close()
        if isinstance(self.world_model, SimulatorModel):
            self.world_model.close()
