"""Forecast the next bars of one or more series with a (fine-tuned, preset or published) tokenizer and predictor.

    python launch/forecast.py --tokenizer runs/tokenizer/best_model --predictor runs/predictor/best_model \
        --csv a.csv b.csv --lookback 400 --pred_len 120 --sample_count 10 --quantiles 0.1,0.5,0.9 --out runs/fc
    python launch/forecast.py --tokenizer ... --predictor ... --qlib_dir ~/.qlib/qlib_data/cn_data \
        --instrument SH600000,SZ000001 --lookback 90 --pred_len 10
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/forecast.py ...   # series split across ranks

Writes SYMBOL.csv (mean and quantile bands of each OHLCV field per future bar) and SYMBOL.png (history as
candlesticks, the forecast median with its band) per series, and summary.json. Options: `--help`, or a
YAML/JSON file of them with --config.
"""

from __future__ import annotations

from collections.abc import Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.forecast.config import ForecastConfig


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(ForecastConfig, argv)
    from ds_kronos.forecast.job import run_forecast  # heavy imports after the arguments are known to be valid
    run_forecast(config)


if __name__ == "__main__":
    run_main(main)
