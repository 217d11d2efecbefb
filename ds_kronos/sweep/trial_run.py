"""One trial: ``launch/train.py`` through the deepspeed launcher, followed while it trains, and its outcome.

The command is the one a user would type (the deepspeed launcher, its ``--num_gpus``/``--hostfile``, a free
``--master_port``, then train.py with the sweep's options, the trial's and its ``--save_dir``); its output goes to
``train.log`` in the trial's folder. While it runs, each new complete line of the trainer's ``metrics.jsonl`` is
handed to ``report(step, value)``; when that returns True (prune), the trial is asked to stop cleanly through its
stop file (:mod:`ds_kronos.train.control.stop_file`), never killed. Only when the sweep itself is interrupted is the
launcher sent SIGTERM, and SIGKILL after ``TERMINATE_WAIT_S``: the ``deepspeed`` command ends at once, and its ranks
find it gone at their next step, save and exit 75 (:mod:`ds_kronos.train.control.launcher_watch`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ds_kronos.errors import ConfigError
from ds_kronos.runtime import free_port
from ds_kronos.train.checkpoint.save_dir_lock import probe
from ds_kronos.train.control.stop_file import STOP_NAME
from ds_kronos.train.observe.metrics_log import METRICS_NAME
from ds_kronos.train.observe.status import FINISHED, STOPPED_BY_STOP_FILE, STOPPED_EARLY

POLL_S = 0.5
"""How often a running trial's metrics.jsonl is read (its end is noticed at once)."""
TERMINATE_WAIT_S = 60.0
LOG_NAME = "train.log"
SUMMARY_NAME = "summary.json"
FINISHED_STATUSES = (FINISHED, STOPPED_EARLY)
"""Statuses of a trainer's summary.json whose run is a complete trial; STOPPED_BY_STOP_FILE: a pruned one."""


def deepspeed_launcher() -> str:
    """The deepspeed launcher of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "deepspeed"
    found = str(beside) if beside.is_file() else shutil.which("deepspeed")
    if not found:
        raise ConfigError("the deepspeed launcher was not found beside this Python nor on PATH (pip install "
                          "deepspeed)")
    return found


def trial_command(train_script: Path, num_gpus: int, hostfile: str | None, arguments: list[str]) -> list[str]:
    launcher = [deepspeed_launcher(), "--num_gpus", str(num_gpus)] + (["--hostfile", hostfile] if hostfile else [])
    return launcher + ["--master_port", str(free_port()), str(train_script), *arguments]


@dataclass
class Outcome:
    """How a trial ended."""

    exit_code: int
    launch_seconds: float
    """Lifetime of the launched command (the trainer's share of the trial's wall time)."""
    summary: dict[str, Any] | None
    pruned_at: int | None
    """The step whose evaluation pruned the trial (None: not pruned). A request that came after the run's last
    evaluation, when it was already finishing, is dropped: the trial is complete."""

    def __post_init__(self) -> None:
        if self.pruned_at is not None and self.status != STOPPED_BY_STOP_FILE:
            self.pruned_at = None

    @property
    def status(self) -> str | None:
        return self.summary.get("status") if self.summary else None

    @property
    def steps(self) -> int | None:
        return self.summary.get("steps") if self.summary else None

    @property
    def complete(self) -> bool:
        return self.pruned_at is None and self.exit_code == 0 and self.status in FINISHED_STATUSES

    @property
    def value(self) -> float | None:
        """The selection metric's best score (best_model/'s), the trial's objective."""
        return (self.summary.get("selection") or {}).get("best_score") if self.summary else None

    def failure(self, save_dir: Path) -> str:
        """Why a trial that is neither complete nor pruned failed, in one line."""
        if self.status and self.status.startswith("failed"):
            return self.status
        if self.complete:
            return f"the selection metric ({self.summary['selection']['metric']}) was undefined at every evaluation"
        errors = [line.strip() for line in _read_lines(save_dir / LOG_NAME) if ": error: " in line]
        return errors[-1] if errors else f"exit code {self.exit_code}, no summary.json (see {save_dir / LOG_NAME})"

    @property
    def refused(self) -> bool:
        """train.py refused its options (exit 2 before any training: a configuration every trial would repeat)."""
        return self.exit_code == 2 and self.summary is None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


class MetricsFollower:
    """The evaluations of a trial's metrics.jsonl as its run writes them: each step once, and again when its value
    changes. A run rewrites the file from an earlier step when it starts (a resumed run: up to its checkpoint) and
    when it rolls back (ds_kronos.train.observe.metrics_log.restart: a new file, shorter), then trains the later steps
    again; their new values are what count. The file holds one short line per evaluation, so each poll reads it whole:
    no byte offset can point into a file that has been replaced."""

    def __init__(self, path: Path, reported: dict[int, float | None] | None = None):
        self.path = path
        self.reported: dict[int, float | None] = dict(reported or {})
        """step -> the value handed on last (a resumed trial starts from what its earlier run reported)."""

    def new_records(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]  # a line being appended is taken at the next poll
        fresh = []
        for line in complete.decode("utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            step, value = int(record["step"]), record.get("value")
            if step not in self.reported or self.reported[step] != value:
                self.reported[step] = value
                fresh.append(record)
        return fresh


def take_over(save_dir: Path, wait_s: float = TERMINATE_WAIT_S) -> str | None:
    """Before a trial continues an interrupted one in ``save_dir``: a live job still holding the folder (the
    interrupted trial's training, which outlived its worker) is asked to stop through the stop file (it saves a
    checkpoint first) and waited for up to ``wait_s``; then the interrupted run's outputs that the continuation
    writes afresh go (its stop request, summary.json, metrics.jsonl: the resumed run rewrites it from its
    checkpoint). Returns why the folder cannot be taken over (a holder that did not end), else None."""
    deadline = time.monotonic() + wait_s
    while (holder := probe(save_dir)) is not None:
        if time.monotonic() > deadline:
            return f"not continued: {holder}"
        (save_dir / STOP_NAME).touch()
        time.sleep(POLL_S)
    for name in (STOP_NAME, SUMMARY_NAME, METRICS_NAME):
        (save_dir / name).unlink(missing_ok=True)
    return None


def run_trial(command: list[str], save_dir: Path, report: Callable[[int, float], bool],
              continued: bool = False) -> Outcome:
    """Run ``command`` (a trial) to its end; ``report(step, value)`` sees each evaluation's selection value and
    returns True to prune. ``continued``: the trial goes on from an interrupted one's folder (its train.log grows)."""
    follower = MetricsFollower(save_dir / METRICS_NAME)
    pruned_at = None
    started = time.perf_counter()
    with open(save_dir / LOG_NAME, "a" if continued else "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    process.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    pass
                ended = process.returncode is not None
                for record in follower.new_records():
                    if record.get("value") is None:
                        continue
                    if report(int(record["step"]), float(record["value"])) and pruned_at is None and not ended:
                        (save_dir / STOP_NAME).touch()
                        pruned_at = int(record["step"])
                if ended:
                    break
        finally:
            if process.returncode is None:  # the sweep is interrupted: the trial cannot be recorded
                process.terminate()
                try:
                    process.wait(timeout=TERMINATE_WAIT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    launch_seconds = time.perf_counter() - started
    (save_dir / STOP_NAME).unlink(missing_ok=True)  # a request the run did not see (it was finishing) or obeyed
    summary_path = save_dir / SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    return Outcome(process.returncode, launch_seconds, summary, pruned_at)
