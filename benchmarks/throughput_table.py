"""Run benchmarks/train_throughput.py over a grid and print the README's markdown table.

    DS_ACCELERATOR=cpu python benchmarks/throughput_table.py --variants mini small --world_sizes 1 2 \\
        --zero 0 2 3 --precisions fp32 bf16 --micro_batch 8 --context 100 --steps 6 --warmup 2

The torch DDP baseline does not depend on the ZeRO stage, so it runs once per (variant, world size, precision,
compile), with the first stage of the grid. ``--compile false true`` adds compiled rows (train_throughput.py
--compile: DeepSpeed's engine.compile, and the DDP baseline compiled the same way) and a "compiled" column.
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args()
    with_compile = "true" in args.compile
    rows = ["| variant | ranks | precision | ZeRO |" + (" compiled |" if with_compile else "")
            + " samples/s | tokens/s | step median (s) | peak RSS/rank (MiB) | MFU | DDP samples/s | DeepSpeed / DDP |",
            "|" + "---|" * (12 if with_compile else 11)]
    grid = [(v, w, p, c) for v in args.variants for w in args.world_sizes for p in args.precisions
            for c in args.compile]
    for variant, world, precision, compile in grid:
        baseline = None
        for zero in args.zero:
            common = ["--variant", variant, "--world_size", str(world), "--precision", precision,
                      "--zero", str(zero), "--micro_batch", str(args.micro_batch), "--context",
                      str(args.context), "--steps", str(args.steps), "--warmup", str(args.warmup),
                      "--baseline", "true" if baseline is None else "false", "--compile", compile]
            result = run(common)
            if baseline is None:
                baseline = result["baseline_samples_per_s"]
            compiled = (f" {'yes' if compile == 'true' else 'no'} |" if with_compile else "")
            row = (f"| {variant} | {world} | {precision} | {zero} |{compiled} {result['samples_per_s']:.2f} | "
                   f"{result['tokens_per_s']:.0f} | {result['step_s_median']:.2f} | "
                   f"{result['peak_rss_mb']:.0f} | {result['mfu']:.1%} | {baseline:.2f} | "
                   f"{result['samples_per_s'] / baseline:.2f} |")
            rows.append(row)
            print(row, flush=True, file=sys.stderr)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
