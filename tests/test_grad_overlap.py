"""ZeRO-0's gradient all-reduce overlapped with backward (``--overlap_grad_reduce``, off by default; issue 13).

It must give DeepSpeed's own result: bit for bit on 2 ranks (a sum of two numbers does not depend on the order, and
both scale by 1/2), to rounding on 3 ranks against one process on the same global batch. The runs use small buckets
(``--grad_bucket_mb 0.25``: the tiny model's 1.5 MB of gradients in 6 buckets, so buckets are launched while
backward still runs) and gradient accumulation (the hooks must leave the accumulation micro-steps alone). Teacher
forcing and the dropout-free tiny model make runs deterministic (see test_scale_correctness.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from ds_kronos.model import Kronos
from helpers import (
    LAUNCHER,
    REPO,
    assert_same_weights,
    deepspeed_train,
    env,
    free_port,
    model_weights,
    run_job,
    summary,
    train_args,
    two_at_a_time,
)

pytestmark = pytest.mark.processes  # every test here starts processes

SMALL_BUCKETS = ["--grad_bucket_mb", "0.25"]


def args(prepared: Path, checkpoints: tuple[Path, Path], save_dir: Path, micro: int, accum: int, *extra: str):
    return train_args(prepared, checkpoints, save_dir, deepspeed_config="ds_configs/zero0.json", epochs=1,
                      n_train_iter=144, n_val_iter=24, batch_size=micro, grad_accum=accum, teacher_forcing=True,
                      eval_at_start=False) + list(extra)


def test_two_ranks_give_deepspeeds_weights_bit_for_bit(demo_prepared_dir, tiny_checkpoints, tmp_path):
    runs = {overlap: tmp_path / overlap for overlap in ("true", "false")}
    results = two_at_a_time(lambda overlap: deepspeed_train(args(
        demo_prepared_dir, tiny_checkpoints, runs[overlap], 4, 2, "--overlap_grad_reduce", overlap, *SMALL_BUCKETS)),
        runs)
    for overlap, result in zip(runs, results):
        assert ("gradient all-reduce overlapped with backward" in result.stdout) == (overlap == "true")
    overlapped, deepspeed = summary(runs["true"]), summary(runs["false"])
    assert overlapped["grad_reduce"] == "overlapped" and deepspeed["grad_reduce"] == "deepspeed"
    assert overlapped["steps"] == deepspeed["steps"] == 9
    assert overlapped["history"]["train"] == deepspeed["history"]["train"]
    assert overlapped["history"]["val"] == deepspeed["history"]["val"]
    a, b = model_weights(runs["true"] / "final_model"), model_weights(runs["false"] / "final_model")
    start = Kronos.from_pretrained(tiny_checkpoints[1]).state_dict()
    assert any(not torch.equal(a[key], start[key]) for key in a)  # it trained
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_three_ranks_with_accumulation_match_one_process(demo_prepared_dir, tiny_checkpoints, tmp_path):
    # One global batch of 24 split as 3 ranks x 4 samples x 2 accumulation steps, and as 1 process x 24.
    three, one = tmp_path / "three", tmp_path / "one"
    _, single = two_at_a_time(lambda run: run(), [
        lambda: deepspeed_train(args(demo_prepared_dir, tiny_checkpoints, three, 4, 2, "--overlap_grad_reduce", "true",
                                      *SMALL_BUCKETS), processes=3),
        lambda: run_job("train.py", args(demo_prepared_dir, tiny_checkpoints, one, 24, 1))])
    assert single.returncode == 0, single.stderr[-3000:]
    assert summary(three)["grad_reduce"] == "overlapped" and summary(one)["grad_reduce"] == "deepspeed"
    assert summary(three)["steps"] == summary(one)["steps"] == 6
    assert_same_weights(three / "final_model", one / "final_model", atol=1e-6)


LOW_PRECISION_SCRIPT = r"""
import json, sys
import torch
import deepspeed
import deepspeed.comm as dist
from ds_kronos.runtime import init_runtime
from ds_kronos.train.engine.grad_overlap import OverlappedGradientReduction
from ds_kronos.train.step import train_micro_step

runtime = init_runtime(threads=1)
config = json.loads(open("ds_configs/zero0_bf16.json").read())
config.pop("scheduler")
config.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2, train_batch_size=16)
calls = {"during_optimizer_step": 0}
all_reduce = dist.all_reduce

def counted(*args, **kwargs):
    calls["during_optimizer_step"] += calls.get("stepping", 0)
    return all_reduce(*args, **kwargs)

dist.all_reduce = counted


class Task:  # the trainer's task interface, as train_micro_step calls it
    def train_losses(self, engine, x, stamp):
        return engine(x).float().pow(2).mean().reshape(1)


def engine_and_reduction(active):
    torch.manual_seed(0)  # the same initial weights on every rank and in both engines
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                                torch.nn.GELU(), torch.nn.Linear(64, 16))
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                                   config=config)
    reduction = OverlappedGradientReduction(engine, bucket_bytes=4096)  # 4 buckets, launched during backward
    reduction.set_active(active)
    step = optimizer.step

    def counted_step(*args, **kwargs):
        calls["stepping"] = 1
        try:
            return step(*args, **kwargs)
        finally:
            calls["stepping"] = 0
    optimizer.step = counted_step
    return engine, reduction


report = {"wrapper": None, "views": [], "weights": {}}
generator = torch.Generator().manual_seed(1 + runtime.rank)  # each rank its own batches
batches = [torch.randn(4, 16, generator=generator).to(torch.bfloat16) for _ in range(6)]
for active in (True, False):
    engine, reduction = engine_and_reduction(active)
    report["wrapper"] = type(engine.optimizer).__name__
    calls["during_optimizer_step"] = 0
    for i, x in enumerate(batches):
        if active and i == 5:  # the last micro-step of the last step: after backward, before the optimizer
            engine.backward(Task().train_losses(engine, x, None)[0])
            reduction.finish()
            for bucket in reduction.buckets:
                low, high = bucket.flat.data_ptr(), bucket.flat.data_ptr() + bucket.flat.numel() * 2
                report["views"] += [low <= p.grad.data_ptr() < high for p in bucket.params]
            reduction.step()
            continue
        train_micro_step(engine, Task(), x, None, reduction)
    report["weights"][active] = [p.detach().float().tolist() for p in engine.module.parameters()]
    report[f"optimizer_step_all_reduces_{'overlapped' if active else 'deepspeed'}"] = calls["during_optimizer_step"]
report["same_weights"] = report["weights"][True] == report["weights"][False]
report["steps"] = engine.global_steps
del report["weights"]
# One file per rank: two ranks printing at once can interleave their lines.
with open(sys.argv[-1] + f".rank{runtime.rank}.json", "w") as handle:  # after --local_rank
    json.dump(report, handle)
runtime.close()
"""


def test_bf16_steps_without_deepspeeds_overflow_all_reduce_into_bucket_views(tmp_path):
    """bf16 at ZeRO-0 (DeepSpeed's DDP_BFLOAT16 wrapper, the shipped zero0_bf16.json): DeepSpeed's overflow check
    all-reduces its flag over the world when ``enable_backward_allreduce`` is off, unless told that the gradients
    are already reduced; the overlapped reduction must leave the optimizer step without a collective, keep the
    gradients as views into its buckets (no second copy), and give DeepSpeed's own weights bit for bit (2 ranks)."""
    script = tmp_path / "bf16_overlap.py"
    script.write_text(LOW_PRECISION_SCRIPT)
    result = subprocess.run([str(LAUNCHER), "--num_gpus", "2", "--master_port", str(free_port()), str(script),
                             str(tmp_path / "report")], cwd=REPO, env=env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report.rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["wrapper"] in ("FP16_Optimizer", "FP16_UnfusedOptimizer")
        assert report["steps"] == 3
        assert report["optimizer_step_all_reduces_deepspeed"] == 0
        assert report["optimizer_step_all_reduces_overlapped"] == 0
        assert len(report["views"]) == 6 and all(report["views"])
        assert report["same_weights"]
