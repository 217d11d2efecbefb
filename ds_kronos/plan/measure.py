"""Measure the peak memory of plain fp32 AdamW training on CPU, to check the planner against reality.

    python -m ds_kronos.plan.measure --variant mini --micro_batch 8 --context 256 --steps 3

Prints one JSON object: the increase of the process's peak resident set (VmHWM) over its level just before the
models were built, and the planner's figure for the same run (ZeRO-0, 1 rank, fp32). The training step is the real
one (frozen tokenizer -> ``tokenize_batch`` -> ``predict_and_score``) with ``torch.optim.AdamW``, as DeepSpeed's
ZeRO-0 fp32 runs it on CPU. Linux only (/proc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from dataclasses import dataclass
from typing import Sequence

import torch

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.memory_usage import peak_rss_bytes, reset_peak_rss, rss_bytes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def fix_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Pin glibc's mmap threshold so that large freed blocks go back to the system at once.

    Why: glibc raises the threshold each time an mmap'd block is freed (up to 32 MiB), after which tensors of a
    few MiB come from the heap and stay resident when freed; RSS then grows step after step over identical steps,
    and stays flat with the threshold pinned (figures in docs/performance.md). Training on CPU can do the same
    with MALLOC_MMAP_THRESHOLD_=131072 in the environment. False where not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, nbytes)) if name else False
    except (OSError, AttributeError):
        return False


def random_batch(batch: int, context: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised bars [B, context + 1, 6] and calendar stamps [B, context + 1, 5] (minute, hour, weekday, day,
    month), as a WindowDataset yields them; the step shifts them into inputs and targets."""
    bars = torch.randn(batch, context + 1, 6, generator=generator)
    stamp = torch.stack([torch.randint(0, n, (batch, context + 1), generator=generator)
                         for n in (60, 24, 7, 32, 13)], dim=-1).float()
    return bars, stamp


@dataclass(kw_only=True)
class MeasureConfig:
    """Peak memory of plain fp32 AdamW training on CPU, next to the planner's estimate."""

    variant: str = option("mini", help="predictor preset")
    micro_batch: int = option(8, ge=1, help="samples per step")
    context: int = option(256, ge=1, help="tokens per sample")
    steps: int = option(3, ge=1, help="optimizer steps (the first allocates the Adam states)")
    threads: int = option(1, ge=1, help="torch threads")
    pin_mmap_threshold: bool = option(True, help="pin glibc's mmap threshold (see fix_mmap_threshold); false "
                                      "shows the allocator's retained memory as well")


def measure(config: MeasureConfig) -> dict[str, float]:
    from ds_kronos.model import Kronos, KronosTokenizer, preset
    from ds_kronos.model.objective import predict_and_score, tokenize_batch
    from ds_kronos.plan.planner import PlanRequest, plan

    torch.set_num_threads(config.threads)
    pinned = fix_mmap_threshold() if config.pin_mmap_threshold else False
    torch.manual_seed(0)
    # Warm up the kernels' lazily loaded code and buffers on a tiny model so they are not counted as training.
    tiny = torch.nn.Linear(8, 8)
    tiny(torch.randn(4, 8)).sum().backward()
    torch.optim.AdamW(tiny.parameters()).step()
    del tiny
    exact = reset_peak_rss()
    before = rss_bytes() if exact else peak_rss_bytes()

    spec = preset(config.variant)
    tokenizer = KronosTokenizer.from_preset(spec.tokenizer).eval().requires_grad_(False)
    model = Kronos.from_preset(config.variant).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(config.steps):
        bars, stamp = random_batch(config.micro_batch, config.context, generator)
        batch = tokenize_batch(tokenizer, bars, stamp, torch.device("cpu"), torch.float32)
        loss, _, _ = predict_and_score(model, model.head, batch, teacher_forcing=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = peak_rss_bytes() - before
    estimate = plan(PlanRequest(predictor=config.variant, world_size=1, zero_stage=0, batch_size=config.micro_batch,
                                context=config.context, precision="fp32", device="cpu")).estimate
    return {"variant": config.variant, "micro_batch": config.micro_batch, "context": config.context,
            "measured_bytes": measured, "planned_bytes": estimate.total, "ratio": measured / estimate.total,
            "baseline_exact": exact, "mmap_threshold_pinned": pinned, "planned_model_states": estimate.model_states,
            "planned_activations": estimate.activations + estimate.logits, "planned_tokenizer": estimate.tokenizer}


def main(argv: Sequence[str] | None = None) -> None:
    print(json.dumps(measure(parse_config(MeasureConfig, argv))))


if __name__ == "__main__":
    run_main(main)
