"""Reading daily bars from a Qlib provider folder through pyqlib (never by parsing the .bin files here).

qlib is imported inside :func:`read_qlib` only: it is slow to import and configures logging on import, and most
users of ``ds_kronos.data`` (the trainer's workers) never need it. Only the folder listing is inspected directly,
to give clear errors and to find which optional fields ($amount, $vwap) exist.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ds_kronos.data.quality import screen_bars
from ds_kronos.data.series import SourceData, SymbolSeries, stack_values
from ds_kronos.errors import DataError

BASE_FIELDS: tuple[str, ...] = ("$open", "$high", "$low", "$close", "$volume")


def _check_provider(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: Qlib folder not found")
    calendar = root / "calendars" / "day.txt"
    if not calendar.is_file() or calendar.stat().st_size == 0:
        raise DataError(f"{root}: not a Qlib provider folder with daily data (missing or empty calendars/day.txt)")
    if not (root / "features").is_dir():
        raise DataError(f"{root}: not a Qlib provider folder (no features/ folder)")


def _resolve_instruments(root: Path, instrument: str) -> tuple[str | None, list[str]]:
    """Return (market name or None, explicit symbols). A name with a file in instruments/ is a market."""
    names = [p.strip() for p in instrument.split(",") if p.strip()]
    if len(names) == 1 and (root / "instruments" / f"{names[0].lower()}.txt").is_file():
        return names[0].lower(), []
    if len(names) == 1 and not (root / "features" / names[0].lower()).is_dir():
        raise DataError(f"{root}: unknown instrument {names[0]!r} (no instruments/{names[0].lower()}.txt "
                        f"and no features/{names[0].lower()}/)")
    return None, [n.upper() for n in names]


def init_qlib(root: Path) -> None:
    """qlib.init on a provider folder, as every reader of this project does it."""
    import qlib

    # kernels=1: qlib otherwise forks a joblib pool per request, which is slow for a few symbols and misbehaves
    # under pytest/DeepSpeed launchers. Caches off: they would write into the provider folder.
    logging.getLogger("qlib").setLevel(logging.WARNING)
    qlib.init(provider_uri=str(root), region="cn", kernels=1, expression_cache=None, dataset_cache=None,
              logging_level=logging.WARNING, clear_mem_cache=True)


def _drop_unknown(root: Path, symbols: list[str], skipped: list[tuple[str, str]]) -> list[str]:
    """The listed symbols that have a features folder; the others go to ``skipped`` (all missing: DataError)."""
    missing = [s for s in symbols if not (root / "features" / s.lower()).is_dir()]
    skipped += [(s, f"not in {root}/features") for s in missing]
    symbols = [s for s in symbols if s not in missing]
    if not symbols:
        raise DataError(f"{root}: unknown instrument(s) {', '.join(missing)} (no features folder)")
    return symbols


def _fields(root: Path, symbols: list[str]) -> tuple[list[str], bool]:
    """The fields to read: the base ones, and $amount and $vwap when some symbol stores them."""
    have = {f: any((root / "features" / s.lower() / f"{f[1:]}.day.bin").is_file() for s in symbols)
            for f in ("$amount", "$vwap")}
    return list(BASE_FIELDS) + [f for f in ("$amount", "$vwap") if have[f]], have["$amount"]


def _features(universe, fields: list[str], start: str, end: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(instrument, ns stamp, values) per row of Qlib's answer, sorted by instrument and time; None for no rows."""
    from qlib.data import D

    frame = D.features(universe, fields, start_time=start, end_time=end, freq="day")
    if frame is None or frame.empty:
        return None
    frame = frame.sort_index()
    inst = frame.index.get_level_values("instrument").to_numpy()
    stamps = frame.index.get_level_values("datetime").to_numpy().astype("datetime64[ns]").astype(np.int64)
    return inst, stamps, frame[fields].to_numpy(dtype=np.float64)


def _read_features(root: Path, market: str | None, symbols: list[str], instrument: str, start: str, end: str
                   ) -> tuple[list[str], list[str], bool, np.ndarray, np.ndarray, np.ndarray]:
    """Ask Qlib for the bars; returns (symbols, fields, has $amount, instrument, ns stamp, values per row)."""
    init_qlib(root)
    from qlib.data import D

    universe = D.instruments(market) if market else symbols
    if market:
        symbols = D.list_instruments(universe, start_time=start, end_time=end, as_list=True)
        if not symbols:
            raise DataError(f"{root / 'instruments' / (market + '.txt')}: no symbols listed between {start} and {end}")
    fields, has_amount = _fields(root, symbols)
    rows = _features(universe, fields, start, end)
    if rows is None:
        raise DataError(f"{root}: no rows for {instrument!r} between {start} and {end}")
    return symbols, fields, has_amount, *rows


def _one_series(symbol: str, block: np.ndarray, ts: np.ndarray, amount_col: int | None, bad_rows: str,
                skipped: list[tuple[str, str]], bad: dict) -> tuple[SymbolSeries | None, int]:
    """One symbol's rows as a series, screened; returns (series or None when nothing is left, NaN bars dropped)."""
    # Suspended days are stored as NaN by Qlib; such bars carry no information, so they are dropped.
    ok = ~np.isnan(block[:, :5]).any(axis=1)
    nan_rows = int((~ok).sum())
    block, ts = block[ok], ts[ok]
    if len(ts) == 0:
        skipped.append((symbol, "only missing values in the date range"))
        return None, nan_rows
    amount = None
    if amount_col is not None and not np.isnan(block[:, amount_col]).any():
        amount = block[:, amount_col]
    values = stack_values(block[:, 0], block[:, 1], block[:, 2], block[:, 3], block[:, 4], amount)
    screened = screen_bars(symbol, values, lambda i, t=ts: f"bar of {_day(t[i])}", bad_rows,
                           derived_amount=amount is None)
    if screened.dropped:
        bad[symbol] = screened.dropped
        ts, values = ts[screened.keep], values[screened.keep]
        if len(ts) == 0:
            skipped.append((symbol, "no bar left after dropping bars with bad values"))
            return None, nan_rows
    return SymbolSeries(symbol, ts, values.astype(np.float32)), nan_rows


def read_notes(nan_rows: int, bad: dict, has_amount: bool) -> list[str]:
    """What was dropped or derived while reading, for the prepare report."""
    notes = [f"dropped {nan_rows} bars with missing values (suspended days)"] if nan_rows else []
    if bad:
        notes.append(f"dropped {sum(sum(r.values()) for r in bad.values())} bars with bad values in {len(bad)} "
                     f"symbol(s) (--bad_rows drop)")
    if not has_amount:
        notes.append("no $amount field: amt derived as mean(open, high, low, close) x volume")
    return notes


def _series_of(inst: np.ndarray, stamps: np.ndarray, data: np.ndarray, fields: list[str], bad_rows: str,
               skipped: list[tuple[str, str]], bad: dict) -> tuple[list[SymbolSeries], int]:
    """Each instrument's rows (sorted by instrument) as a screened series; returns them and the NaN bars dropped."""
    starts = np.flatnonzero(np.r_[True, inst[1:] != inst[:-1]])
    bounds = np.r_[starts, len(inst)]
    series, nan_rows = [], 0
    amount_col = fields.index("$amount") if "$amount" in fields else None
    for a, b in zip(bounds[:-1], bounds[1:]):
        one, dropped = _one_series(str(inst[a]), data[a:b], stamps[a:b], amount_col, bad_rows, skipped, bad)
        nan_rows += dropped
        if one is not None:
            series.append(one)
    return series, nan_rows


def read_qlib(qlib_dir: str | os.PathLike, instrument: str, start: str, end: str,
              bad_rows: str = "refuse") -> SourceData:
    """Bars of ``instrument`` (market name such as csi300/all, or comma list of symbols) between two dates.

    Bad values (see :mod:`ds_kronos.data.quality`) raise a DataError naming the symbol, date and field, unless
    ``bad_rows="drop"``."""
    root = Path(qlib_dir).expanduser().resolve()
    _check_provider(root)
    market, symbols = _resolve_instruments(root, instrument)
    skipped: list[tuple[str, str]] = []
    if symbols:
        symbols = _drop_unknown(root, symbols, skipped)
    symbols, fields, has_amount, inst, stamps, data = _read_features(root, market, symbols, instrument, start, end)
    present = set(inst.tolist())
    skipped += [(s, "no rows in the date range") for s in symbols if s not in present]
    bad: dict = {}
    series, nan_rows = _series_of(inst, stamps, data, fields, bad_rows, skipped, bad)
    notes = read_notes(nan_rows, bad, has_amount)
    return SourceData(series=series, fields=fields, freq="1D", skipped=skipped, notes=notes, bad_rows=bad)


@dataclass(frozen=True)
class QlibUniverse:
    """What a Qlib read covers, listed without reading bars: the symbols, their market membership spans (None for
    an explicit list: every bar in the dates) and the fields every symbol is read with."""

    root: Path
    symbols: list[str]
    spans: dict[str, list] | None
    fields: list[str]
    has_amount: bool
    skipped: list[tuple[str, str]]
    start: str
    end: str


def qlib_universe(qlib_dir: str | os.PathLike, instrument: str, start: str, end: str) -> QlibUniverse:
    """List ``instrument`` between two dates, to read it one group of symbols at a time (:func:`read_qlib_group`)."""
    root = Path(qlib_dir).expanduser().resolve()
    _check_provider(root)
    market, symbols = _resolve_instruments(root, instrument)
    skipped: list[tuple[str, str]] = []
    init_qlib(root)
    spans = None
    if market:
        from qlib.data import D

        spans = D.list_instruments(D.instruments(market), start_time=start, end_time=end, as_list=False)
        symbols = list(spans)
        if not symbols:
            raise DataError(f"{root / 'instruments' / (market + '.txt')}: no symbols listed between {start} and {end}")
    else:
        symbols = _drop_unknown(root, symbols, skipped)
    fields, has_amount = _fields(root, symbols)
    return QlibUniverse(root, symbols, spans, fields, has_amount, skipped, start, end)


def read_qlib_group(universe: QlibUniverse, symbols: list[str], bad_rows: str = "refuse"
                    ) -> tuple[list[SymbolSeries], list[tuple[str, str]], dict, int]:
    """The bars of some of the universe's symbols, read as the whole universe would read them (the same fields,
    market symbols within their membership spans: Qlib takes a {symbol: spans} dict for that):
    (series, skipped, bad rows per symbol, NaN bars dropped). Call it in the process that listed the universe
    (Qlib is initialised there)."""
    ask = symbols if universe.spans is None else {s: universe.spans[s] for s in symbols}
    rows = _features(ask, universe.fields, universe.start, universe.end)
    skipped: list[tuple[str, str]] = []
    bad: dict = {}
    if rows is None:
        return [], [(s, "no rows in the date range") for s in symbols], bad, 0
    present = set(rows[0].tolist())
    skipped += [(s, "no rows in the date range") for s in symbols if s not in present]
    series, nan_rows = _series_of(*rows, universe.fields, bad_rows, skipped, bad)
    return series, skipped, bad, nan_rows


def _day(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[D]"))
