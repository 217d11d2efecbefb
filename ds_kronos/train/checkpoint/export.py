"""The weights a run publishes (best_model/, final_model/, initial_model/): the fp32 masters gathered in full.

Not training state: DeepSpeed's own checkpoints (ds_kronos.train.checkpoint.training_state) hold that, partitioned and
with the optimizer; an export is the model alone, in the published folder format that upstream's loader reads.
"""

from __future__ import annotations

import torch

from ds_kronos.train.engine.masters import full_fp32_master, zero3_fp32_masters


def export_fp32_state_dict(engine, frozen: dict[str, torch.Tensor] | None = None, keep: bool = True
                           ) -> dict[str, torch.Tensor]:
    """Full fp32 weights from the optimizer's master copies (bf16/fp16 modules hold low-precision copies),
    gathered across ZeRO partitions, plus buffers. ``frozen`` holds the exact values of tensors that have no master
    (frozen parameters, buffers; see ds_kronos.train.engine.masters). Collective: every rank must call it; only ranks
    with ``keep`` hold the result (the others return {} and never hold the whole model)."""
    import deepspeed

    module, frozen = engine.module, frozen or {}
    masters: dict[int, torch.Tensor] = {}
    zero3 = zero3_fp32_masters(engine)  # ZeRO-3: one NVMe sub-group read each, in the optimizer's order
    if zero3 is not None:
        for param, full in zero3:
            if keep:
                masters[id(param)] = full
            del full  # a rank that does not write holds one parameter at a time
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if zero3 is not None:  # every trainable parameter had its master gathered above, on every rank
            has_master, full = param.requires_grad, masters.pop(id(param), None)
        else:
            full = full_fp32_master(engine, param) if param.requires_grad else None
            has_master = full is not None  # the same on every rank: it depends on the optimizer only
        if not has_master:  # frozen tensors and fp32 engines: the module's own values (a collective under ZeRO-3)
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                full = param.detach().clone() if keep else None
        if keep:
            state[name] = frozen[name] if name in frozen else full.detach().float().cpu()
    if keep:
        for name, buffer in module.named_buffers():
            state[name] = frozen[name] if name in frozen else buffer.detach().cpu()
    return state
