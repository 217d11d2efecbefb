"""Forecasting with a tokenizer/predictor pair.

Modules: ``sampler`` (the tensor-level autoregressive loop, with incremental decoding), ``frames`` (the
DataFrame API, upstream's ``KronosPredictor``), ``calendar`` (future bar timestamps), and the pieces of the
``launch/forecast.py`` job: ``config``, ``sources``, ``outputs``, ``job``.
"""

from ds_kronos.forecast.frames import (
    FEATURE_COLUMNS,
    PRICE_COLUMNS,
    Forecast,
    KronosForecaster,
    calendar_features,
    forecast_frame,
    quantile_column,
)
from ds_kronos.forecast.sampler import (
    autoregressive_forecast,
    eval_mode,
    filter_logits,
    generate_tokens,
    sample_ids,
    sample_paths,
    widen_bars,
    widen_paths,
)

__all__ = ["FEATURE_COLUMNS", "PRICE_COLUMNS", "Forecast", "KronosForecaster", "autoregressive_forecast",
           "calendar_features", "eval_mode", "filter_logits", "forecast_frame", "generate_tokens", "quantile_column",
           "sample_ids", "sample_paths", "widen_bars", "widen_paths"]
