"""Preparation at scale: bars/s and the peak summed RSS of the preparation's processes (the job and its workers,
sampled every 50 ms with psutil), for format 1 from CSV (one file per symbol) and the store (format 2) from long
Parquet (one file per month, every symbol in each, rows shuffled) with 1 and 2 workers, in the same run; then
windows/s served by WindowDataset.get_batch from each. Results: docs/data_format.md.

    python benchmarks/data_scale.py --bars 8000000,20000000 --memory_gb 1.5
    python benchmarks/data_scale.py --bars 20000000,200000000 --workers 1,2 --v1 --append_day
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
BAR_NS = 300_000_000_000  # 5-minute bars


def write_inputs(root: Path, bars: int, symbols: int, months: int, csv: bool) -> None:
    """Parquet: ``months`` files, each holding a stretch of time for every symbol; CSV: one file per symbol."""
    rng = np.random.default_rng(0)
    per_symbol = bars // symbols
    per_month = per_symbol // months
    base = np.datetime64("2020-01-01T00:00", "ns").astype(np.int64)
    (root / "parquet").mkdir(parents=True)
    names = np.array([f"S{i:05d}" for i in range(symbols)])
    for m in range(months):
        steps = np.arange(m * per_month, (m + 1) * per_month, dtype=np.int64)
        sym = np.repeat(np.arange(symbols), len(steps))
        ts = base + np.tile(steps, symbols) * BAR_NS
        close = 10 + np.abs(np.sin(ts / 1e13 + sym)) * 5
        order = rng.permutation(len(sym))
        table = pa.table({"symbol": names[sym[order]], "timestamp": ts[order].astype("datetime64[ns]"),
                          "open": close[order], "high": close[order] * 1.01, "low": close[order] * 0.99,
                          "close": close[order], "volume": rng.uniform(1, 1e4, len(sym))})
        pq.write_table(table, root / "parquet" / f"month-{m:03d}.parquet")
    if csv:
        (root / "csv").mkdir()
        for i, name in enumerate(names):
            ts = base + np.arange(per_month * months, dtype=np.int64) * BAR_NS
            close = 10 + np.abs(np.sin(ts / 1e13 + i)) * 5
            pd.DataFrame({"timestamps": ts.astype("datetime64[ns]"), "open": close, "high": close * 1.01,
                          "low": close * 0.99, "close": close, "volume": 100.0}).to_csv(root / "csv" / f"{name}.csv",
                                                                                      index=False)


def write_day(root: Path, bars: int, symbols: int, months: int) -> Path:
    """One trading day of 5-minute bars (288) of every symbol, right after the corpus's last bar: what a daily update
    appends."""
    per_month = bars // symbols // months
    steps = np.arange(per_month * months, per_month * months + 288, dtype=np.int64)
    sym = np.repeat(np.arange(symbols), len(steps))
    ts = np.datetime64("2020-01-01T00:00", "ns").astype(np.int64) + np.tile(steps, symbols) * BAR_NS
    close = 10 + np.abs(np.sin(ts / 1e13 + sym)) * 5
    names = np.array([f"S{i:05d}" for i in range(symbols)])
    path = root / "day.parquet"
    pq.write_table(pa.table({"symbol": names[sym], "timestamp": ts.astype("datetime64[ns]"), "open": close,
                             "high": close * 1.01, "low": close * 0.99, "close": close,
                             "volume": np.full(len(sym), 100.0)}), path)
    return path


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(seconds, peak summed RSS in GiB of the process and its children)."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        total = 0
        try:
            for p in [process, *process.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, peak / 2**30


def windows_per_s(path: Path, seconds: float = 3.0) -> float:
    from ds_kronos.data import PreparedDataset, WindowDataset

    ds = WindowDataset(PreparedDataset.open(path), "train", max_samples=200_000, seed=0)
    done, start, k = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        ds.get_batch(list(range(k, k + 256)))
        done, k = done + 256, (k + 256) % (len(ds) - 256)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", default="8000000", help="comma list of corpus sizes")
    parser.add_argument("--symbols", type=int, default=400)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--memory_gb", type=float, default=1.5)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--v1", action="store_true", help="also prepare format 1 from CSV (first size only)")
    parser.add_argument("--append_day", action="store_true",
                        help="also append one day of every symbol to the last store of each size, timed")
    args = parser.parse_args()
    prepare = [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--lookback", "90", "--predict", "10",
               "--split", "0.8,0.1,0.1"]
    print(f"{'bars':>11s} {'preparation':32s} {'seconds':>8s} {'bars/s':>10s} {'peak RSS GiB':>12s} "
          f"{'windows/s':>10s}", flush=True)
    for i, bars in enumerate(int(b) for b in args.bars.split(",")):
        with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp:
            root = Path(tmp)
            write_inputs(root, bars, args.symbols, args.months, csv=args.v1 and i == 0)
            runs = [(f"store, Parquet, {w} worker(s), {args.memory_gb:g} GB",
                     ["--parquet", str(root / "parquet"), "--workers", w, "--memory_gb", str(args.memory_gb)])
                    for w in args.workers.split(",")]
            if args.v1 and i == 0:
                runs.insert(0, ("format 1, CSV (in memory)", ["--csv", *map(str, sorted((root / "csv").iterdir()))]))
            for k, (name, extra) in enumerate(runs):
                out = root / f"out{k}"
                seconds, rss = peak_rss(prepare + extra + ["--out", str(out)])
                print(f"{bars:11,d} {name:32s} {seconds:8.1f} {bars / seconds:10,.0f} {rss:12.2f} "
                      f"{windows_per_s(out):10,.0f}   {disk_bytes(out) / bars:.1f} disk bytes/bar", flush=True)
            if args.append_day:
                day = write_day(root, bars, args.symbols, args.months)
                seconds, rss = peak_rss([sys.executable, str(REPO / "launch" / "prepare_data.py"), "--parquet",
                                         str(day), "--append", "--out", str(out)])
                print(f"{bars:11,d} {'append one day (' + str(288 * args.symbols) + ' bars)':32s} {seconds:8.1f} "
                      f"{288 * args.symbols / seconds:10,.0f} {rss:12.2f} {windows_per_s(out):10,.0f}", flush=True)


if __name__ == "__main__":
    main()
