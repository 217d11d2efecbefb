"""Market data: preparing Qlib/CSV sources into a memory-mapped dataset, and serving training windows from it.

Modules: ``series`` (column conventions), ``qlib_source`` / ``csv_source`` (readers), ``splits``, ``prepared``
(on-disk format), ``manifest`` (its checks), ``quality`` (bad values), ``output`` (atomic output folders),
``verify`` (files against the manifest), ``prepare`` (the job), ``demo_market`` (synthetic Qlib folder),
``windows`` (Dataset, sampler), ``split_arrays`` and ``npy`` (what both formats share), ``store`` (format 2: a
sharded, appendable store prepared out of core, splits as views).

Names are resolved lazily so that ``import ds_kronos.data`` pulls in neither torch nor qlib until they are used.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any

_EXPORTS = MappingProxyType({
    "PreparedDataset": "ds_kronos.data.prepared",
    "SplitArrays": "ds_kronos.data.prepared",
    "PrepareConfig": "ds_kronos.data.prepare_config",
    "prepare_dataset": "ds_kronos.data.prepare",
    "verify_prepared": "ds_kronos.data.verify",
    "write_demo_market": "ds_kronos.data.demo_market",
    "DemoMarketConfig": "ds_kronos.data.demo_market",
    "WindowDataset": "ds_kronos.data.windows",
    "ShardedWindowSampler": "ds_kronos.data.windows",
    "VALUE_COLUMNS": "ds_kronos.data.series",
    "TIME_FEATURE_COLUMNS": "ds_kronos.data.series",
})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ds_kronos.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
