"""Evaluate a tokenizer/predictor pair on a prepared split: rolling forecasts, metrics vs naive baselines, plots.

    python launch/evaluate.py --data PREPARED --tokenizer DIR --predictor DIR --out runs/eval
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/evaluate.py --data PREPARED ...   # symbols split over ranks

Options: `python launch/evaluate.py --help`, or a YAML/JSON file of them with --config.
"""

from __future__ import annotations

from typing import Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.evaluation.config import EvalConfig


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(EvalConfig, argv)
    from ds_kronos.evaluation.job import run_evaluation  # heavy imports after the arguments are known to be valid
    run_evaluation(config)


if __name__ == "__main__":
    run_main(main)
