"""DeepSpeed's CPU all-reduce buffers in /dev/shm: released by every run, however it ends; stale ones swept.

DeepSpeed 0.19 names one ~69 MB segment per rank ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` and never
unlinks it (see ds_kronos/shm_buffers.py). The runs here go through the real deepspeed launcher on 2 CPU ranks with
a known master port, so the names their ranks create are known.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ds_kronos.shm_buffers import BUFFER_PREFIX, SHM_DIR, buffer_name, sweep_stale_buffers
from helpers import LAUNCHER, REPO, common_args, env, free_port

pytestmark = pytest.mark.processes  # every test here starts processes


def launch(args: list[str], port: int, **popen) -> subprocess.Popen:
    command = [str(LAUNCHER), "--num_gpus", "2", "--master_port", str(port),
               str(REPO / "launch" / "train.py"), *args]
    return subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def buffers_of(port: int) -> list[str]:
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(BUFFER_PREFIX) and f"_{port}_" in p.name)


def fake_buffer(name: str, age_s: float = 3600.0) -> Path:
    """A segment named as DeepSpeed names them, last written ``age_s`` seconds ago."""
    path = SHM_DIR / name
    path.write_bytes(b"\0" * 4096)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


HOLDER = """
import mmap, sys, time
with open(sys.argv[1], "r+b") as handle:
    view = mmap.mmap(handle.fileno(), 4096)
print("mapped", flush=True)
time.sleep(600)
"""


def test_sweep_removes_only_dead_owners_buffers(tmp_path):
    port = free_port()
    stale = fake_buffer(buffer_name(0, "127.0.0.1", f"{port}-stale"))
    recent = fake_buffer(buffer_name(0, "127.0.0.1", f"{port}-recent"), age_s=0)
    held = fake_buffer(buffer_name(0, "127.0.0.1", f"{port}-held"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        # The holder closed its descriptor and keeps only the mapping: the sweep must see maps, not only fds.
        removed = sweep_stale_buffers()
        assert stale.name in removed and not stale.exists()
        assert held.exists() and held.name not in removed
        assert recent.exists() and recent.name not in removed  # may be a starting job re-opening that name
    finally:
        holder.kill()
        holder.wait()
        for path in (stale, recent, held):
            path.unlink(missing_ok=True)
    with open(SHM_DIR / "unrelated_segment_for_test", "wb") as handle:  # only DeepSpeed's names are candidates
        handle.write(b"x")
    try:
        os.utime(SHM_DIR / "unrelated_segment_for_test", (0, 0))
        assert "unrelated_segment_for_test" not in sweep_stale_buffers()
        assert (SHM_DIR / "unrelated_segment_for_test").exists()
    finally:
        (SHM_DIR / "unrelated_segment_for_test").unlink()


def test_finished_run_releases_its_buffers_and_sweeps_dead_ones_but_not_live_ones(demo_prepared_dir,
                                                                                   tiny_checkpoints, tmp_path):
    port, other = free_port(), free_port()
    stale = fake_buffer(buffer_name(1, "127.0.0.1", str(other)))        # a killed job's buffer: nobody maps it
    live = fake_buffer(buffer_name(0, "127.0.0.1", f"{other}-live"))    # a running job's buffer (mapped below)
    with open(live, "r+b") as handle:
        live_map = mmap.mmap(handle.fileno(), 4096)
    try:
        args = common_args(demo_prepared_dir, tiny_checkpoints, tmp_path / "run") + [
            "--deepspeed_config", "ds_configs/zero2.json", "--epochs", "1", "--eval_at_start", "false"]
        job = launch(args, port)
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output[-3000:]
        assert buffers_of(port) == []
        assert not stale.exists()
        assert live.exists()
    finally:
        live_map.close()
        live.unlink(missing_ok=True)
        stale.unlink(missing_ok=True)


def test_run_that_fails_with_a_user_error_releases_its_buffers(demo_prepared_dir, tiny_checkpoints, tmp_path):
    """--resume with no complete checkpoint fails after the process group (and the buffers) exist."""
    port = free_port()
    (tmp_path / "run" / "checkpoints" / "step00000001").mkdir(parents=True)
    args = common_args(demo_prepared_dir, tiny_checkpoints, tmp_path / "run") + [
        "--deepspeed_config", "ds_configs/zero2.json", "--resume"]
    job = launch(args, port)
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0 and "no complete checkpoint to resume from" in output, output[-3000:]
    assert buffers_of(port) == []


def test_killed_run_leaves_no_buffers(demo_prepared_dir, tiny_checkpoints, tmp_path):
    port = free_port()
    args = common_args(demo_prepared_dir, tiny_checkpoints, tmp_path / "run") + [
        "--deepspeed_config", "ds_configs/zero2.json", "--epochs", "50", "--eval_at_start", "false"]
    job = launch(args, port)
    try:
        for line in job.stdout:  # wait until both ranks are training
            if "step 1/" in line or "step 2/" in line:
                break
        else:
            raise AssertionError("the run ended before training started")
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(["pgrep", "-f", f"master_port={port}"],
                                                    capture_output=True).returncode == 0:
        time.sleep(0.5)
    assert buffers_of(port) == []
