"""--finetune lora and freeze through the deepspeed launcher (issue 23 item 4): 2 CPU ranks, the tiny pair, 8 steps.

Four 2-rank runs, two at a time, and one 1-rank resume:
- ``lora_zero2``: LoRA at ZeRO-2 (fp32, teacher forcing: deterministic), checkpoints every 3 steps;
- ``lora_zero3``: LoRA at ZeRO-3, bf16, partitioned construction from the model folder, activation
  checkpointing;
- ``freeze_zero0``: --finetune freeze at ZeRO-0, bf16;
- ``lora_resumed`` (2 ranks) and ``lora_elastic`` (1 rank): ``lora_zero2`` stopped after its step-3 checkpoint and
  resumed, on the same and on another world size.
Checked: the merged export loads as an ordinary published folder and equals start + (alpha / r) B A with the
exported adapter's B and A, every other tensor bit-equal to the start (bf16 included); peft loads the adapter over
the start model and it gives the merged model's logits; the merged model's validation loss is the engine's (fp32);
the optimizer holds the adapters only; the resumed runs end with the uninterrupted run's weights. One more run of
its own (1 process, 1 step, ZeRO-3 bf16 at a vanishing lr) checks that LoRA starts from the other stages' fp32 draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ds_kronos.adapters import DEFAULT_LORA_TARGETS, frozen_by, lora_parameter_count
from ds_kronos.model import Kronos
from ds_kronos.train.engine.finetune import ADAPTER_FOLDER
from helpers import (
    REPO,
    SEED,
    VAL_SAMPLES,
    common_args,
    deepspeed_train,
    run_job,
    single_process_val_losses,
    stopped_after_step_3,
    summary,
    two_at_a_time,
)

pytestmark = pytest.mark.processes

RANK, ALPHA = 4, 8.0
LORA = ["--finetune", "lora", "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA)]
FREEZE = ("embedding.*", "transformer.0.*", "head.proj_s2.*")
RUNS = {
    "lora_zero2": ["--deepspeed_config", "ds_configs/zero2.json", *LORA, "--teacher_forcing", "--save_every", "3",
                   "--keep_last", "3"],
    "lora_zero3": ["--deepspeed_config", "ds_configs/zero3_bf16.json", *LORA, "--activation_checkpointing"],
    "freeze_zero0": ["--deepspeed_config", "ds_configs/zero0_bf16.json", "--finetune", "freeze", "--freeze",
                     ",".join(FREEZE)],
}


@pytest.fixture(scope="module")
def runs(demo_prepared_dir, tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune_runs")

    def train(name: str) -> None:
        if name in RUNS:
            deepspeed_train(common_args(demo_prepared_dir, tiny_checkpoints, root / name) + RUNS[name])
            return
        save_dir = stopped_after_step_3(root / "lora_zero2", root / name)
        ranks = 2 if name == "lora_resumed" else 1  # the same global batch of 32 on one rank
        deepspeed_train(common_args(demo_prepared_dir, tiny_checkpoints, save_dir) + RUNS["lora_zero2"]
                        + ["--resume", "--batch_size", str(32 // ranks)], processes=ranks)

    two_at_a_time(train, ["lora_zero2", "lora_zero3"])
    two_at_a_time(train, ["freeze_zero0", "lora_resumed", "lora_elastic"])
    return {name: root / name for name in (*RUNS, "lora_resumed", "lora_elastic")}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return Kronos.from_pretrained(folder).state_dict()


def adapter_delta(folder: Path) -> dict[str, torch.Tensor]:
    """(alpha / r) B A of every adapted layer in ``folder/adapter``, by the base weight's name."""
    adapter = load_file(str(folder / ADAPTER_FOLDER / "adapter_model.safetensors"))
    config = json.loads((folder / ADAPTER_FOLDER / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
    scale = config["lora_alpha"] / config["r"]
    deltas = {}
    for name, a in adapter.items():
        if ".lora_A." in name:
            layer = name.split(".lora_A.")[0].removeprefix("base_model.model.")
            deltas[f"{layer}.weight"] = scale * adapter[name.replace(".lora_A.", ".lora_B.")] @ a
    return deltas


def logits(model) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    s1, s2 = (torch.randint(0, 1024, (2, 16), generator=generator) for _ in range(2))
    stamp = torch.stack([torch.randint(0, n, (2, 16), generator=generator) for n in (60, 24, 7, 32, 13)], dim=-1)
    with torch.no_grad():
        return model.eval()(s1, s2, stamp, use_teacher_forcing=True, s1_targets=s1, causal_s2=True)


def optimizer_elements(tag: Path) -> int:
    """fp32 master elements the optimizer holds, over every rank's file of a DeepSpeed checkpoint tag."""
    from ds_kronos.train.checkpoint.safe_load import weights_only_loading

    total = 0
    with weights_only_loading():
        for path in sorted(tag.glob("*optim_states.pt")):
            state = torch.load(path, map_location="cpu", weights_only=True)["optimizer_state_dict"]
            groups = state.get("single_partition_of_fp32_groups") or state.get("fp32_flat_groups")
            total += sum(group.numel() for group in groups)
    return total


@pytest.mark.parametrize("name", ["lora_zero2", "lora_zero3"])
def test_lora_trains_the_adapters_only_and_exports_merged_and_adapter(runs, tiny_checkpoints, name):
    from peft import PeftModel

    result = summary(runs[name])
    assert result["status"] == "finished" and result["steps"] == 8 and result["world_size"] == 2
    start = weights(tiny_checkpoints[1])
    adapters = lora_parameter_count(Kronos.from_preset("tiny"), DEFAULT_LORA_TARGETS, RANK)
    assert result["parameters"] == {"trained": adapters, "total": sum(v.numel() for k, v in start.items()
                                                                     if not k.endswith("inv_freq")) + adapters}
    for folder in ("best_model", "final_model"):
        merged = weights(runs[name] / folder)
        deltas = adapter_delta(runs[name] / folder)
        assert len(deltas) == 2 * 7 + 4 and set(merged) == set(start)
        for key in start:
            if key in deltas:
                torch.testing.assert_close(merged[key], start[key] + deltas[key], rtol=0, atol=1e-6, msg=key)
            else:  # frozen: bit-equal to the start, also through bf16 (the exact fp32 copy)
                assert torch.equal(merged[key], start[key]), key
    deltas = adapter_delta(runs[name] / "final_model")
    assert max(d.abs().max().item() for d in deltas.values()) > 1e-5  # the adapters did train
    merged_model = Kronos.from_pretrained(runs[name] / "final_model")
    with_adapter = PeftModel.from_pretrained(Kronos.from_pretrained(tiny_checkpoints[1]),
                                             str(runs[name] / "final_model" / ADAPTER_FOLDER))
    for got, want in zip(logits(with_adapter), logits(merged_model)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_exports_are_the_engine_model_and_the_optimizer_holds_the_adapters(runs, demo_prepared_dir,
                                                                                 tiny_checkpoints, tmp_path):
    """fp32 ZeRO-2: the final validation loss the engine computed equals the merged export's, scored in one process;
    the checkpoint's fp32 masters (both ranks) hold the adapters alone (up to DeepSpeed's alignment padding)."""
    run = runs["lora_zero2"]
    per_sample = single_process_val_losses(demo_prepared_dir, (tiny_checkpoints[0], run / "final_model"),
                                           VAL_SAMPLES)
    assert summary(run)["final_val_loss"] == pytest.approx(per_sample.double().mean().item(), abs=1e-5)
    trained = summary(run)["parameters"]["trained"]
    for name in ("lora_zero2", "lora_zero3"):
        held = optimizer_elements(runs[name] / "checkpoints" / "step00000008")
        assert trained <= held <= trained + 2 * 256, (name, held, trained)


def test_lora_resumes_exactly_on_the_same_and_another_world_size(runs):
    straight = runs["lora_zero2"]
    for name in ("lora_resumed", "lora_elastic"):
        resumed = runs[name]
        assert summary(resumed)["steps"] == 8
        a, b = weights(straight / "final_model"), weights(resumed / "final_model")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=(name, key))
        deltas_a, deltas_b = adapter_delta(straight / "final_model"), adapter_delta(resumed / "final_model")
        for key in deltas_a:
            torch.testing.assert_close(deltas_b[key], deltas_a[key], rtol=0, atol=1e-6, msg=(name, key))
        np.testing.assert_allclose(summary(resumed)["history"]["val"], summary(straight)["history"]["val"],
                                   rtol=0, atol=1e-5)


def test_lora_at_zero3_bf16_starts_from_the_draw_of_every_other_stage(demo_prepared_dir, tiny_checkpoints, tmp_path):
    """ZeRO-3 builds the base model partitioned and already cast to bf16, and peft casts new adapters to their base
    layer's dtype; the run starts from the fp32 draw all the same, the one ZeRO-0/1/2 make over their fp32 base
    (the same seed, the same generator state). One process, one step at a vanishing lr (no fp32 master moves), so
    the exported adapters are the start: every A bit-equal to the fp32 draw (bf16 rounding moved them by up to
    3e-3 relative), every B still zero to 1e-20."""
    from ds_kronos.model import KronosTokenizer
    from ds_kronos.runtime import seed_everything
    from ds_kronos.train.engine.finetune import FinetuneSpec, Finetuning

    config = json.loads((REPO / "ds_configs" / "zero3_bf16.json").read_text())
    config["optimizer"]["params"]["lr"] = 1e-30
    (tmp_path / "zero3_bf16_still.json").write_text(json.dumps(config))
    save_dir = tmp_path / "lora_zero3_start"
    result = run_job("train.py", common_args(demo_prepared_dir, tiny_checkpoints, save_dir) + [
        "--deepspeed_config", str(tmp_path / "zero3_bf16_still.json"), *LORA, "--max_steps", "1",
        "--eval_at_start", "false"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary(save_dir)["partitioned_construction"]
    seed_everything(SEED)  # what the trainer draws before the adapters: the tokenizer's and the predictor's init
    KronosTokenizer.from_folder_or_preset(str(tiny_checkpoints[0]))
    base = Kronos.from_folder_or_preset(str(tiny_checkpoints[1]))
    drawn = Finetuning(FinetuneSpec(mode="lora", lora_rank=RANK, lora_alpha=ALPHA), base).adapter_start
    exported = load_file(str(save_dir / "final_model" / ADAPTER_FOLDER / "adapter_model.safetensors"))
    assert len(exported) == len(drawn) == 2 * 18
    for name, start in drawn.items():
        got = exported[name.replace(".default.", ".")]
        if ".lora_A." in name:
            assert torch.equal(got, start), name
        else:
            assert not start.any() and got.abs().max() < 1e-20, name


def test_freeze_keeps_the_frozen_parameters_bit_equal(runs, tiny_checkpoints):
    run = runs["freeze_zero0"]
    start, end = weights(tiny_checkpoints[1]), weights(run / "final_model")
    frozen = [key for key in start if frozen_by(FREEZE, key)]
    assert frozen and all(torch.equal(end[key], start[key]) for key in frozen)
    moved = [key for key in start if not frozen_by(FREEZE, key) and not torch.equal(end[key], start[key])]
    assert len(moved) > 10
    trained = sum(v.numel() for k, v in start.items() if not frozen_by(FREEZE, k) and not k.endswith("inv_freq"))
    assert summary(run)["parameters"]["trained"] == trained
    assert not (run / "final_model" / ADAPTER_FOLDER).exists()
