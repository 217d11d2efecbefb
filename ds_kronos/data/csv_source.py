"""Reading bars from CSV files, one symbol per file (symbol = file stem).

Column names are matched case-insensitively: a time column (timestamps, timestamp, date, datetime or time),
open, high, low, close, volume (or vol) and optionally amount (or amt; derived as mean(OHLC) x volume when
absent). Rows are sorted by time; duplicate timestamps (first kept) and rows with a missing value are dropped and
counted. A file that cannot be used (no time column, unparsable, missing a column) is skipped with its reason; the
caller fails only when nothing is left. Bad values (see :mod:`ds_kronos.data.quality`) and files with no complete
row end the preparation with one line naming the file, line and column, unless ``bad_rows="drop"``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from ds_kronos.data.quality import screen_bars
from ds_kronos.data.series import SourceData, SymbolSeries, infer_frequency, stack_values
from ds_kronos.errors import DataError

TIME_NAMES = ("timestamps", "timestamp", "date", "datetime", "time")
REQUIRED = MappingProxyType({"open": ("open",), "high": ("high",), "low": ("low",), "close": ("close",),
                             "volume": ("volume", "vol")})
OPTIONAL = MappingProxyType({"amount": ("amount", "amt")})


class _Skip(Exception):
    """A file-level problem: the file is skipped and the reason reported."""


def _find(columns: dict[str, str], aliases: tuple[str, ...]) -> str | None:
    return next((columns[a] for a in aliases if a in columns), None)


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna() & (raw.astype(str).str.strip().str.lower() != "nan")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        # +2: one for the header line, one because people count lines from 1.
        raise _Skip(f"{path}: column {column!r} has a non-numeric value {str(raw.iloc[row])!r} on line {row + 2}")
    return values.to_numpy(dtype=np.float64)


def _empty_file_problem(path: Path, cols: dict[str, np.ndarray]) -> str:
    """Why no row of a file is complete: a column empty on every line, else the first line missing a value."""
    for name, values in cols.items():
        if np.isnan(values).all():
            return f"{path}: column {name!r} is empty (NaN) on every line; no complete row to use"
    line = next(i for i in range(len(next(iter(cols.values()))))
                if any(np.isnan(v[i]) for v in cols.values()))
    return f"{path}: every line misses a value (the first, line {line + 2}); no complete row to use"


def _load_frame(path: Path) -> pd.DataFrame:
    """The file as strings; an unreadable file is a _Skip naming why."""
    if path.is_dir():
        raise _Skip(f"{path}: is a folder, expected a CSV file")
    if not path.is_file():
        raise _Skip(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _Skip(f"{path}: cannot read as CSV ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise _Skip(f"{path}: cannot read ({exc.strerror or exc})") from None


def _pick_columns(path: Path, frame: pd.DataFrame) -> tuple[str, dict[str, str], str | None]:
    """The frame's (time column, required value columns by name, amount column or None), matched by alias."""
    columns = {str(c).strip().lower(): c for c in frame.columns}
    time_col = _find(columns, TIME_NAMES)
    if time_col is None:
        raise _Skip(f"{path}: missing a time column (one of {', '.join(TIME_NAMES)}); "
                    f"columns are {', '.join(map(str, frame.columns))}")
    picked = {}
    for name, aliases in REQUIRED.items():
        picked[name] = _find(columns, aliases)
        if picked[name] is None:
            raise _Skip(f"{path}: missing required column {name!r}; columns are {', '.join(map(str, frame.columns))}")
    return time_col, picked, _find(columns, OPTIONAL["amount"])


def _parse_times(path: Path, frame: pd.DataFrame, time_col: str) -> pd.Series:
    """The time column as naive timestamps (NaT where empty); an unparsable value is a _Skip naming its line."""
    stamps = pd.to_datetime(frame[time_col], errors="coerce")
    if stamps.isna().any() and frame[time_col].notna()[stamps.isna()].any():
        row = int(np.flatnonzero((stamps.isna() & frame[time_col].notna()).to_numpy())[0])
        raise _Skip(f"{path}: cannot parse time {frame[time_col].iloc[row]!r} on line {row + 2}")
    if getattr(stamps.dt, "tz", None) is not None:
        # Keep the exchange's wall clock: time features describe the trading session, not UTC.
        stamps = stamps.dt.tz_localize(None)
    return stamps


def _sorted_unique(ts: np.ndarray, matrix: np.ndarray, lines: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rows in time order, keeping the first of each timestamp; returns them and the duplicate count."""
    order = np.argsort(ts, kind="stable")
    ts, matrix, lines = ts[order], matrix[order], lines[order]
    first = np.r_[True, ts[1:] != ts[:-1]]
    return ts[first], matrix[first], lines[first], int((~first).sum())


def read_csv_file(path: Path, bad_rows: str = "refuse") -> tuple[SymbolSeries, dict[str, int], str]:
    """One file -> (series, drop counts, inferred frequency); raises _Skip for an unusable file and DataError for
    a bad value under ``bad_rows="refuse"`` (see :mod:`ds_kronos.data.quality`)."""
    frame = _load_frame(path)
    time_col, picked, amount_col = _pick_columns(path, frame)
    if len(frame) == 0:
        raise _Skip(f"{path}: no rows")
    stamps = _parse_times(path, frame, time_col)
    cols = {name: _numeric(frame, c, path) for name, c in picked.items()}
    if amount_col is not None:
        cols["amount"] = _numeric(frame, amount_col, path)
    ts = stamps.to_numpy().astype("datetime64[ns]").astype(np.int64)
    lines = np.arange(len(frame), dtype=np.int64) + 2  # file line of each row: after the header, counted from 1
    matrix = np.stack(list(cols.values()), axis=1)
    ok = ~np.isnan(matrix).any(axis=1) & stamps.notna().to_numpy()
    if not ok.any():
        problem = _empty_file_problem(path, cols)
        if bad_rows == "refuse":
            raise DataError(f"{problem}; fix the file, or pass --bad_rows drop to skip such files")
        raise _Skip(problem)
    n_nan = int((~ok).sum())
    ts, matrix, lines, n_dup = _sorted_unique(ts[ok], matrix[ok], lines[ok])
    values = stack_values(*(matrix[:, i] for i in range(5)), matrix[:, 5] if amount_col is not None else None)
    screened = screen_bars(path.stem, values, lambda i: f"line {lines[i]} of {path}", bad_rows,
                           derived_amount=amount_col is None)
    if not screened.keep.all():
        ts, values = ts[screened.keep], values[screened.keep]
        if len(ts) == 0:
            raise _Skip(f"{path}: no row left after dropping rows with bad values")
    drops = {"duplicates": n_dup, "nan": n_nan, "bad": sum(screened.dropped.values()), "bad_reasons": screened.dropped}
    return SymbolSeries(path.stem, ts, values.astype(np.float32)), drops, infer_frequency(ts)


def read_csv_files(paths: list[str | os.PathLike], bad_rows: str = "refuse") -> SourceData:
    series, skipped, notes, freqs, bad = [], [], [], Counter(), {}
    amount_everywhere = True
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            s, drops, freq = read_csv_file(path, bad_rows)
        except _Skip as exc:
            skipped.append((str(path), str(exc)))
            continue
        if s.symbol in {x.symbol for x in series}:
            skipped.append((str(path), f"{path}: symbol {s.symbol!r} given twice (file stems must be unique)"))
            continue
        notes.append(f"{path}: {len(s)} bars, dropped {drops['duplicates']} duplicate timestamps and "
                     f"{drops['nan']} rows with missing values"
                     + (f" and {drops['bad']} rows with bad values" if drops["bad"] else "")
                     + f"; bar spacing {freq or 'unknown'}")
        if drops["bad"]:
            bad[s.symbol] = drops["bad_reasons"]
        amount_everywhere &= has_amount(path)
        series.append(s)
        freqs[freq] += 1
    if not series:
        first = skipped[0][1] if skipped else "no CSV files given"
        more = f" (and {len(skipped) - 1} more file(s) skipped)" if len(skipped) > 1 else ""
        raise DataError(first + more)
    freq = freqs.most_common(1)[0][0]
    if len(freqs) > 1:
        notes.append(f"files have different bar spacings {dict(freqs)}; recording {freq}")
    fields = ["open", "high", "low", "close", "volume"] + (["amount"] if amount_everywhere else [])
    return SourceData(series=series, fields=fields, freq=freq, skipped=skipped, notes=notes, bad_rows=bad)


def has_amount(path: Path) -> bool:
    """Whether the file's header names an amount column (False for a file whose header cannot be read)."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (ValueError, OSError, UnicodeDecodeError):
        return False
    return any(str(c).strip().lower() in OPTIONAL["amount"] for c in header)
