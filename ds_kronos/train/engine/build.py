"""The DeepSpeed engine around the task's model: the exact fp32 start, the lr schedule, the optional compile and the
optional overlapped gradient reduction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.train.engine.compiled import compile_engine
from ds_kronos.train.engine.grad_overlap import OverlappedGradientReduction, overlap_gradient_reduction
from ds_kronos.train.engine.masters import exact_fp32_start, set_fp32_masters
from ds_kronos.train.engine.schedule import onecycle_factory


@dataclass
class RunEngine:
    """The DeepSpeed engine and what was built with it."""

    engine: Any
    scheduler: Any
    frozen_fp32: dict[str, torch.Tensor]
    """Exact fp32 values of the parameters the engine does not train (for the exports)."""
    compile_backend: str | None
    grad_reduction: OverlappedGradientReduction | None


def build_engine(task, ds_config: dict[str, Any], total_steps: int, *, onecycle: bool, compiled: bool,
                 overlap_bucket_bytes: int | None, resuming: bool, universal: bool) -> RunEngine:
    """``deepspeed.initialize`` over the task's trainable parameters, with the exact fp32 start, the schedule
    (``onecycle``: upstream's OneCycleLR, else the JSON's), the optional compile and the optional overlapped gradient
    reduction (``overlap_bucket_bytes``; None: DeepSpeed's own). ``universal``: the resume loads a universal
    checkpoint (a changed world size)."""
    import deepspeed
    from deepspeed import comm as dist

    if universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    # bf16/fp16 engines build their fp32 masters from the cast module: keep the exact values to restore them.
    # Only the rank that writes the exports keeps the frozen tensors' fp32 values (all of LoRA's base model).
    exact, frozen_fp32 = exact_fp32_start(task.model, task, DeepSpeedView.of(ds_config).low_precision,
                                          keep_frozen=dist.get_rank() == 0)
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(
        model=task.model, model_parameters=trainable, config=ds_config,
        lr_scheduler=onecycle_factory(ds_config["optimizer"]["params"]["lr"], total_steps) if onecycle else None)
    if exact and not resuming:  # a resumed run loads its masters from the checkpoint
        set_fp32_masters(engine, exact)
    del exact
    task.checkpoint_weights = None  # done with the checkpoint file (if any): close it
    if not onecycle and getattr(scheduler, "last_batch_iteration", None) == -1:
        # DeepSpeed's schedulers start at iteration -1 (lr 0); step once so step 0 uses the warm-up start lr.
        scheduler.step()
    return RunEngine(engine=engine, scheduler=scheduler, frozen_fp32=frozen_fp32,
                     compile_backend=compile_engine(engine) if compiled else None,
                     grad_reduction=(overlap_gradient_reduction(engine, overlap_bucket_bytes)
                                     if overlap_bucket_bytes is not None else None))
