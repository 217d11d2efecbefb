"""Another split of a store without preparing again: a folder holding only ``split_view.json`` (the store's path,
relative to the folder when possible, and the split: date ranges or fractions). Every job's ``--data`` opens it as
the store with that split; the store's files and its verification are shared with every other view of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ds_kronos.atomic import write_text_atomic
from ds_kronos.data.split_choice import SplitChoice
from ds_kronos.data.store.shards import INDEX_NAME, SPLIT_VIEW_NAME, STORE_VERSION
from ds_kronos.data.store.view import StoreDataset, open_store
from ds_kronos.errors import DataError

VIEW_FORMAT = "ds_kronos.split_view"


def _open(store: Path, splits: dict, choice: SplitChoice | None = None) -> StoreDataset:
    if choice is not None:  # a job's split, over the view's
        splits = choice.settings(splits, str(store))
    return open_store(store, ranges=splits.get("ranges"),
                      fractions=tuple(splits["fractions"]) if splits.get("fractions") else None)


def write_split_view(out: Path, store: Path, splits: dict) -> StoreDataset:
    """Write the view (after opening the store with it, so a split that does not fit fails now)."""
    if not (store / INDEX_NAME).is_file():
        raise DataError(f"--view_of {store}: not a store (no {INDEX_NAME}); prepare one with --parquet or --format 2")
    if out.exists() and not (out / SPLIT_VIEW_NAME).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not a split view; refusing to write into it")
    opened = _open(store, splits)
    out.mkdir(parents=True, exist_ok=True)
    where = os.path.relpath(store.resolve(), out.resolve())
    view = {"format": VIEW_FORMAT, "format_version": STORE_VERSION, "store": where, "splits": splits}
    write_text_atomic(out / SPLIT_VIEW_NAME, json.dumps(view, indent=1) + "\n")
    return opened


def open_split_view(folder: Path, choice: SplitChoice | None = None) -> StoreDataset:
    path = folder / SPLIT_VIEW_NAME
    try:
        view = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable split view ({exc})") from None
    if not (isinstance(view, dict) and view.get("format") == VIEW_FORMAT and view.get("format_version") == STORE_VERSION
            and isinstance(view.get("store"), str) and isinstance(view.get("splits"), dict)):
        raise DataError(f"{path}: not a {VIEW_FORMAT} version {STORE_VERSION} file; write it again with "
                        f"launch/prepare_data.py --view_of")
    store = (folder / view["store"]).resolve()
    if not (store / INDEX_NAME).is_file():
        raise DataError(f"{path}: its store {store} is gone (no {INDEX_NAME})")
    return _open(store, view["splits"], choice)
