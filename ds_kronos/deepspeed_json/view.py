"""One view of a DeepSpeed config: the few facts ds_kronos decides on (ZeRO stage, precision, where optimizer states
and parameters live), read from the dict in one place instead of by every module in its own way.

The JSON's schema is DeepSpeed's (``checks.py`` validates it before anything runs); this view only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def _enabled(config: dict[str, Any], key: str) -> bool:
    section = config.get(key)
    return isinstance(section, dict) and bool(section.get("enabled"))


def _device(zero: dict[str, Any], key: str) -> str:
    section = zero.get(key)
    return str(section.get("device") or "none") if isinstance(section, dict) else "none"


@dataclass(frozen=True)
class DeepSpeedView:
    """What a DeepSpeed config says about the run, in ds_kronos's terms."""

    zero_stage: int
    precision: str
    """"fp32", "bf16" or "fp16" (the engine's module and gradient dtype)."""
    offload_optimizer: str
    """"none", "cpu" or "nvme": where the optimizer states (and fp32 masters) live."""
    offload_param: str
    """"none", "cpu" or "nvme": where the ZeRO-3 parameters live between uses."""

    @classmethod
    def of(cls, ds_config: dict[str, Any]) -> "DeepSpeedView":
        zero = ds_config.get("zero_optimization") or {}
        precision = "bf16" if _enabled(ds_config, "bf16") else "fp16" if _enabled(ds_config, "fp16") else "fp32"
        return cls(zero_stage=int(zero.get("stage", 0)), precision=precision,
                   offload_optimizer=_device(zero, "offload_optimizer"), offload_param=_device(zero, "offload_param"))

    @property
    def low_precision(self) -> bool:
        """bf16/fp16: the engine builds fp32 masters from the cast module (see ds_kronos.train.engine.masters)."""
        return self.precision != "fp32"

    @property
    def fp16(self) -> bool:
        """A loss-scaled run: DeepSpeed skips overflowing steps."""
        return self.precision == "fp16"

    @property
    def partitioned(self) -> bool:
        """ZeRO-3: parameters are partitioned, so the model is built under ``deepspeed.zero.Init``."""
        return self.zero_stage == 3

    @property
    def offloads_optimizer(self) -> bool:
        return self.offload_optimizer != "none"

    @property
    def optimizer_on_nvme(self) -> bool:
        return self.offload_optimizer == "nvme"

    @property
    def uses_nvme(self) -> bool:
        return "nvme" in (self.offload_optimizer, self.offload_param)

    def describe_offload(self) -> str:
        """E.g. "optimizer states to cpu, params to nvme"; empty without offload."""
        return ", ".join(f"{what} to {device}" for what, device in (("optimizer states", self.offload_optimizer),
                                                                   ("params", self.offload_param))
                         if device != "none")
