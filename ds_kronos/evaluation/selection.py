"""What an evaluation forecasts: the split, the horizon settings and the rolling origins, chosen and checked
before any process group exists (identical on every rank)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ds_kronos.data.prepared import PreparedDataset, SplitArrays
from ds_kronos.data.verify import verify_prepared
from ds_kronos.errors import ConfigError, DataError
from ds_kronos.evaluation.config import EvalConfig
from ds_kronos.evaluation.origins import Origins, build_origins


@dataclasses.dataclass(frozen=True)
class EvaluationSet:
    """What will be forecast: the split, the horizon settings and the origins (identical on every rank)."""

    prepared: PreparedDataset
    split: SplitArrays
    lookback: int
    pred_len: int
    stride: int
    origins: Origins
    qlib_dir: Path | None = None  # --backtest: the checked Qlib provider folder


def select_evaluation(config: EvalConfig) -> EvaluationSet:
    prepared = verify_prepared(config.data)  # checked once per node and change of the files
    qlib_dir = None
    if config.backtest:
        from ds_kronos.evaluation.backtest import check_backtest  # no qlib import: only the folder is checked
        qlib_dir = check_backtest(prepared, config.benchmark, config.qlib_dir)
    split = prepared.split(config.split)
    if not split.symbols or int(split.offsets[-1]) == 0:
        raise DataError(f"{prepared.path}: split {config.split!r} has no rows")
    lookback = prepared.lookback
    pred_len = config.pred_len or prepared.predict
    stride = config.stride or pred_len
    if pred_len > config.max_context:
        raise ConfigError(f"--pred_len {pred_len} (the prepared set's predict) exceeds --max_context "
                          f"{config.max_context}")
    origins = build_origins(split.timestamps, split.offsets, lookback, pred_len, stride,
                            config.max_origins_per_symbol)
    if len(origins) == 0:
        raise DataError(f"{prepared.path}: split {config.split!r}: no forecast origin fits: each needs {lookback} "
                        f"bars of history and {pred_len} after, the longest symbol has {int(split.lengths.max())} "
                        f"rows")
    return EvaluationSet(prepared, split, lookback, pred_len, stride, origins, qlib_dir)


def calibration_quantiles(config: EvalConfig) -> list[float]:
    """The quantiles of the sampled paths to keep: none with a single path (its quantiles are the path)."""
    return sorted(set(config.quantiles or [])) if config.sample_count > 1 else []
