"""Skipped optimizer steps: ``--skip_steps`` (from the start) and the steps a roll-back passes over
(ds_kronos.train.control.rollback), one implementation for both so that a run given a roll-back's range from the start
trains exactly what the rolled-back run trained.

A skipped step trains nothing: the micro-batches it would have drawn (``grad_accum`` per rank, at the same indices
of every rank's share of the epoch) are passed over, its step number goes by, and the lr scheduler moves on one step
as after a trained step, so the schedule stays a function of the step number and the run still ends at its last
step. There is no forward, backward or optimizer update, no log line, divergence check, validation or checkpoint at
a skipped step, and ``train_samples`` does not count it. Steps are counted from 1, as in the log; steps past the
run's last one are ignored.

Step ``k`` draws each rank's micro-batches ``(k - 1) % steps_per_epoch * grad_accum`` to ``... + grad_accum - 1``
of epoch ``(k - 1) // steps_per_epoch`` (a step never straddles two epochs), whatever was skipped before it.
No torch import here: the config's checks use :func:`parse_step_ranges` before anything heavy is loaded.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any

from ds_kronos.console import say
from ds_kronos.errors import ConfigError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_step_ranges(values: list[str] | None) -> list[tuple[int, int]]:
    """``["7", "20-23"]`` -> ``[(7, 7), (20, 23)]``, merged and sorted; raises ConfigError naming a bad item."""
    ranges = []
    for value in values or []:
        match = _RANGE.match(value)
        first, last = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
        if not match or first < 1 or last < first:
            raise ConfigError(f"--skip_steps: {value!r} is not a step or a range of steps (e.g. 7 or 20-23, counted "
                              f"from 1, comma-separated)")
        ranges.append((first, last))
    return merge(ranges)


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent ranges as one, in order."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def micro_batch_spans(first: int, last: int, steps_per_epoch: int, grad_accum: int) -> list[dict[str, Any]]:
    """The data of steps ``first``..``last``: per epoch touched, ``{"epoch"`` (counted from 1, as in the log),
    ``"micro_batches": [from, to]}`` (each rank's micro-batch indices in that epoch, from 0, inclusive)."""
    spans = []
    for epoch in range((first - 1) // steps_per_epoch, (last - 1) // steps_per_epoch + 1):
        lo, hi = max(first - 1, epoch * steps_per_epoch), min(last, (epoch + 1) * steps_per_epoch)
        spans.append({"epoch": epoch + 1, "micro_batches": [(lo - epoch * steps_per_epoch) * grad_accum,
                                                            (hi - epoch * steps_per_epoch) * grad_accum - 1]})
    return spans


def describe_spans(spans: list[dict[str, Any]]) -> str:
    return "; ".join(f"micro-batches {s['micro_batches'][0]}-{s['micro_batches'][1]} of epoch {s['epoch']}"
                     for s in spans)


class SkippedSteps:
    """The run's skipped ranges and how the trainer's position moves past them."""

    def __init__(self, ranges: list[tuple[int, int]], grad_accum: int, micro_per_epoch: int, engine, is_main: bool):
        self.ranges = merge(ranges)
        self.grad_accum, self.micro_per_epoch = grad_accum, micro_per_epoch
        self.engine, self.is_main = engine, is_main
        self._firsts = [first for first, _ in self.ranges]

    def add(self, first: int, last: int) -> None:
        self.ranges = merge(self.ranges + [(first, last)])
        self._firsts = [f for f, _ in self.ranges]

    def _last_skipped(self, step: int) -> int | None:
        """The last step of the skipped range holding ``step``, None when it is trained."""
        i = bisect_right(self._firsts, step) - 1
        return self.ranges[i][1] if i >= 0 and self.ranges[i][1] >= step else None

    def due(self, position) -> bool:
        """Whether the step about to begin is skipped (called before every micro-batch: a bisection, no sync)."""
        return bool(self.ranges) and position.micro_in_epoch % self.grad_accum == 0 and \
            self._last_skipped(position.step + 1) is not None

    def move_past(self, position, total_steps: int, progress=None) -> None:
        """At a step boundary: move ``position`` (step, epoch, micro-batch) past the skipped steps that begin at the
        next step, stepping the lr scheduler once per step (rank 0 says which data was passed over); ``progress``
        (ds_kronos.train.observe.progress.Progress) leaves them out of the speed it reports."""
        while self.due(position) and position.step < total_steps:
            first, last = position.step + 1, min(self._last_skipped(position.step + 1), total_steps)
            steps = last - position.step
            epochs, position.micro_in_epoch = divmod(position.micro_in_epoch + steps * self.grad_accum,
                                                     self.micro_per_epoch)
            position.epoch += epochs
            position.step = last
            if progress is not None:
                progress.passed_over(steps)
            scheduler = self.engine.lr_scheduler
            for _ in range(steps if scheduler is not None else 0):
                scheduler.step()
            if self.is_main:
                spans = micro_batch_spans(first, last, self.micro_per_epoch // self.grad_accum, self.grad_accum)
                say(f"skipped step(s) {first}-{last}: {describe_spans(spans)} (each rank's) passed over untrained")
