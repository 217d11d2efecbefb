"""What the per-step preemption check costs: the all-reduce with which the ranks agree on a stop request at every
optimizer-step boundary (ds_kronos.train.control.preemption.StopRequests.poll, a collective and a host sync), against
the step it follows.

    DS_ACCELERATOR=cpu python benchmarks/stop_check_cost.py --variant tiny --world_size 2 --steps 200

The trainer's own micro-step as in train_throughput.py (ds_kronos.train.step.train_micro_step, random bars), ZeRO-2
fp32. Every rank listens for the default signals (TERM, USR1; none arrives) and watches its launcher (a pidfd on the
benchmark's main process, as a rank on DeepSpeed's launch.py watches that one). Steps alternate: even steps are
followed by the check, odd ones are not; a barrier before each step lines the ranks up. The check right after a step
also absorbs the ranks' skew (the slower rank's step), which without it the next collective would absorb; so the
cost is read from the steps: the median over pairs of (step + check) minus the next step without it. Then the check
alone, after a barrier, as many times as there were timed steps, alternating with the same check without the
launcher watch. Printed: both, the median step times and the
ratios; the last line is JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
class StopCheckConfig:
    """The per-step stop check against the training step it follows."""

    variant: str = option("tiny", choices=tuple(PREDICTOR_PRESETS), help="predictor preset")
    world_size: int = option(2, help="processes (at least 2: one rank has nobody to agree with)", ge=2)
    micro_batch: int = option(16, help="samples per rank per step", ge=1)
    context: int = option(100, help="tokens per sample (the demo's lookback 90 + predict 10)", ge=1)
    steps: int = option(200, help="timed steps, half of them followed by the check", ge=2)
    warmup: int = option(4, help="untimed steps first", ge=0)
    threads: int | None = option(None, help="torch threads per process (default: cores / processes)", ge=1)


def worker(rank: int, values: dict[str, Any], port: int, out_dir: str) -> None:
    config = StopCheckConfig(**values)
    measured = ThroughputConfig(variant=config.variant, zero=2, world_size=config.world_size,
                                micro_batch=config.micro_batch, context=config.context, precision="fp32",
                                steps=config.steps, warmup=config.warmup, threads=config.threads)
    runtime, inputs, engine = deepspeed_engine(measured, rank, port)
    from ds_kronos.runtime import barrier
    from ds_kronos.train.control.launcher_watch import LauncherWatch
    from ds_kronos.train.control.preemption import StopRequests
    from ds_kronos.train.step import train_micro_step

    # Every rank also watches a launcher, as under DeepSpeed's launch.py: here the benchmark's own main process.
    stops = StopRequests(["TERM", "USR1"], launcher=LauncherWatch({os.getppid(): "the benchmark's main process"}))
    times: dict[str, list[float]] = {"with_check": [], "without_check": [], "check": []}
    for i in range(config.warmup + config.steps):
        checked = i % 2 == 0
        bars, stamp = inputs.data[i % len(inputs.data)]
        barrier()
        start = time.perf_counter()
        train_micro_step(engine, inputs.task, bars, stamp)
        check_start = time.perf_counter()
        if checked:
            assert not stops.poll(i + 1, config.warmup + config.steps + 1, runtime)
        end = time.perf_counter()
        if i >= config.warmup:
            times["with_check" if checked else "without_check"].append(end - start)
            if checked:
                times["check"].append(end - check_start)
    # The same check without the launcher watch, alternating with the watched one: what the watch adds.
    unwatched = StopRequests(["TERM", "USR1"])
    unwatched.launcher = None
    times["check_lined_up"], times["check_lined_up_unwatched"] = [], []
    for i in range(2 * config.steps):
        barrier()
        start = time.perf_counter()
        (stops if i % 2 == 0 else unwatched).poll(1, 2, runtime)
        times["check_lined_up" if i % 2 == 0 else "check_lined_up_unwatched"].append(time.perf_counter() - start)
    Path(out_dir, f"{rank}.json").write_text(json.dumps(times), encoding="utf-8")
    runtime.close()  # every rank leaves the group together: one leaving early can abort another's exit


def run(config: StopCheckConfig) -> dict[str, Any]:
    per_step = slowest_rank(run_ranks(worker, (dataclasses.asdict(config),), config.world_size))
    medians = {kind: statistics.median(values) for kind, values in per_step.items()}
    added = statistics.median(a - b for a, b in zip(per_step["with_check"], per_step["without_check"]))
    report = {"variant": config.variant, "world_size": config.world_size, "micro_batch": config.micro_batch,
              "context": config.context, "check_s": medians["check"], "check_lined_up_s": medians["check_lined_up"],
              "check_lined_up_unwatched_s": medians["check_lined_up_unwatched"],
              "added_per_step_s": added, "step_with_check_s": medians["with_check"],
              "step_without_check_s": medians["without_check"],
              "added_share_of_step": added / medians["without_check"],
              "step_ratio_with_over_without": medians["with_check"] / medians["without_check"]}
    print(f"Kronos-{config.variant}, {config.world_size} ranks, ZeRO-2 fp32, micro batch {config.micro_batch} x "
          f"{config.context} tokens, {config.steps} steps alternating with / without the stop check")
    for kind, label in (("check", "check after a step"), ("check_lined_up", "check after a barrier"),
                        ("check_lined_up_unwatched", "  without the watch")):
        print(f"{label:<22} median {medians[kind] * 1e6:9.1f} us  (min {min(per_step[kind]) * 1e6:.1f}, "
              f"max {max(per_step[kind]) * 1e6:.1f})")
    for kind in ("without_check", "with_check"):
        print(f"step {kind:<13} median {medians[kind] * 1e3:7.2f} ms  (min {min(per_step[kind]) * 1e3:.2f}, "
              f"max {max(per_step[kind]) * 1e3:.2f}, {len(per_step[kind])} steps)")
    print(f"added per step (median of pairs): {added * 1e6:.1f} us = {report['added_share_of_step']:.2%} of a step; "
          f"median step with / without: {report['step_ratio_with_over_without']:.3f}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    print(json.dumps(run(parse_config(StopCheckConfig, argv))), flush=True)


if __name__ == "__main__":
    run_main(main)
