"""The store's files: self-contained shards of whole symbols and the index (``store.json``) that lists them.

A shard is a folder ``shards/<name>/`` with the four arrays of format 1 (``values``, ``timestamps``,
``time_features``, ``offsets``) for its symbols, ``times.npy`` (the sorted distinct bar times, for fraction splits)
and ``shard.json`` (symbols, rows and first/last time per symbol, each file's SHA-256 and the shard's own). It is
written into a temporary sibling and renamed into place, so a shard folder that exists is complete; the index is
written last (atomically), so a store whose index exists is complete. Layout and fields: docs/data_format.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ds_kronos.atomic import write_text_atomic
from ds_kronos.data.series import TIME_FEATURE_COLUMNS, VALUE_COLUMNS, SymbolSeries, time_features
from ds_kronos.errors import DataError, naming_path

STORE_FORMAT = "ds_kronos.store"
STORE_VERSION = 2
INDEX_NAME = "store.json"
SPLIT_VIEW_NAME = "split_view.json"
SHARD_META = "shard.json"
SHARD_ARRAYS: tuple[str, ...] = ("values", "timestamps", "time_features", "offsets", "times")
DTYPES = {"values": np.float32, "timestamps": np.int64, "time_features": np.int8, "offsets": np.int64,
          "times": np.int64}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_digest(files: dict[str, str]) -> str:
    """The shard's hash: over its file names and their hashes, in the format's order."""
    return hashlib.sha256("".join(f"{a}:{files[a]};" for a in SHARD_ARRAYS).encode()).hexdigest()


def write_shard(shards_dir: Path, name: str, series: list[SymbolSeries]) -> dict:
    """Write ``series`` (whole symbols, any order; stored by name) as shard ``name``; returns its entry."""
    series = sorted(series, key=lambda s: s.symbol)
    final = shards_dir / name
    tmp = shards_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with naming_path(tmp):
            tmp.mkdir(parents=True)
            lengths = np.array([len(s) for s in series], dtype=np.int64)
            stamps = (np.concatenate([s.timestamps for s in series]) if series else np.zeros(0)).astype(np.int64)
            arrays = {
                "values": (np.concatenate([s.values for s in series]) if series
                           else np.zeros((0, len(VALUE_COLUMNS)))).astype(np.float32),
                "timestamps": stamps,
                "time_features": time_features(stamps),
                "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                "times": np.unique(stamps),
            }
            if not np.isfinite(arrays["values"]).all():  # the sources screen every value; last line of defence
                raise AssertionError(f"non-finite values reached the writer in shard {name}")
            files = {}
            for array in SHARD_ARRAYS:
                np.save(tmp / f"{array}.npy", arrays[array], allow_pickle=False)
                files[array] = file_sha256(tmp / f"{array}.npy")
            entry = {"name": name, "symbols": [s.symbol for s in series], "rows_per_symbol": lengths.tolist(),
                     "first": [int(s.timestamps[0]) for s in series], "last": [int(s.timestamps[-1]) for s in series],
                     "rows": int(lengths.sum()), "file_sha256": files, "sha256": shard_digest(files)}
            (tmp / SHARD_META).write_text(json.dumps(entry) + "\n", encoding="utf-8")
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def read_shard_entry(folder: Path) -> dict | None:
    """A finished shard's entry (``shard.json``), or None when the folder is not a finished shard."""
    try:
        entry = json.loads((folder / SHARD_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("name") == folder.name else None


def write_index(root: Path, meta: dict, shards: list[dict]) -> dict:
    """Write ``store.json`` atomically (the last file a preparation writes); returns it."""
    shards = sorted(shards, key=lambda e: e["name"])
    digest = hashlib.sha256("".join(f"{e['name']}:{e['sha256']};" for e in shards).encode()).hexdigest()
    index = {"format": STORE_FORMAT, "format_version": STORE_VERSION, **meta,
             "window": int(meta["lookback"]) + int(meta["predict"]) + 1,
             "value_columns": list(VALUE_COLUMNS), "time_feature_columns": list(TIME_FEATURE_COLUMNS),
             "shards": shards, "sha256": digest,
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with naming_path(root / INDEX_NAME):
        write_text_atomic(root / INDEX_NAME, json.dumps(index) + "\n")
    return index


def is_store(folder: Path) -> bool:
    return (Path(folder) / INDEX_NAME).is_file()


def _index_problem(index: Any) -> str | None:
    if not isinstance(index, dict):
        return f"expected a JSON object, got {type(index).__name__}"
    if index.get("format") != STORE_FORMAT or index.get("format_version") != STORE_VERSION:
        return (f"format {index.get('format')!r} version {index.get('format_version')!r} is not {STORE_FORMAT!r} "
                f"version {STORE_VERSION} (written by another ds_kronos?)")
    for key in ("lookback", "predict", "window"):
        if not (isinstance(index.get(key), int) and index[key] >= 1):
            return f"{key} must be a positive integer, got {index.get(key)!r}"
    if index.get("value_columns") != list(VALUE_COLUMNS):
        return f"value_columns must be {list(VALUE_COLUMNS)}"
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        return "shards must be a non-empty list"
    for entry in shards:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]
                and "/" not in entry["name"] and not entry["name"].startswith(".")
                and isinstance(entry.get("symbols"), list) and isinstance(entry.get("rows_per_symbol"), list)
                and isinstance(entry.get("first"), list) and isinstance(entry.get("last"), list)
                and isinstance(entry.get("file_sha256"), dict) and set(entry["file_sha256"]) == set(SHARD_ARRAYS)
                and len({len(entry[k]) for k in ("symbols", "rows_per_symbol", "first", "last")}) == 1):
            return f"shard entry {str(entry)[:80]!r} is malformed"
    return None


def read_index(root: Path) -> dict:
    """The checked index of the store at ``root``; DataError (one line) for anything else."""
    path = root / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable store index ({exc})") from None
    problem = _index_problem(index)
    if problem:
        raise DataError(f"{path}: {problem}; prepare the data again with launch/prepare_data.py")
    return index
