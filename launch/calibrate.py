"""Choose the sampler's temperature and top-p, and fit its spread factor (paths scaled around their mean), on the
validation split (lowest CRPS of the close) and write them to the predictor folder's sampler.json, which
launch/evaluate.py, launch/forecast.py and KronosForecaster.from_folders then use by default.

    python launch/calibrate.py --data PREPARED --tokenizer DIR --predictor DIR --sample_count 20
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/calibrate.py --data PREPARED ...   # symbols split over ranks

Options: `python launch/calibrate.py --help`, or a YAML/JSON file of them with --config.
"""

from __future__ import annotations

from typing import Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.evaluation.calibrate import CalibrateConfig


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(CalibrateConfig, argv)
    from ds_kronos.evaluation.calibrate import run_calibration
    run_calibration(config)


if __name__ == "__main__":
    run_main(main)
