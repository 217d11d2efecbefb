"""ZeRO-0's gradient all-reduce, overlapped with backward (train.py --overlap_grad_reduce) against DeepSpeed's own
(after backward), alternating step by step in one engine: a paired comparison that a shared machine's slow spells
cannot tilt, since both sides share every minute of the run.

    DS_ACCELERATOR=cpu python benchmarks/grad_overlap_ab.py --variant small --precision fp32 --steps 16

The trainer's own micro-step as in train_throughput.py (ds_kronos.train.step.train_micro_step), on random
bars, micro batch 8 x 100 tokens per rank). Even steps reduce overlapped, odd steps with DeepSpeed's
``allreduce_gradients`` (``OverlappedGradientReduction.set_active``). Prints the median step time of each and the
ratio; the last line is JSON.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from train_throughput import ThroughputConfig, deepspeed_engine, run_ranks, slowest_rank

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.model import PREDICTOR_PRESETS


@dataclass(kw_only=True)
class OverlapABConfig:
    """Overlapped against DeepSpeed's gradient all-reduce at ZeRO-0, step by step."""

    variant: str = option("small", choices=tuple(PREDICTOR_PRESETS), help="predictor preset")
    precision: str = option("fp32", choices=("fp32", "bf16"), help="training precision")
    world_size: int = option(2, help="processes (at least 2: one rank has nothing to reduce)", ge=2)
    micro_batch: int = option(8, help="samples per rank per step", ge=1)
    context: int = option(100, help="tokens per sample", ge=1)
    steps: int = option(16, help="timed steps, half of each kind", ge=2)
    warmup: int = option(2, help="untimed steps first", ge=0)
    grad_bucket_mb: float = option(25.0, help="bucket size of the overlapped reduction (MiB)", gt=0)
    threads: int | None = option(None, help="torch threads per process (default: cores / processes)", ge=1)


def worker(rank: int, values: dict[str, Any], port: int, out_dir: str) -> None:
    config = OverlapABConfig(**values)
    # train_throughput.py's set-up, at ZeRO-0 without offload: the same model, tokenizer, bars and JSON.
    measured = ThroughputConfig(variant=config.variant, zero=0, world_size=config.world_size,
                                micro_batch=config.micro_batch, context=config.context, precision=config.precision,
                                steps=config.steps, warmup=config.warmup, threads=config.threads)
    runtime, inputs, engine = deepspeed_engine(measured, rank, port)
    from ds_kronos.runtime import barrier
    from ds_kronos.train.engine.grad_overlap import OverlappedGradientReduction
    from ds_kronos.train.step import train_micro_step

    reduction = OverlappedGradientReduction(engine, int(config.grad_bucket_mb * 2 ** 20))
    times: dict[str, list[float]] = {"overlapped": [], "deepspeed": []}
    for i in range(config.warmup + config.steps):
        kind = "overlapped" if i % 2 == 0 else "deepspeed"
        reduction.set_active(kind == "overlapped")
        bars, stamp = inputs.data[i % len(inputs.data)]
        barrier()
        start = time.perf_counter()
        train_micro_step(engine, inputs.task, bars, stamp, reduction)
        if i >= config.warmup:
            times[kind].append(time.perf_counter() - start)
    Path(out_dir, f"{rank}.json").write_text(json.dumps(times), encoding="utf-8")
    runtime.close()  # every rank leaves the group together: one leaving early can abort another's exit


def run(config: OverlapABConfig) -> dict[str, Any]:
    per_step = slowest_rank(run_ranks(worker, (dataclasses.asdict(config),), config.world_size))
    medians = {kind: statistics.median(values) for kind, values in per_step.items()}
    report = {"variant": config.variant, "precision": config.precision, "world_size": config.world_size,
              "overlapped_step_s": medians["overlapped"], "deepspeed_step_s": medians["deepspeed"],
              "speedup": medians["deepspeed"] / medians["overlapped"],
              "overlapped_steps_s": per_step["overlapped"], "deepspeed_steps_s": per_step["deepspeed"]}
    print(f"Kronos-{config.variant}, {config.world_size} ranks, ZeRO-0 {config.precision}, micro batch "
          f"{config.micro_batch} x {config.context} tokens, {config.steps} steps alternating")
    for kind in ("overlapped", "deepspeed"):
        values = per_step[kind]
        print(f"{kind:<11} step median {medians[kind] * 1000:8.1f} ms  (min {min(values) * 1000:.1f}, "
              f"max {max(values) * 1000:.1f}, {len(values)} steps)")
    print(f"speed-up of the overlapped reduction: {report['speedup']:.3f}x")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    print(json.dumps(run(parse_config(OverlapABConfig, argv))), flush=True)


if __name__ == "__main__":
    run_main(main)
