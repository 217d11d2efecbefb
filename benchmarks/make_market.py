"""Speed and memory of the synthetic corpus generator (launch/make_market.py): bars/s over ``--repeats`` runs (the
generator's own clock, from its corpus.json, and the wall clock of the whole command) and the peak RSS of each run
(psutil, sampled every 50 ms), for each size asked. Results: docs/pretraining.md.

    python benchmarks/make_market.py --symbols 2000 --days 100,400 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of ``command``."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if process.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    return time.perf_counter() - start, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", default="100", help="comma list: one size per value")
    parser.add_argument("--markets", default="ALPHA")
    parser.add_argument("--frequencies", default="5min")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compression", default="snappy")
    args = parser.parse_args()
    for days in map(int, args.days.split(",")):
        speeds, walls, peaks, bars = [], [], [], 0
        for repeat in range(args.repeats):
            out = Path(tempfile.mkdtemp(prefix="make_market_bench_")) / "corpus"
            command = [sys.executable, str(REPO / "launch" / "make_market.py"), "--out", str(out), "--markets",
                       args.markets, "--frequencies", args.frequencies, "--symbols", str(args.symbols), "--days",
                       str(days), "--seed", str(repeat), "--compression", args.compression]
            wall, peak = run(command)
            index = json.loads((out / "corpus.json").read_text())
            size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
            shutil.rmtree(out.parent)
            bars = index["bars"]
            speeds.append(index["bars_per_second"])
            walls.append(bars / wall)
            peaks.append(peak)
            print(f"days {days} run {repeat}: {bars:,} bars, {index['bars_per_second']:,} bars/s generating, "
                  f"{bars / wall:,.0f} bars/s wall, peak RSS {peak:.2f} GiB, {size / bars:.1f} bytes/bar on disk",
                  flush=True)
        print(f"days {days}: {bars:,} bars: generating {np.median(speeds) / 1e6:.2f}M bars/s (median; "
              f"{min(speeds) / 1e6:.2f}-{max(speeds) / 1e6:.2f}), wall {np.median(walls) / 1e6:.2f}M bars/s "
              f"({min(walls) / 1e6:.2f}-{max(walls) / 1e6:.2f}), peak RSS {max(peaks):.2f} GiB")


if __name__ == "__main__":
    main()
