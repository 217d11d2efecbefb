"""Whether the DeepSpeed launcher that started this rank is still there: a rank must not outlive it.

On one node the ``deepspeed`` command (DeepSpeed's runner.py) installs no signal handler: SIGTERM or SIGUSR1 ends it
at once, while its per-node ``launch.py`` and the ranks below it train on, unsupervised, to the end, and a
scheduler's SIGKILL after its grace period then loses everything since the last save. DeepSpeed's own code is not
ours to change, so the ranks watch it: at start-up a rank whose parent is DeepSpeed's ``launch.py`` opens a pidfd
(Linux >= 5.3) on it and, when launch.py's parent is the ``deepspeed`` runner, on that one too. A pidfd turns
readable when its process ends, zombie or not, and cannot be fooled by a reused pid; asking costs one ``poll`` with
no wait (well under a microsecond), so :class:`ds_kronos.train.control.preemption.StopRequests` asks at every per-step
agreement and a lost launcher counts there as a preemption request: every rank saves the same step and exits 75.

Not watched: a rank started without DeepSpeed's launcher (srun, a plain process, torchrun), or a launch.py whose
parent is something else (pdsh's remote shell: there runner.py's own handler signals every launch.py). Nor a runner
that ended before the rank looked (in its first seconds, while it imports): launch.py's parent is then no longer it.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass, field

import psutil

LAUNCH_MODULE = "deepspeed.launcher.launch"
RUNNER_MODULE = "deepspeed.launcher.runner"
RUNNER_SCRIPTS = ("deepspeed", "ds")
"""The console scripts DeepSpeed installs for its runner (setup.py's ``scripts``)."""


def is_launch_py(cmdline: list[str]) -> bool:
    """``python -u -m deepspeed.launcher.launch --world_info=...``: DeepSpeed's per-node launcher."""
    return LAUNCH_MODULE in cmdline


def is_runner(cmdline: list[str]) -> bool:
    """``python .../bin/deepspeed ...`` (or ``ds``, or ``python -m deepspeed.launcher.runner``)."""
    return RUNNER_MODULE in cmdline or any(os.path.basename(arg) in RUNNER_SCRIPTS for arg in cmdline[:2])


@dataclass
class LauncherWatch:
    """Pidfds on the launcher processes of this rank; :meth:`gone` says which one ended, if any."""

    watched: dict[int, str]
    """pid -> what it is (for the message)."""
    _fds: dict[int, int] = field(default_factory=dict, repr=False)
    _poller: select.poll = field(default_factory=select.poll, repr=False)

    def __post_init__(self) -> None:
        for pid in self.watched:
            fd = os.pidfd_open(pid)
            self._fds[fd] = pid
            self._poller.register(fd, select.POLLIN)

    @classmethod
    def of_this_rank(cls) -> LauncherWatch | None:
        """The watch of this process's DeepSpeed launcher; None when it was not started by one, or on a system
        without pidfds (then nothing is watched, as before)."""
        try:
            launcher = psutil.Process(os.getppid())
            if not is_launch_py(launcher.cmdline()):
                return None
            watched = {launcher.pid: "DeepSpeed's per-node launcher launch.py"}
            runner = launcher.parent()
            if runner is not None and is_runner(runner.cmdline()):
                watched[runner.pid] = "the deepspeed command"
            return cls(watched)
        except (psutil.Error, OSError, AttributeError):  # AttributeError: no os.pidfd_open (not Linux)
            return None

    def gone(self) -> str | None:
        """Why the launcher is gone ("the launcher (pid N) is gone: the deepspeed command ended"), or None while it
        runs. No wait."""
        ready = self._poller.poll(0)
        if not ready:
            return None
        pid = self._fds[ready[0][0]]
        return f"the launcher (pid {pid}) is gone: {self.watched[pid]} ended"
