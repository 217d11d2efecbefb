"""The data-preparation job: source -> per-symbol series -> splits -> prepared folder, with a summary on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ds_kronos.config import validate
from ds_kronos.data.csv_source import read_csv_files
from ds_kronos.data.prepare_config import PrepareConfig
from ds_kronos.data.prepared import SPLITS, prepared_output, write_arrays
from ds_kronos.data.qlib_source import read_qlib
from ds_kronos.data.series import SourceData
from ds_kronos.data.splits import SplitResult, split_by_fractions, split_by_ranges
from ds_kronos.errors import DataError


def _read_source(config: PrepareConfig, log: Callable[[str], None]) -> tuple[SourceData, dict]:
    if config.qlib_dir is not None:
        first, last = config.read_dates()
        log(f"reading Qlib folder {config.qlib_dir} ({config.instrument}, {first}..{last}) through pyqlib")
        data = read_qlib(config.qlib_dir, config.instrument, first, last, bad_rows=config.bad_rows)
        return data, {"kind": "qlib", "path": str(Path(config.qlib_dir).resolve()), "instrument": config.instrument,
                      "fields": data.fields}
    log(f"reading {len(config.csv)} CSV file(s)")
    data = read_csv_files(config.csv, bad_rows=config.bad_rows)
    return data, {"kind": "csv", "path": [str(Path(p).resolve()) for p in config.csv], "fields": data.fields}


def prepare_dataset(config: PrepareConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole preparation described by ``config``; returns the written manifest."""
    validate(config)
    if config.store:
        return _prepare_store(config, log)
    # The staging folder is made first: an unusable --out fails now rather than after the (possibly long) read,
    # and any failure removes what this run created.
    with prepared_output(config.out, config.overwrite) as staging:
        manifest, too_short = _prepare_into(staging, config, log)
    for name in SPLITS:
        info = manifest["splits"][name]
        dropped = len(too_short[name])
        log(f"{name:5s}: {len(info['symbols'])} symbols, {info['rows']} rows, {info['windows']} windows, "
            f"{info['first']} .. {info['last']}" + (f" ({dropped} symbols too short here)" if dropped else ""))
    log(f"wrote {config.out} (bar spacing {manifest['freq']}, sha256 {manifest['sha256'][:12]})")
    return manifest


def _prepare_store(config: PrepareConfig, log: Callable[[str], None]) -> dict:
    from ds_kronos.data.store.build import build_store, store_from_qlib
    from ds_kronos.data.store.nodes import join_store
    from ds_kronos.data.store.split_view import write_split_view
    from ds_kronos.data.store.view import open_store

    if config.view_of is not None:
        store = write_split_view(Path(config.out), Path(config.view_of), config.split_choice())
        _log_splits(store, log)
        log(f"wrote the split view {config.out} of {config.view_of}")
        return store.manifest
    if config.qlib_dir is not None:  # pyqlib reads one group of symbols at a time
        index = store_from_qlib(config, {"kind": "qlib", "path": str(Path(config.qlib_dir).resolve()),
                                         "instrument": config.instrument}, log)
    elif config.join:
        index = join_store(Path(config.out), log)
    else:
        index = build_store(config, log)
    if config.num_nodes > 1:
        return index  # a share of the store: it opens once the nodes are joined
    _log_splits(open_store(config.out), log)
    bars = sum(e["rows"] for e in index["shards"])
    dropped = index["dropped"]
    log(f"wrote {config.out}: {len(index['shards'])} shards, {bars} bars (bar spacing {index['freq']}, sha256 "
        f"{index['sha256'][:12]}); dropped {len(dropped['too_short'])} symbols shorter than one window, skipped "
        f"{len(dropped['skipped'])} files")
    return index


def _log_splits(store, log: Callable[[str], None]) -> None:
    for name in SPLITS:
        split = store.split(name)
        windows = int(np.maximum(split.lengths - store.manifest["window"] + 1, 0).sum())
        log(f"{name:5s}: {len(split.symbols)} symbols, {len(split.values)} rows, {windows} windows")


def _prepare_into(folder: Path, config: PrepareConfig, log: Callable[[str], None]) -> tuple[dict, dict]:
    data, source = _read_source(config, log)
    for note in data.notes:
        log(f"  {note}")
    for name, reason in data.skipped:
        log(f"  skipped {name}: {reason}")
    window = config.window
    usable = [s for s in data.series if len(s) >= window]
    short = [s.symbol for s in data.series if len(s) < window]
    log(f"symbols read: {len(data.series)}; dropped {len(short)} shorter than one window ({window} bars)"
        + (f": {', '.join(short[:10])}{' ...' if len(short) > 10 else ''}" if short else "")
        + (f"; skipped {len(data.skipped)} unusable" if data.skipped else ""))
    if not usable:
        where = config.qlib_dir or ", ".join(config.csv)
        raise DataError(f"{where}: every series is shorter than one window ({window} bars = lookback "
                        f"{config.lookback} + predict {config.predict} + 1); nothing to prepare")
    if config.split is not None:
        result = split_by_fractions(usable, tuple(config.split), config.lookback, window)
        split_meta = {"split_mode": "fractions", "fractions": list(config.split), "ranges": None}
    else:
        ranges = config.ranges()
        result = split_by_ranges(usable, ranges, window)
        split_meta = {"split_mode": "ranges", "fractions": None,
                      "ranges": {name: str(r).split("..") for name, r in ranges.items()}}
    _check_splits(config, result, window)
    meta = {"source": source, "freq": data.freq, "lookback": config.lookback, "predict": config.predict,
            "bad_rows": config.bad_rows, **split_meta,
            "dropped": {"too_short": short, "skipped": [list(x) for x in data.skipped],
                        "too_short_per_split": result.too_short, "bad_rows": data.bad_rows}}
    return write_arrays(folder, result.series, meta), result.too_short


def _check_splits(config: PrepareConfig, result: SplitResult, window: int) -> None:
    where = config.qlib_dir or ", ".join(config.csv)
    for name in SPLITS:
        if result.series[name]:
            continue
        if config.split is not None:
            raise DataError(f"{where}: split {name} ({config.split[SPLITS.index(name)]:g} of the bars) has no symbol "
                            f"with a full window of {window} bars; use a smaller --lookback/--predict or more data")
        ranges = config.ranges()
        hint = "" if config.qlib_dir else "; for a short history use --split 0.8,0.1,0.1"
        raise DataError(f"{where}: {name} range {ranges[name]} has no symbol with a full window of {window} bars"
                        f"{hint}")
