"""Hyper-parameter sweep of launch/train.py on Optuna: each trial is a deepspeed launch of train.py.

    python launch/sweep.py --space sweep.yaml --trials 20 --study lr_steps -- --data PREPARED \\
        --deepspeed_config CONFIG.json --tokenizer DIR --predictor DIR [train.py options]
    python launch/sweep.py ... --storage postgresql://user@host/db   # workers on several machines share a study

Options: `python launch/sweep.py --help`; the options after -- go to every trial's train.py. docs/sweeps.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ds_kronos.cli import run_main
from ds_kronos.sweep.config import parse_sweep_arguments

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"


def main(argv: Sequence[str] | None = None) -> None:
    config, train_args = parse_sweep_arguments(sys.argv[1:] if argv is None else argv)
    from ds_kronos.sweep.job import run_sweep  # Optuna and the train config after the arguments are known valid
    run_sweep(config, train_args, TRAIN_SCRIPT)


if __name__ == "__main__":
    run_main(main)
