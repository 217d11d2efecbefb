"""Correct at scale (issue 9): uneven validation shards under ZeRO-3, per-rank randomness, exact fp32 masters under
bf16, resume on another world size, and world-size invariance. Real processes through the deepspeed launcher.

Teacher forcing and a dropout-free model make a run deterministic, so runs that split the same global batch of 16
differently (1 x 16, 2 x 8, 2 x 4 x accumulation 2, at ZeRO-0 to 3) must end with the same weights, validation
losses and logged training losses, to rounding; updates are ~1e-4 per weight, rounding differences ~1e-7.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ds_kronos.model import Kronos
from ds_kronos.runtime import rank_seed
from helpers import (
    REPO,
    SEED,
    assert_same_weights,
    env,
    model_weights,
    run_job,
    single_process_val_losses,
    stopped_after_step_3,
    summary,
    train_args,
    two_at_a_time,
)

pytestmark = pytest.mark.processes  # every test here starts processes

STEPS = 8  # one epoch of 128 samples at a global batch of 16
WEIGHT_ATOL = 1e-6


def launch(nproc: int, args: list[str], timeout: int = 300, expect_ok: bool = True,
           script: str | Path = "train.py") -> subprocess.CompletedProcess:
    """``nproc`` ranks through the deepspeed launcher; one rank as a plain process (the same code path, a
    1-process group, without the launcher's start-up cost). ``script``: a launch/ script, or a path."""
    result = run_job(str(script), args, None if nproc == 1 else nproc, timeout)
    if expect_ok:
        assert result.returncode == 0, f"training failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def run_args(prepared: Path, checkpoints: tuple[Path, Path], save_dir: Path, config: str, micro: int,
             accum: int = 1, *extra: str) -> list[str]:
    return train_args(prepared, checkpoints, save_dir, deepspeed_config=config, epochs=1, n_val_iter=24,
                      batch_size=micro, grad_accum=accum, teacher_forcing=True) + list(extra)


def assert_same_run(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> None:
    assert_same_weights(a / "final_model", b / "final_model", atol)
    sa, sb = summary(a), summary(b)
    for kind in ("val", "train"):
        np.testing.assert_allclose(sa["history"][kind], sb["history"][kind], rtol=0, atol=1e-5, err_msg=kind)


@pytest.fixture(scope="module")
def frozen_te_checkpoints(tiny_checkpoints, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny pair, the predictor with frozen sinusoidal time tables (learn_te false), as published models have."""
    folder = tmp_path_factory.mktemp("frozen_te")
    torch.manual_seed(SEED)
    config = Kronos.from_pretrained(tiny_checkpoints[1]).config
    Kronos(config.replace(learn_te=False)).save_pretrained(folder / "predictor")
    return tiny_checkpoints[0], folder / "predictor"


LAYOUTS = {"1x16_zero0": (1, "ds_configs/zero0.json", 16, 1), "1x8x2_zero1": (1, "ds_configs/zero1.json", 8, 2),
           "2x8_zero2": (2, "ds_configs/zero2.json", 8, 1), "2x4x2_zero3": (2, "ds_configs/zero3.json", 4, 2)}
REFERENCE = "1x16_zero0"


@pytest.fixture(scope="module")
def invariance_runs(demo_prepared_dir, tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The same global batch of 16 split four ways, each run uninterrupted, with a checkpoint after step 3 kept
    (the elastic-resume tests start from copies of it)."""
    root = tmp_path_factory.mktemp("invariance")

    def run(name: str) -> None:
        nproc, config, micro, accum = LAYOUTS[name]
        launch(nproc, run_args(demo_prepared_dir, tiny_checkpoints, root / name, config, micro, accum,
                               "--save_every", "3", "--keep_last", "3"))
    two_at_a_time(run, LAYOUTS)
    return {name: root / name for name in LAYOUTS}


def test_world_size_invariance(invariance_runs):
    reference = invariance_runs[REFERENCE]
    assert summary(reference)["steps"] == STEPS
    for name in LAYOUTS:
        assert_same_run(reference, invariance_runs[name])


@pytest.mark.processes
def test_preset_initialisation_is_the_same_at_every_zero_stage(demo_prepared_dir, tiny_checkpoints, tmp_path):
    """From a preset (not a model folder) with the same --seed: ZeRO-3's partitioned construction
    (deepspeed.zero.Init) draws the same initial weights as a plain build, so initial_model/, the first validation
    loss and the run itself match across stages and world sizes."""
    layouts = {"1x16_zero0": (1, "ds_configs/zero0.json", 16, 1), "2x4x2_zero3": (2, "ds_configs/zero3.json", 4, 2)}

    def run(name: str) -> None:
        nproc, config, micro, accum = layouts[name]
        launch(nproc, run_args(demo_prepared_dir, (tiny_checkpoints[0], Path("tiny")), tmp_path / name, config,
                               micro, accum, "--max_steps", "2"))
    two_at_a_time(run, layouts)
    plain, partitioned = (tmp_path / name for name in layouts)
    assert summary(partitioned)["partitioned_construction"] and not summary(plain)["partitioned_construction"]
    start_plain = model_weights(plain / "initial_model")
    start_partitioned = model_weights(partitioned / "initial_model")
    assert start_plain.keys() == start_partitioned.keys()
    different = [k for k in start_plain if not torch.equal(start_plain[k], start_partitioned[k])]
    assert not different, different
    assert_same_run(plain, partitioned)


def test_training_moves_weights_far_more_than_the_invariance_tolerance(invariance_runs, tiny_checkpoints):
    start, end = model_weights(tiny_checkpoints[1]), model_weights(invariance_runs[REFERENCE] / "final_model")
    assert max((start[k] - end[k]).abs().max().item() for k in start) > 100 * WEIGHT_ATOL


SLOW_CONVERSION = """
# launch/train.py with DeepSpeed's universal conversion made slower than --dist_timeout, as a large model's is.
import runpy, sys, time
import deepspeed.checkpoint.ds_to_universal as ds_to_universal
convert = ds_to_universal.main
def slow(args):
    time.sleep(5)
    return convert(args)
ds_to_universal.main = slow
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.parametrize("source,resumed", [
    ("2x8_zero2", (1, "ds_configs/zero2.json", 16, 1)),
    ("2x4x2_zero3", (1, "ds_configs/zero3.json", 16, 1)),
    ("1x8x2_zero1", (2, "ds_configs/zero1.json", 8, 1)),
    ("1x16_zero0", (2, "ds_configs/zero0.json", 8, 1)),
], ids=["zero2_2to1", "zero3_2to1", "zero1_1to2_accum", "zero0_1to2"])
def test_resume_on_a_different_world_size_ends_with_the_uninterrupted_weights(
        source, resumed, invariance_runs, demo_prepared_dir, tiny_checkpoints, tmp_path):
    """zero1_1to2_accum also runs at --dist_timeout 2 with a conversion that takes over 5 s: rank 0 converts the
    checkpoint while rank 1 waits for it outside any collective, so a conversion longer than the timeout is not taken
    for a rank that stopped answering."""
    save_dir = stopped_after_step_3(invariance_runs[source], tmp_path / "elastic")
    manifest = json.loads((save_dir / "checkpoints" / "step00000003" / "manifest.json").read_text())
    assert manifest["layout"]["world_size"] == LAYOUTS[source][0]
    nproc, config, micro, accum = resumed
    converts = LAYOUTS[source][1] != "ds_configs/zero0.json"  # fp32 ZeRO-0 loads on any world size as it is
    script, extra = REPO / "launch" / "train.py", []
    if converts and nproc > 1:
        script, extra = tmp_path / "slow_conversion.py", ["--dist_timeout", "2"]
        script.write_text(SLOW_CONVERSION.format(train=str(REPO / "launch" / "train.py")))
    second = launch(nproc, run_args(demo_prepared_dir, tiny_checkpoints, save_dir, config, micro, accum, "--resume",
                                    *extra), script=script)
    assert f"resumed from step 3 (epoch 1, micro-batch {3 * accum})" in second.stdout
    assert f"written by {LAYOUTS[source][0]} rank(s), now {nproc}" in second.stdout
    converted = re.search(r"converted step00000003 in ([0-9.]+) s", second.stdout)
    assert bool(converted) == converts
    if extra:
        assert float(converted.group(1)) > 5
    assert summary(save_dir)["steps"] == STEPS
    assert_same_run(invariance_runs[REFERENCE], save_dir)
    assert not (save_dir / "checkpoints" / "universal").exists()  # the converted copy goes with the next save


def test_resume_with_another_global_batch_is_refused(invariance_runs, demo_prepared_dir, tiny_checkpoints, tmp_path):
    save_dir = stopped_after_step_3(invariance_runs["2x8_zero2"], tmp_path / "changed")
    result = launch(1, run_args(demo_prepared_dir, tiny_checkpoints, save_dir, "ds_configs/zero2.json", 8, 1,
                                "--resume"), expect_ok=False)
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "global batch of 8 per rank x 1 accumulation x 2 ranks = 16" in errors[0], errors
    assert "Traceback" not in result.stdout + result.stderr


def test_zero3_validation_with_uneven_and_empty_shards(demo_prepared_dir, tiny_checkpoints, tmp_path):
    """17 validation samples at batch 8 on 2 ranks: 2 batches vs 1 (ZeRO-3 forwards are collectives); 2 samples on 3
    ranks: one rank holds none. Both finish, with the exact mean over every sample. Teacher forcing is off: each
    window's sampled s1 comes from its own stream, so 2 and 3 ranks give what one process gives."""
    tokenizer, predictor = tiny_checkpoints
    common = ["--data", str(demo_prepared_dir), "--tokenizer", str(tokenizer), "--predictor", str(predictor),
              "--deepspeed_config", "ds_configs/zero3.json", "--max_steps", "1", "--n_train_iter", "128",
              "--seed", str(SEED)]

    def single_process_mean(n_val: int) -> float:
        per_sample = single_process_val_losses(demo_prepared_dir, tiny_checkpoints, n_val, teacher_forcing=False)
        assert per_sample.shape == (n_val,)
        return per_sample.double().mean().item()

    layouts = ((2, 17, 8), (3, 2, 4))
    two_at_a_time(lambda layout: launch(layout[0], common + [
        "--save_dir", str(tmp_path / f"{layout[0]}ranks"), "--n_val_iter", str(layout[1]), "--batch_size",
        str(layout[2])], timeout=240), layouts)
    for nproc, n_val, _ in layouts:
        first_val = summary(tmp_path / f"{nproc}ranks")["history"]["val"][0]
        assert first_val[0] == 0
        assert first_val[1] == pytest.approx(single_process_mean(n_val), abs=1e-5)


def test_each_rank_draws_its_own_random_numbers(config_runs):
    """Sampled s1 conditioning (the default) and dropout draw from each rank's own stream: the saved per-rank RNG
    states of a 2-rank run differ, and the streams are a pure function of (seed, step, rank)."""
    tag = config_runs["zero2"] / "checkpoints" / "step00000008"
    rank0, rank1 = (load_file(str(tag / f"rng_rank{r:05d}.safetensors"))["cpu"] for r in (0, 1))
    assert not torch.equal(rank0, rank1)
    seeds = {rank_seed(SEED, rank, step) for rank in range(64) for step in (0, 3)}
    assert len(seeds) == 128 and rank_seed(SEED, 5, 3) == rank_seed(SEED, 5, 3)


MASTERS_SCRIPT = """
import json, sys
from ds_kronos.config import parse_config
from ds_kronos.train.config import TrainConfig
from ds_kronos.train.trainer import Trainer
common, runs = json.loads(sys.argv[1])
for ds_config, save_dir in runs:  # one process, one engine after another: the start-up cost is paid once
    Trainer(parse_config(TrainConfig, common + ["--deepspeed_config", ds_config, "--save_dir", save_dir])).run()
"""


def test_bf16_masters_hold_the_exact_fp32_start(demo_prepared_dir, frozen_te_checkpoints, tmp_path):
    """At ZeRO-0, 1, 2 and 3 with bf16, one step at lr 1e-30 leaves the fp32 masters where they started: the exported
    model equals the fp32 checkpoint it started from, frozen time tables and rotary frequencies included (without
    the fix the masters are the bf16-rounded weights, up to ~2e-3 away)."""
    tokenizer, predictor = frozen_te_checkpoints
    runs = []
    for stage in range(4):
        source = REPO / "ds_configs" / ("zero0_bf16.json" if stage == 0 else "zero2_bf16.json")
        ds_json = json.loads(source.read_text())
        ds_json["zero_optimization"]["stage"] = stage
        ds_json["optimizer"]["params"]["lr"] = 1e-30
        path = tmp_path / f"zero{stage}_bf16.json"
        path.write_text(json.dumps(ds_json))
        runs.append((str(path), str(tmp_path / f"run{stage}")))
    common = ["--data", str(demo_prepared_dir), "--tokenizer", str(tokenizer), "--predictor", str(predictor),
              "--max_steps", "1", "--batch_size", "8", "--n_train_iter", "64", "--n_val_iter", "8",
              "--eval_at_start", "false"]
    result = subprocess.run([sys.executable, "-c", MASTERS_SCRIPT, json.dumps([common, runs])], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    start = model_weights(predictor)
    assert any("time_emb" in key for key in start)
    rounded = {k: v.to(torch.bfloat16).float() for k, v in start.items()}
    assert max((rounded[k] - start[k]).abs().max().item() for k in start) > 1e-4  # the test can tell the difference
    for stage, (_, save_dir) in enumerate(runs):
        assert summary(Path(save_dir))["deepspeed_config"]["zero_optimization"]["stage"] == stage
        exported = model_weights(Path(save_dir) / "final_model")
        for key in start:  # an AdamW step at lr 1e-30 moves a weight by ~1e-30
            assert (start[key] - exported[key]).abs().max().item() < 1e-20, (stage, key)
