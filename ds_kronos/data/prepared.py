"""The prepared-dataset folder: writing it atomically and opening it memory-mapped.

Layout (format version 1; also described in ``docs/data_format.md``)::

    OUT/manifest.json                   JSON, see below
    OUT/<split>/values.npy              float32 [rows, 6]: open, high, low, close, vol, amt
    OUT/<split>/timestamps.npy          int64 [rows]: bar time, ns since 1970-01-01, wall clock (no time zone)
    OUT/<split>/time_features.npy       int8 [rows, 5]: minute, hour, weekday (Monday=0), day of month, month
    OUT/<split>/offsets.npy             int64 [n_symbols + 1]: symbol i owns rows offsets[i]:offsets[i+1]

for ``<split>`` in train, val, test. All symbols of a split are concatenated in the order of the manifest's
symbol list, each in time order. Files are plain ``.npy`` (no pickle; ``allow_pickle=False`` on load) and are
opened with ``mmap_mode='r'``, so every rank and DataLoader worker on a node shares one copy in the page cache.

``manifest.json`` holds ``format`` ("ds_kronos.prepared"), ``format_version``, ``source`` (kind, path, fields,
instrument), ``freq`` (pandas-style bar spacing, e.g. '1D' or '5min'), ``lookback``, ``predict``, ``window``
(= lookback + predict + 1), ``split_mode`` with ``ranges`` or ``fractions``, per split ``symbols``,
``rows_per_symbol``, ``rows``, ``windows``, ``first``/``last`` timestamps, and ``sha256`` over the array files
(in the order of ``files``), plus ``created`` (UTC).

The folder is written as ``OUT.tmp-<pid>`` and renamed into place at the end, so a crash never leaves a folder
that has a manifest but partial arrays.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ds_kronos.data.series import TIME_FEATURE_COLUMNS, VALUE_COLUMNS, SymbolSeries, time_features
from ds_kronos.errors import DataError

FORMAT_NAME = "ds_kronos.prepared"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
ARRAYS: tuple[str, ...] = ("values", "timestamps", "time_features", "offsets")
_DTYPES = MappingProxyType({"values": np.float32, "timestamps": np.int64, "time_features": np.int8,
                           "offsets": np.int64})


@dataclass(frozen=True)
class SplitArrays:
    """One split of a prepared dataset: memory-mapped arrays plus the symbol names in row order."""

    name: str
    values: np.ndarray
    timestamps: np.ndarray
    time_features: np.ndarray
    offsets: np.ndarray
    symbols: tuple[str, ...]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def symbol_rows(self, symbol: str) -> slice:
        i = self.symbols.index(symbol)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


class PreparedDataset:
    """A prepared dataset folder, validated on open; arrays are memory-mapped read-only."""

    def __init__(self, path: Path, manifest: dict, splits: dict[str, SplitArrays]):
        self.path = path
        self.manifest = manifest
        self._splits = splits

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PreparedDataset":
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{root}: not a prepared dataset (no manifest.json); create it with launch/prepare_data.py")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{manifest_path}: format {manifest.get('format')!r} version "
                            f"{manifest.get('format_version')!r} is not {FORMAT_NAME!r} version {FORMAT_VERSION}")
        splits = {name: _open_split(root, name, manifest) for name in SPLITS}
        return cls(root, manifest, splits)

    def split(self, name: str) -> SplitArrays:
        if name not in self._splits:
            raise DataError(f"{self.path}: unknown split {name!r} (known: {', '.join(SPLITS)})")
        return self._splits[name]

    @property
    def train(self) -> SplitArrays:
        return self._splits["train"]

    @property
    def val(self) -> SplitArrays:
        return self._splits["val"]

    @property
    def test(self) -> SplitArrays:
        return self._splits["test"]

    @property
    def lookback(self) -> int:
        return int(self.manifest["lookback"])

    @property
    def predict(self) -> int:
        return int(self.manifest["predict"])

    @property
    def freq(self) -> str:
        return str(self.manifest["freq"])

    def verify(self) -> None:
        """Recompute the content hash (reads every byte; not done by :meth:`open`)."""
        digest = content_hash(self.path, self.manifest["files"])
        if digest != self.manifest["sha256"]:
            raise DataError(f"{self.path}: content hash mismatch (files changed after preparation)")


def _open_split(root: Path, name: str, manifest: dict) -> SplitArrays:
    info = manifest.get("splits", {}).get(name)
    if info is None:
        raise DataError(f"{root / 'manifest.json'}: split {name!r} missing")
    arrays = {}
    for array in ARRAYS:
        file = root / name / f"{array}.npy"
        if not file.is_file():
            raise DataError(f"{file}: missing (prepared dataset incomplete)")
        try:
            arrays[array] = np.load(file, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{file}: unreadable ({exc})") from None
        if arrays[array].dtype != _DTYPES[array]:
            raise DataError(f"{file}: dtype {arrays[array].dtype}, expected {np.dtype(_DTYPES[array])}")
    rows, n_symbols = int(info["rows"]), len(info["symbols"])
    expected = {"values": (rows, len(VALUE_COLUMNS)), "timestamps": (rows,),
                "time_features": (rows, len(TIME_FEATURE_COLUMNS)), "offsets": (n_symbols + 1,)}
    for array, shape in expected.items():
        if arrays[array].shape != shape:
            raise DataError(f"{root / name / (array + '.npy')}: shape {arrays[array].shape}, manifest says {shape}")
    if n_symbols and (arrays["offsets"][0] != 0 or arrays["offsets"][-1] != rows):
        raise DataError(f"{root / name / 'offsets.npy'}: offsets do not span the {rows} rows")
    return SplitArrays(name=name, symbols=tuple(info["symbols"]), **arrays)


def content_hash(root: Path, files: list[str]) -> str:
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode())
        with open(root / rel, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def count_windows(lengths: np.ndarray, window: int) -> int:
    return int(np.maximum(np.asarray(lengths, dtype=np.int64) - window + 1, 0).sum())


def check_output_path(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite, and never overwrite something that is not ours."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DataError(f"{out}: output path exists; pass --overwrite to replace it")
    if out.is_dir() and ((out / "manifest.json").is_file() or not any(out.iterdir())):
        return
    raise DataError(f"{out}: exists and is not a prepared dataset folder; refusing to overwrite it")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temp folder into place; the old one (already checked to be ours) is removed after."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_prepared(out: str | os.PathLike, splits: dict[str, list[SymbolSeries]], meta: dict,
                   overwrite: bool = False) -> dict:
    """Write the three splits and the manifest into ``out`` atomically; returns the manifest.

    ``meta`` supplies the source description, ``freq``, ``lookback``, ``predict`` and the split settings.
    """
    out = Path(out)
    check_output_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    window = int(meta["lookback"]) + int(meta["predict"]) + 1
    try:
        files, split_info = [], {}
        for name in SPLITS:
            series = splits.get(name, [])
            (tmp / name).mkdir(parents=True)
            lengths = np.array([len(s) for s in series], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            timestamps = (np.concatenate([s.timestamps for s in series]) if series
                          else np.zeros(0, np.int64)).astype(np.int64)
            values = (np.concatenate([s.values for s in series]) if series
                      else np.zeros((0, len(VALUE_COLUMNS)), np.float32)).astype(np.float32)
            arrays = {"values": values, "timestamps": timestamps, "time_features": time_features(timestamps),
                      "offsets": offsets}
            for array in ARRAYS:
                np.save(tmp / name / f"{array}.npy", arrays[array], allow_pickle=False)
                files.append(f"{name}/{array}.npy")
            split_info[name] = {
                "symbols": [s.symbol for s in series],
                "rows_per_symbol": lengths.tolist(),
                "rows": int(offsets[-1]),
                "windows": count_windows(lengths, window),
                "first": _iso(timestamps.min()) if len(timestamps) else None,
                "last": _iso(timestamps.max()) if len(timestamps) else None,
            }
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **meta,
            "window": window,
            "value_columns": list(VALUE_COLUMNS),
            "time_feature_columns": list(TIME_FEATURE_COLUMNS),
            "splits": split_info,
            "files": files,
            "sha256": content_hash(tmp, files),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        # The output may have appeared while we were working (another run); check again right before the swap.
        check_output_path(out, overwrite)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))
