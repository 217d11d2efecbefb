"""Prepare market data for training: a Qlib provider folder (read through pyqlib) or CSV files -> a memory-mapped
train/val/test dataset. See docs/data_format.md for the output and `--help` for the options.

    python launch/prepare_data.py --qlib_dir DIR --instrument csi300 --out prepared/csi300
    python launch/prepare_data.py --csv a.csv b.csv --split 0.8,0.1,0.1 --lookback 90 --predict 10 --out prepared/x
"""

from __future__ import annotations

from typing import Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.data.prepare import prepare_dataset
from ds_kronos.data.prepare_config import PrepareConfig


def main(argv: Sequence[str] | None = None) -> None:
    prepare_dataset(parse_config(PrepareConfig, argv))


if __name__ == "__main__":
    run_main(main)
