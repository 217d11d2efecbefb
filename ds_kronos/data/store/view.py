"""Opening a store (format 2) with the interface of a prepared folder: splits are views computed at open time.

Each bar is stored once; a split is the rows of each symbol (in name order) that fall in its date range, or, for
fraction splits, between cut times that are quantiles of all distinct bar times, val and test starting
``lookback`` bars early: exactly what format 1 wrote into its split folders (:mod:`ds_kronos.data.splits`), so a
store and a folder prepared from the same bars give the same windows. A symbol with fewer than one window's rows
in a split is left out of it. The split settings given at preparation are the default; ``open_store`` takes others.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ds_kronos.data.file_stamp import file_stamp
from ds_kronos.data.manifest import SPLITS, ManifestWindow
from ds_kronos.data.npy import open_npy
from ds_kronos.data.series import TIME_FEATURE_COLUMNS, VALUE_COLUMNS
from ds_kronos.data.split_arrays import SplitArrays
from ds_kronos.data.split_choice import SplitChoice
from ds_kronos.data.splits import parse_range
from ds_kronos.data.store.rows import ConcatRows, Segments
from ds_kronos.data.store.shards import DTYPES, INDEX_NAME, SHARD_ARRAYS, file_sha256, read_index
from ds_kronos.errors import DataError

_TAILS = {"values": (len(VALUE_COLUMNS),), "timestamps": (), "time_features": (len(TIME_FEATURE_COLUMNS),)}


class _Piece:
    """One symbol's rows in one shard."""

    __slots__ = ("shard", "row0", "rows", "first", "last")

    def __init__(self, shard: int, row0: int, rows: int, first: int, last: int):
        self.shard, self.row0, self.rows, self.first, self.last = shard, row0, rows, first, last


class StoreDataset(ManifestWindow):
    """A store opened for one choice of splits; ``split(name)`` gives a :class:`SplitArrays` of row views."""

    def __init__(self, path: Path, index: dict, arrays: list[dict[str, np.ndarray]], splits: dict):
        self.path = path
        self.manifest = index
        self._arrays = arrays
        self._splits = splits

    def split(self, name: str) -> SplitArrays:
        if name not in self._splits:
            raise DataError(f"{self.path}: unknown split {name!r} (known: {', '.join(SPLITS)})")
        return self._splits[name]

    def files(self) -> list[str]:
        """Every file of the store relative to its folder, index first."""
        return [INDEX_NAME] + [f"shards/{e['name']}/{a}.npy" for e in self.manifest["shards"] for a in SHARD_ARRAYS]

    def verdict_key(self) -> dict[str, Any]:
        """What a verification verdict is valid for: the index's hash and every file's stamp (size, mtime, ctime)."""
        return {"sha256": self.manifest["sha256"], "files": {rel: file_stamp(self.path / rel) for rel in self.files()}}

    def content_problem(self) -> str | None:
        """Read every byte: each shard's files against their hashes (naming the shard), values finite, time
        increasing within each symbol. None when all is well."""
        for k, entry in enumerate(self.manifest["shards"]):
            for array in SHARD_ARRAYS:
                rel = f"shards/{entry['name']}/{array}.npy"
                if file_sha256(self.path / rel) != entry["file_sha256"][array]:
                    return (f"{self.path / rel}: shard {entry['name']} changed after preparation (sha256 differs "
                            f"from the index); prepare or append its data again")
            values, stamps, offsets = (self._arrays[k][a] for a in ("values", "timestamps", "offsets"))
            for start in range(0, len(values), 1 << 20):
                if not np.isfinite(np.asarray(values[start:start + (1 << 20)])).all():
                    return f"{self.path}/shards/{entry['name']}/values.npy: a value is not finite"
            steps = np.diff(np.asarray(stamps))
            inner = np.ones(len(steps), dtype=bool)
            inner[np.asarray(offsets[1:-1]) - 1] = False  # time may go back between symbols
            if (steps[inner] <= 0).any():
                return f"{self.path}/shards/{entry['name']}/timestamps.npy: time does not increase within a symbol"
        return None


def _open_shards(root: Path, index: dict) -> list[dict[str, np.ndarray]]:
    arrays = []
    for entry in index["shards"]:
        folder = root / "shards" / entry["name"]
        rows = int(sum(entry["rows_per_symbol"]))
        shapes = {a: (rows, *_TAILS[a]) for a in _TAILS}
        shapes.update(offsets=(len(entry["symbols"]) + 1,), times=(None,))
        opened = {a: open_npy(folder / f"{a}.npy", DTYPES[a], shapes[a], "store") for a in SHARD_ARRAYS}
        expected = np.concatenate([[0], np.cumsum(entry["rows_per_symbol"])])
        if not np.array_equal(np.asarray(opened["offsets"]), expected):
            raise DataError(f"{folder / 'offsets.npy'}: offsets differ from the index's rows per symbol (shard "
                            f"{entry['name']} changed after preparation)")
        arrays.append(opened)
    return arrays


def _pieces(index: dict) -> dict[str, list[_Piece]]:
    """Symbol -> its pieces in time order."""
    by_symbol: dict[str, list[_Piece]] = {}
    for k, entry in enumerate(index["shards"]):
        row0 = 0
        for symbol, rows, first, last in zip(entry["symbols"], entry["rows_per_symbol"], entry["first"],
                                             entry["last"]):
            by_symbol.setdefault(symbol, []).append(_Piece(k, row0, int(rows), int(first), int(last)))
            row0 += int(rows)
    for pieces in by_symbol.values():
        pieces.sort(key=lambda p: p.first)
    return by_symbol


def _search(pieces: list[_Piece], arrays: list[dict[str, np.ndarray]], t: int) -> int:
    """Rows of the symbol (over all its pieces) with time < t."""
    before = 0
    for p in pieces:
        if t <= p.first:
            return before
        if t > p.last:
            before += p.rows
            continue
        stamps = arrays[p.shard]["timestamps"][p.row0:p.row0 + p.rows]
        return before + int(np.searchsorted(stamps, t, side="left"))
    return before


def _symbol_bounds(index: dict, pieces: dict[str, list[_Piece]], arrays: list, settings: dict
                   ) -> dict[str, dict[str, tuple[int, int]]]:
    """Split -> symbol -> rows [begin, end) of that symbol's bars in the split."""
    symbols = sorted(pieces)
    bounds: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in SPLITS}
    if settings.get("fractions"):
        stamps = np.unique(np.concatenate([np.asarray(a["times"]) for a in arrays]))
        n = len(stamps)
        cut_index = [min(int(round(b * n)), n) for b in np.cumsum([0.0, *settings["fractions"]])]
        cut_time = [int(stamps[i]) if i < n else int(stamps[-1]) + 1 for i in cut_index]
        for s in symbols:
            edges = [_search(pieces[s], arrays, t) for t in cut_time]
            for k, name in enumerate(SPLITS):
                begin = edges[k] if k == 0 else max(0, edges[k] - int(index["lookback"]))
                bounds[name][s] = (begin, edges[k + 1])
        return bounds
    for name in SPLITS:
        r = parse_range(settings["ranges"][name])
        for s in symbols:
            bounds[name][s] = (_search(pieces[s], arrays, r.start), _search(pieces[s], arrays, r.stop))
    return bounds


def _split_view(name: str, bounds: dict[str, tuple[int, int]], pieces: dict[str, list[_Piece]],
                arrays: list, window: int) -> tuple[SplitArrays, list[str]]:
    segments, symbols, lengths, short = [], [], [], []
    for s, (begin, end) in bounds.items():
        if end - begin < window:
            if end > begin:
                short.append(s)
            continue
        symbols.append(s)
        lengths.append(end - begin)
        before = 0
        for p in pieces[s]:
            lo, hi = max(begin, before), min(end, before + p.rows)
            if hi > lo:
                segments.append((p.shard, p.row0 + lo - before, hi - lo))
            before += p.rows
    shared = Segments(segments, len(arrays))
    views = {a: ConcatRows([x[a] for x in arrays], shared, _TAILS[a], DTYPES[a]) for a in _TAILS}
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SplitArrays(name=name, offsets=offsets, symbols=tuple(symbols), **views), short


def split_settings(index: dict, ranges: dict[str, str] | None = None,
                   fractions: tuple[float, float, float] | None = None, where: str = "store") -> dict:
    """The split settings in force: those given (ranges for some splits keep the others' defaults), else the
    store's defaults from preparation."""
    if fractions is None and ranges is None:
        return dict(index["splits"])
    choice = SplitChoice(ranges=ranges, fractions=None if fractions is None else tuple(fractions))
    return choice.settings(index["splits"], where)


def open_store(path: str | os.PathLike, ranges: dict[str, str] | None = None,
               fractions: tuple[float, float, float] | None = None) -> StoreDataset:
    """Open a store after the checks that read no array data (index, every file's header, size and shape, offsets
    against the index) and compute its split views; ``ranges`` (split -> 'START,END', any of the three) or
    ``fractions`` override the store's default split."""
    root = Path(path)
    index = read_index(root)
    settings = split_settings(index, ranges, fractions, str(root))
    arrays = _open_shards(root, index)
    pieces = _pieces(index)
    window = int(index["window"])
    splits, too_short = {}, {}
    for name, bounds in _symbol_bounds(index, pieces, arrays, settings).items():
        splits[name], too_short[name] = _split_view(name, bounds, pieces, arrays, window)
    manifest = {**index, "split_in_force": settings, "too_short_per_split": too_short}
    return StoreDataset(root, manifest, arrays, splits)
