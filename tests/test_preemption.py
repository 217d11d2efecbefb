"""Preemption (issue 24): a signal to the launcher, to one rank, to the ``deepspeed`` command or to the container
entrypoint as PID 1 makes every rank save the step it is in and stop with exit code 75; ``--resume`` (which starts
from scratch when there is no checkpoint yet) continues to the weights of an uninterrupted run. The Slurm recipe
(launch/slurm/train.sbatch) runs against stand-ins for srun and scontrol.

The runs use the arguments of the zero2 config run (tests/conftest.py: dropout and sampled s1 conditioning on, as by
default), so they end where that uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
import torch

from ds_kronos.cli import EXIT_PREEMPTED
from ds_kronos.errors import ConfigError
from ds_kronos.model import Kronos
from ds_kronos.train.checkpoint.training_state import resume_candidates
from ds_kronos.train.control.preemption import StopRequests, parse_signals
from helpers import (
    LAUNCHER,
    PID_NAMESPACE,
    REPO,
    as_pid_1,
    common_args,
    deepspeed_train,
    env,
    free_port,
    summary,
    train_args,
    two_at_a_time,
)

GRACE_S = 30
"""Kubernetes' default terminationGracePeriodSeconds, and DeepSpeed launch.py's wait before its SIGKILL."""


def zero2_args(prepared: Path, checkpoints: tuple[Path, Path], save_dir: Path) -> list[str]:
    return common_args(prepared, checkpoints, save_dir) + ["--deepspeed_config", "ds_configs/zero2.json"]


def session_pids(session: int, pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", "-s", str(session), "--", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has ended: whoever adopted it may reap it late)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_acting(command: list[str], act: Callable[[subprocess.Popen, str], None], cwd: Path = REPO,
               environment: dict[str, str] | None = None, timeout: float = 240) -> tuple[int, str]:
    """Start ``command`` in its own session; call ``act(job, line)`` on every output line; return its exit code and
    output. Whatever is left of the session is killed at the end."""
    job = subprocess.Popen(command, cwd=cwd, env=environment or env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in job.stdout:
            lines.append(line)
            act(job, line)
        job.wait(timeout=timeout)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    return job.returncode, "".join(lines)


def launched(args: list[str], act: Callable[[subprocess.Popen, str], None],
             prefix: list[str] = ()) -> tuple[int, str]:
    command = [*prefix, str(LAUNCHER), "--num_gpus", "2", "--master_port", str(free_port()),
               str(REPO / "launch" / "train.py"), *args]
    return run_acting(command, act)


def stopped_step(output: str) -> int:
    # Anywhere in a line: the output of several processes (ranks, launchers, the entrypoint) shares one pipe.
    found = re.search(r"preempted after step (\d+) ", output)
    assert found, output[-3000:]
    return int(found.group(1))


def assert_ends_as_uninterrupted(save_dir: Path, reference: Path) -> None:
    """Bit-identical final weights, and the same loss and validation history, as the uninterrupted run."""
    resumed = Kronos.from_pretrained(save_dir / "final_model").state_dict()
    straight = Kronos.from_pretrained(reference / "final_model").state_dict()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    for part in ("train", "val"):
        assert summary(save_dir)["history"][part] == summary(reference)["history"][part], part


def assert_saved_at_the_stop(save_dir: Path, output: str) -> int:
    step = stopped_step(output)
    info = summary(save_dir)
    assert info["status"] == "preempted" and info["last_checkpoint"] == step and info["final_model"] is None
    assert f"saved checkpoint step{step:08d} (step {step}); exit code {EXIT_PREEMPTED}" in output
    candidates, notes = resume_candidates(save_dir / "checkpoints")
    assert candidates[0].tag == f"step{step:08d}" and not notes  # complete: every file the manifest lists
    assert "Traceback" not in output
    return step


@pytest.mark.processes
def test_a_signal_to_launch_py_a_rank_deepspeed_or_pid_1_saves_that_step_and_resume_ends_as_uninterrupted(
        config_runs, demo_prepared_dir, tiny_checkpoints, tmp_path):
    """Every run starts with --resume in an empty save_dir, as a requeued job script always does.
    launcher: SIGTERM to DeepSpeed's per-node launcher (launch.py), which forwards it to rank 0 (only: it waits for
    that rank to end before it signals the next). rank: SIGUSR1 to rank 1 alone, then SIGTERM to rank 0 while the save
    is under way. runner: SIGTERM to the `deepspeed` command, which ends at once and passes nothing on: the ranks see
    their launcher gone. pid1: SIGTERM to launch/entrypoint.py running `deepspeed` as PID 1 of a new PID namespace (a
    container), which passes it on to the ranks. Each saves the step it is in, agreed by every rank, every process
    ends within the grace period, and each resumed run ends with the uninterrupted run's weights, bit for bit."""
    runs = {name: tmp_path / name for name in ("launcher", "rank", "runner", "pid1")}
    pids: dict[str, dict[str, int]] = {name: {} for name in runs}
    signalled: dict[str, list[str]] = {name: [] for name in runs}
    sent_at: dict[str, float] = {}
    ended: dict[str, tuple[float, list[int]]] = {}

    def find(name: str, job: subprocess.Popen, line: str) -> None:
        if line.startswith("batch ") and not pids[name]:  # the banner: every process is up; look them up now
            pids[name] = {pattern: pid for pattern in ("deepspeed.launcher.launch", "--local_rank=0", "--local_rank=1")
                          for pid in session_pids(job.pid, pattern)}

    def send(name: str, pid: int, sig: signal.Signals, what: str) -> None:
        os.kill(pid, sig)
        sent_at.setdefault(name, time.monotonic())
        signalled[name].append(what)

    def at_step_2(name: str, target: Callable[[subprocess.Popen], int], what: str):
        def act(job: subprocess.Popen, line: str) -> None:
            find(name, job, line)
            if line.startswith("step 2/") and not signalled[name]:
                send(name, target(job), signal.SIGTERM, what)
        return act

    def to_one_rank(job: subprocess.Popen, line: str) -> None:
        find("rank", job, line)
        if line.startswith("step 3/") and not signalled["rank"]:  # lands in step 4, the end of the first epoch
            send("rank", pids["rank"]["--local_rank=1"], signal.SIGUSR1, "USR1 to rank 1")
        elif line.startswith("preempted after step") and len(signalled["rank"]) == 1:
            send("rank", pids["rank"]["--local_rank=0"], signal.SIGTERM, "TERM to rank 0")  # during the save

    def pid_1(job: subprocess.Popen) -> int:  # unshare's child: PID 1 inside the namespace
        children = psutil.Process(job.pid).children()
        return children[0].pid if job.args[0] == PID_NAMESPACE[0] else job.pid

    acts = {"launcher": at_step_2("launcher", lambda job: pids["launcher"]["deepspeed.launcher.launch"],
                                  "TERM to launch.py"),
            "rank": to_one_rank,
            "runner": at_step_2("runner", lambda job: job.pid, "TERM to deepspeed"),
            "pid1": at_step_2("pid1", pid_1, "TERM to PID 1")}
    prefixes = {"pid1": as_pid_1()}

    def run(name: str) -> tuple[int, str]:
        result = launched(zero2_args(demo_prepared_dir, tiny_checkpoints, runs[name]) + ["--resume"], acts[name],
                          prefixes.get(name, []))
        # The output ends when its last writer has: launcher, ranks and their workers alike.
        ended[name] = (time.monotonic(), [pid for pid in pids[name].values() if running(pid)])
        return result

    results = dict(zip(runs, two_at_a_time(run, runs)))
    for name in runs:
        assert signalled[name], (name, results[name][1][-3000:])
        assert ended[name][0] - sent_at[name] < GRACE_S and not ended[name][1], (name, ended[name], sent_at[name])

    code, output = results["launcher"]
    assert "--resume: no checkpoint in" in output and "yet: starting from scratch" in output
    assert "(SIGTERM on 1 of 2 rank(s)): saving a checkpoint" in output
    # DeepSpeed's launch.py ends with exit code 1 after it forwarded SIGTERM, whatever its ranks returned.
    assert code == 1, output[-3000:]
    assert_saved_at_the_stop(runs["launcher"], output)

    code, output = results["rank"]
    assert signalled["rank"] == ["USR1 to rank 1", "TERM to rank 0"]
    assert "(SIGUSR1 on 1 of 2 rank(s)): saving a checkpoint" in output
    assert code == EXIT_PREEMPTED, output[-3000:]  # the ranks' own code, passed on by the launcher
    step = assert_saved_at_the_stop(runs["rank"], output)

    code, output = results["runner"]
    assert code == -signal.SIGTERM, output[-3000:]  # the deepspeed command itself died at once
    assert re.search(r"\(the launcher \(pid \d+\) is gone: the deepspeed command ended\): saving a checkpoint",
                     output), output[-3000:]
    assert_saved_at_the_stop(runs["runner"], output)

    code, output = results["pid1"]
    assert code == EXIT_PREEMPTED, output[-3000:]  # the ranks' code, through launch.py, deepspeed and PID 1
    assert "entrypoint: SIGTERM received: passed on to 2 rank(s)" in output
    # One rank after the other: the second may get it only after a poll where the first's flag already stops both.
    assert re.search(r"\(SIGTERM on [12] of 2 rank\(s\)\): saving a checkpoint", output), output[-3000:]
    assert_saved_at_the_stop(runs["pid1"], output)

    resumed = dict(zip(runs, two_at_a_time(
        lambda name: deepspeed_train(zero2_args(demo_prepared_dir, tiny_checkpoints, runs[name]) + ["--resume"]),
        runs)))
    for save_dir in runs.values():
        assert summary(save_dir)["status"] == "finished"
        assert_ends_as_uninterrupted(save_dir, config_runs["zero2"])
    if step % 4 == 0:  # stopped at the end of an epoch: the validation due there ran first in the resumed run
        first = next(line for line in resumed["rank"].stdout.splitlines() if line.startswith(("validation", "step")))
        assert first.startswith(f"validation end of epoch at step {step}"), first


FAKE_SRUN = """#!{python}
# srun on one node, for tests: SLURM_NTASKS copies of the command, each with the variables srun gives a task;
# the signals srun forwards are forwarded; the exit code is the highest of the tasks'.
import os, signal, subprocess, sys
argv = sys.argv[1:]
command = argv[next(i for i, arg in enumerate(argv) if not arg.startswith("-")):]
tasks = [subprocess.Popen(command, env={{**os.environ, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r),
                                        "SLURM_NODEID": "0"}}) for r in range(int(os.environ["SLURM_NTASKS"]))]
for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
    signal.signal(sig, lambda signum, frame: [task.send_signal(signum) for task in tasks])
codes = [task.wait() for task in tasks]
sys.exit(max(code if code >= 0 else 128 - code for code in codes))
"""

FAKE_SCONTROL = """#!/bin/bash
# scontrol for tests: `show hostnames LIST` expands a comma-separated list; anything else is logged.
if [ "$1 $2" = "show hostnames" ]; then tr ',' '\\n' <<< "$3"; else echo "$*" >> "$FAKE_SLURM_LOG"; fi
"""


def fake_slurm(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", FAKE_SRUN.format(python=sys.executable)), ("scontrol", FAKE_SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.processes
def test_the_slurm_recipe_forwards_the_warning_saves_requeues_and_continues(config_runs, demo_prepared_dir,
                                                                           tiny_checkpoints, tmp_path):
    """launch/slurm/train.sbatch with the environment Slurm gives a batch job (2 tasks on one node) and stand-ins for
    srun and scontrol: SIGUSR1 to the batch script (what --signal=B:USR1@120 sends) reaches every rank through srun,
    they save and exit 75, the script requeues the job; run again (as the requeued job), it resumes and ends with the
    uninterrupted run's weights. The ranks find their rank and rendezvous from the SLURM_* variables alone."""
    save_dir, log = tmp_path / "run", tmp_path / "slurm.log"
    slurm_env = {**env(), "PATH": f"{fake_slurm(tmp_path / 'bin')}:{os.environ['PATH']}", "PYTHON": sys.executable,
                 "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "2",
                 "SLURM_NTASKS_PER_NODE": "2", "SLURM_SUBMIT_DIR": str(REPO), "MASTER_PORT": str(free_port()),
                 "FAKE_SLURM_LOG": str(log)}
    command = ["bash", str(REPO / "launch" / "slurm" / "train.sbatch"),
               *zero2_args(demo_prepared_dir, tiny_checkpoints, save_dir)]
    sent = []

    def warn(job: subprocess.Popen, line: str) -> None:
        if line.startswith("step 2/") and not sent:
            job.send_signal(signal.SIGUSR1)
            sent.append(line)

    code, output = run_acting(command, warn, environment=slurm_env)
    assert code == EXIT_PREEMPTED, output[-3000:]
    # srun passes the signal to one task after the other: the second may get it only after its next step's poll,
    # where the first's flag already stops both.
    assert re.search(r"\(SIGUSR1 on [12] of 2 rank\(s\)\): saving a checkpoint", output), output[-3000:]
    assert_saved_at_the_stop(save_dir, output)
    assert log.read_text().split() == ["requeue", "4242"]
    slurm_env["MASTER_PORT"] = str(free_port())
    again = subprocess.run(command, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    assert log.read_text().split() == ["requeue", "4242"]  # a finished run is not requeued
    assert_ends_as_uninterrupted(save_dir, config_runs["zero2"])


SIGNAL_DURING = """
import importlib, json, os, signal, sys
from ds_kronos.config import parse_config
from ds_kronos.train import trainer
from ds_kronos.train.config import TrainConfig
common, runs = json.loads(sys.argv[1])
for target, call, args in runs:  # one process, one run after another: the start-up cost is paid once
    where, _, name = target.partition(":")  # "module:function", the function as that module calls it
    module = importlib.import_module(where) if where else trainer
    original, calls = getattr(module, name, None), []

    def signalling(*pargs, **kwargs):  # the call-th call of <name> receives SIGUSR1 before it returns
        result = original(*pargs, **kwargs)
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    if original is not None:
        setattr(module, name, signalling)
    trainer.Trainer(parse_config(TrainConfig, common + args)).run()
    if original is not None:
        setattr(module, name, original)
"""


@pytest.mark.processes
def test_a_signal_during_a_validation_or_a_periodic_save_stops_at_that_step(demo_prepared_dir, tiny_checkpoints,
                                                                            tmp_path):
    """One process (8 steps per epoch): SIGUSR1 arrives while the end-of-epoch validation of step 8 runs (its second
    validation, after the one before training), or while the periodic checkpoint of step 2 is written (--save_every
    2). The ranks agree again right after each, so the run saves step 8 (with that validation done) or stops at step
    2, not a whole step later; the run stopped after its validation resumes to the uninterrupted run's weights, bit
    for bit."""
    runs = {name: tmp_path / name for name in ("validation", "save", "straight")}
    common = train_args(demo_prepared_dir, tiny_checkpoints, None)
    plan = [("ds_kronos.train.validation.validator:validate", 2, ["--save_dir", str(runs["validation"])]),
            ("ds_kronos.train.checkpoint.checkpointer:save_training_state", 1,
             ["--save_dir", str(runs["save"]), "--save_every", "2"]),
            ("", 0, ["--save_dir", str(runs["validation"]), "--resume"]),
            ("", 0, ["--save_dir", str(runs["straight"])])]
    preempted = subprocess.run([sys.executable, "-c", SIGNAL_DURING, json.dumps([common, plan])], cwd=REPO,
                               env=env(), capture_output=True, text=True, timeout=300)
    output = preempted.stdout + preempted.stderr
    assert preempted.returncode == 0, output[-3000:]
    assert "preempted after step 8 (SIGUSR1 on 1 of 1 rank(s)): saving a checkpoint" in output, output[-3000:]
    assert "validation end of epoch at step 8" in output
    assert "preempted after step 2 (SIGUSR1 on 1 of 1 rank(s)): saving a checkpoint" in output, output[-3000:]
    assert sorted(path.name for path in (runs["save"] / "checkpoints").glob("step*")) == ["step00000002"]
    assert "resumed from step 8" in output
    assert summary(runs["validation"])["history"]["val"] == summary(runs["straight"])["history"]["val"]
    assert_ends_as_uninterrupted(runs["validation"], runs["straight"])


def test_signal_names_are_checked_before_anything_starts():
    assert parse_signals(["TERM", "usr1"]) == (signal.SIGTERM, signal.SIGUSR1)
    assert parse_signals(["SIGUSR2", "USR2"]) == (signal.SIGUSR2,)
    assert parse_signals(["none"]) == () and parse_signals([]) == ()
    for names, bad in ((["TERM", "FOO"], "'FOO'"), (["KILL"], "'KILL'"), (["none", "TERM"], "'NONE'")):
        with pytest.raises(ConfigError, match=f"--save_on_signal: unknown or unsupported signal {bad}"):
            parse_signals(names)


def test_the_handler_only_records_and_a_signal_ends_no_process(monkeypatch):
    """The installed handler appends the signal number (no I/O, no collective); the process lives on."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        stops = StopRequests(["USR1", "USR2"])
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # Python runs handlers between bytecodes of the main thread
        assert stops.received == [signal.SIGUSR2, signal.SIGUSR1]
        assert StopRequests(["none"]).signals == ()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_line_to_a_reader_that_went_away_does_not_stop_the_job(monkeypatch):
    """pdsh gone after a SIGTERM: rank 0's next line meets a closed pipe; the save it announces must still happen."""
    from ds_kronos.console import say

    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        say("preempted after step 3: saving a checkpoint")
        say("saved checkpoint step00000003")


@pytest.mark.processes  # DataLoader workers are processes
def test_dataloader_workers_outlive_a_signal_sent_to_the_whole_process_tree(demo_prepared_dir):
    """DeepSpeed's launcher SIGTERMs each rank's whole tree and Slurm signals every process of a step: the workers
    must not die under a rank that is about to save (torch's own handler ends a worker on SIGTERM, and the loader
    then raises "DataLoader worker ... killed by signal")."""
    from torch.utils.data import DataLoader

    from ds_kronos.data import PreparedDataset, WindowDataset
    from ds_kronos.train.control.preemption import worker_init

    dataset = WindowDataset(PreparedDataset.open(demo_prepared_dir), "train", max_samples=64, seed=0)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, worker_init_fn=worker_init(["TERM", "USR1"]))
    batches = iter(loader)
    next(batches)
    for worker in batches._workers:
        for sig in ("USR1", "TERM"):  # from another process than the rank, as the launcher or slurmstepd
            subprocess.run(["kill", f"-{sig}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert all(worker.is_alive() for worker in batches._workers)
    assert sum(1 for _ in batches) == 15  # the rest of the epoch's 16 batches
    assert worker_init(["none"]) is None
