"""Engines for the out-of-core step of data preparation: long-format Parquet (every symbol in each file, rows in any
order) -> rows grouped by symbol and sorted by time, with bounded memory. Each candidate runs in its own process;
we report seconds and that process's peak RSS. Results and the choice: docs/data_format.md.

    python benchmarks/data_engines.py --rows 4000000 --symbols 400 --files 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_input(folder: Path, rows: int, symbols: int, files: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    per_symbol = rows // symbols
    base = np.datetime64("2020-01-01T00:00", "ns").astype(np.int64)
    for f in range(files):
        n = per_symbol // files
        sym = np.repeat(np.arange(symbols), n)
        ts = base + (np.tile(np.arange(n), symbols) + f * n).astype(np.int64) * 300_000_000_000
        order = rng.permutation(len(sym))  # any row order
        price = rng.uniform(10, 20, len(sym))
        table = pa.table({"symbol": pa.array([f"S{i:05d}" for i in sym[order]]),
                          "timestamp": pa.array(ts[order].astype("datetime64[ns]")),
                          **{c: price for c in ("open", "high", "low", "close")},
                          "volume": rng.uniform(0, 1e4, len(sym))})
        pq.write_table(table, folder / f"part-{f:02d}.parquet")


def run_pyarrow(src: Path, out: Path, buckets: int) -> None:
    """Stream record batches; route each row to a bucket file by crc32(symbol); sort one bucket at a time."""
    import zlib

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    writers: dict[int, pq.ParquetWriter] = {}
    for batch in ds.dataset(src, format="parquet").to_batches(batch_size=1 << 16):
        names = pc.unique(batch["symbol"])
        bucket_of = pa.array([zlib.crc32(s.encode()) % buckets for s in names.to_pylist()], pa.int32())
        bucket = pc.take(bucket_of, pc.index_in(batch["symbol"], names))
        table = pa.Table.from_batches([batch])
        for b in pc.unique(bucket).to_pylist():
            part = table.filter(pc.equal(bucket, b))
            if b not in writers:
                writers[b] = pq.ParquetWriter(out / f"b{b:04d}.parquet", part.schema)
            writers[b].write_table(part)
    for w in writers.values():
        w.close()
    for b in range(buckets):
        table = pq.read_table(out / f"b{b:04d}.parquet")
        table.sort_by([("symbol", "ascending"), ("timestamp", "ascending")])


def run_duckdb(src: Path, out: Path, buckets: int) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit='512MB'; SET threads=1; SET preserve_insertion_order=false")
    con.execute(f"SET temp_directory='{out / 'spill'}'")
    con.execute(f"COPY (SELECT *, hash(symbol) % {buckets} AS bucket FROM read_parquet('{src}/*.parquet') "
                f"ORDER BY symbol, timestamp) TO '{out / 'sorted'}' (FORMAT parquet, PARTITION_BY (bucket))")


def run_polars(src: Path, out: Path, buckets: int) -> None:
    import polars as pl

    (pl.scan_parquet(f"{src}/*.parquet").sort(["symbol", "timestamp"])
     .sink_parquet(out / "sorted.parquet"))


def child(engine: str, src: str, out: str, buckets: int) -> None:
    start = time.perf_counter()
    {"pyarrow": run_pyarrow, "duckdb": run_duckdb, "polars": run_polars}[engine](Path(src), Path(out), buckets)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = round(time.perf_counter() - start, 2)
    print(json.dumps({"engine": engine, "seconds": seconds, "peak_rss_mb": round(peak_mb)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--symbols", type=int, default=400)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--engines", default="pyarrow,duckdb,polars")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.buckets)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        write_input(src, args.rows, args.symbols, args.files)
        for engine in args.engines.split(","):
            out = Path(tmp) / engine
            out.mkdir()
            result = subprocess.run([sys.executable, __file__, "--buckets", str(args.buckets), "--child", engine,
                                     str(src), str(out)], capture_output=True, text=True)
            print(result.stdout.strip() or f"{engine}: failed {result.stderr[-500:]}", flush=True)


if __name__ == "__main__":
    main()
