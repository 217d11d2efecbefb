"""Train each larger preset for a few optimizer steps on this machine, and compare its memory with the planner's.

    DS_ACCELERATOR=cpu python benchmarks/scale_run.py                         # base, large, 1b (about 20 min)
    DS_ACCELERATOR=cpu python benchmarks/scale_run.py --variants base --steps 3

Each row is one real run of ``launch/train.py`` through the deepspeed launcher (2 CPU ranks by default, one torch
thread each) on the demo market (lookback 90 + predict 10: 100 tokens per sample), from the preset's random init,
with the frozen ``base`` tokenizer preset, no validation before training and a small validation at the end:

    base   ZeRO-3, bf16                         ds_configs/zero3_bf16.json       (partitioned construction)
    large  ZeRO-3 + CPU offload, bf16           ds_configs/zero3_offload_bf16.json
    1b     ZeRO-3 + NVMe offload, bf16          ds_configs/zero3_nvme_bf16.json  (swap files in --work_dir)
    3b     as 1b                                (not in the default list: see the README's scale table)

Measured per row: seconds per optimizer step (median over the steps after the first, timed by the arrival of
the progress lines the ranks print unbuffered), samples/s, each rank's peak resident memory (VmHWM, reported by
the trainer in summary.json; also its value once the model is built/loaded and once the engine is set up), the
machine's peak (the sum of the resident memory of every process of the job, launcher included, sampled every
0.2 s), the largest size the NVMe swap folder reached (sampled), and the training loss of every step, which must
be finite and lower at the end than at the start. Next to them, the planner's figures for the same settings
(``ds_kronos.plan``: per-rank peak, per-node host memory and swap disk) and measured / planned. The LAST line is
one JSON object with every row.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.errors import UserError
from ds_kronos.train.checkpoint.nvme import folder_bytes

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"base": "ds_configs/zero3_bf16.json", "large": "ds_configs/zero3_offload_bf16.json",
           "1b": "ds_configs/zero3_nvme_bf16.json", "3b": "ds_configs/zero3_nvme_bf16.json"}
OFFLOAD = {"ds_configs/zero3_bf16.json": "none", "ds_configs/zero3_offload_bf16.json": "cpu",
           "ds_configs/zero3_nvme_bf16.json": "nvme"}
STEP_LINE = re.compile(r"^step (\d+)/\d+ ")
GIB = 1024 ** 3


@dataclass(kw_only=True)
class ScaleRunConfig:
    """A few optimizer steps of each larger preset on this machine, with memory measured and planned."""

    variants: list[str] = option(default_factory=lambda: ["base", "large", "1b"], nargs="+",
                                 help=f"presets to run ({', '.join(CONFIGS)})")
    world_size: int = option(2, help="ranks (CPU processes)", ge=1)
    steps: int = option(4, help="optimizer steps per run", ge=2)
    micro_batch: int = option(1, help="samples per rank per step", ge=1)
    lr: float = option(3e-4, help="peak learning rate (warm-up then cosine over --steps)", gt=0)
    work_dir: str = option("runs/scale_run", help="demo data, run folders and NVMe swap files go here")
    data: str | None = option(None, help="prepared dataset (default: the demo market, prepared into --work_dir)")
    keep_runs: bool = option(False, help="keep each run's folder (checkpoints and exported models)")
    from_model_folder: bool = option(False, help="start from a model folder of the preset's random init (written "
                                   "once into --work_dir by a plain process) instead of the preset: measures "
                                   "streamed loading into the partitioned model")
    timeout_s: float = option(3600.0, help="seconds one run may take", gt=0)

    def problems(self) -> list[str]:
        return [f"--variants: unknown preset {v!r} (choose from {', '.join(CONFIGS)})" for v in self.variants
                if v not in CONFIGS]


# ------------------------------------------------------------------------------------------------- sampling
def _children(pid: int) -> list[int]:
    found, frontier = [], [pid]
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", encoding="ascii") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    while frontier:
        current = frontier.pop()
        for child in parents.get(current, []):
            found.append(child)
            frontier.append(child)
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peak of the job's summed resident memory and of the swap folder's size, sampled every ``period`` s."""

    def __init__(self, pid: int, swap_dir: Path | None, period: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.swap_dir, self.period = pid, swap_dir, period
        self.machine_peak = 0
        self.swap_peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = [self.pid, *_children(self.pid)]
            self.machine_peak = max(self.machine_peak, sum(_rss_bytes(p) for p in pids))
            if self.swap_dir is not None and self.swap_dir.is_dir():
                self.swap_peak = max(self.swap_peak, folder_bytes(self.swap_dir))
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# ---------------------------------------------------------------------------------------------------- runs
def prepare_demo(work_dir: Path) -> Path:
    """The demo market prepared as the demo does (lookback 90, predict 10); reused when present."""
    market, prepared = work_dir / "demo_qlib", work_dir / "demo_prepared"
    if not (prepared / "manifest.json").is_file():
        for args in (["launch/make_demo_data.py", "--out", str(market), "--overwrite", "true"],
                     ["launch/prepare_data.py", "--qlib_dir", str(market), "--instrument", "csi300", "--out",
                      str(prepared)]):
            subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return prepared


def preset_checkpoint(work_dir: Path, variant: str) -> Path:
    """A published-format folder of the preset's random init (seed 0), written once by a plain process."""
    folder = work_dir / f"checkpoint_{variant}"
    if not (folder / "model.safetensors").is_file():
        code = ("import sys, torch; from ds_kronos.model import Kronos; torch.manual_seed(0); "
                "Kronos.from_preset(sys.argv[1]).save_pretrained(sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, variant, str(folder)], cwd=REPO, check=True)
    return folder


def planned(variant: str, config: str, world_size: int, micro_batch: int, context: int,
            finetune: str = "full") -> dict[str, float]:
    """The planner's figures for a run of ``config`` (its ZeRO stage, offload and precision read from the file)."""
    from ds_kronos.deepspeed_json.resolve import load_ds_config
    from ds_kronos.deepspeed_json.view import DeepSpeedView
    from ds_kronos.plan import PlanRequest, plan

    view = DeepSpeedView.of(load_ds_config(config))
    estimate = plan(PlanRequest(predictor=variant, world_size=world_size, zero_stage=view.zero_stage,
                                offload=view.offload_optimizer, batch_size=micro_batch, context=context,
                                precision=view.precision, device="cpu", finetune=finetune)).estimate
    return {"rank_peak": estimate.rank_peak, "node_host": estimate.node_host, "node_disk": estimate.node_disk}


def run_one(cfg: ScaleRunConfig, variant: str, data: Path, port: int, *, config: str | None = None,
            finetune: str = "full") -> dict[str, Any]:
    """One run of ``variant`` through ``config`` (default: the variant's row above) with ``--finetune finetune``
    (full or lora at the trainer's defaults); its measured row."""
    config = config or CONFIGS[variant]
    run_dir = Path(cfg.work_dir) / f"run_{variant}_{finetune}_{Path(config).stem}"
    shutil.rmtree(run_dir, ignore_errors=True)
    swap_dir = run_dir / "nvme_swap" if OFFLOAD.get(config) == "nvme" else None
    run_dir.mkdir(parents=True)
    predictor = str(preset_checkpoint(Path(cfg.work_dir), variant)) if cfg.from_model_folder else variant
    # The shipped JSON with this benchmark's learning rate (the trainer refuses --lr that contradicts the file).
    from ds_kronos.deepspeed_json.resolve import load_ds_config
    ds_json = load_ds_config(config)
    ds_json["optimizer"]["params"]["lr"] = cfg.lr
    ds_path = run_dir / Path(config).name
    ds_path.write_text(json.dumps(ds_json, indent=2), encoding="utf-8")
    command = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(cfg.world_size),
               "--master_port", str(port), "launch/train.py", "--deepspeed_config", str(ds_path), "--data", str(data),
               "--tokenizer", "base", "--predictor", predictor, "--batch_size", str(cfg.micro_batch),
               "--max_steps", str(cfg.steps), "--log_every", "1", "--eval_at_start", "false",
               "--n_val_iter", str(cfg.micro_batch * cfg.world_size), "--threads", "1", "--save_dir", str(run_dir),
               "--finetune", finetune]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    sampler = Sampler(process.pid, swap_dir)
    sampler.start()
    arrivals: dict[int, float] = {}  # step -> when its progress line arrived (the ranks print unbuffered)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())
        match = STEP_LINE.match(line.strip())
        if match:
            arrivals[int(match.group(1))] = time.perf_counter()
            print(f"  {variant}: {line.strip()}", flush=True)
    try:
        process.wait(timeout=cfg.timeout_s)
    finally:
        sampler.stop()
    wall = time.perf_counter() - start
    summary_path = run_dir / "summary.json"
    if process.returncode != 0 or not summary_path.is_file():
        tail = "\n".join(lines[-25:])
        raise UserError(f"{variant}: the run failed (exit {process.returncode}); last lines:\n{tail}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    global_batch = summary["global_batch"]
    losses = [loss for _, loss in summary["history"]["train"]]
    # Seconds per step from step 2 on (step 1 includes the first gathers, swaps and allocations).
    later = [arrivals[s] - arrivals[s - 1] for s in sorted(arrivals) if s > 1 and s - 1 in arrivals]
    memory = summary["memory"]
    context = _context(data)
    plan_figures = planned(variant, config, cfg.world_size, cfg.micro_batch, context, finetune)
    machine_peak = sampler.machine_peak
    row = {
        "variant": variant, "ds_config": config, "finetune": finetune, "parameters": summary["parameters"],
        "world_size": cfg.world_size, "micro_batch": cfg.micro_batch,
        "context": context, "steps": summary["steps"], "wall_s": round(wall, 1),
        "sec_per_step": round(statistics.median(later), 3) if later else None,
        "sec_per_step_spread": [round(min(later), 3), round(max(later), 3)] if later else None,
        "samples_per_s": round(global_batch / statistics.median(later), 3) if later else None,
        "from_model_folder": cfg.from_model_folder, "rank_model_peak_rss_bytes": memory["model_peak_rss_bytes"],
        "rank_peak_rss_bytes": memory["peak_rss_bytes"], "rank_build_peak_rss_bytes": memory["build_peak_rss_bytes"],
        "machine_peak_rss_bytes": machine_peak, "nvme_peak_bytes": sampler.swap_peak,
        "nvme_left_after_run": folder_bytes(swap_dir) if swap_dir is not None and swap_dir.exists() else 0,
        "losses": losses, "losses_finite": all(math.isfinite(v) for v in losses),
        "loss_fell": bool(losses) and losses[-1] < losses[0],
        "planned": plan_figures,
        "rank_peak_ratio": round(max(memory["peak_rss_bytes"]) / plan_figures["rank_peak"], 3),
        "machine_peak_ratio": round(machine_peak / plan_figures["node_host"], 3),
        "nvme_ratio": round(sampler.swap_peak / plan_figures["node_disk"], 3) if plan_figures["node_disk"] else None,
    }
    if not cfg.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def _context(data: Path) -> int:
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    return int(manifest["lookback"]) + int(manifest["predict"])  # a window of lookback + predict + 1 bars


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| preset | config | s/step (min-max) | samples/s | peak RSS per rank, GiB (model built; engine set up) | "
            "machine peak, GiB | "
            "NVMe, GiB | losses | planned rank / node / disk, GiB | measured / planned: rank, machine, disk |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ranks = ", ".join(f"{_gib(p)} ({_gib(m)}; {_gib(b)})" for p, m, b in zip(
            r["rank_peak_rss_bytes"], r["rank_model_peak_rss_bytes"], r["rank_build_peak_rss_bytes"]))
        spread = r["sec_per_step_spread"] or [float("nan")] * 2
        p = r["planned"]
        nvme_ratio = f"{r['nvme_ratio']:.2f}" if r["nvme_ratio"] is not None else "-"
        out.append(f"| {r['variant']} | {Path(r['ds_config']).name} | {r['sec_per_step']:.1f} ({spread[0]:.1f}-"
                   f"{spread[1]:.1f}) | {r['samples_per_s']:.3f} | {ranks} | {_gib(r['machine_peak_rss_bytes'])} | "
                   f"{_gib(r['nvme_peak_bytes']) if r['nvme_peak_bytes'] else '-'} | "
                   f"{' > '.join(f'{v:.3f}' for v in r['losses'])} | {_gib(p['rank_peak'])} / {_gib(p['node_host'])}"
                   f" / {_gib(p['node_disk']) if p['node_disk'] else '-'} | {r['rank_peak_ratio']:.2f}, "
                   f"{r['machine_peak_ratio']:.2f}, {nvme_ratio} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_config(ScaleRunConfig, argv)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data) if cfg.data else prepare_demo(work)
    rows = []
    for index, variant in enumerate(cfg.variants):
        print(f"{variant}: {CONFIGS[variant]}, {cfg.world_size} ranks, micro batch {cfg.micro_batch}, "
              f"{cfg.steps} steps", flush=True)
        rows.append(run_one(cfg, variant, data, port=29700 + index))
        failed = [] if rows[-1]["losses_finite"] and rows[-1]["loss_fell"] else [variant]
        if failed:
            print(f"  {variant}: the loss did not stay finite and fall: {rows[-1]['losses']}", flush=True)
    print(table(rows))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    run_main(main)
