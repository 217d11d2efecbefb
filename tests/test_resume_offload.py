"""Resume is an exact continuation under every optimizer offload kind (issue 20, item 1): none
(tests/test_preemption.py, ZeRO-2, stopped by a signal), CPU (zero3_offload.json) and NVMe (zero3_nvme.json).

Each case stops a 2-rank run with ``--exit_after_steps``, resumes it, and compares it with the uninterrupted run:
the same final weights, logged losses and learning rates. Under NVMe the predictor is tiny widened to d_model 128,
so that each rank's optimizer sub-group (about 0.5M elements) is above DeepSpeed's 1 MiB swap minimum and really
lives in the swap files (tiny's would stay in memory); the test checks that the checkpoint holds the swapped Adam
moments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ds_kronos.model import Kronos
from helpers import SEED, assert_same_weights, common_args, deepspeed_train, summary, two_at_a_time

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def wide_predictor(tiny_checkpoints, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wide") / "predictor"
    torch.manual_seed(SEED)
    config = Kronos.from_pretrained(tiny_checkpoints[1]).config
    Kronos(config.replace(d_model=128, ff_dim=256)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def offload_runs(demo_prepared_dir, tiny_checkpoints, wide_predictor, tmp_path_factory) -> dict[str, Path]:
    """NVMe: uninterrupted and stopped after step 4 (the epoch's end), then resumed; CPU: stopped after step 3
    (mid-epoch), then resumed (its uninterrupted run is the session's zero3_offload config run). Paired two at a
    time."""
    root = tmp_path_factory.mktemp("offload_resume")

    def args(name: str) -> list[str]:
        if name.startswith("nvme"):
            return common_args(demo_prepared_dir, (tiny_checkpoints[0], wide_predictor), root / name) + [
                "--deepspeed_config", "ds_configs/zero3_nvme.json", "--nvme_dir", str(root / f"{name}_swap")]
        return common_args(demo_prepared_dir, tiny_checkpoints, root / name) + [
            "--deepspeed_config", "ds_configs/zero3_offload.json"]

    rounds = [[("nvme_straight", []), ("nvme_resumed", ["--exit_after_steps", "4"])],
              [("nvme_resumed", ["--resume"]), ("cpu_resumed", ["--exit_after_steps", "3"])],
              [("cpu_resumed", ["--resume"])]]
    outputs: dict[str, str] = {}
    for runs in rounds:
        results = two_at_a_time(lambda run: deepspeed_train(args(run[0]) + run[1]), runs)
        for (name, _), result in zip(runs, results):
            outputs[name] = outputs.get(name, "") + result.stdout
    assert "resumed from step 4" in outputs["nvme_resumed"] and "resumed from step 3" in outputs["cpu_resumed"]
    return {name: root / name for name in ("nvme_straight", "nvme_resumed", "cpu_resumed")}


def assert_same_run(a: Path, b: Path) -> None:
    assert_same_weights(a / "final_model", b / "final_model", atol=1e-6)
    sa, sb = summary(a), summary(b)
    assert sa["steps"] == sb["steps"] == 8
    for kind in ("train", "val", "lr"):
        np.testing.assert_allclose(sb["history"][kind], sa["history"][kind], rtol=1e-9, atol=1e-6, err_msg=kind)


def test_resume_under_nvme_optimizer_offload_is_exact(offload_runs):
    resumed = offload_runs["nvme_resumed"]
    moments = sorted(p.name.split("-")[0] for p in (resumed / "checkpoints").glob(
        "step00000004/offloaded_tensors/rank*/exp_avg*.tensor.swp"))
    assert moments == ["exp_avg"] * 2 + ["exp_avg_sq"] * 2, moments  # the moments were swapped, on both ranks
    assert_same_run(offload_runs["nvme_straight"], resumed)


def test_resume_under_cpu_optimizer_offload_is_exact(offload_runs, config_runs):
    assert_same_run(config_runs["zero3_offload"], offload_runs["cpu_resumed"])
