"""The GPU acceptance check: every question a first CUDA machine must answer, in one run of at most 8 minutes.

    python benchmarks/gpu_check.py [--out FILE]                       # on the GPU machine (benchmarks/gpu_check.sh)
    DS_ACCELERATOR=cpu python benchmarks/gpu_check.py --dry-run      # the same sections at tiny size, on the CPU
    python benchmarks/gpu_check.py --dry-run --sections golden,kv_cache

Each section runs in its own process (its own time cap, a share of the run's budget) and reports a JSON object;
a section that fails, hangs or crashes is reported with its error and the last lines of its output, and the next
one runs. The sections (docs/gpu_check.md): environment, golden (a), tokenizer_fp16 (b), kv_cache (e), ops
(DeepSpeed's JIT-compiled optimizers), nan_guard (g), zero2_resume (c), zero3_offload (d), throughput (f). The last line
printed is the whole report as one JSON object; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks")]

# Name -> time cap in seconds on the GPU, in the order they run: the cheap sections first, so that a slow one
# cannot starve them, then ops (compiles DeepSpeed's optimizers once) before the training sections that use them.
# The run's budget (--budget) caps the total, each section getting at most what is left.
SECTIONS = {
    "environment": 30, "golden": 45, "tokenizer_fp16": 45, "kv_cache": 60, "ops": 180, "nan_guard": 75,
    "zero2_resume": 150, "zero3_offload": 75, "throughput": 200,
}
DRY_RUN_CAP_S = 240
DEFAULT_BUDGET_S = 420  # 8 minutes less the wheels' installation (gpu_check.sh) and this process's start-up
TAIL_LINES = 25


def section_function(name: str):
    import gpu_check_models
    import gpu_check_training
    for module in (gpu_check_models, gpu_check_training):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(name)


def run_section(name: str, dry_run: bool, workdir: Path, result_path: Path) -> None:
    """In the section's own process: run it, write its result (a dict with ``ok``) as JSON."""
    if dry_run:
        os.environ["DS_ACCELERATOR"] = "cpu"
    result = section_function(name)(dry_run=dry_run, workdir=workdir)
    result_path.write_text(json.dumps(result, default=str), encoding="utf-8")


def _tail(path: Path) -> list[str]:
    try:
        # Lines cut at 300 characters: the report must stay readable in the last few KiB of a device's output.
        return [line[:300] for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-TAIL_LINES:]]
    except OSError:
        return []


def spawn_section(name: str, dry_run: bool, workdir: Path, cap_s: float) -> dict:
    """The section in a child process (its own session, killed whole past ``cap_s``); its report."""
    result_path, log_path = workdir / f"{name}.result.json", workdir / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-section", name, "--workdir", str(workdir)]
    if dry_run:
        command.append("--dry-run")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = job.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            code = None
    seconds = round(time.perf_counter() - started, 1)
    if code is None:
        return {"ok": False, "seconds": seconds, "error": f"timed out after {cap_s:.0f} s", "log_tail": _tail(log_path)}
    if code != 0 or not result_path.is_file():
        lines = _tail(log_path)
        error = next((line for line in reversed(lines) if line.strip() and not line.startswith(" ")), f"exit {code}")
        return {"ok": False, "seconds": seconds, "error": error, "exit_code": code, "log_tail": lines}
    return {**json.loads(result_path.read_text(encoding="utf-8")), "seconds": seconds}


def check(names: list[str], dry_run: bool, budget_s: float, workdir: Path, logs: Path | None = None) -> dict:
    started = time.perf_counter()
    report: dict = {"dry_run": dry_run, "budget_s": budget_s, "sections": {}}
    for name in names:
        left = budget_s - (time.perf_counter() - started)
        if left < 5:
            report["sections"][name] = {"ok": False, "error": "skipped: the run's time budget is spent"}
            continue
        cap = min(DRY_RUN_CAP_S if dry_run else SECTIONS[name], left)
        print(f"gpu_check: {name} (cap {cap:.0f} s)", file=sys.stderr, flush=True)
        report["sections"][name] = result = spawn_section(name, dry_run, workdir, cap)
        if logs is not None:  # the whole output, where the report's tail is not enough
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / f"{name}.log", logs / f"{name}.log")
        print(f"gpu_check: {name} {'ok' if result.get('ok') else 'FAILED'} in {result.get('seconds')} s"
              + ("" if result.get("ok") else f": {result.get('error', '')}"), file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(s.get("ok") for s in report["sections"].values())
    report["failed"] = [name for name, s in report["sections"].items() if not s.get("ok")]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (DS_ACCELERATOR=cpu)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list, in the order given")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all sections together")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--logs", default=None, help="copy each section's whole output into this folder")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--run-section", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_section:
        run_section(args.run_section, args.dry_run, Path(args.workdir), Path(args.workdir) /
                    f"{args.run_section}.result.json")
        return
    names = [n for n in args.sections.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if args.dry_run:
        os.environ["DS_ACCELERATOR"] = "cpu"
    else:
        os.environ.pop("DS_ACCELERATOR", None)  # a CPU setting left in the environment would hide the GPU
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = check(names, args.dry_run, args.budget, workdir, Path(args.logs) if args.logs else None)
        except Exception:  # the report must still come out: this is the one line the caller reads
            report = {"ok": False, "error": traceback.format_exc()[-2000:]}
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
