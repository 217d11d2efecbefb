"""launch/train.py with one training micro-batch's loss made NaN, for tests/test_rollback.py.

    deepspeed --num_gpus 2 tests/nan_batch_train.py --nan_micro_batch 7 --nan_rank 1 [launch/train.py's options]

The ``--nan_micro_batch``-th call (counted from 1) of the predictor's training loss on rank ``--nan_rank`` returns
its losses times NaN, once: backward then spreads NaN through the gradients' all-reduce into every rank's weights, as
a bad bar would. The product has no test hook: this script patches the loss and runs launch/train.py's own main.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import util
from pathlib import Path

from ds_kronos.cli import run_main
from ds_kronos.train.tasks import PredictorTask


def poison(micro_batch: int, rank: int) -> None:
    original, calls = PredictorTask.train_losses, [0]

    def train_losses(self, engine, x, stamp):
        calls[0] += 1
        losses = original(self, engine, x, stamp)
        poisoned = calls[0] == micro_batch and int(os.environ.get("RANK", "0")) == rank
        return losses * float("nan") if poisoned else losses

    PredictorTask.train_losses = train_losses


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--nan_micro_batch", type=int, required=True)
    parser.add_argument("--nan_rank", type=int, default=0)
    ours, rest = parser.parse_known_args(sys.argv[1:])
    poison(ours.nan_micro_batch, ours.nan_rank)
    spec = util.spec_from_file_location("train_script", Path(__file__).resolve().parents[1] / "launch" / "train.py")
    train = util.module_from_spec(spec)
    spec.loader.exec_module(train)
    sys.argv[1:] = rest
    run_main(train.main)  # as launch/train.py runs it (its own command line, its own exit)


if __name__ == "__main__":
    main()
