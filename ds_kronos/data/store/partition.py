"""The out-of-core step of preparing Parquet input: stream each file in record batches (pyarrow) and route every
row to the bucket of its symbol (crc32 of the name), writing one part file per (input file, bucket).

Memory is bounded by the batch size and the ``buffer_bytes`` of rows held before a flush, never by the file.
Columns are matched as for CSV (case-insensitive, the same aliases); rows keep their input order within a part, so
"the first of duplicate timestamps is kept" means the same as for CSV. A time zone is turned into the exchange's
wall clock (``pyarrow.compute.local_timestamp``: the bar's local time in its zone, the zone dropped), as CSV does.
A part is written under a temporary name and renamed; a marker per input file says all of its parts are done.
"""

from __future__ import annotations

import glob
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ds_kronos.data.csv_source import OPTIONAL, REQUIRED, TIME_NAMES
from ds_kronos.errors import DataError, naming_path

PART_SCHEMA = pa.schema([("symbol", pa.string()), ("ts", pa.int64())]
                        + [(c, pa.float64()) for c in ("open", "high", "low", "close", "volume", "amount")])
BATCH_ROWS = 1 << 16


def bucket_of(symbol: str, buckets: int) -> int:
    """The bucket of a symbol: stable across runs, machines and Python versions."""
    return zlib.crc32(symbol.encode("utf-8")) % buckets


def expand_inputs(paths: list[str], suffix: str) -> list[Path]:
    """Files, folders (every ``*suffix`` below them) and globs, sorted and without repeats; one line for a path
    that names nothing."""
    found: list[Path] = []
    for raw in paths:
        if any(ch in raw for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(raw), recursive=True))
            if not matches:
                raise DataError(f"{raw}: no file matches")
            found += matches
        elif Path(raw).expanduser().is_dir():
            matches = sorted(Path(raw).expanduser().rglob(f"*{suffix}"))
            if not matches:
                raise DataError(f"{raw}: folder holds no {suffix} file")
            found += matches
        elif Path(raw).expanduser().is_file():
            found.append(Path(raw).expanduser())
        else:
            raise DataError(f"{raw}: no such file or folder")
    return sorted(dict.fromkeys(p.resolve() for p in found))


def _columns(path: Path, schema: pa.Schema, symbol_column: str) -> dict[str, str | None]:
    names = {n.strip().lower(): n for n in schema.names}
    picked: dict[str, str | None] = {"symbol": names.get(symbol_column.lower())}
    picked["ts"] = next((names[a] for a in TIME_NAMES if a in names), None)
    if picked["ts"] is None:
        raise DataError(f"{path}: missing a time column (one of {', '.join(TIME_NAMES)}); columns are "
                        f"{', '.join(schema.names)}")
    for name, aliases in {**REQUIRED, **OPTIONAL}.items():
        picked[name] = next((names[a] for a in aliases if a in names), None)
        if picked[name] is None and name in REQUIRED:
            raise DataError(f"{path}: missing required column {name!r}; columns are {', '.join(schema.names)}")
    return picked


def file_fields(path: Path, symbol_column: str) -> tuple[int, bool]:
    """(rows, has an amount column) of a Parquet file, from its footer; one line for an unreadable file."""
    try:
        meta = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    picked = _columns(path, meta.schema_arrow, symbol_column)
    return meta.metadata.num_rows, picked["amount"] is not None


def _wall_clock_ns(path: Path, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Times as int64 ns of the exchange's wall clock (NaT -> int64 min, dropped later as a missing value)."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:
            column = pc.local_timestamp(column)
        column = column.cast(pa.timestamp("ns"))
    elif pa.types.is_date(kind):
        column = column.cast(pa.timestamp("ns"))
    else:
        try:
            stamps = pd.to_datetime(pd.Series(column.to_pylist(), dtype=object), errors="raise")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: cannot parse the time column ({str(exc).splitlines()[0]})") from None
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_localize(None)  # keep the wall clock, as for CSV
        return stamps.to_numpy().astype("datetime64[ns]").astype(np.int64)
    return pc.fill_null(column.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)


def _normalised(path: Path, batch: pa.RecordBatch, picked: dict[str, str | None]) -> pa.Table:
    n = batch.num_rows
    symbol = (batch.column(picked["symbol"]).cast(pa.string()) if picked["symbol"]
              else pa.array([path.stem] * n, pa.string()))
    columns = {"symbol": symbol, "ts": pa.array(_wall_clock_ns(path, batch.column(picked["ts"])), pa.int64())}
    for name in ("open", "high", "low", "close", "volume", "amount"):
        if picked[name] is None:
            columns[name] = pa.nulls(n, pa.float64())  # no amount column: derived later
            continue
        try:
            values = batch.column(picked[name]).cast(pa.float64())
        except pa.ArrowException as exc:
            raise DataError(f"{path}: column {picked[name]!r} is not numeric ({str(exc).splitlines()[0]})") from None
        columns[name] = pc.fill_null(values, float("nan"))  # a missing value: the row is dropped and counted
    return pa.table(columns, schema=PART_SCHEMA)


def partition_file(path: Path, file_index: int, parts_dir: Path, buckets: int, symbol_column: str,
                   buffer_bytes: int, only: set[int] | None = None) -> int:
    """Route the rows of one Parquet file to bucket parts ``parts_dir/b<bucket>/f<file_index>.parquet``; returns
    the rows read. ``only``: the buckets this node prepares (others are skipped)."""
    try:
        source = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    picked = _columns(path, source.schema_arrow, symbol_column)
    writers: dict[int, pq.ParquetWriter] = {}
    pending: dict[int, list[pa.Table]] = {}
    held = rows = 0

    def flush() -> None:
        for b, tables in pending.items():
            if b not in writers:
                (parts_dir / f"b{b:05d}").mkdir(parents=True, exist_ok=True)
                writers[b] = pq.ParquetWriter(parts_dir / f"b{b:05d}" / f".f{file_index:06d}.tmp", PART_SCHEMA)
            writers[b].write_table(pa.concat_tables(tables))
        pending.clear()

    with naming_path(parts_dir):
        try:
            for batch in source.iter_batches(batch_size=BATCH_ROWS):
                table = _normalised(path, batch, picked)
                rows += table.num_rows
                names = pc.unique(table["symbol"])
                of_name = pa.array([bucket_of(s, buckets) for s in names.to_pylist()], pa.int32())
                bucket = pc.take(of_name, pc.index_in(table["symbol"], names))
                for b in pc.unique(bucket).to_pylist():
                    if only is not None and b not in only:
                        continue
                    part = table.filter(pc.equal(bucket, b))
                    pending.setdefault(b, []).append(part)
                    held += part.nbytes
                if held > buffer_bytes:
                    flush()
                    held = 0
            flush()
        except pa.ArrowException as exc:
            raise DataError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
        finally:
            for writer in writers.values():
                writer.close()
        for b in writers:
            folder = parts_dir / f"b{b:05d}"
            os.replace(folder / f".f{file_index:06d}.tmp", folder / f"f{file_index:06d}.parquet")
    return rows
