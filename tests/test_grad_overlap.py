"""ZeRO-0's gradient all-reduce overlapped with backward (``--overlap_grad_reduce``, on by default; issue 13).

It must give DeepSpeed's own result: bit for bit on 2 ranks (a sum of two numbers does not depend on the order, and
both scale by 1/2), to rounding on 3 ranks against one process on the same global batch. The runs use small buckets
(``--grad_bucket_mb 0.25``: the tiny model's 1.5 MB of gradients in 6 buckets, so buckets are launched while
backward still runs) and gradient accumulation (the hooks must leave the accumulation micro-steps alone). Teacher
forcing and the dropout-free tiny model make runs deterministic (see test_scale_correctness.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ds_kronos.model import Kronos
from helpers import assert_same_weights, deepspeed_train, model_weights, run_job, summary, train_args, two_at_a_time

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
        lambda: deepspeed_train(args(demo_prepared_dir, tiny_checkpoints, three, 4, 2, *SMALL_BUCKETS), processes=3),
        lambda: run_job("train.py", args(demo_prepared_dir, tiny_checkpoints, one, 24, 1))])
    assert single.returncode == 0, single.stderr[-3000:]
    assert summary(three)["grad_reduce"] == "overlapped" and summary(one)["grad_reduce"] == "deepspeed"
    assert summary(three)["steps"] == summary(one)["steps"] == 6
    assert_same_weights(three / "final_model", one / "final_model", atol=1e-6)
