"""Stop requests of a training run: a preemption signal, or ``--exit_after_steps``; both save and stop at a step.

Schedulers warn before they kill: Slurm sends SIGTERM (then SIGKILL after its KillWait, 30 s by default) or, with
``--signal=B:USR1@120``, SIGUSR1 to the batch script two minutes ahead; Kubernetes sends SIGTERM and waits its grace
period; spot instances give 30-120 s. With ``--save_on_signal`` (default TERM,USR1) every rank installs a handler
for those signals that only records which signal arrived: a handler runs between any two bytecodes, possibly inside
a collective or a file write, so it does no I/O and no communication. At every optimizer-step boundary the ranks
agree in one all-reduce of a few numbers (:meth:`StopRequests.poll`, a collective and a host sync; after an evaluation
it carries the early-stop verdict too, ds_kronos.train.control.run_control): if any rank
received a signal, every rank writes a checkpoint of that step (atomic, ds_kronos.train.checkpoint.training_state) and
the job ends with exit code ``EXIT_PREEMPTED`` (75, ds_kronos.cli), ``status: "preempted"`` in summary.json. A signal is
therefore acted on at the end of the step it arrives in; a validation due at that step is left to the resumed run,
which runs it first (``Position.due_validation``), so a save does not wait for it. The ranks agree once more right
after a validation and after a periodic checkpoint (both can take minutes), so a signal that arrives during one is
acted on at that step, not a whole step later. A second signal during the save is recorded like the first and
changes nothing; anything harder (SIGKILL) finds the atomic tags. A rank whose DeepSpeed launcher ended (SIGTERM to
the ``deepspeed`` command, which does not pass it on) counts as one that received a signal
(ds_kronos.train.control.launcher_watch): the ranks do not outlive their launcher.

DataLoader workers ignore these signals (:func:`worker_init`): DeepSpeed's launcher sends SIGTERM to each rank's
whole process tree, and Slurm signals every process of a job step, so without it the workers would die under the
rank (torch's own worker handler ends a worker on a SIGTERM) and the rank would fail with "DataLoader worker killed"
instead of saving. They stop as usual when the rank's loader shuts them down. Handlers can only be installed from the
main thread; a Trainer built in another thread does not listen (and says nothing).

What DeepSpeed's launcher does with the signals it receives is in docs/multinode.md (preemption).
"""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any, Callable

from ds_kronos.cli import EXIT_PREEMPTED, Preempted
from ds_kronos.console import say
from ds_kronos.errors import ConfigError
from ds_kronos.train.control.launcher_watch import LauncherWatch
from ds_kronos.train.observe.status import PREEMPTED, STOPPED_BY_REQUEST

CATCHABLE = ("TERM", "USR1", "USR2", "INT", "HUP", "XCPU")
"""Signals --save_on_signal accepts: those whose default action ends the process and that schedulers send as a
warning (SIGXCPU: LSF and some Slurm set-ups at a CPU-time limit). Not KILL/STOP (cannot be caught), not the faults
(SEGV, BUS, ...), not CHLD or PIPE (the DataLoader and the console rely on their usual meaning)."""
OFF = "none"


def parse_signals(names: list[str] | None, option: str = "--save_on_signal") -> tuple[signal.Signals, ...]:
    """``["TERM", "USR1"]`` (or ``SIGTERM``, any case) -> the signals; ``["none"]`` or nothing -> none. ``option``:
    the option named in the error."""
    names = [name.strip() for name in names or [] if name.strip()]
    if [name.lower() for name in names] in ([], [OFF]):
        return ()
    chosen, unknown = [], []
    for name in names:
        bare = name.upper().removeprefix("SIG")
        (chosen if bare in CATCHABLE else unknown).append(bare)
    if unknown:
        raise ConfigError(f"{option}: unknown or unsupported signal {', '.join(map(repr, unknown))} "
                          f"(choose from {', '.join(CATCHABLE)}, comma-separated, or {OFF})")
    return tuple(dict.fromkeys(getattr(signal, f"SIG{name}") for name in chosen))


def worker_init(names: list[str] | None) -> Callable[[int], None] | None:
    """A DataLoader ``worker_init_fn`` that makes the workers ignore the preemption signals (None: none chosen)."""
    signals = parse_signals(names)
    return functools.partial(_ignore_in_worker, tuple(int(sig) for sig in signals)) if signals else None


def _ignore_in_worker(signals: tuple[int, ...], worker_id: int) -> None:
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


class StopRequests:
    """Listens for the preemption signals (from construction on) and decides, with every rank, when to stop."""

    def __init__(self, signal_names: list[str] | None, exit_after_steps: int = 0,
                 launcher: LauncherWatch | None = None):
        self.signals = parse_signals(signal_names)
        self.exit_after_steps = exit_after_steps
        self.launcher = launcher if launcher or not self.signals else LauncherWatch.of_this_rank()
        """DeepSpeed's launcher above this rank, watched while signals are listened for (None: not launched by it)."""
        self.received: list[int] = []
        """Signal numbers this rank received, in order (appended by the handler: nothing else happens there)."""
        self.reason: str | None = None
        """Why the run stops (set by :meth:`poll`); None while it goes on."""
        self.status: str | None = None
        self.agreed: list[float] | None = None
        """The extra flags of the last :meth:`poll`, summed over the ranks (None: that poll made no all-reduce)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                signal.signal(sig, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self.received.append(signum)

    def poll(self, step: int, total_steps: int, runtime, flags: tuple[float, ...] = ()) -> bool:
        """Collective at every optimizer-step boundary, and again after a validation or a periodic save there (when
        any signal is listened for; every rank polls at the same points): whether every rank stops at ``step`` now,
        because some rank received a signal or lost its launcher, or ``--exit_after_steps`` is reached. Sets
        :attr:`reason` and :attr:`status`; rank 0 says why. ``flags``: more numbers the ranks agree on in the same
        all-reduce (summed into :attr:`agreed`; only when signals are listened for, else :attr:`agreed` is None)."""
        self.agreed = None
        if self.signals:
            from ds_kronos.runtime import host_all_reduce_sum  # torch: not when the options are checked

            first = self.received[0] if self.received else None
            launcher_gone = self.launcher.gone() if self.launcher else None
            # Host only (no device sync); then: ranks whose launcher is gone (a preemption request too), the flags.
            reduced = host_all_reduce_sum([float(first == sig) for sig in self.signals]
                                          + [float(launcher_gone is not None)] + list(flags))
            counts, lost = reduced[:len(self.signals)], reduced[len(self.signals)]
            self.agreed = reduced[len(self.signals) + 1:]
            if any(counts) or lost:
                who = [f"{sig.name} on {int(n)} of {runtime.world_size} rank(s)"
                       for sig, n in zip(self.signals, counts) if n]
                if lost:
                    who.append(launcher_gone or f"the launcher of {int(lost)} of {runtime.world_size} rank(s) is gone")
                self.reason, self.status = f"preempted after step {step} ({'; '.join(who)})", PREEMPTED
        if self.reason is None and self.exit_after_steps and step == self.exit_after_steps < total_steps:
            self.reason = f"stopping after step {step} as asked (--exit_after_steps)"
            self.status = STOPPED_BY_REQUEST
        if self.reason and runtime.is_main:
            say(f"{self.reason}: saving a checkpoint")
        return self.reason is not None

    def closing_line(self, tag: str, step: int) -> str:
        """Rank 0's line once the checkpoint of ``step`` is written (as ``tag``)."""
        then = (f"exit code {EXIT_PREEMPTED}: run the same command with --resume to continue"
                if self.status == PREEMPTED else "resume with --resume")
        return f"saved checkpoint {tag} (step {step}); {then}"


def stop_if_preempted(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's summary, or :class:`Preempted` when it stopped on a signal (the launch scripts then exit 75)."""
    if summary.get("status") == PREEMPTED:
        raise Preempted(f"checkpoint at step {summary.get('last_checkpoint')}")
    return summary
