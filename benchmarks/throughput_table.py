"""Run benchmarks/train_throughput.py over a grid and print the markdown table of docs/performance.md.

    DS_ACCELERATOR=cpu python benchmarks/throughput_table.py --variants mini small --world_sizes 1 2 \\
        --zero 0 2 3 --precisions fp32 bf16 --micro_batch 8 --context 100 --steps 6 --warmup 2

The torch DDP baseline does not depend on the ZeRO stage, so it runs once per (variant, world size, precision,
compile), with the first stage of the grid. ``--compile false true`` adds compiled rows (train_throughput.py
--compile: DeepSpeed's engine.compile, and the DDP baseline compiled the same way) and a "compiled" column;
``--compile_zero 0`` limits them to ZeRO-0. ``--repeats N`` runs the grid N times (rounds) and shows medians and
min-max; each round's ratio uses the baseline run next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("train_throughput.py")


def run(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"benchmark failed: {' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["mini", "small"])
    parser.add_argument("--world_sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--zero", nargs="+", type=int, default=[0, 2, 3])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--micro_batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=100)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", nargs="+", default=["false"], choices=["false", "true"],
                        help="false true: eager and compiled rows; true: compiled rows only (compiled in the warm-up)")
    parser.add_argument("--compile_zero", nargs="+", type=int, default=None,
                        help="ZeRO stages that get compiled rows (default: every --zero stage); must include the "
                             "first --zero stage, whose rows carry the DDP baseline")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over the whole grid (each round runs every row once, so a slow spell of a "
                             "shared machine spreads over the rows); rows show the median and min-max")
    parser.add_argument("--overlap_grad_reduce", default="false", choices=["false", "true"],
                        help="ZeRO-0 rows: the gradient all-reduce overlapped with backward (train.py's option)")
    args = parser.parse_args()
    with_compile = "true" in args.compile
    compile_zero = args.zero if args.compile_zero is None else args.compile_zero
    if args.zero[0] not in compile_zero:
        parser.error("--compile_zero must include the first --zero stage (its rows carry the DDP baseline)")
    grid = [(v, w, p, c, z) for v in args.variants for w in args.world_sizes for p in args.precisions
            for c in args.compile for z in args.zero if c == "false" or z in compile_zero]
    results: dict[tuple, list[dict]] = {key: [] for key in grid}
    for round_index in range(args.repeats):
        for key in grid:
            variant, world, precision, compile, zero = key
            # The DDP baseline does not depend on the ZeRO stage: it runs with the first stage of the grid.
            common = ["--variant", variant, "--world_size", str(world), "--precision", precision,
                      "--zero", str(zero), "--micro_batch", str(args.micro_batch), "--context",
                      str(args.context), "--steps", str(args.steps), "--warmup", str(args.warmup),
                      "--baseline", "true" if zero == args.zero[0] else "false", "--compile", compile,
                      "--overlap_grad_reduce", args.overlap_grad_reduce]
            results[key].append(run(common))
            result = results[key][-1]
            print(f"round {round_index + 1}/{args.repeats} {key}: {result['samples_per_s']:.2f} samples/s"
                  + (f", DDP {result['baseline_samples_per_s']:.2f}" if result.get("baseline_samples_per_s")
                     else ""), flush=True, file=sys.stderr)
    spread = " (min-max)" if args.repeats > 1 else ""
    rows = ["| variant | ranks | precision | ZeRO |" + (" compiled |" if with_compile else "")
            + f" samples/s{spread} | step median (s) | peak RSS/rank (MiB) | MFU | probe limit (samples/s) | "
            f"DDP samples/s{spread} | DeepSpeed / DDP{spread} |",
            "|" + "---|" * (12 if with_compile else 11)]
    for key in grid:
        variant, world, precision, compile, zero = key
        runs = results[key]
        baselines = results[(variant, world, precision, compile, args.zero[0])]
        ddp = [r["baseline_samples_per_s"] for r in baselines]
        # Each round's ratio uses that round's baseline (run next to it), then the median of the ratios.
        ratios = [r["samples_per_s"] / b for r, b in zip(runs, ddp)]
        compiled = f" {'yes' if compile == 'true' else 'no'} |" if with_compile else ""
        samples = _spread([r["samples_per_s"] for r in runs])
        # What a matmul probe of this process allows: every FLOP of the step at the probe's rate, on every rank.
        limit = statistics.median(r["peak_tflops"] * 1e12 * world / r["flops_per_sample"] for r in runs)
        rows.append(f"| {variant} | {world} | {precision} | {zero} |{compiled} {samples} | "
                    f"{statistics.median(r['step_s_median'] for r in runs):.2f} | "
                    f"{statistics.median(r['peak_rss_mb'] for r in runs):.0f} | "
                    f"{statistics.median(r['mfu'] for r in runs):.1%} | "
                    f"{limit:.2f} | {_spread(ddp)} | "
                    f"{_spread(ratios)} |")
    print("\n".join(rows))
    print(json.dumps({"rows": [{"key": list(key), "runs": results[key]} for key in grid]}))


def _spread(values: list[float]) -> str:
    median = statistics.median(values)
    return f"{median:.2f}" if len(values) == 1 else f"{median:.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
