"""launch/entrypoint.py as a container's PID 1, without training (the training runs it in, SIGTERM to PID 1 included,
are in tests/test_preemption.py; its bad input is in tests/test_bad_inputs.py's table)."""

from __future__ import annotations

import subprocess
import time

import pytest

from ds_kronos.cli import EXIT_PREEMPTED
from helpers import PID_NAMESPACE, as_pid_1


@pytest.mark.processes
def test_the_entrypoint_as_pid_1_waits_for_what_its_command_left_behind():
    """As PID 1 the entrypoint adopts the command's orphans: it reaps them and ends after the last. A command ended by
    a signal (as `deepspeed` is by SIGTERM) whose orphan later exits 75 (launch.py, whose ranks saved because their
    launcher was gone) makes it exit 75; otherwise the command's own code."""
    prefix = as_pid_1()
    if prefix[0] != PID_NAMESPACE[0]:
        pytest.skip("no new PID namespace here: the command's orphans would not be the entrypoint's")
    for script, code in (("(sleep 1; exit 75) & kill -KILL $$", EXIT_PREEMPTED), ("(sleep 1; exit 0) & exit 3", 3)):
        start = time.monotonic()
        done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == code and time.monotonic() - start >= 1, (script, done)
