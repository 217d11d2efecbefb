"""Noticing a run that diverged, within a few steps, without a host sync in every step.

The trainer adds each micro-batch's loss to a device tensor (a NaN or inf anywhere makes the sum non-finite) and,
every ``CHECK_EVERY`` optimizer steps and before any checkpoint or export, hands the all-reduced mean to
:meth:`DivergenceGuard.check` (one small collective, so every rank reaches the same verdict). A run has diverged
when that mean is not finite, or is more than ``EXPLOSION_FACTOR`` times the loss of the run's first micro-batch
(taken before any update, floored at 1). Under fp16, DeepSpeed's loss scaler skips steps whose gradients overflow:
that is normal and not divergence, unless it skips ``MAX_CONSECUTIVE_SKIPS`` steps in a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ds_kronos.errors import UserError

CHECK_EVERY = 5
EXPLOSION_FACTOR = 10.0
MAX_CONSECUTIVE_SKIPS = 50


class Diverged(UserError):
    """Training stopped because the loss became non-finite or exploded."""


@dataclass
class DivergenceGuard:
    fp16: bool = False
    reference: float | None = None
    """|loss| of the run's first micro-batch (before any update), floored at 1."""
    consecutive_skips: int = 0
    _skipped_before: int = 0
    _step_before: int = 0

    def set_reference(self, first_loss: float) -> None:
        if self.reference is None and math.isfinite(first_loss):
            self.reference = max(abs(first_loss), 1.0)

    def check(self, step: int, mean_loss: float, lr: float, skipped_steps: int) -> None:
        """Raise :class:`Diverged` (the same verdict on every rank: the inputs are all-reduced)."""
        steps, skipped = step - self._step_before, skipped_steps - self._skipped_before
        self._step_before, self._skipped_before = step, skipped_steps
        if self.fp16:
            self.consecutive_skips = self.consecutive_skips + steps if steps and skipped >= steps else 0
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise Diverged(f"training diverged at step {step}: the fp16 loss scaler skipped the last "
                               f"{self.consecutive_skips} steps (gradients overflow at every scale; lr {lr:.3g}). "
                               f"Lower --lr, or use bf16")
            if not math.isfinite(mean_loss):
                return  # those steps were skipped by the scaler; their loss is not the model's
        if not math.isfinite(mean_loss):
            raise Diverged(f"training diverged at step {step}: loss {mean_loss} (lr {lr:.3g}); a non-finite loss "
                           f"usually means a learning rate far too high (lower --lr) or extreme values in the data")
        if self.reference is not None and mean_loss > EXPLOSION_FACTOR * self.reference:
            raise Diverged(f"training diverged at step {step}: loss {mean_loss:.4g} is over {EXPLOSION_FACTOR:g}x "
                           f"the starting loss {self.reference:.4g} (lr {lr:.3g}); the learning rate is likely too "
                           f"high (lower --lr)")
