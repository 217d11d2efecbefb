"""Which sweep worker runs a trial, failing the trials whose worker is gone, and continuing them.

Each trial records its worker (machine, boot, process id and start time) in its user attributes. A trial left
RUNNING by a worker that no longer exists on this machine (killed, or the machine rebooted) can never report: the
next worker started here marks it failed at once, whatever the storage, and asks its training to stop (the stop
file) in case the launched job outlived its worker. Trials of workers on other machines are left to Optuna's
heartbeat (database storages, :mod:`ds_kronos.sweep.storage`).

An interrupted trial whose folder holds a complete checkpoint is continued, not drawn again: a new trial with its
parameters is queued (Optuna's ``enqueue_trial``) that runs in the same folder with ``--resume``
(:func:`continue_later`), so no finished step is lost. Optuna cannot revive a failed trial, so the interrupted one
stays failed and its continuation carries ``continues`` (its number). Only the worker that marked the trial failed
queues it (Optuna lets one ``tell`` win), and the continuation starts only once no live job holds the folder
(the save_dir lock, :mod:`ds_kronos.train.checkpoint.save_dir_lock`).
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any, Callable

import psutil

from ds_kronos.train.control.stop_file import STOP_NAME

WORKER_ATTR = "worker"
SAVE_DIR_ATTR = "save_dir"
CONTINUES_ATTR = "continues"
"""The number of the interrupted trial whose folder and checkpoint a trial goes on from."""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
            "started": psutil.Process().create_time()}


def gone(worker: dict[str, Any]) -> bool:
    """Whether ``worker`` (a :func:`this_worker` record) ran on this machine and has ended (False when it ran
    elsewhere: nothing can be known here)."""
    here = this_worker()
    if worker.get("host") != here["host"]:
        return False
    if worker.get("boot") != here["boot"]:
        return bool(here["boot"])  # this machine has rebooted since (without boot ids nothing can be told)
    try:
        return psutil.Process(worker["pid"]).create_time() != worker["started"]  # the pid was reused
    except psutil.NoSuchProcess:
        return True


def has_checkpoint(save_dir: str | None) -> bool:
    """Whether ``save_dir`` holds a complete checkpoint to ``--resume`` from."""
    from ds_kronos.train.checkpoint.training_state import resume_candidates

    return bool(save_dir) and bool(resume_candidates(Path(save_dir) / "checkpoints")[0])


def continue_later(study, number: int, params: dict[str, Any], save_dir: str | None) -> bool:
    """Queue a trial that continues trial ``number`` (interrupted) from the checkpoint in its folder, with its
    parameters; whether there was a checkpoint to continue from."""
    if not has_checkpoint(save_dir):
        return False
    study.enqueue_trial(params, user_attrs={SAVE_DIR_ATTR: save_dir, CONTINUES_ATTR: number})
    return True


def continue_stale_trial(study, trial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback`` (database storages): a trial it failed for a worker that stopped
    beating is continued from its checkpoint."""
    continue_later(study, trial.number, trial.params, trial.user_attrs.get(SAVE_DIR_ATTR))


def fail_lost_trials(study, say: Callable[[str], None]) -> list[int]:
    """Mark failed the RUNNING trials of workers that ended on this machine (queueing the continuation of those with
    a checkpoint), and run Optuna's heartbeat check for the others; returns the numbers of the trials failed here."""
    import optuna
    from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without a heartbeat (the journal storage)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if not worker or not gone(worker):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, UpdateFinishedTrialError):
            continue  # another worker was first (Optuna: ValueError when already finished as read, else this)
        failed.append(trial.number)
        save_dir = trial.user_attrs.get(SAVE_DIR_ATTR)
        if save_dir and Path(save_dir).is_dir():
            (Path(save_dir) / STOP_NAME).touch()  # in case its training outlived the worker
        continued = continue_later(study, trial.number, trial.params, save_dir)
        say(f"trial {trial.number}: marked failed: its sweep worker ({worker['host']} pid {worker['pid']}) ended "
            f"while it ran" + ("; a new trial continues it from its checkpoint" if continued else ""))
    return failed
