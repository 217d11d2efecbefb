"""Noticing a run that diverged, within a few steps, without a host sync in every step.

The run control (ds_kronos.train.control.run_control) hands each micro-batch's loss to :meth:`DivergenceGuard.add`,
which adds it to a device tensor (a NaN or inf anywhere makes the sum non-finite); every ``CHECK_EVERY`` optimizer steps
and before any checkpoint or export, :meth:`DivergenceGuard.check_all_ranks` all-reduces it (one small collective and a
host sync, so every rank reaches the same verdict). A run has diverged
when that mean is not finite, or is more than ``EXPLOSION_FACTOR`` times the loss of the run's first micro-batch
(taken before any update, floored at 1). Under fp16, DeepSpeed's loss scaler skips steps whose gradients overflow:
that is normal and not divergence, unless it skips ``MAX_CONSECUTIVE_SKIPS`` steps in a row.
"""

from __future__ import annotations

import math

import torch

from ds_kronos.errors import UserError
from ds_kronos.runtime import all_reduce_sum

CHECK_EVERY = 5
EXPLOSION_FACTOR = 10.0
MAX_CONSECUTIVE_SKIPS = 50


class Diverged(UserError):
    """Training stopped because the loss became non-finite or exploded."""


class DivergenceGuard:
    def __init__(self, fp16: bool, device: torch.device):
        self.fp16 = fp16
        self.reference: float | None = None
        """|loss| of the run's first micro-batch (before any update), floored at 1."""
        self.consecutive_skips = 0
        self._skipped_before = 0
        self._step_before = 0
        self._sums = torch.zeros(2, device=device)
        """[loss sum since the last check, the first micro-batch's loss (until the reference is set)]"""
        self._count = 0
        self.good_through = 0
        """The step of the last check that passed: every micro-batch up to it had a finite, not exploded loss."""

    def add(self, loss: torch.Tensor) -> None:
        """One micro-batch's (detached) loss; no host sync."""
        if self._count == 0 and self.reference is None:
            self._sums[1] = loss  # the first micro-batch, before any update: the divergence reference
        self._sums[0] += loss
        self._count += 1

    def check_all_ranks(self, step: int, lr: float, skipped_steps: int) -> None:
        """Collective: the mean loss of every rank's micro-batches since the last check, then :meth:`check`."""
        if not self._count:
            return
        world = torch.distributed.get_world_size()
        loss_sum, first_sum = all_reduce_sum(self._sums.clone()).tolist()
        self.set_reference(first_sum / world)
        mean = loss_sum / (self._count * world)
        self._sums.zero_()
        self._count = 0
        self.check(step, mean, lr, skipped_steps)

    def restart(self, step: int, skipped_steps: int) -> None:
        """After a roll-back to ``step`` (ds_kronos.train.control.rollback): count from there, as if it had just
        passed."""
        self._sums.zero_()
        self._count, self.consecutive_skips = 0, 0
        self._step_before, self._skipped_before, self.good_through = step, skipped_steps, step

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
                self.good_through = step
                return  # those steps were skipped by the scaler; their loss is not the model's
        if not math.isfinite(mean_loss):
            raise Diverged(f"training diverged at step {step}: loss {mean_loss} (lr {lr:.3g}); a non-finite loss "
                           f"usually means a learning rate far too high (lower --lr) or extreme values in the data")
        if self.reference is not None and mean_loss > EXPLOSION_FACTOR * self.reference:
            raise Diverged(f"training diverged at step {step}: loss {mean_loss:.4g} is over {EXPLOSION_FACTOR:g}x "
                           f"the starting loss {self.reference:.4g} (lr {lr:.3g}); the learning rate is likely too "
                           f"high (lower --lr)")
        self.good_through = step
