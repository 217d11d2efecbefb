"""``--compile`` (DeepSpeed's engine.compile: torch.compile with the accelerator's backend, inductor on CPU), run for
real: the same short job eager and compiled on 1 CPU rank through the deepspeed launcher must give the same losses.

The job takes the riskiest path for a compiled module: ZeRO-3 (parameter gather hooks), activation checkpointing,
s1 sampling in the forward (teacher forcing off: compiled random draws must equal eager's), validation in eval mode
without gradients with a smaller last batch (21 samples = 16 + 5: one recompile with a dynamic batch dimension),
and the exports and checkpoint written from the compiled engine. The first compiled run on a machine compiles from
scratch (about a minute on 2 CPU cores); torch's compile cache in the temp folder makes later runs faster.
"""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch

from ds_kronos.train.checkpoint.safe_load import deepspeed_state_classes
from helpers import SEED, assert_same_weights, deepspeed_train, summary, two_at_a_time

pytestmark = pytest.mark.processes  # every test here starts processes

STEPS = 3
VAL_SAMPLES = 21


@pytest.fixture(scope="module")
def eager_and_compiled(demo_prepared_dir, tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_runs")
    tokenizer, predictor = tiny_checkpoints
    runs = {"eager": root / "eager", "compiled": root / "compiled"}

    def run(name: str) -> str:
        extra = ["--compile"] if name == "compiled" else []
        return deepspeed_train(
            ["--data", str(demo_prepared_dir), "--tokenizer", str(tokenizer), "--predictor", str(predictor),
             "--save_dir", str(runs[name]), "--deepspeed_config", "ds_configs/zero3.json", "--max_steps", str(STEPS),
             "--n_train_iter", str(16 * STEPS), "--n_val_iter", str(VAL_SAMPLES), "--batch_size", "16",
             "--log_every", "1", "--seed", str(SEED), "--activation_checkpointing", *extra], processes=1).stdout
    return runs, dict(zip(runs, two_at_a_time(run, runs)))


def test_compiled_run_reports_that_it_compiled(eager_and_compiled):
    runs, banners = eager_and_compiled
    compiled, eager = summary(runs["compiled"]), summary(runs["eager"])
    assert compiled["compiled"] is True and compiled["compile_seconds"] > 0
    assert eager["compiled"] is False and eager["compile_seconds"] is None
    assert "compiled (torch.compile, inductor" in banners["compiled"]
    assert "compiled (torch.compile" not in banners["eager"]


def test_compiled_run_gives_the_eager_losses_and_weights(eager_and_compiled):
    runs, _ = eager_and_compiled
    eager, compiled = summary(runs["eager"]), summary(runs["compiled"])
    assert compiled["status"] == eager["status"] == "finished" and compiled["steps"] == STEPS
    for kind in ("train", "val"):
        assert [s for s, _ in compiled["history"][kind]] == [s for s, _ in eager["history"][kind]]
        np.testing.assert_allclose([v for _, v in compiled["history"][kind]], [v for _, v in eager["history"][kind]],
                                   rtol=0, atol=1e-5)
    for folder in ("best_model", "final_model"):  # exported from the compiled engine: plain names, eager's values
        assert_same_weights(runs["eager"] / folder, runs["compiled"] / folder, atol=1e-5)
    # The DeepSpeed checkpoint (for --resume) keeps the eager module's parameter names.
    (states,) = glob.glob(str(runs["compiled"] / "checkpoints" / f"step{STEPS:08d}" / "*model_states.pt"))
    with torch.serialization.safe_globals(deepspeed_state_classes()):  # never unpickle code from a file
        names = list(torch.load(states, map_location="cpu", weights_only=True)["module"])
    assert names and not any("_orig_mod" in name for name in names)
