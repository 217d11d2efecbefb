"""Training throughput of the DeepSpeed step against a plain torch DDP loop (same model, data and step).

    python benchmarks/train_throughput.py --variant small --zero 2 --world_size 2 --micro_batch 16 \\
        --precision bf16 --steps 20 --warmup 3                          # GPU: one process per GPU
    DS_ACCELERATOR=cpu python benchmarks/train_throughput.py --variant mini --world_size 2 --steps 4

It starts its own processes (torch.multiprocessing, spawn), first for DeepSpeed (deepspeed.initialize with the
ds_configs/ file the planner names for --zero/--precision, "auto" values resolved by ds_kronos.deepspeed_json.resolve),
then for the baseline: torch DDP over the same process group, torch AdamW with the JSON's hyper-parameters,
gradient clipping as the JSON, fp32 or bf16 autocast. DeepSpeed's side runs the trainer's own micro-step
(ds_kronos.train.step.train_micro_step); the baseline the same task loss (frozen tokenizer -> tokenize_batch ->
predict_and_score) with its own backward and step; both on random bars generated in memory (a few batches,
cycled). Timings are per optimizer step after --warmup steps, synchronised; the median is used. With --compile both
sides are compiled the same way (launch/train.py --compile: DeepSpeed's engine.compile; the DDP module compiled in
place before DDP wraps it); compilation falls in the warm-up steps and its time is printed apart.

Printed: samples/s, tokens/s, median step time, peak memory per rank (RSS on CPU, max_memory_allocated on GPU),
model FLOPs per sample (formula in ds_kronos.model.flops), MFU against --peak_tflops or a matmul probe at this
precision (the probe gives the achievable, not the datasheet, peak: its MFU reads higher), and the ratio
DeepSpeed / DDP. The LAST line is one JSON object (samples_per_s, baseline_samples_per_s, ratio, peak_rss_mb,
mfu, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.errors import UserError
from ds_kronos.model import PREDICTOR_PRESETS


@dataclass(kw_only=True)
class ThroughputConfig:
    """Measure DeepSpeed training throughput against a torch DDP baseline."""

    variant: str = option("mini", choices=tuple(PREDICTOR_PRESETS), help="predictor preset")
    zero: int = option(0, choices=(0, 1, 2, 3), help="ZeRO stage")
    offload: str = option("none", choices=("none", "cpu"), help="ZeRO-2/3 CPU offload (see launch/plan.py)")
    world_size: int = option(1, help="processes (one per GPU on a GPU machine)")
    micro_batch: int = option(8, help="samples per rank per step")
    context: int | None = option(None, help="tokens per sample (default: min(preset max_context, 512))")
    precision: str = option("fp32", choices=("fp32", "bf16"), help="training precision")
    activation_checkpointing: bool = option(False, help="recompute blocks in backward")
    steps: int = option(10, help="timed optimizer steps")
    warmup: int = option(2, help="untimed steps first")
    peak_tflops: float | None = option(None, help="peak TFLOP/s per device for MFU (default: a matmul probe)")
    threads: int | None = option(None, help="torch threads per process on CPU (default: cores / processes)")
    baseline: bool = option(True, help="also run the torch DDP baseline")
    compile: bool = option(False, help="compile the model as launch/train.py --compile does (DeepSpeed's "
                                       "engine.compile; the DDP baseline's module with the same torch.compile "
                                       "settings); compilation happens in the --warmup steps (at least 1)")
    seed: int = option(0, help="random seed")
    overlap_grad_reduce: bool = option(False, help="ZeRO-0: the gradient all-reduce overlapped with backward, as "
                                                   "launch/train.py --overlap_grad_reduce does (default false: "
                                                   "DeepSpeed's own, after backward, as train.py's default)")
    profile: bool = option(False, help="rank 0 of each phase records its timed steps with torch.profiler and "
                                       "prints where the time goes (its timings then include the profiler's "
                                       "overhead: do not compare them with unprofiled runs)")

    def problems(self) -> list[str]:
        problems = [f"--{name} must be at least 1" for name in ("world_size", "micro_batch", "steps")
                    if getattr(self, name) < 1]
        if self.warmup < 0:
            problems.append("--warmup must be >= 0")
        if self.compile and self.warmup < 1:
            problems.append("--compile needs --warmup >= 1 (the first step compiles; it must not be timed)")
        if self.offload == "cpu" and self.zero < 2:
            problems.append("--offload needs --zero 2 or 3")
        return problems


# ------------------------------------------------------------------------------------------------ in each process
def _peak_memory_bytes(device) -> tuple[int, int]:
    """(peak RSS, peak accelerator memory) since the last reset."""
    import torch

    from ds_kronos.memory_usage import peak_rss_bytes
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return peak_rss_bytes(), gpu


def _reset_peaks(device) -> None:
    import torch

    from ds_kronos.memory_usage import reset_peak_rss
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device, dtype, seconds: float = 1.0) -> float:
    """Achievable dense matmul TFLOP/s of this process at ``dtype`` (square matmuls, repeated for ``seconds``)."""
    import torch
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
        if device.type == "cuda" and done % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n ** 3 * done / (time.perf_counter() - start) / 1e12


def _deepspeed_step(task, ds_json: dict[str, Any], compile: bool, overlap: bool):
    """A DeepSpeed engine around the task's model; returns the trainer's own micro-step
    (ds_kronos.train.step.train_micro_step: tokenize, forward, backward, optimizer) on a batch of bars.
    ``overlap``: the gradient all-reduce overlapped with backward at ZeRO-0 (launch/train.py --overlap_grad_reduce)."""
    import deepspeed

    from ds_kronos.train.engine.compiled import compile_engine
    from ds_kronos.train.engine.grad_overlap import overlap_gradient_reduction
    from ds_kronos.train.step import train_micro_step

    model = task.model
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds_json)
    if compile:
        compile_engine(engine)
    reducer = overlap_gradient_reduction(engine) if overlap else None

    def step(bars, stamp) -> None:
        train_micro_step(engine, task, bars, stamp, reducer)
    return step


def _ddp_step(task, device, bf16: bool, ds_json: dict[str, Any], compile: bool):
    """The plain-PyTorch baseline: DDP + AdamW with DeepSpeed's optimizer settings and clipping, on the task's loss
    (the same tokenize-and-score as the trainer's); returns one step. With ``compile`` the module is compiled in
    place before DDP wraps it, as DeepSpeed's engine.compile does."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from ds_kronos.train.engine.compiled import compile_module

    model = task.model.to(device)
    if compile:
        compile_module(model)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = ds_json["optimizer"]["params"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"], betas=tuple(params["betas"]),
                                  eps=params["eps"], weight_decay=params["weight_decay"])
    clip = ds_json.get("gradient_clipping", 0.0)

    def step(bars, stamp) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task.train_losses(ddp, bars, stamp)[0]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _time_steps(config: ThroughputConfig, step, inputs: StepInputs, device, after_step=None) -> list[float]:
    """Seconds of each measured step, after ``config.warmup`` untimed ones (peaks are reset when timing starts)."""
    from ds_kronos.runtime import barrier

    times = []
    for i in range(config.warmup + config.steps):
        if i == config.warmup:
            barrier()
            _reset_peaks(device)
        bars, stamp = inputs.data[i % len(inputs.data)]
        _sync(device)
        start = time.perf_counter()
        step(bars, stamp)
        _sync(device)
        if i >= config.warmup:
            times.append(time.perf_counter() - start)
        if after_step is not None:
            after_step()
    return times


def join_group(config: ThroughputConfig, rank: int, port: int):
    """This process as rank ``rank`` of a local process group; returns ds_kronos's runtime."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(config.world_size),
                      LOCAL_WORLD_SIZE=str(config.world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import logging

    from ds_kronos.runtime import init_runtime

    runtime = init_runtime(config.threads)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return runtime


@dataclass
class StepInputs:
    """What every measured step works on: the trainer's task (frozen tokenizer and model), a few random batches, the
    resolved JSON."""

    task: Any
    data: list
    context: int
    ds_json: dict[str, Any]


def step_inputs(config: ThroughputConfig, rank: int, runtime) -> StepInputs:
    """The seeded predictor task of ``config`` (the trainer's: tokenizer and model presets, the same on every rank)
    and random bars (per rank)."""
    import torch

    from ds_kronos.model import preset
    from ds_kronos.plan.measure import random_batch
    from ds_kronos.runtime import seed_everything
    from ds_kronos.train.tasks import PredictorTask

    seed_everything(config.seed)
    spec = preset(config.variant)
    task = PredictorTask(tokenizer=spec.tokenizer, predictor=config.variant, teacher_forcing=False,
                         tokenizer_dtype="auto", device=runtime.device,
                         activation_checkpointing=config.activation_checkpointing)
    context = config.context or min(spec.max_context, 512)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    data = [random_batch(config.micro_batch, context, generator) for _ in range(4)]
    return StepInputs(task, data, context, _ds_json(config, runtime.on_cpu))


def deepspeed_engine(config: ThroughputConfig, rank: int, port: int) -> tuple[Any, StepInputs, Any]:
    """Join the group (ds_kronos's runtime), build the step's inputs and a DeepSpeed engine over the model from
    the JSON: the set-up of the benchmarks that time one part of the product's step (stop_check_cost.py,
    grad_overlap_ab.py)."""
    import deepspeed

    runtime = join_group(config, rank, port)
    inputs = step_inputs(config, rank, runtime)
    model = inputs.task.model
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                           config=inputs.ds_json)
    return runtime, inputs, engine


def worker(rank: int, mode: str, values: dict[str, Any], port: int, out_dir: str) -> None:
    """One rank of one phase ("deepspeed" or "ddp"); writes its timings to out_dir/<rank>.json."""
    config = ThroughputConfig(**values)
    runtime = join_group(config, rank, port)
    import torch

    from ds_kronos.train.engine.compiled import compile_seconds

    device, bf16 = runtime.device, config.precision == "bf16"
    probe = None
    if mode == "deepspeed" and config.peak_tflops is None:
        probe = matmul_tflops(device, torch.bfloat16 if bf16 else torch.float32)  # all ranks at once: shared cores
    inputs = step_inputs(config, rank, runtime)
    step = (_deepspeed_step(inputs.task, inputs.ds_json, config.compile, config.overlap_grad_reduce)
            if mode == "deepspeed" else _ddp_step(inputs.task, device, bf16, inputs.ds_json, config.compile))
    started = time.perf_counter()
    profile = None
    if config.profile and rank == 0:
        from step_profile import summarise
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    schedule=torch.profiler.schedule(wait=config.warmup, warmup=0,
                                                                     active=config.steps)) as profiler:
            times = _time_steps(config, step, inputs, device, after_step=profiler.step)
        profile = summarise(profiler.key_averages(), config.steps, times)  # the timed steps only
    else:
        times = _time_steps(config, step, inputs, device)
    warmup_s = time.perf_counter() - started - sum(times)
    rss, gpu = _peak_memory_bytes(device)
    result = {"times": times, "peak_rss": rss, "peak_gpu": gpu, "probe_tflops": probe, "device": device.type,
              "threads": torch.get_num_threads(), "context": inputs.context, "warmup_s": warmup_s,
              "compile_s": compile_seconds() if config.compile else None, "profile": profile,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    Path(out_dir, f"{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    runtime.close()  # every rank leaves the group together: one leaving early can abort another's exit


def _ds_json(config: ThroughputConfig, on_cpu: bool) -> dict[str, Any]:
    from ds_kronos.deepspeed_json.resolve import BatchLayout, resolve_ds_config
    from ds_kronos.plan.planner import ds_config_for

    choice = ds_config_for(config.zero, config.offload, config.precision)
    batch = BatchLayout(config.micro_batch, 1, config.world_size)
    return resolve_ds_config(choice.load(), choice.path, batch=batch, total_steps=config.warmup + config.steps,
                             lr=None, use_onecycle=False, on_cpu=on_cpu)


# ----------------------------------------------------------------------------------------------------- parent
def run_ranks(worker: Callable[..., None], args: tuple, world_size: int) -> list[dict[str, Any]]:
    """Spawn ``world_size`` processes running ``worker(rank, *args, port, out_dir)`` (each joins the group on
    ``port`` and writes its results to ``out_dir/<rank>.json``) and return those results in rank order. The
    benchmarks that time the product's step run their ranks through this."""
    import torch.multiprocessing as mp

    from ds_kronos.runtime import free_port
    with tempfile.TemporaryDirectory(prefix="ds_kronos_bench_") as out_dir:
        mp.start_processes(worker, args=(*args, free_port(), out_dir), nprocs=world_size, join=True,
                           start_method="spawn")
        return [json.loads(Path(out_dir, f"{r}.json").read_text()) for r in range(world_size)]


def slowest_rank(ranks: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per timed series, each step's time on its slowest rank: a step (or a collective) ends when the last rank's
    does."""
    return {kind: [max(r[kind][i] for r in ranks) for i in range(len(ranks[0][kind]))] for kind in ranks[0]}


def _phase(mode: str, config: ThroughputConfig) -> list[dict[str, Any]]:
    return run_ranks(worker, (mode, dataclasses.asdict(config)), config.world_size)


def _summary(results: list[dict[str, Any]], config: ThroughputConfig, flops: float, peak: float) -> dict[str, Any]:
    per_step = slowest_rank([{"times": r["times"]} for r in results])["times"]
    median = statistics.median(per_step)
    samples = config.micro_batch * config.world_size / median
    return {"samples_per_s": samples, "tokens_per_s": samples * results[0]["context"], "step_s_median": median,
            "peak_rss_mb": max(r["peak_rss"] for r in results) / 2 ** 20,
            "peak_gpu_mb": max(r["peak_gpu"] for r in results) / 2 ** 20,
            "mfu": samples * flops / (peak * 1e12 * config.world_size),
            "warmup_s": max(r["warmup_s"] for r in results),
            "compile_s": max(r["compile_s"] for r in results) if config.compile else None}


def run(config: ThroughputConfig) -> dict[str, Any]:
    from ds_kronos.model.flops import flops_per_sample
    from ds_kronos.plan.counts import model_counts

    counts = model_counts(config.variant)
    context = config.context or min(counts.max_context, 512)
    flops = flops_per_sample(counts.config, counts.matmul_params, context)
    ds = _phase("deepspeed", config)
    peak = config.peak_tflops or ds[0]["probe_tflops"]
    peak_source = "--peak_tflops" if config.peak_tflops else f"matmul probe ({config.precision}, per process)"
    mine = _summary(ds, config, flops, peak)
    print(f"Kronos-{config.variant} ({counts.total_params:,} params), {config.world_size} x {ds[0]['device_name']} "
          f"({ds[0]['threads']} threads each), ZeRO-{config.zero}{' + offload' if config.offload == 'cpu' else ''}, "
          f"{config.precision}, micro batch {config.micro_batch} x context {context}, {config.steps} steps after "
          f"{config.warmup} warm-up" + (" (compiled: torch.compile in the warm-up steps)" if config.compile else ""))
    print(f"model FLOPs per sample {flops / 1e9:.2f} GFLOP (6 x {counts.matmul_params:,} x {context} + attention); "
          f"peak {peak:.2f} TFLOP/s per device from {peak_source}")
    _print("deepspeed", mine, ds[0]["profile"])
    report: dict[str, Any] = {"variant": config.variant, "zero": config.zero, "world_size": config.world_size,
                              "compile": config.compile,
                              "precision": config.precision, "micro_batch": config.micro_batch, "context": context,
                              **mine, "flops_per_sample": flops, "peak_tflops": peak,
                              "baseline_samples_per_s": None, "ratio": None}
    if config.baseline:
        ddp = _phase("ddp", config)
        base = _summary(ddp, config, flops, peak)
        _print("torch DDP", base, ddp[0]["profile"])
        report.update(baseline_samples_per_s=base["samples_per_s"], ratio=mine["samples_per_s"] / base["samples_per_s"],
                      baseline_peak_rss_mb=base["peak_rss_mb"], baseline_peak_gpu_mb=base["peak_gpu_mb"],
                      baseline_mfu=base["mfu"], baseline_compile_s=base["compile_s"])
        print(f"ratio DeepSpeed / DDP: {report['ratio']:.3f}")
    return report


def _print(label: str, s: dict[str, Any], profile: dict[str, Any] | None = None) -> None:
    gpu = f", peak GPU {s['peak_gpu_mb']:.0f} MiB/rank" if s["peak_gpu_mb"] else ""
    print(f"{label:<10} {s['samples_per_s']:10.2f} samples/s {s['tokens_per_s']:12.0f} tokens/s  step median "
          f"{s['step_s_median'] * 1000:8.1f} ms  peak RSS {s['peak_rss_mb']:.0f} MiB/rank{gpu}  MFU {s['mfu']:.1%}"
          + (f"  (compile {s['compile_s']:.1f} s, warm-up {s['warmup_s']:.1f} s)" if s["compile_s"] is not None
             else ""))
    if profile:
        from step_profile import print_summary
        print_summary(profile)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(ThroughputConfig, argv)
    try:
        report = run(config)
    except Exception as exc:  # a worker's failure arrives as ProcessRaisedException with its traceback text
        if type(exc).__name__ == "ProcessRaisedException":
            raise UserError(f"a benchmark process failed:\n{exc}") from None
        raise
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    run_main(main)
