"""Options of the data-preparation job (``launch/prepare_data.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ds_kronos.config import option
from ds_kronos.data.quality import BAD_ROW_POLICIES
from ds_kronos.data.splits import DateRange, parse_range

# Upstream Kronos' convention: val and test start a few months before the previous split ends (lookback overlap).
DEFAULT_RANGES: Mapping[str, str] = MappingProxyType({
    "train": "2011-01-01,2022-12-31",
    "val": "2022-09-01,2024-06-30",
    "test": "2024-04-01,2025-06-05",
})


@dataclass(kw_only=True)
class PrepareConfig:
    """Prepare a Qlib provider folder or CSV files as a memory-mappable train/val/test dataset."""

    qlib_dir: str | None = option(None, help="Qlib provider folder (calendars/, instruments/, features/)")
    csv: list[str] | None = option(None, nargs="+",
                                   help="CSV file(s), one symbol per file (symbol = file stem); not with --qlib_dir")
    parquet: list[str] | None = option(None, nargs="+",
                                       help="Parquet files, folders or globs: long format with a symbol column (see "
                                            "--symbol_column), rows in any order, or one symbol per file without it "
                                            "(symbol = file stem); writes a store (format 2)")
    symbol_column: str = option("symbol", help="name of the symbol column of --parquet input")
    format: int = option(1, choices=(1, 2), help="1: one folder per split (the original format); 2: a sharded, "
                                                 "appendable store whose splits are views (implied by --parquet)")
    workers: int = option(1, help="processes that prepare buckets of symbols in parallel (format 2)", ge=1)
    memory_gb: float = option(2.0, help="memory for the whole preparation, all workers together (format 2): it sets "
                                        "how many buckets the symbols are spread over", gt=0)
    append: bool = option(False, help="add the input to the store at --out: later bars of its symbols and new "
                                      "symbols, as new shards; stored files are not rewritten")
    num_nodes: int = option(1, help="machines that prepare one store together, each a disjoint share of the "
                                    "symbols (format 2); then --join", ge=1)
    node_rank: int = option(0, help="this machine's share, 0 .. --num_nodes - 1", ge=0)
    join: bool = option(False, help="write the store's index at --out from the shard lists of all --num_nodes "
                                    "nodes (their shards/ and store.node-K.json copied there)")
    view_of: str | None = option(None, help="write at --out a split view of this store: the split options given "
                                            "(--train_range/... or --split) over its bars, nothing copied; --data OUT "
                                            "then uses that split")
    instrument: str = option("csi300", help="Qlib market (csi300, all, ...) or a comma list of symbols")
    out: str | None = option(None, help="output folder of the prepared dataset")
    train_range: list[str] | None = option(None, help=f"train dates START,END (default {DEFAULT_RANGES['train']})")
    val_range: list[str] | None = option(None, help=f"val dates START,END (default {DEFAULT_RANGES['val']})")
    test_range: list[str] | None = option(None, help=f"test dates START,END (default {DEFAULT_RANGES['test']})")
    split: list[float] | None = option(None, help="time-ordered fractions TRAIN,VAL,TEST instead of date ranges "
                                                  "(e.g. 0.8,0.1,0.1); val/test start `lookback` bars early")
    lookback: int = option(90, help="bars of context per window (normalisation uses these only)", ge=1)
    predict: int = option(10, help="bars to predict per window; a window is lookback + predict + 1 bars", ge=1)
    overwrite: bool = option(False, help="replace an existing prepared dataset at --out")
    bad_rows: str = option("refuse", choices=BAD_ROW_POLICIES,
                           help="rows with a non-finite, overflowing or implausible value (price <= 0, high < low, "
                                "negative volume or amount) and files with no complete row: 'refuse' ends with "
                                "one line naming the symbol, row and column; 'drop' leaves them out and counts them "
                                "in the manifest (dropped.bad_rows)")

    @property
    def store(self) -> bool:
        """Whether the output is a store (format 2)."""
        return (self.format == 2 or bool(self.parquet) or self.append or self.num_nodes > 1 or self.join
                or self.view_of is not None)

    @property
    def window(self) -> int:
        return self.lookback + self.predict + 1

    def ranges(self) -> dict[str, DateRange]:
        given = {"train": self.train_range, "val": self.val_range, "test": self.test_range}
        return {name: parse_range(value if value is not None else DEFAULT_RANGES[name])
                for name, value in given.items()}

    def read_dates(self) -> tuple[str, str]:
        """The first and last day (inclusive, as Qlib takes them) that any split's date range covers."""
        ranges = self.ranges().values()
        day = lambda ns: str(np.datetime64(int(ns), "ns").astype("datetime64[D]"))  # noqa: E731
        # stop is exclusive: step back one nanosecond
        return day(min(r.start for r in ranges)), day(max(r.stop for r in ranges) - 1)

    def split_choice(self) -> dict:
        """The split as a store records it: fractions, or date ranges split -> "START,END"."""
        if self.split is not None:
            return {"fractions": list(self.split), "ranges": None}
        return {"fractions": None, "ranges": {n: str(r).replace("..", ",") for n, r in self.ranges().items()}}

    def problems(self) -> list[str]:
        problems = []
        if self.node_rank >= self.num_nodes:
            problems.append(f"--node_rank {self.node_rank} is not below --num_nodes {self.num_nodes}")
        if self.qlib_dir is not None and (self.append or self.num_nodes > 1):
            problems.append("--qlib_dir is read whole through pyqlib: no --append or --num_nodes (use --parquet)")
        if self.num_nodes > 1 and self.append:
            problems.append("--append runs on one machine (not with --num_nodes)")
        if self.view_of is not None and (self.qlib_dir or self.csv or self.parquet or self.join or self.append):
            problems.append("--view_of takes no input, only the store, --out and the split options")
        elif self.view_of is not None:
            pass
        elif self.join and (self.qlib_dir or self.csv or self.parquet):
            problems.append("--join takes no input, only --out (the folder holding every node's shards)")
        elif not self.join and sum(x is not None and x != [] for x in (self.qlib_dir, self.csv, self.parquet)) != 1:
            problems.append("give exactly one of --qlib_dir DIR, --csv FILE [FILE ...] or --parquet PATH [PATH ...]")
        if self.append and self.overwrite:
            problems.append("--append and --overwrite are mutually exclusive")
        if not self.out:
            problems.append("--out is required (folder to write the prepared dataset to)")
        elif self.qlib_dir and Path(self.out).resolve() == Path(self.qlib_dir).resolve():
            problems.append(f"--out {self.out} is the Qlib folder itself")
        if not self.instrument.strip():
            problems.append("--instrument is empty")
        for name in ("train_range", "val_range", "test_range"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.split is not None:
                problems.append(f"--{name} and --split are mutually exclusive")
                continue
            try:
                parse_range(value)
            except ValueError as exc:
                problems.append(f"--{name}: {exc}")
        if self.split is not None:
            text = ",".join(map(str, self.split))
            if len(self.split) != 3 or min(self.split) <= 0 or sum(self.split) > 1.0 + 1e-9:
                problems.append(f"--split needs three positive fractions summing to at most 1, got {text}")
        return problems
