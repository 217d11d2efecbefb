"""The end of a run: summary.json (with the memory figures of every rank) and the loss-curve PNG (rank 0 writes)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from ds_kronos.console import say
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.memory_usage import peak_rss_bytes
from ds_kronos.plotting import pyplot, save_figure
from ds_kronos.runtime import all_reduce_sum
from ds_kronos.train.checkpoint.nvme import SWAP_SUBFOLDER, folder_bytes
from ds_kronos.train.engine.compiled import compile_seconds
from ds_kronos.train.engine.finetune import parameter_counts
from ds_kronos.train.observe.status import STOPPED_BY_REQUEST, WITH_FINAL_MODEL


def memory(runtime, model_peak_rss: int, build_peak_rss: int, swap_dir: Path | None) -> dict[str, Any]:
    """Peak resident memory (VmHWM) of each rank after building/loading the model (``model_peak_rss``), after the
    engine's set-up (``build_peak_rss``) and at the end, and this node's NVMe swap files. Collective."""
    rt = runtime
    peaks = torch.zeros(3, rt.world_size, dtype=torch.float64, device=rt.device)
    peaks[:, rt.rank] = torch.tensor([model_peak_rss, build_peak_rss, peak_rss_bytes()], dtype=torch.float64)
    peaks = all_reduce_sum(peaks).tolist()
    swap = folder_bytes(swap_dir / SWAP_SUBFOLDER) if swap_dir is not None else None
    return {"model_peak_rss_bytes": [int(v) for v in peaks[0]], "build_peak_rss_bytes": [int(v) for v in peaks[1]],
            "peak_rss_bytes": [int(v) for v in peaks[2]], "nvme_swap_bytes": swap}


def summary(context, position, status: str, *, started: float, efficiency, selection, forecasts,
            last_checkpoint: int, skipped: list[tuple[int, int]], memory_figures: dict[str, Any]) -> dict[str, Any]:
    """The content of summary.json: the run (``context``), where it stands (``position``) and how it ended
    (``status``); ``started``: its perf_counter at start; ``efficiency``: the progress line's figures (None before
    the first step); ``selection`` and ``forecasts``: the validator's; ``last_checkpoint``: -1 for none;
    ``skipped``: the run control's skipped ranges; ``memory_figures``: :func:`memory`."""
    rt, pos, built = context.runtime, position, context.built
    best, final = context.save_dir / "best_model", context.save_dir / "final_model"
    samples_per_s = pos.samples / pos.train_seconds if pos.train_seconds else None
    return {
        "task": context.task.kind,
        "status": status,
        "config": dataclasses.asdict(context.config),
        "deepspeed_config": context.ds_config,
        "world_size": rt.world_size,
        "device": rt.device.type,
        "steps": pos.step,
        "total_steps": context.total_steps,
        "epochs": context.data.epochs,
        "steps_per_epoch": context.data.steps_per_epoch,
        "global_batch": context.batch.global_batch,
        "first_val_loss": pos.first_val,
        "best_val_loss": pos.best_val if math.isfinite(pos.best_val) else None,
        "final_val_loss": pos.last_val,
        "train_samples": pos.samples,
        "train_seconds": round(pos.train_seconds, 3),
        "samples_per_s": round(samples_per_s, 3) if samples_per_s else None,
        **(efficiency.summary(samples_per_s) if efficiency else {}),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "compiled": bool(getattr(context.engine, "is_compiled", False)),
        "compile_seconds": round(compile_seconds(), 3) if built.compile_backend else None,
        "grad_reduce": "overlapped" if built.grad_reduction is not None else "deepspeed",
        # Only folders that exist: a run that failed or stopped early names no model it did not write.
        "best_model": str(best) if (best / "config.json").is_file() else None,
        "final_model": str(final) if status in WITH_FINAL_MODEL else None,
        "improved_on_start": selection.improved_on_start(pos.selection),
        "selection": selection.summary(pos.selection),
        "forecast_validation": None if forecasts is None else forecasts.summary(),
        "last_checkpoint": last_checkpoint if last_checkpoint >= 0 else None,
        "skipped_steps": [list(steps) for steps in skipped],  # --skip_steps and the roll-backs'
        "rollbacks": pos.rollbacks,
        "history": pos.history.to_dict(),
        "partitioned_construction": context.task.partitioned,
        "parameters": dict(zip(("trained", "total"), parameter_counts(context.task.model))),
        "memory": memory_figures,
        "sources": sources(context.data.sources, pos),
    }


def sources(described: list[dict[str, Any]], position) -> list[dict[str, Any]]:
    """summary.json's ``sources``: every source of ``--data`` (one entry for a single one) with its latest
    validation loss (a single source's is ``final_val_loss``)."""
    latest = position.history.val_sources[-1][1] if position.history.val_sources else None
    if len(described) == 1:
        latest = [position.last_val]
    return [{**source, "val_loss": None if latest is None else latest[k]} for k, source in enumerate(described)]


def write_outputs(context, position, selection, summary: dict[str, Any]) -> None:
    """summary.json, loss_curve.png and the closing line (rank 0)."""
    pos, save_dir, kind = position, context.save_dir, context.task.kind
    write_json_atomic(save_dir / "summary.json", summary)
    plot_history(pos.history, save_dir / "loss_curve.png", f"Kronos {kind} training",
                     "mean of s1 and s2 cross-entropy" if kind == "predictor"
                     else "(recon_pre + recon_all + bsq) / 2; val: full recon MSE")
    verdict = selection.verdict_line(pos.selection)
    if verdict and summary["status"] in WITH_FINAL_MODEL:
        say(verdict)
    if summary["status"] in WITH_FINAL_MODEL + (STOPPED_BY_REQUEST,):
        say(f"done: {summary['status']} at step {pos.step}; best val {summary['best_val_loss']}, final val "
            f"{summary['final_val_loss']}; {summary['samples_per_s']} samples/s; outputs in {save_dir}")


def plot_history(history, path: Path, title: str, ylabel: str) -> None:
    """The loss curve: training and validation loss, and the forecast CRPS on its own axis when scored."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if history.train:
        ax.plot(*zip(*history.train), label="train loss (mean over log interval)", lw=1)
    if history.val:
        ax.plot(*zip(*history.val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if history.forecast:  # the forecast's CRPS has its own scale
        crps_axis = ax.twinx()
        steps, crps = [p[0] for p in history.forecast], [p[1] for p in history.forecast]
        crps_axis.plot(steps, crps, "s--", color="tab:red", label="validation forecast CRPS (close)")
        crps_axis.set_ylabel("CRPS, normalised units")
        more_handles, more_labels = crps_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels)
    save_figure(fig, path)
