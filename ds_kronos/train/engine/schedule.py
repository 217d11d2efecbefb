"""Learning-rate schedules: upstream's OneCycleLR and its DeepSpeed-native near-equivalent.

Upstream uses ``torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps, pct_start=0.03, div_factor=10)``:
cosine warm-up from max_lr/10 to max_lr over 3% of the steps, cosine decay to max_lr/10/1e4, and beta1 cycled
from 0.95 down to 0.85 and back. Two ways to get it under DeepSpeed:

- ``lr_schedule=config`` (default): DeepSpeed's WarmupCosineLR from the JSON, warmup_type linear, warmup_min_ratio
  0.1, cos_min_ratio 1e-5, warm-up 3% of the optimizer steps. Identical to OneCycleLR after warm-up (when 3% of the
  steps is a whole number; otherwise within one step's worth of the cosine); during warm-up the linear ramp is up
  to ~9.5% of max_lr away from OneCycle's cosine ramp. beta1 stays at the JSON's 0.9.
- ``lr_schedule=onecycle``: the trainer passes OneCycleLR as a callable to ``deepspeed.initialize``, which builds
  it on the plain torch optimizer: lr and beta1 exactly as upstream.

WarmupCosineLR starts at lr 0 (its iteration -1); the trainer steps it once right after initialize so that the
first optimizer step uses max_lr/10, as OneCycleLR's does.
"""

from __future__ import annotations

from typing import Callable

import torch

from ds_kronos.deepspeed_json.resolve import WARMUP_FRACTION

DIV_FACTOR = 10.0
FINAL_DIV_FACTOR = 1e4


def onecycle_factory(max_lr: float, total_steps: int) -> Callable[[torch.optim.Optimizer], object]:
    """Callable for ``deepspeed.initialize(lr_scheduler=...)``: upstream's OneCycleLR on the given optimizer."""

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.OneCycleLR:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                                   pct_start=WARMUP_FRACTION, div_factor=DIV_FACTOR,
                                                   final_div_factor=FINAL_DIV_FACTOR)
    return build


def _probe_optimizer(lr: float, beta1: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr, betas=(beta1, 0.95))


def onecycle_trajectory(max_lr: float, total_steps: int) -> tuple[list[float], list[float]]:
    """(lr, beta1) used by each optimizer step 0..total_steps-1 under upstream's OneCycleLR."""
    optimizer = _probe_optimizer(max_lr)
    scheduler = onecycle_factory(max_lr, total_steps)(optimizer)
    lrs, betas = [], []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    return lrs, betas


def warmup_cosine_trajectory(max_lr: float, total_steps: int, warmup_steps: int, warmup_min_ratio: float = 0.1,
                             cos_min_ratio: float = 1e-5) -> list[float]:
    """lr used by each optimizer step under DeepSpeed's WarmupCosineLR, stepped once after creation (as the trainer
    does)."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    optimizer = _probe_optimizer(max_lr)
    scheduler = WarmupCosineLR(optimizer, total_num_steps=total_steps, warmup_min_ratio=warmup_min_ratio,
                               warmup_num_steps=warmup_steps, cos_min_ratio=cos_min_ratio, warmup_type="linear")
    scheduler.step()
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs
