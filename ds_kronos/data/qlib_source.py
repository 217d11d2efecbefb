"""Reading daily bars from a Qlib provider folder through pyqlib (never by parsing the .bin files here).

qlib is imported inside :func:`read_qlib` only: it is slow to import and configures logging on import, and most
users of ``ds_kronos.data`` (the trainer's workers) never need it. Only the folder listing is inspected directly,
to give clear errors and to find which optional fields ($amount, $vwap) exist.
"""

from __future__ import annotations

import logging
import os
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
    # $amount and $vwap are optional: a field is read only when some symbol stores it.
    have = {f: [s for s in symbols if (root / "features" / s.lower() / f"{f[1:]}.day.bin").is_file()]
            for f in ("$amount", "$vwap")}
    fields = list(BASE_FIELDS) + [f for f in ("$amount", "$vwap") if have[f]]
    frame = D.features(universe, fields, start_time=start, end_time=end, freq="day")
    if frame is None or frame.empty:
        raise DataError(f"{root}: no rows for {instrument!r} between {start} and {end}")
    frame = frame.sort_index()
    inst = frame.index.get_level_values("instrument").to_numpy()
    stamps = frame.index.get_level_values("datetime").to_numpy().astype("datetime64[ns]").astype(np.int64)
    return symbols, fields, bool(have["$amount"]), inst, stamps, frame[fields].to_numpy(dtype=np.float64)


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


def _read_notes(nan_rows: int, bad: dict, has_amount: bool) -> list[str]:
    """What was dropped or derived while reading, for the prepare report."""
    notes = [f"dropped {nan_rows} bars with missing values (suspended days)"] if nan_rows else []
    if bad:
        notes.append(f"dropped {sum(sum(r.values()) for r in bad.values())} bars with bad values in {len(bad)} "
                     f"symbol(s) (--bad_rows drop)")
    if not has_amount:
        notes.append("no $amount field: amt derived as mean(open, high, low, close) x volume")
    return notes


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
    starts = np.flatnonzero(np.r_[True, inst[1:] != inst[:-1]])
    bounds = np.r_[starts, len(inst)]
    series, nan_rows, bad = [], 0, {}
    amount_col = fields.index("$amount") if "$amount" in fields else None
    for a, b in zip(bounds[:-1], bounds[1:]):
        one, dropped = _one_series(str(inst[a]), data[a:b], stamps[a:b], amount_col, bad_rows, skipped, bad)
        nan_rows += dropped
        if one is not None:
            series.append(one)
    notes = _read_notes(nan_rows, bad, has_amount)
    return SourceData(series=series, fields=fields, freq="1D", skipped=skipped, notes=notes, bad_rows=bad)


def _day(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[D]"))
