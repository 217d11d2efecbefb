"""How well a training run uses its hardware: tokens/s, samples/s, achieved TFLOP/s per rank and MFU.

The figures come from the samples per second the progress line already measures (wall time between log lines) and
a fixed FLOP count per sample (ds_kronos.model.flops, the count ``benchmarks/`` uses), so they cost no device
work and no host sync beyond the log interval's. MFU is against ``--peak_tflops`` when given, else the datasheet
peak of a known GPU at the run's precision (ds_kronos.model.flops.PEAKS); on a CPU or an unknown device it is "n/a".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ds_kronos.model.flops import device_peak, flops_per_sample, matmul_params, tokenizer_flops_per_sample


@dataclass(frozen=True)
class Efficiency:
    world_size: int
    tokens_per_sample: int
    """Positions one sample trains on: the predictor's window minus one (inputs are ids[:, :-1]), the tokenizer's
    whole window of bars."""
    flops_per_sample: float
    peak_tflops: float | None
    """Per device; None: unknown, MFU is not reported."""
    peak_source: str

    def figures(self, samples_per_s: float) -> dict[str, float | None]:
        tflops = samples_per_s * self.flops_per_sample / self.world_size / 1e12
        return {"samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * self.tokens_per_sample,
                "tflops_per_rank": tflops, "mfu": tflops / self.peak_tflops if self.peak_tflops else None}

    def describe(self, samples_per_s: float) -> str:
        """``245 samples/s, 1.1e+04 tokens/s, 0.0213 TFLOP/s/rank, MFU n/a`` (3 digits: 0.412 for large models)."""
        f = self.figures(samples_per_s)
        mfu = "n/a" if f["mfu"] is None else f"{f['mfu']:.1%}"
        return (f"{samples_per_s:.3g} samples/s, {f['tokens_per_s']:.3g} tokens/s, {f['tflops_per_rank']:.3g} "
                f"TFLOP/s/rank, MFU {mfu}")

    def summary(self, samples_per_s: float | None) -> dict[str, Any]:
        """The summary.json fields (figures over the run's training time; None where there was none)."""
        figures = self.figures(samples_per_s) if samples_per_s else dict.fromkeys(self.figures(0.0))
        return {"tokens_per_s": _round(figures["tokens_per_s"]), "tflops_per_rank": _round(figures["tflops_per_rank"]),
                "mfu": _round(figures["mfu"]), "peak_tflops": self.peak_tflops, "peak_tflops_source": self.peak_source,
                "flops_per_sample": self.flops_per_sample}


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def run_efficiency(task, window: int, world_size: int, device: torch.device, precision: str,
                   peak_override: float | None) -> Efficiency:
    """The run's FLOP count (``window``: bars per training window) and the peak its MFU is measured against."""
    model = task.model
    if task.kind == "tokenizer":
        tokens, flops = window, tokenizer_flops_per_sample(model, window)
    else:
        tokens = window - 1
        flops = flops_per_sample(model.config, matmul_params(model), tokens, matmul_params(model, frozen_only=True))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    known = device_peak(name) if device.type == "cuda" else None
    if peak_override:
        peak, source = peak_override, "--peak_tflops"
    elif known:
        peak, source = known.tflops(precision), f"{known.name}, dense {precision} (datasheet; {name})"
    else:
        peak, source = None, f"no peak known for {name}: give --peak_tflops for MFU"
    return Efficiency(world_size, tokens, flops, peak, source)
