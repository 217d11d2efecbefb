"""One live job per save_dir (issue 32): a second job on the save_dir of a live one is refused before it changes
anything, naming the holder, exit code 2; a holder that died (kill -9) blocks nothing; a file of that name that is
not ours is one clear line. The lock is tested in-process against a forked holder; one launcher test races a second
2-rank job against a live one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from ds_kronos.errors import ConfigError
from ds_kronos.train.checkpoint.save_dir_lock import LOCK_NAME, SaveDirInUse, SaveDirLock, probe
from helpers import LAUNCHER, REPO, env, forked_holder, free_port, run_job, summary, train_args


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: (size, modification time in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_live_holder_refuses_a_second_job_which_changes_nothing_and_a_killed_one_blocks_nothing(tmp_path):
    save_dir = tmp_path / "run"
    holder = forked_holder(save_dir)
    try:
        (save_dir / "checkpoints").mkdir()
        (save_dir / "metrics.jsonl").write_text('{"step": 1}\n')
        before = snapshot(save_dir)
        with pytest.raises(SaveDirInUse) as refused:
            SaveDirLock.acquire(save_dir)
        message = str(refused.value)
        assert f"{save_dir} is in use by another job ({socket.gethostname()} pid {holder} since " in message
        assert "\n" not in message
        assert probe(save_dir) == message  # what a sweep worker asks before it resumes a trial there
        assert snapshot(save_dir) == before  # not even the lock file was touched
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    assert probe(save_dir) is None
    lock = SaveDirLock.acquire(save_dir)  # the dead holder's lock went with its process
    try:
        assert f'"pid": {os.getpid()}' in (save_dir / LOCK_NAME).read_text()
    finally:
        lock.release()


def test_a_file_of_that_name_that_is_not_ours_is_one_clear_line_and_left_alone(tmp_path):
    (tmp_path / LOCK_NAME).write_text("my notes\n")
    with pytest.raises(ConfigError, match=r"not a ds_kronos lock file \(it holds other content\).*move the file away"):
        SaveDirLock.acquire(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == "my notes\n"
    (tmp_path / LOCK_NAME).unlink()
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(ConfigError, match="not a file"):
        SaveDirLock.acquire(tmp_path)


def _rank_pids(session: int) -> list[int]:
    found = subprocess.run(["pgrep", "-s", str(session), "-f", "--", "--local_rank="], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.processes
def test_a_second_launch_on_a_live_job_s_save_dir_is_refused_and_the_first_finishes(demo_prepared_dir,
                                                                                      tiny_checkpoints, tmp_path):
    """As a requeued job racing an orphan: the first job's ranks are held still (SIGSTOP) while the second, with
    --resume on 2 ranks, starts and is refused; then the first goes on and finishes normally."""
    save_dir = tmp_path / "run"
    args = train_args(demo_prepared_dir, tiny_checkpoints, save_dir, epochs=1)
    first = subprocess.Popen([str(LAUNCHER), "--num_gpus", "2", "--master_port", str(free_port()),
                              str(REPO / "launch" / "train.py"), *args], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        for line in first.stdout:
            lines.append(line)
            if line.startswith("step 1/"):
                break
        ranks = _rank_pids(first.pid)
        assert len(ranks) == 2, "".join(lines)
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        before = snapshot(save_dir)
        second = run_job("train.py", args + ["--resume"], processes=2, timeout=120)
        after = snapshot(save_dir)
        for pid in ranks:
            os.kill(pid, signal.SIGCONT)
        lines += first.stdout.readlines()
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    output = second.stdout + second.stderr
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert second.returncode == 2, output[-3000:]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert f"{save_dir} is in use by another job ({socket.gethostname()} pid " in errors[0]
    assert any(f" pid {pid} since " in errors[0] for pid in ranks)  # the first job's rank 0
    assert after == before  # the refused job changed no file there
    assert first.returncode == 0, "".join(lines)[-3000:]
    assert summary(save_dir)["status"] == "finished"
