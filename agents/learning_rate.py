"""The learner's learning rate as an SB3 schedule that the run drives between policy updates: constant,
decayed linearly in real steps (`final_learning_rate`), or adapted to each update's KL
(`target_update_kl`)."""
from __future__ import annotations

ADAPT_FACTOR = 1.5
"""`adapt` divides the rate by this after an update above twice the target KL, multiplies below half."""


class RunLearningRate:
    """Pass as the learner's `learning_rate`: SB3 asks it for the rate of every update and it answers
    the run's current rate, whatever SB3's own training progress is."""

    def __init__(self, initial: float, current: float | None = None):
        self.initial = initial
        self.current = current
        """The rate a strategy set for the next update (None: none has, the initial rate applies)."""

    def __call__(self, progress_remaining: float) -> float:
        return self.initial if self.current is None else self.current

    def decay(self, final: float, first_update: int, budget: int, real_steps: int) -> None:
        """Linear in real steps: `initial` at the first policy update, `final` at the budget."""
        fraction = min(max((real_steps - first_update) / max(budget - first_update, 1), 0.0), 1.0)
        self.current = self.initial + fraction * (final - self.initial)

    def adapt(self, update_kl: float, target: float) -> None:
        """The next update's rate from this update's mean approx_kl; never above `initial`."""
        rate = self(1.0)
        if update_kl > 2 * target:
            rate /= ADAPT_FACTOR
        elif update_kl < target / 2:
            rate = min(rate * ADAPT_FACTOR, self.initial)
        self.current = rate

