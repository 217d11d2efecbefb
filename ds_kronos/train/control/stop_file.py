"""Stopping a training run cleanly from outside: create the file ``save_dir/STOP``.

``launch/sweep.py`` does so to prune a trial; a user may too (``touch runs/predictor/STOP``). Rank 0 looks for the
file at every log interval and adds what it saw to the all-reduce that the log line makes anyway (the global
batch's mean loss), so asking costs no collective and no host sync of its own, and every rank reads the same sum:
all ranks stop after the same step. The run then ends as an early stop does, less the final validation (a stop is
asked for to save time): a checkpoint of that step, ``final_model/``, and ``summary.json`` with the status
:data:`ds_kronos.train.observe.status.STOPPED_BY_STOP_FILE`. ``--resume`` continues such a run.

A file left from an earlier run is removed when the run starts: it asked that run to stop, not this one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ds_kronos.console import say
from ds_kronos.train.observe.status import STOPPED_BY_STOP_FILE

STOP_NAME = "STOP"


class StopFile:
    def __init__(self, save_dir: Path, is_main: bool):
        self.path = Path(save_dir) / STOP_NAME
        self.is_main = is_main
        self.requested = False
        """Every rank's verdict (set by :meth:`agree`, the same on every rank)."""
        if is_main and self.path.exists():
            self.path.unlink()
            say(f"start-up clean-up: removed {self.path} (a stop request to an earlier run)")

    def flag(self) -> float:
        """1.0 on rank 0 when the file exists, else 0.0 (one stat, on rank 0 only)."""
        return float(self.is_main and self.path.exists())

    def with_flag(self, sums: torch.Tensor) -> torch.Tensor:
        """``sums`` and one more element, :meth:`flag`."""
        return torch.cat([sums, sums.new_tensor([self.flag()])])

    def agree(self, reduced: list[float], step: int) -> list[float]:
        """The all-reduced :meth:`with_flag` tensor less its flag, which sets :attr:`requested` on every rank."""
        if reduced[-1] > 0 and not self.requested:
            self.requested = True
            if self.is_main:
                say(f"stop requested ({self.path}): stopping after step {step} with a checkpoint and final_model/")
        return reduced[:-1]

    @property
    def status(self) -> str | None:
        """The run's status in summary.json when it stopped on request, else None."""
        return STOPPED_BY_STOP_FILE if self.requested else None
