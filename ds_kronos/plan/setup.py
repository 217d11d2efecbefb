"""One training configuration to size (``Setup``, with the DeepSpeed settings that size ZeRO-3's buffers) and the
byte widths the memory model counts in."""

from __future__ import annotations

import math
from dataclasses import dataclass

BYTES = {"fp32": 4, "bf16": 2}
FP32 = 4
ADAM = 8  # two fp32 moments


@dataclass(frozen=True)
class ZeroKnobs:
    """The DeepSpeed settings that size ZeRO-3's buffers, read from the planned JSON through DeepSpeed's own config
    model (``deepspeed.runtime.zero.config.DeepSpeedZeroConfig``), so its defaults apply where the file is silent.
    The defaults below are DeepSpeed 0.19's (used when no JSON is at hand)."""

    reduce_bucket_size: int = 500_000_000
    sub_group_size: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    param_buffer_count: int = 5
    param_buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000
    optimizer_buffer_count: int = 4

    @classmethod
    def from_ds_config(cls, config: dict) -> "ZeroKnobs":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        zero = DeepSpeedZeroConfig(**config.get("zero_optimization", {}))
        param = zero.offload_param
        optimizer = zero.offload_optimizer
        return cls(reduce_bucket_size=int(zero.reduce_bucket_size), sub_group_size=int(zero.sub_group_size),
                   max_reuse_distance=int(zero.max_reuse_distance),
                   param_buffer_count=int(param.buffer_count) if param else cls.param_buffer_count,
                   param_buffer_size=int(param.buffer_size) if param else cls.param_buffer_size,
                   max_in_cpu=int(param.max_in_cpu) if param else cls.max_in_cpu,
                   optimizer_buffer_count=int(optimizer.buffer_count) if optimizer else cls.optimizer_buffer_count)


@dataclass(frozen=True)
class Setup:
    """One training configuration to size."""

    world_size: int = 1
    gpus_per_node: int = 1
    zero: int = 0
    offload: str = "none"
    """none, cpu or nvme (ZeRO-Infinity)."""
    micro_batch: int = 16
    context: int = 512
    precision: str = "fp32"
    activation_checkpointing: bool = False
    math_attention: bool = False
    """True where the attention scores are materialised (torch's math SDPA kernel, which CPU training takes when
    attention dropout is on). The flash/efficient kernels keep O(1) per query instead of O(T)."""
    teacher_forcing: bool = False
    on_cpu: bool = False
    """The ranks train on the CPU accelerator: the "device" is host memory, shared by the ranks of a node."""
    from_model_folder: bool = False
    """The predictor is loaded from a model folder (its safetensors state dict is read) rather than built from
    a preset's random init."""
    knobs: ZeroKnobs = ZeroKnobs()

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.world_size / self.gpus_per_node))

    @property
    def offloaded(self) -> bool:
        return self.offload != "none"
