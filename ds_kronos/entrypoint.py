"""A container's PID 1 for a training job: run the command, pass the scheduler's signals on to its ranks, reap
orphans, and exit with the command's exit code (75 after a preemption save).

    python launch/entrypoint.py deepspeed --num_gpus 8 launch/train.py --resume ...
    python launch/entrypoint.py --forward TERM,USR1 -- deepspeed ...

Kubernetes sends SIGTERM to the container's PID 1, then SIGKILL after ``terminationGracePeriodSeconds``. A process
running as PID 1 has no default signal actions: the ``deepspeed`` command there ignores SIGTERM, and the SIGKILL
loses everything since the last save. This entrypoint runs the command as a child in its own process group and
forwards the signals in ``--forward`` (default TERM, USR1, INT) to its **ranks**: the topmost processes below it
whose environment holds a ``LOCAL_RANK`` that this process does not have (DeepSpeed's launch.py, torchrun and the
other launchers set it for each rank they start; DataLoader workers sit below their rank and are not signalled). The
ranks save the step they are in and exit 75, which DeepSpeed's launch.py and runner pass on. The launchers
themselves are not signalled: DeepSpeed's launch.py would end with exit code 1 after passing a SIGTERM on, and its
runner dies at once. While no rank is running yet (start-up), the signal goes to the command's process group.

As PID 1 it reaps every orphan of the job and ends when the last process has ended; its exit code is the command's
(128 + N when a signal N ended it), or 75 when the command was ended by a signal and a process left behind by it
(DeepSpeed's launch.py, whose ranks saved because their launcher was gone) exited with 75.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Sequence

import psutil

from ds_kronos.cli import EXIT_PREEMPTED
from ds_kronos.errors import ConfigError, UserError
from ds_kronos.train.control.preemption import parse_signals

DEFAULT_FORWARD = ("TERM", "USR1", "INT")
RANK_VARIABLE = "LOCAL_RANK"
USAGE = "python launch/entrypoint.py [--forward TERM,USR1,INT] [--] COMMAND [ARG ...]"


def parse_command(argv: Sequence[str]) -> tuple[tuple[signal.Signals, ...], list[str]]:
    """``[--forward LIST] [--] COMMAND ...`` -> (the signals to forward, the command)."""
    argv = list(argv)
    names = list(DEFAULT_FORWARD)
    if argv and (argv[0] == "--forward" or argv[0].startswith("--forward=")):
        value = argv[0].partition("=")[2] if "=" in argv[0] else (argv[1] if len(argv) > 1 else "")
        argv = argv[1:] if "=" in argv[0] else argv[2:]
        names = value.split(",")
        if not [name for name in names if name.strip()]:
            raise ConfigError(f"--forward needs a comma-separated list of signals (usage: {USAGE})")
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError(f"no command to run (usage: {USAGE})")
    if argv[0].startswith("-"):
        raise ConfigError(f"unknown option {argv[0]!r} (usage: {USAGE})")
    return parse_signals(names, option="--forward"), argv


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + N for a process ended by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def ranks_below(root: psutil.Process) -> list[psutil.Process]:
    """The topmost processes below ``root`` whose ``LOCAL_RANK`` differs from this process's own."""
    own = os.environ.get(RANK_VARIABLE)
    ranked: dict[int, psutil.Process] = {}
    for process in root.children(recursive=True):
        try:
            if process.environ().get(RANK_VARIABLE, own) != own:
                ranked[process.pid] = process
        except psutil.Error:  # ended meanwhile, or not ours to read
            continue
    tops = []
    for process in ranked.values():
        try:
            if not any(parent.pid in ranked for parent in process.parents()):
                tops.append(process)
        except psutil.Error:
            continue
    return tops


class Entrypoint:
    """Runs one command as PID 1 (or under it); see the module docstring."""

    def __init__(self, signals: tuple[signal.Signals, ...], command: list[str]):
        self.signals, self.command = signals, command
        self.child: subprocess.Popen | None = None

    def forward(self, signum: int, frame: object) -> None:
        """Signal handler (in the main thread, between the waits): pass ``signum`` on to the ranks."""
        name = signal.Signals(signum).name
        ranks = ranks_below(psutil.Process())
        for rank in ranks:
            try:
                rank.send_signal(signum)
            except psutil.Error:
                pass
        if ranks:
            where = f"{len(ranks)} rank(s) (pid {', '.join(str(rank.pid) for rank in ranks)})"
        elif self.child is None:
            where = "nobody (the command has not started)"
        else:
            where = "the command's process group (no rank is running yet)"
            try:
                os.killpg(self.child.pid, signum)
            except ProcessLookupError:
                where = "nobody (the command has ended)"
        print(f"entrypoint: {name} received: passed on to {where}; waiting for them to end", file=sys.stderr,
              flush=True)

    def run(self) -> int:
        """Start the command, then reap every child until none is left; the exit code (module docstring)."""
        for sig in self.signals:
            signal.signal(sig, self.forward)
        try:
            self.child = subprocess.Popen(self.command, preexec_fn=os.setpgrp)  # its own group; no threads here
        except (FileNotFoundError, PermissionError) as exc:
            raise UserError(f"cannot run {self.command[0]!r}: {exc.strerror}") from None
        code, left_behind_saved = None, False
        while True:
            try:
                pid, status = os.waitpid(-1, 0)  # retried after a handler ran (PEP 475)
            except ChildProcessError:
                break
            if pid == self.child.pid:
                code = exit_code(status)
                self.child.returncode = code  # reaped here: Popen must not wait for it again
            elif exit_code(status) == EXIT_PREEMPTED:
                left_behind_saved = True
        if code is not None and code > 128 and left_behind_saved:
            return EXIT_PREEMPTED
        return code if code is not None else 1


def main(argv: Sequence[str] | None = None) -> None:
    signals, command = parse_command(sys.argv[1:] if argv is None else argv)
    sys.exit(Entrypoint(signals, command).run())
