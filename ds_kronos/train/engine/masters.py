"""The optimizer's fp32 master weights under bf16/fp16 engines: set them exactly, read them back in full.

``deepspeed.initialize`` casts the module to bf16/fp16 and builds the fp32 masters *from the cast module*, so a
published fp32 checkpoint would lose precision before the first step (by how much: docs/training.md). The trainer
keeps the values it loaded and writes them back into the masters with DeepSpeed's own
``safe_set_full_fp32_param`` (ZeRO-1/2/3 and the bf16 optimizer). DeepSpeed's ZeRO-0 low-precision optimizers
(``FP16_UnfusedOptimizer``, ``FP16_Optimizer``) have no per-parameter mapping; their master lists are used.

Frozen tensors (parameters with ``requires_grad=False``, buffers such as the rotary ``inv_freq`` or sinusoidal time
tables, the whole predictor under ``--finetune lora``) have no master; they never change, so the exported model takes
the values captured before the cast. Only the rank that writes the exports keeps them (``keep_frozen``): under LoRA
they are nearly the whole model in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn


def exact_fp32_start(model: nn.Module, task, low_precision: bool, keep_frozen: bool = True
                     ) -> tuple[Mapping[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(exact fp32 values to write into a bf16/fp16 engine's masters, frozen tensors' exact values for exports,
    empty unless ``keep_frozen``); ({}, None) for an fp32 engine, whose masters are the module's own parameters.
    Call before the engine casts. Collective under ZeRO-3."""
    if not low_precision:
        return {}, None
    if task.partitioned:
        # Built under zero.Init: the module is already cast and partitioned. The exact values are in the checkpoint
        # file (read one tensor at a time) and, under LoRA, the adapters' fp32 draw; a preset's are its cast init.
        weights = task.checkpoint_weights
        return (weights or {}), frozen_fp32(model, weights, keep_frozen)
    return capture_fp32(model, keep_frozen)


def capture_fp32(module: nn.Module, keep_frozen: bool = True
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable parameters, frozen floating tensors unless not ``keep_frozen``) as exact fp32 CPU copies, taken
    before the engine casts."""
    trainable, frozen = {}, {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            trainable[name] = param.detach().float().cpu().clone()
        elif keep_frozen:
            frozen[name] = param.detach().float().cpu().clone()
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point() and keep_frozen:
            frozen[name] = buffer.detach().cpu().clone()
    return trainable, frozen


def _zero0_master_views(optimizer) -> dict[int, torch.Tensor] | None:
    """``id(param) -> its fp32 master`` for DeepSpeed's ZeRO-0 low-precision optimizers, which keep no
    per-parameter mapping: ``FP16_UnfusedOptimizer`` (a master per parameter; bf16 and fp16 on the CPU accelerator)
    and ``FP16_Optimizer`` (one flat master per group). None for any other optimizer."""
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    views: dict[int, torch.Tensor] = {}
    if isinstance(optimizer, FP16_Optimizer):
        for group, flat in zip(optimizer.fp16_groups, optimizer.fp32_groups_flat):
            offset = 0
            for param in group:
                views[id(param)] = flat.data[offset:offset + param.numel()].view_as(param)
                offset += param.numel()
    elif isinstance(optimizer, FP16_UnfusedOptimizer):
        for group, masters in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            for param, master in zip(group, masters):
                views[id(param)] = master.data
    else:
        return None
    return views


def set_fp32_masters(engine, values: dict[str, torch.Tensor]) -> None:
    """Overwrite the masters of every trainable parameter with ``values`` (by name). Collective under ZeRO-3."""
    from deepspeed.utils import safe_set_full_fp32_param

    zero0 = _zero0_master_views(engine.optimizer)
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        if zero0 is not None:
            zero0[id(param)].copy_(values[name])
        else:
            safe_set_full_fp32_param(param, values[name].to(param.device))


def zero3_fp32_masters(engine) -> Iterator[tuple[nn.Parameter, torch.Tensor]] | None:
    """``(param, whole fp32 master)`` for every trainable parameter under a ZeRO-3 optimizer, one at a time (None
    for other optimizers). Collective: every rank must exhaust it.

    DeepSpeed's per-parameter ``safe_get_full_fp32_param`` swaps the parameter's whole optimizer sub-group in from
    NVMe and out again on every call: hundreds of sub-group reads for one export. Here each sub-group is swapped in
    once and its parameters are all-gathered from it in turn, with the calls DeepSpeed's per-parameter path makes.
    Sub-groups and their parameters are the same on every rank, so the all-gathers line up. A consumer that does
    not keep the values (ranks other than the writer) holds one parameter at a time.
    """
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    optimizer = engine.optimizer
    if not isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
        return None
    by_group: dict[int, list[tuple[nn.Parameter, int, int]]] = {}
    for param in engine.module.parameters():
        if param.requires_grad:
            group, offset, count = optimizer.grad_position[optimizer.get_param_id(param)]
            by_group.setdefault(group, []).append((param, offset, count))

    def gathered() -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        for group in sorted(by_group):
            swapped = optimizer._swappable_optimizer_subgroup(group)
            if swapped:
                optimizer._optimizer_states_and_gradient_swap_in(group)
            flat = optimizer.fp32_partitioned_groups_flat[group]
            for param, offset, count in by_group[group]:
                yield param, optimizer._fp32_state_allgather(param, flat.narrow(0, offset, count)).float().cpu()
            if swapped:
                optimizer._release_swap_buffers(group)

    return gathered()


def full_fp32_master(engine, param: nn.Parameter) -> torch.Tensor | None:
    """The whole fp32 master of ``param`` (None when the engine keeps none, e.g. fp32 training)."""
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)
    if full is not None:
        return full
    zero0 = _zero0_master_views(engine.optimizer)
    return None if zero0 is None else zero0.get(id(param))


def frozen_fp32(module: nn.Module, weights: Mapping[str, torch.Tensor] | None, keep: bool = True
                ) -> dict[str, torch.Tensor]:
    """The frozen floating tensors of a model built partitioned (zero.Init), as fp32 CPU copies: from the
    checkpoint file when it holds them (exact), else gathered from the module one parameter at a time (a preset's
    fixed tables and, under LoRA, its base model, already at the training precision). Collective under ZeRO-3
    (every rank gathers; only ranks with ``keep`` hold the result, the others return {})."""
    from ds_kronos.model.partitioned import modifiable

    frozen: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            continue
        if weights is not None and name in weights:
            if keep:
                frozen[name] = weights[name].clone()  # a copy of its own, whatever the reader's memory
            continue
        owner = module.get_submodule(name.rpartition(".")[0])
        with modifiable(owner, modifier_rank=None):
            if keep:
                frozen[name] = param.detach().float().cpu().clone()
    if not keep:
        return frozen
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point():
            frozen[name] = (weights[name].clone() if weights is not None and name in weights
                            else buffer.detach().float().cpu())
    return frozen
