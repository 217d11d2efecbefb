"""One training micro-step: the task's loss, backward, the optimizer step.

The Trainer and ``benchmarks/train_throughput.py`` both call :func:`train_micro_step`, so the benchmark times the
product's own step. DeepSpeed applies the optimizer update (and zeroes the gradients) only at accumulation
boundaries; ``engine.step()`` between them only advances its micro-step counter. Nothing here waits for the device:
the losses come back as a tensor, read by the caller at log intervals.
"""

from __future__ import annotations

import torch


def train_micro_step(engine, task, x: torch.Tensor, stamp: torch.Tensor, grad_reduction=None
                     ) -> tuple[torch.Tensor, float]:
    """Forward and backward of one micro-batch, then ``engine.step()``. Returns the task's losses (detached, on the
    device: [loss, components...]) and the lr this step applied (the scheduler moves on inside ``step()``).
    ``grad_reduction``: the overlapped gradient all-reduce (ds_kronos.train.engine.grad_overlap), which finishes its
    reductions and steps the engine."""
    losses = task.train_losses(engine, x, stamp)
    engine.backward(losses[0])
    lr = engine.get_lr()[0]  # a Python float held by the optimizer's param group: no device sync
    if grad_reduction is not None:
        grad_reduction.step()
    else:
        engine.step()
    return losses.detach().float(), lr
