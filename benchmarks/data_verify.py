"""What verifying a node's copy of a store costs: opening it (no data read), the content check (every byte hashed,
values finite, time increasing) with the files cold (dropped from the page cache) and warm, a later run that
trusts the verdict, and comparing the copies' hashes across ranks. Results: docs/data_format.md, "Several nodes".

    python benchmarks/data_verify.py --bars 4000000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_scale import write_inputs  # noqa: E402  (the benchmark's shared input writer)


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the store's pages (clean pages are dropped; no root needed)."""
    for path in folder.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=4_000_000)
    parser.add_argument("--symbols", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from ds_kronos.data import PrepareConfig, PreparedDataset, prepare_dataset, verify_prepared
    from ds_kronos.data.copies import check_same_copies
    from ds_kronos.data.verify import verdict_locations

    with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp:
        root = Path(tmp)
        write_inputs(root, args.bars, args.symbols, 12, csv=False)
        store = root / "store"
        prepare_dataset(PrepareConfig(parquet=[str(root / "parquet")], out=str(store), lookback=90, predict=10,
                                      split=[0.8, 0.1, 0.1], memory_gb=1.5), log=lambda line: None)
        size = sum(p.stat().st_size for p in store.rglob("*.npy"))
        shards = len(PreparedDataset.open(store).manifest["shards"])
        print(f"store: {args.bars:,} bars, {shards} shards, {size / 2**20:,.0f} MiB of arrays", flush=True)
        results: dict[str, list[float]] = {"open (no data read)": [], "content check, cold": [],
                                           "content check, warm": [], "later run (verdict trusted)": [],
                                           "open + copies compared": []}
        for _ in range(args.repeats):
            results["open (no data read)"].append(timed(lambda: PreparedDataset.open(store)))
            for state in ("cold", "warm"):
                for location in verdict_locations(store):
                    location.unlink(missing_ok=True)
                if state == "cold":
                    drop_from_page_cache(store)
                results[f"content check, {state}"].append(timed(lambda: verify_prepared(store, local_rank=0)))
            results["later run (verdict trusted)"].append(timed(lambda: verify_prepared(store, local_rank=0)))
            results["open + copies compared"].append(
                timed(lambda: check_same_copies(PreparedDataset.open(store), lambda x: [x])))
        for name, seconds in results.items():
            spread = f"{min(seconds):.3f}-{max(seconds):.3f}"
            rate = (f"{size / statistics.median(seconds) / 2**20:8,.0f} MiB/s" if "content" in name else "")
            print(f"{name:30s} median {statistics.median(seconds):8.3f} s  (range {spread})  {rate}", flush=True)


if __name__ == "__main__":
    main()
