"""Windows per second served by a DataLoader: ds_kronos' memory-mapped WindowDataset vs. an upstream-style dataset
that slices a pandas DataFrame per sample (df.iloc[start:end].values, then numpy normalisation).

    python benchmarks/data_throughput.py                       # builds a 40-symbol demo market in a temp folder
    python benchmarks/data_throughput.py --prepared DIR        # an existing prepared dataset
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.data import (
    PrepareConfig,
    PreparedDataset,
    ShardedWindowSampler,
    WindowDataset,
    prepare_dataset,
    write_demo_market,
)
from ds_kronos.data.series import TIME_FEATURE_COLUMNS, VALUE_COLUMNS


@dataclass(kw_only=True)
class BenchConfig:
    """Measure data-loading throughput (windows/s)."""

    prepared: str | None = option(None, help="prepared dataset folder (default: build a demo one in a temp dir)")
    symbols: int = option(40, help="demo market size when --prepared is not given")
    batch_size: int = option(64, help="DataLoader batch size")
    seconds: float = option(3.0, help="time spent per measurement")
    workers: list[int] = option(default_factory=lambda: [0, 2], help="DataLoader worker counts to measure")

    def problems(self) -> list[str]:
        return [] if self.batch_size > 0 and self.seconds > 0 else ["--batch_size and --seconds must be positive"]


class PandasIlocWindows(Dataset):
    """Upstream Kronos' way: one DataFrame per symbol, a random (symbol, start) and df.iloc per sample."""

    def __init__(self, prepared: PreparedDataset, split: str, lookback: int, predict: int, seed: int = 0):
        arrays = prepared.split(split)
        self.window, self.lookback = lookback + predict + 1, lookback
        self.frames, self.index = {}, []
        for i, symbol in enumerate(arrays.symbols):
            rows = slice(int(arrays.offsets[i]), int(arrays.offsets[i + 1]))
            frame = pd.DataFrame(np.asarray(arrays.values[rows]), columns=list(VALUE_COLUMNS))
            frame[list(TIME_FEATURE_COLUMNS)] = np.asarray(arrays.time_features[rows])
            self.frames[symbol] = frame
            self.index += [(symbol, s) for s in range(len(frame) - self.window + 1)]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int):
        symbol, start = self.index[int(self.rng.integers(len(self.index)))]
        win = self.frames[symbol].iloc[start:start + self.window]
        x = win[list(VALUE_COLUMNS)].values.astype(np.float32)
        stamp = win[list(TIME_FEATURE_COLUMNS)].values.astype(np.float32)
        past = x[: self.lookback]
        x = np.clip((x - past.mean(axis=0)) / (past.std(axis=0) + 1e-5), -5.0, 5.0)
        return torch.from_numpy(x), torch.from_numpy(stamp)


def _rate(loader: DataLoader, seconds: float) -> float:
    """Windows/s over whole passes of the loader (worker start-up included, as a training epoch sees it)."""
    done, start = 0, time.perf_counter()
    while True:
        for x, _ in loader:
            done += x.shape[0]
            if time.perf_counter() - start > seconds:
                return done / (time.perf_counter() - start)


def _get_batch_rate(ds: WindowDataset, batch: int, seconds: float) -> float:
    done, start, pos = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        idx = [(0, (pos + k) % len(ds)) for k in range(batch)]
        x, _ = ds.get_batch(idx)
        done, pos = done + x.shape[0], pos + batch
    return done / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(BenchConfig, argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = config.prepared
        if path is None:
            qlib_dir = write_demo_market(Path(tmp) / "qlib", symbols=config.symbols, seed=0)
            path = str(Path(tmp) / "prepared")
            prepare_dataset(PrepareConfig(qlib_dir=str(qlib_dir), instrument="all", out=path), log=lambda _: None)
        prepared = PreparedDataset.open(path)
        ours = WindowDataset(prepared, "train", max_samples=20_000, seed=0)
        reference = PandasIlocWindows(prepared, "train", prepared.lookback, prepared.predict)
        b = config.batch_size
        print(f"train split: {len(prepared.train.symbols)} symbols, {ours.num_windows} windows of "
              f"{ours.window} bars; batch {b}; {config.seconds:g} s per measurement; torch threads 1")
        print(f"{'dataset':42s} {'workers':>7s} {'windows/s':>12s}")
        results = []
        for workers in config.workers:
            sampler = ShardedWindowSampler(len(ours), batch_size=b, drop_last=True)
            loaders = {
                "pandas df.iloc per sample (upstream style)": DataLoader(reference, batch_size=b, num_workers=workers,
                                                                         shuffle=True, drop_last=True),
                "ds_kronos WindowDataset (memory-mapped)": DataLoader(ours, batch_size=b, sampler=sampler,
                                                                      num_workers=workers, drop_last=True),
            }
            for name, loader in loaders.items():
                rate = _rate(loader, config.seconds)
                results.append((name, workers, rate))
                print(f"{name:42s} {workers:7d} {rate:12,.0f}", flush=True)
        rate = _get_batch_rate(ours, b, config.seconds)
        print(f"{'ds_kronos WindowDataset.get_batch (no loader)':42s} {'-':>7s} {rate:12,.0f}")


if __name__ == "__main__":
    run_main(main)
