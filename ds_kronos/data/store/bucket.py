"""One bucket of symbols -> one shard: its rows sorted by symbol and time, cleaned as format 1 cleans them.

Parquet buckets come from :mod:`ds_kronos.data.store.partition`; CSV buckets are groups of whole files read with
:func:`ds_kronos.data.csv_source.read_csv_file`. Per symbol: rows with a missing value are dropped and counted, the
first of duplicate timestamps (in input order) is kept, values are screened (:mod:`ds_kronos.data.quality`) under
the bad-row policy. A new symbol shorter than one window is left out (as format 1 does); later bars of a stored
symbol (``--append``) must begin after its last stored bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ds_kronos.data.csv_source import _Skip, read_csv_file  # _Skip: a file skipped with its reason
from ds_kronos.data.quality import screen_bars
from ds_kronos.data.series import SymbolSeries, infer_frequency, stack_values
from ds_kronos.data.store.shards import write_shard
from ds_kronos.errors import DataError


@dataclass
class BucketJob:
    """What a worker needs to turn one bucket into one shard (picklable)."""

    shard: str
    shards_dir: Path
    window: int
    bad_rows: str
    parts: list[Path] = field(default_factory=list)  # Parquet parts, in input order
    csv_files: list[Path] = field(default_factory=list)
    stored_last: dict[str, int] = field(default_factory=dict)  # --append: symbol -> its last stored bar (ns)


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def _series(job: BucketJob, symbol: str, ts: np.ndarray, raw: np.ndarray, report: dict) -> SymbolSeries | None:
    """raw: float64 [rows, 6] (amount NaN-free where given, null -> derived) in input order."""
    given_amount = ~np.isnan(raw[:, 5])
    ok = ~np.isnan(raw[:, :5]).any(axis=1) & (ts != np.iinfo(np.int64).min)
    n_nan = int((~ok).sum())
    ts, raw, given_amount = ts[ok], raw[ok], given_amount[ok]
    order = np.argsort(ts, kind="stable")
    ts, raw, given_amount = ts[order], raw[order], given_amount[order]
    first = np.r_[True, ts[1:] != ts[:-1]] if len(ts) else np.zeros(0, bool)
    n_dup = int((~first).sum())
    ts, raw, given_amount = ts[first], raw[first], given_amount[first]
    derived = not given_amount.all()
    values = stack_values(*(raw[:, i] for i in range(5)), None)
    values[given_amount, 5] = raw[given_amount, 5]
    screened = screen_bars(symbol, values, lambda i: f"bar {_iso(ts[i])}", job.bad_rows, derived_amount=derived)
    ts, values = ts[screened.keep], values[screened.keep]
    counts = {k: v for k, v in (("nan", n_nan), ("duplicates", n_dup)) if v}
    if screened.dropped:
        report["bad_rows"][symbol] = screened.dropped
    if counts:
        report["dropped_rows"][symbol] = counts
    return _checked(job, SymbolSeries(symbol, ts, values.astype(np.float32)), report)


def _checked(job: BucketJob, s: SymbolSeries, report: dict) -> SymbolSeries | None:
    if s.symbol in job.stored_last:
        last = job.stored_last[s.symbol]
        if len(s) and int(s.timestamps[0]) <= last:
            raise DataError(f"--append: {s.symbol} has a bar at {_iso(s.timestamps[0])}, not after its last stored "
                            f"bar {_iso(last)}; append only later bars (the stored range is kept as it is)")
        return s if len(s) else None
    if len(s) < job.window:
        report["too_short"].append(s.symbol)
        return None
    return s


def _parquet_series(job: BucketJob, report: dict) -> list[SymbolSeries]:
    table = pq.read_table(job.parts)
    # Symbols as dictionary codes: 4 bytes a bar instead of one Python string each.
    encoded = table["symbol"].combine_chunks().dictionary_encode()
    names, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
    ts = table["ts"].to_numpy()
    raw = np.stack([table[c].to_numpy(zero_copy_only=False).astype(np.float64)
                    for c in ("open", "high", "low", "close", "volume", "amount")], axis=1)
    del table, encoded
    order = np.argsort(codes, kind="stable")  # by symbol, input order kept within one
    codes, ts, raw = codes[order], ts[order], raw[order]
    bounds = np.r_[np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]), len(codes)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = _series(job, names[int(codes[a])], ts[a:b], raw[a:b], report)
        if s is not None:
            out.append(s)
    return out


def _csv_series(job: BucketJob, report: dict) -> list[SymbolSeries]:
    out: list[SymbolSeries] = []
    for path in job.csv_files:
        try:
            s, drops, _ = read_csv_file(path, job.bad_rows)
        except _Skip as exc:
            report["skipped"].append([str(path), str(exc)])
            continue
        if any(x.symbol == s.symbol for x in out):
            why = f"{path}: symbol {s.symbol!r} given twice (file stems must be unique)"
            report["skipped"].append([str(path), why])
            continue
        counts = {k: drops[k] for k in ("nan", "duplicates") if drops[k]}
        if counts:
            report["dropped_rows"][s.symbol] = counts
        if drops["bad"]:
            report["bad_rows"][s.symbol] = drops["bad_reasons"]
        s = _checked(job, s, report)
        if s is not None:
            out.append(s)
    return out


def run_bucket(job: BucketJob) -> dict:
    """Write the bucket's shard; returns its entry plus a report (drops, spacing) for the summary."""
    report: dict = {"too_short": [], "skipped": [], "bad_rows": {}, "dropped_rows": {}}
    series = _parquet_series(job, report) if job.parts else _csv_series(job, report)
    spacing = [infer_frequency(s.timestamps) for s in series[:50]]
    entry = write_shard(job.shards_dir, job.shard, series) if series else None
    return {"entry": entry, "report": report, "freq": max(set(spacing), key=spacing.count) if spacing else ""}
