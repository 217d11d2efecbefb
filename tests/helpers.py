"""Paths and small utilities shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from ds_kronos.runtime import free_port  # noqa: F401 - one definition, imported by the tests from here

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """The test data vendored in the repository (golden upstream outputs, a real CSV); see tests/fixtures/README.md."""
    return REPO / "tests" / "fixtures"


# --- Training runs through the real deepspeed launcher (tests/test_train*.py, tests/test_scale.py) -----------------

# Shipped configs each get one short tiny-model run (the config_runs fixture), except those whose own test runs a
# larger model through them: the NVMe files (tests/test_scale.py trains base through zero3_nvme_bf16; zero3_nvme is
# the same file in fp32) and zero3_offload_bf16 (zero3_offload in bf16; benchmarks/scale_run.py trains large with it).
RUN_ELSEWHERE = {"zero3_nvme", "zero3_nvme_bf16", "zero3_offload_bf16"}
CONFIGS = sorted(p.stem for p in (REPO / "ds_configs").glob("zero*.json") if p.stem not in RUN_ELSEWHERE)
TOTAL_STEPS = 8
VAL_SAMPLES = 75
SEED = 100
# Extra options per config: zero1 exercises the exact OneCycleLR mode, zero3 teacher forcing, zero0 a given peak for
# the MFU of its log lines and --comet offline (COMET_RUN).
EXTRA = {"zero1": ["--lr_schedule", "onecycle"], "zero3": ["--teacher_forcing"],
         "zero0": ["--peak_tflops", "0.5", "--comet", "offline"]}
COMET_RUN = "zero0"
# zero1 also switches on DeepSpeed's four monitors: a copy of its JSON with tensorboard, csv_monitor, wandb and comet
# sections, writing into <root>/zero1_monitors/{tensorboard,csv,wandb,comet} (wandb and comet offline; their folders
# come from the environment, config_run_env). Not on COMET_RUN: --comet and a comet section cannot go together.
MONITORED = "zero1"


def config_run_json(name: str, root: Path) -> str:
    """The DeepSpeed JSON of the config_runs run ``name`` (inside ``root``, the fixture's folder)."""
    if name != MONITORED:
        return f"ds_configs/{name}.json"
    config = json.loads((REPO / "ds_configs" / f"{name}.json").read_text())
    monitors = root / f"{name}_monitors"
    config["tensorboard"] = {"enabled": True, "output_path": str(monitors), "job_name": "tensorboard"}
    config["csv_monitor"] = {"enabled": True, "output_path": str(monitors), "job_name": "csv"}
    config["wandb"] = {"enabled": True, "project": "ds_kronos_tests"}
    # Every event, not one per 100 samples per name (DeepSpeed's default interval).
    config["comet"] = {"enabled": True, "online": False, "project": "ds_kronos_tests", "samples_log_interval": 1}
    path = root / f"{name}_monitored.json"
    path.write_text(json.dumps(config))
    return str(path)


def config_run_env(name: str, root: Path) -> dict[str, str]:
    """Environment variables of the config_runs run ``name``: where the monitored run's wandb and comet offline runs
    go (DeepSpeed's sections have no key for it), wandb's own cache and settings included."""
    if name != MONITORED:
        return {}
    wandb_dir = root / f"{name}_monitors" / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return {"WANDB_DIR": str(wandb_dir), "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
            "WANDB_CONFIG_DIR": str(wandb_dir / "config"), "COMET_OFFLINE_DIRECTORY": str(wandb_dir.parent / "comet")}


LAUNCHER = Path(sys.executable).parent / "deepspeed"
"""The deepspeed launcher of the interpreter that runs the tests (the repository's .venv under ``make test``)."""


def env(**extra: str) -> dict[str, str]:
    """The environment of every process a test starts: the CPU accelerator, no comet auto-logging, wandb offline,
    unbuffered output, this checkout first on the import path; ``extra`` adds or overrides variables."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "COMET_DISABLE_AUTO_LOGGING": "1", "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO), **extra}


def launch_command(script: str, args: list[str], processes: int = 2) -> list[str]:
    """``launch/<script>`` on ``processes`` CPU ranks through the real deepspeed launcher, on a free port."""
    return [str(LAUNCHER), "--num_gpus", str(processes), "--master_port", str(free_port()),
            str(REPO / "launch" / script), *args]


def run_job(script: str, args: list[str], processes: int | None = None, timeout: int = 300, cwd: Path = REPO,
            **extra_env: str) -> subprocess.CompletedProcess:
    """``launch/<script>`` (or the script at an absolute path): one plain process (``processes`` None: a 1-process
    group without the launcher's start-up cost) or ``processes`` ranks through the deepspeed launcher. Output
    captured; the exit code is the caller's to check."""
    command = ([sys.executable, str(REPO / "launch" / script), *args] if processes is None
               else launch_command(script, args, processes))
    # Its own process group: a run past ``timeout`` is killed with its ranks (killing the launcher alone would leave
    # them running, and one of them may hold a lock or a core that the next tests wait for).
    with subprocess.Popen(command, cwd=cwd, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as job:
        try:
            stdout, stderr = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
            raise
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


def deepspeed_train(args: list[str], timeout: int = 600, script: str = "train.py", processes: int = 2,
                    **extra_env: str) -> subprocess.CompletedProcess:
    """Run a launch/ script on ``processes`` CPU ranks (default 2) through the real deepspeed launcher; it must
    succeed. ``extra_env``: as :func:`env`'s."""
    result = run_job(script, args, processes, timeout, **extra_env)
    assert result.returncode == 0, f"training failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def run_in_process(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """``launch/<script>``'s main in this process, as its command line would run it (``ds_kronos.cli.run_main``):
    returns the exit code and what it wrote to stderr (``capsys``: pytest's fixture). For the checks that end
    before any process group exists."""
    code = _exit_code_of(script, argv)
    return code, capsys.readouterr().err


def script_help(script: str, capsys) -> str:
    """What ``launch/<script> --help`` prints, run in this process."""
    assert _exit_code_of(script, ["--help"]) == 0
    return capsys.readouterr().out


def _exit_code_of(script: str, argv: list[str]) -> int:
    from importlib import util

    import pytest

    from ds_kronos.cli import run_main

    spec = util.spec_from_file_location(f"{Path(script).stem}_script", REPO / "launch" / script)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, argv)
    return exit_info.value.code


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The ``prog: error: ...`` lines of a finished job's output."""
    return [line for line in (result.stdout + result.stderr).splitlines() if ": error:" in line]


def model_weights(folder: Path) -> dict:
    """The state dict of a published predictor folder (best_model/, final_model/, ...)."""
    from ds_kronos.model import Kronos

    return Kronos.from_pretrained(folder).state_dict()


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Two predictor folders hold the same tensors, each element within ``atol``."""
    import torch

    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)


def stall_a_rank(command: list[str], when: Callable[[str], bool], rank: int = 1,
                 timeout: int = 120) -> tuple[int, str, float]:
    """Start ``command`` (a deepspeed launcher command) and stop rank ``rank`` with SIGSTOP once a line of its
    output satisfies ``when``; returns (exit code, all output, seconds from the stop to the job's end).

    Once the launcher starts killing its ranks it sends SIGTERM, which a stopped process only receives once it
    runs again, so the stopped rank is continued then: waiting for DeepSpeed's 30 s SIGKILL grace would test
    DeepSpeed, not ds_kronos. The launcher logs "Killing subprocess" before it signals each rank, so the stopped one
    is continued once its SIGTERM is pending (continued earlier, it would find its collective failed before the
    signal came, a race of the test's making)."""
    job = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    lines: list[str] = []
    try:
        for line in job.stdout:
            lines.append(line)
            if when(line):
                break
        pids = subprocess.run(["pgrep", "-f", "-s", str(job.pid), "--", f"--local_rank={rank}"],
                              capture_output=True, text=True).stdout.split()
        assert len(pids) == 1, (pids, "".join(lines)[-3000:])
        os.kill(int(pids[0]), signal.SIGSTOP)
        stopped_at = time.time()
        for line in job.stdout:
            lines.append(line)
            if "Killing subprocess" in line:
                wait_for_pending(int(pids[0]), signal.SIGTERM)
                os.kill(int(pids[0]), signal.SIGCONT)
                break
        lines += job.stdout.readlines()
        job.wait(timeout=timeout)
        return job.returncode, "".join(lines), time.time() - stopped_at
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def wait_for_pending(pid: int, sig: signal.Signals, timeout: float = 10.0) -> bool:
    """Wait until ``sig`` is pending for the (stopped) process ``pid`` (/proc's SigPnd/ShdPnd masks); False when it
    did not come within ``timeout`` s or the process is gone."""
    bit = 1 << (int(sig) - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
        if any(mask & bit for mask in masks):
            return True
        time.sleep(0.05)
    return False


def two_at_a_time(run: Callable[[object], object], items: Iterable) -> list:
    """``run`` over ``items``, two at once: a short launcher run is mostly single-threaded start-up and shut-down
    (imports, the launcher's polling), so a second one fills the idle core. Runs are deterministic (one torch thread
    per rank), so their results do not depend on what runs beside them."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, items))


def train_args(prepared: Path, checkpoints: tuple[Path, Path], save_dir: Path, **options) -> list[str]:
    """launch/train.py's arguments for a short run of the test data: by default the run every config makes (2
    epochs x 4 steps of 2 x 16 samples, 75 validation samples); ``options`` add or override options by name (True:
    the flag alone; None: leave the option out, i.e. at the job's default)."""
    tokenizer, predictor = checkpoints
    values = {"data": prepared, "tokenizer": tokenizer, "predictor": predictor, "save_dir": save_dir, "epochs": 2,
              "n_train_iter": 128, "n_val_iter": VAL_SAMPLES, "batch_size": 16, "log_every": 1, "seed": SEED,
              **options}
    args: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        args += [f"--{name}"] if value is True else [f"--{name}", str(value).lower() if value is False else str(value)]
    return args


def common_args(prepared: Path, checkpoints: tuple[Path, Path], save_dir: Path) -> list[str]:
    """The short run every config makes (:func:`train_args` with its defaults)."""
    return train_args(prepared, checkpoints, save_dir)


def summary(save_dir: Path) -> dict:
    return json.loads((save_dir / "summary.json").read_text())


def single_process_val_losses(prepared: Path, checkpoints: tuple[Path, Path], samples: int,
                              teacher_forcing: bool = True):
    """Per-sample validation losses of the first ``samples`` val windows scored by one process, as the trainer
    scores them (causal dependency layer; without teacher forcing, each window's s1 conditioning drawn from its
    own stream of --seed SEED): the reference for all-reduced validation."""
    import torch

    from ds_kronos.data import PreparedDataset, WindowDataset
    from ds_kronos.model import Kronos, KronosTokenizer
    from ds_kronos.model.objective import per_sample_uniforms
    from ds_kronos.train.validation.loss import sample_keys

    tokenizer = KronosTokenizer.from_pretrained(checkpoints[0]).eval()
    model = Kronos.from_pretrained(checkpoints[1]).eval()
    dataset = WindowDataset(PreparedDataset.open(prepared), "val", max_samples=samples, seed=SEED, shuffle=False)
    x, stamp = dataset.get_batch(list(range(len(dataset))))
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x, half=True)
        uniform = None if teacher_forcing else per_sample_uniforms(sample_keys(SEED, range(len(dataset))),
                                                                   s1.shape[1] - 1)
        s1_logits, s2_logits = model(s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=teacher_forcing,
                                     s1_targets=s1[:, 1:] if teacher_forcing else None, causal_s2=True,
                                     s1_uniform=uniform)
        per_sample, _, _ = model.head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:], reduction="none")
    return per_sample


def stopped_after(run: Path, target: Path, step: int) -> Path:
    """A copy of the finished run ``run`` as a run stopped after its checkpoint of ``step`` (what --exit_after_steps
    leaves, or a kill before the next checkpoint): the other tags, ``final_model/`` and ``summary.json`` removed,
    ``latest`` on ``step``; ``best_model/`` is left as the run left it."""
    shutil.copytree(run, target, symlinks=True)
    kept = f"step{step:08d}"
    for tag in (target / "checkpoints").glob("step*"):
        if tag.name != kept:
            shutil.rmtree(tag)
    (target / "checkpoints" / "latest").write_text(kept)
    for name in ("final_model", "summary.json"):
        shutil.rmtree(target / name) if (target / name).is_dir() else (target / name).unlink()
    return target


def forked_holder(save_dir: Path) -> int:
    """A child process (forked: no new interpreter) that holds the save_dir lock of ``save_dir`` until it is killed
    (``os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)``)."""
    from ds_kronos.train.checkpoint.save_dir_lock import SaveDirLock

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(ready_r)
            SaveDirLock.acquire(save_dir)
            os.write(ready_w, b"1")
            while True:
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid


def stopped_after_step_3(run: Path, target: Path) -> Path:
    """:func:`stopped_after` step 3 (a run preempted after its step-3 checkpoint)."""
    return stopped_after(run, target, 3)


# --- Containers (tests/test_preemption.py, tests/test_entrypoint.py) ---------------------------------------------
PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]
"""A new PID namespace whose first process is PID 1 (as in a container); needs root or user namespaces."""


def as_pid_1() -> list[str]:
    """The command prefix that runs launch/entrypoint.py as PID 1 of a new PID namespace, or (where this system does
    not allow one to a user who is not root) as a plain process.
    Root (CI) must get the namespace: no silent fallback."""
    entrypoint = [sys.executable, str(REPO / "launch" / "entrypoint.py")]
    allowed = subprocess.run([*PID_NAMESPACE, "true"], capture_output=True).returncode == 0
    assert allowed or os.geteuid() != 0, "unshare --pid --fork --mount-proc failed as root: the PID-1 test cannot run"
    return [*PID_NAMESPACE, *entrypoint] if allowed else entrypoint
