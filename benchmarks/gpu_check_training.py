"""The GPU check's training sections: ZeRO-2 bf16 with a checkpoint and an exact resume (c), ZeRO-3 with CPU offload
(d), throughput and MFU (f) and the NaN guard (g). (c), (d) and (g) run launch/train.py as one process (a 1-process
group, ds_kronos.runtime) on the CSV fixture prepared once per check; (f) runs benchmarks/train_throughput.py's
timed step. Each returns a JSON-able dict with ``ok``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSV = REPO / "tests" / "fixtures" / "kline_5min_2500.csv"
LOG_TAIL = 4000


def _run(script: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / script), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _must(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-LOG_TAIL:]}")
    return result


def prepared(dry_run: bool, workdir: Path) -> Path:
    """The CSV fixture as a prepared dataset (made by the first section that needs it)."""
    out = workdir / "prepared"
    if not (out / "manifest.json").is_file() and not out.is_dir():
        lookback, predict = (30, 5) if dry_run else (90, 10)
        _must(_run("launch/prepare_data.py", ["--csv", str(CSV), "--split", "0.8,0.1,0.1", "--lookback",
                                              str(lookback), "--predict", str(predict), "--out", str(out)]),
              "preparing the CSV fixture")
    return out


def ds_json(name: str, workdir: Path) -> tuple[str, str]:
    """(path, optimizer) of ds_configs/<name>.json as run here: the file itself, or where the ops section could not
    build the DeepSpeed optimizer this JSON takes (DeepSpeedCPUAdam under offload, FusedAdam on CUDA otherwise), a
    copy with torch's AdamW (optimizer.params.torch_adam) so that the rest of the check still runs; the report
    names the fallback."""
    path = REPO / "ds_configs" / f"{name}.json"
    ops_file = workdir / "ops.json"
    builder = "CPUAdamBuilder" if "offload" in name else "FusedAdamBuilder"
    if ops_file.is_file():
        built = json.loads(ops_file.read_text()).get(builder, {"ok": True})["ok"]
    else:
        # The ops section did not run (build as usual), or was cut off mid-build: a half-done build keeps torch's
        # extension lock, on which a new build would wait until the section's cap.
        built = not (workdir / "ops.started").is_file()
    if built:
        return str(path), "deepspeed default"
    config = json.loads(path.read_text())
    config["optimizer"]["params"].update(torch_adam=True, fused=True)
    copy = workdir / f"{name}_torch_adam.json"
    copy.write_text(json.dumps(config))
    return str(copy), f"torch AdamW ({builder} was not built: see ops)"


def train_args(dry_run: bool, workdir: Path, save_dir: Path, config: str, steps: int, batch: int) -> list[str]:
    tokenizer, predictor = ("tiny", "tiny") if dry_run else ("base", "small")
    return ["--data", str(prepared(dry_run, workdir)), "--save_dir", str(save_dir), "--deepspeed_config", config,
            "--tokenizer", tokenizer, "--predictor", predictor, "--batch_size", str(batch), "--max_steps", str(steps),
            "--n_train_iter", str(batch * (steps * 2 // 3)), "--n_val_iter", str(2 * batch), "--eval_at_start",
            "false", "--log_every", "1", "--seed", "100", "--num_workers", "0"]


def _summary(save_dir: Path) -> dict:
    return json.loads((save_dir / "summary.json").read_text())


def _weights(folder: Path) -> dict:
    from ds_kronos.model import Kronos
    return Kronos.from_pretrained(folder).state_dict()


def zero2_resume(dry_run: bool, workdir: Path) -> dict:
    """bf16 ZeRO-2: N steps straight, against N/2 steps + checkpoint (--exit_after_steps) + --resume for the rest:
    bit-equal final weights, or the largest difference. The epoch is 2N/3 steps, so the stop falls mid-epoch (the
    data order must resume too) and a validation lies between the stop and the end."""
    config, optimizer = ds_json("zero2_bf16", workdir)
    steps, batch = (6, 4) if dry_run else (30, 32)
    straight, resumed = workdir / "zero2_straight", workdir / "zero2_resumed"
    _must(_run("launch/train.py", train_args(dry_run, workdir, straight, config, steps, batch)), "the straight run")
    args = train_args(dry_run, workdir, resumed, config, steps, batch)
    _must(_run("launch/train.py", args + ["--exit_after_steps", str(steps // 2)]), "the stopped run")
    second = _must(_run("launch/train.py", args + ["--resume"]), "the resumed run")
    a, b = _weights(straight / "final_model"), _weights(resumed / "final_model")
    diffs = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a}
    sa, sb = _summary(straight), _summary(resumed)
    losses = [loss for _, loss in sa["history"]["train"]]
    max_diff = max(diffs.values())
    return {"optimizer": optimizer, "steps": steps, "micro_batch": batch, "stopped_at": steps // 2,
            "resumed_message": f"resumed from step {steps // 2}" in second.stdout + second.stderr,
            "bit_equal": all(d == 0 for d in diffs.values()), "max_abs_weight_diff": max_diff,
            "worst_tensor": max(diffs, key=diffs.get) if max_diff else None,
            "losses_equal": sa["history"]["train"] == sb["history"]["train"],
            "first_loss": losses[0], "last_loss": losses[-1], "samples_per_s": sa["samples_per_s"],
            "ok": sb["steps"] == steps and all(map(math.isfinite, losses)) and max_diff <= 1e-3}


def zero3_offload(dry_run: bool, workdir: Path) -> dict:
    config, optimizer = ds_json("zero3_offload_bf16", workdir)
    steps, batch = (2, 4) if dry_run else (6, 16)
    save_dir = workdir / "zero3_offload"
    _must(_run("launch/train.py", train_args(dry_run, workdir, save_dir, config, steps, batch)), "the ZeRO-3 run")
    summary = _summary(save_dir)
    losses = [loss for _, loss in summary["history"]["train"]]
    return {"optimizer": optimizer, "steps": summary["steps"], "micro_batch": batch, "losses": losses,
            "step_s": round(summary["train_seconds"] / max(1, summary["steps"]), 3),
            "samples_per_s": summary["samples_per_s"], "memory": summary.get("memory"),
            "ok": summary["steps"] == steps and all(map(math.isfinite, losses))}


def nan_guard(dry_run: bool, workdir: Path) -> dict:
    """tests/nan_batch_train.py makes the 2nd micro-batch's loss NaN: the run must stop with one clear line
    ("training diverged ...") and a non-zero exit, not train on."""
    config, _ = ds_json("zero2_bf16", workdir)
    steps, batch = (6, 4) if dry_run else (10, 16)
    args = train_args(dry_run, workdir, workdir / "nan_guard", config, steps, batch)
    result = _run("tests/nan_batch_train.py", ["--nan_micro_batch", "2", *args])
    output = result.stdout + result.stderr
    line = next((x for x in output.splitlines() if "training diverged" in x), None)
    return {"exit_code": result.returncode, "line": line, "traceback": "Traceback" in output,
            "ok": result.returncode not in (0, None) and line is not None and "Traceback" not in output}


def throughput(dry_run: bool, workdir: Path) -> dict:
    """samples/s, TFLOP/s and MFU of the product's timed step (benchmarks/train_throughput.py), bf16, one process
    per visible GPU: small and base at ZeRO-0 and ZeRO-2, --overlap_grad_reduce on and off."""
    import torch
    from train_throughput import ThroughputConfig, run

    from ds_kronos.model.flops import device_peak
    cuda = torch.cuda.is_available() and not dry_run
    peak = device_peak(torch.cuda.get_device_name(0)) if cuda else None
    peak_tflops = peak.tflops("bf16") if peak else None
    specs = ([("tiny", 2, 32)] if dry_run else [("small", 32, 512), ("base", 16, 512)])
    world_size = torch.cuda.device_count() if cuda else 1
    runs, ok = {}, True
    for variant, micro_batch, context in specs:
        for zero in (0, 2):
            for overlap in (True, False):
                key = f"{variant}_zero{zero}_overlap_{'on' if overlap else 'off'}"
                config = ThroughputConfig(variant=variant, zero=zero, precision="bf16", world_size=world_size,
                                          micro_batch=micro_batch,
                                          context=context, steps=2 if dry_run else 8, warmup=1 if dry_run else 3,
                                          baseline=False, overlap_grad_reduce=overlap, peak_tflops=peak_tflops)
                try:
                    r = run(config)
                except Exception as exc:  # one configuration's failure is reported; the others still run
                    runs[key], ok = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-LOG_TAIL:]}, False
                    continue
                runs[key] = {"samples_per_s": round(r["samples_per_s"], 2),
                             "tflops": float(f'{r["samples_per_s"] * r["flops_per_sample"] / 1e12:.3g}'),
                             "mfu": round(r["mfu"], 4), "step_s_median": round(r["step_s_median"], 4),
                             "peak_gpu_mb": round(r["peak_gpu_mb"]), "micro_batch": micro_batch, "context": context}
    # ds_kronos.train.engine.grad_overlap.overlap_unsupported: the overlapped reduction needs ZeRO-0 and 2+ ranks.
    note = ("ZeRO-2 reduces in its own optimizer: each ZeRO-2 on/off pair times the same step (its spread is the "
            "noise)" + ("; on one GPU ZeRO-0's pairs too (the overlap needs 2+ ranks)" if world_size < 2 else ""))
    return {"peak_tflops": peak_tflops, "mfu_against": "datasheet bf16 dense" if peak_tflops else "matmul probe",
            "world_size": world_size, "overlap_note": note, "runs": runs, "ok": ok}
