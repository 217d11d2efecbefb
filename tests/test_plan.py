"""The capacity planner: its estimates against measured memory and DeepSpeed's estimators, and its choices."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from ds_kronos.config import bound_problems, parse_config
from ds_kronos.errors import ConfigError
from ds_kronos.model import Kronos
from ds_kronos.plan import PlanRequest, model_counts, plan, recommend
from ds_kronos.plan.activations import block_bytes_per_token
from ds_kronos.plan.planner import GIB, SHARDING_LADDER
from ds_kronos.plan.process import BASELINE_PROCESS_BYTES, LORA_IMPORT_BYTES
from ds_kronos.plan.setup import Setup
from helpers import REPO, run_in_process, run_in_process_output


def _request(**values) -> PlanRequest:
    defaults = dict(predictor="base", world_size=1, zero_stage=0, batch_size=8, context=512, precision="bf16")
    return PlanRequest(**{**defaults, **values})


@pytest.mark.processes
@pytest.mark.parametrize("variant, micro_batch, context", [("mini", 8, 256), ("small", 4, 128)])
def test_planned_total_matches_measured_peak_rss(variant, micro_batch, context):
    """ZeRO-0 fp32 on 1 rank: params + grads + AdamW + activations + logits + tokenizer vs the real peak RSS of
    a few plain AdamW steps of the real training step (in a fresh process, so nothing else is counted)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "ds_kronos.plan.measure", "--variant", variant, "--micro_batch", str(micro_batch),
         "--context", str(context), "--steps", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["baseline_exact"], "could not reset the peak RSS: the baseline would include imports"
    # The measurement must be dominated by what the planner models, not by constants, for the check to mean much.
    assert report["measured_bytes"] > 200e6
    assert 0.75 <= report["ratio"] <= 1.25, report


def test_activation_formula_counts_what_autograd_saves():
    """The per-token block count against the bytes autograd actually saves for one block (parameters excluded)."""
    counts = model_counts("mini")
    block = Kronos.from_preset("mini").transformer[0].train()
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch, length = 2, 64
    x = torch.randn(batch, length, counts.config.d_model, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        block(x)
    measured = sum(saved.values()) / (batch * length)
    planned = block_bytes_per_token(counts, Setup(micro_batch=batch, context=length, precision="fp32"))
    assert planned == pytest.approx(measured, rel=0.05)


def test_zero0_fp32_is_16_bytes_per_param_and_bf16_zero2_is_deepspeeds_figure():
    counts = model_counts("base")
    p = plan(_request(zero_stage=0, precision="fp32"))
    assert p.estimate.model_states == 16 * counts.total_params
    assert "no DeepSpeed estimator" in p.estimate.model_states_source
    p = plan(_request(zero_stage=2, world_size=8))
    assert p.estimate.model_states == p.estimate.deepspeed_model_states == 2 * counts.total_params + int(
        18 * counts.total_params / 8)
    assert p.estimate.model_states_source.startswith("DeepSpeed estimate_zero2")


def test_zero3_model_states_shrink_with_world_size():
    counts = model_counts("1b")
    gathered = 2 * 2 * counts.largest_layer_params  # DeepSpeed's 4 x largest layer in 16-bit
    states = {n: plan(_request(predictor="1b", zero_stage=3, world_size=n)).estimate.model_states
              for n in (1, 2, 4, 8, 64)}
    for n, value in states.items():
        # The partitioned part is 1/N of the single-rank one; only the gathered layer stays whole.
        assert value - gathered == pytest.approx((states[1] - gathered) / n, rel=1e-6)
    assert states[8] < states[1] / 7
    # ZeRO-2 keeps the 16-bit params whole: it cannot shrink below 2 bytes/param.
    zero2 = plan(_request(predictor="1b", zero_stage=2, world_size=64)).estimate.model_states
    assert zero2 > 2 * counts.total_params > states[64]


def test_offload_moves_optimizer_states_to_host():
    on_device = plan(_request(predictor="1b", zero_stage=3, world_size=8)).estimate
    offloaded = plan(_request(predictor="1b", zero_stage=3, world_size=8, offload="cpu")).estimate
    assert on_device.optimizer > 0 and on_device.host_offload == 0
    assert offloaded.optimizer == 0 and offloaded.grads == 0
    assert offloaded.host_offload > on_device.optimizer  # the states still exist, in host memory
    assert offloaded.model_states < on_device.model_states / 10
    assert offloaded.activations == on_device.activations
    zero2 = plan(_request(predictor="1b", zero_stage=2, world_size=8, offload="cpu")).estimate
    assert zero2.optimizer == 0 and zero2.params == 2 * model_counts("1b").total_params and zero2.host_offload > 0


def test_activation_checkpointing_and_micro_batch_scale_activations():
    full = plan(_request(batch_size=8)).estimate
    assert plan(_request(batch_size=16)).estimate.activations == 2 * full.activations
    checkpointed = plan(_request(batch_size=8, activation_checkpointing=True)).estimate
    assert checkpointed.activations < full.activations / 3
    assert checkpointed.model_states == full.model_states


def _rung(p) -> int:
    return SHARDING_LADDER.index((p.setup.zero, p.setup.offload))


def test_recommend_picks_the_first_configuration_that_fits():
    request = _request(predictor="1b", world_size=8, batch_size=16, memory_gb=40)
    rec = recommend(request)
    assert rec.chosen is not None
    budget = 40 * GIB * (1 - request.margin)
    assert rec.chosen.estimate.total <= budget
    assert rec.tried[-1] is rec.chosen
    assert all(p.estimate.total > budget for p in rec.tried[:-1])
    # The chosen file exists and matches the plan's stage.
    config = rec.chosen.ds_config.load()
    assert config.get("zero_optimization", {}).get("stage", 0) == rec.chosen.setup.zero
    assert config.get("bf16", {}).get("enabled") is True


def test_bigger_variant_needs_more_sharding():
    def choice(variant):
        rec = recommend(_request(predictor=variant, world_size=8, batch_size=8, memory_gb=80))
        assert rec.chosen is not None and not rec.chosen.setup.activation_checkpointing
        return rec.chosen

    small, big = choice("small"), choice("3b")
    assert _rung(small) == 0
    assert _rung(big) > _rung(small)


def test_recommend_falls_back_to_checkpointing_then_smaller_batches():
    rec = recommend(_request(predictor="base", world_size=1, batch_size=64, memory_gb=6))
    assert rec.chosen is not None
    assert rec.chosen.setup.activation_checkpointing or rec.chosen.setup.micro_batch < 64
    if rec.chosen.setup.micro_batch < 64:
        assert rec.grad_accum_factor == 64 // rec.chosen.setup.micro_batch
    assert recommend(_request(predictor="3b", world_size=1, memory_gb=0.05)).chosen is None


@pytest.mark.parametrize("zero, offload, precision, expected", [
    (0, "none", "fp32", "ds_configs/zero0.json"), (2, "none", "fp32", "ds_configs/zero2.json"),
    (2, "none", "bf16", "ds_configs/zero2_bf16.json"), (3, "cpu", "fp32", "ds_configs/zero3_offload.json")])
def test_ds_config_names_the_predictor_file(zero, offload, precision, expected):
    from ds_kronos.plan import ds_config_for

    choice = ds_config_for(zero, offload, precision)
    assert (choice.path, choice.overrides) == (expected, {})


def test_ds_config_overrides_where_no_file_exists():
    from ds_kronos.plan import ds_config_for

    choice = ds_config_for(1, "none", "bf16")
    assert choice.path == "ds_configs/zero1.json" and choice.overrides == {"bf16": {"enabled": True}}
    loaded = ds_config_for(2, "cpu", "bf16").load()
    assert loaded["bf16"]["enabled"] is True and loaded["zero_optimization"]["stage"] == 2
    assert loaded["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def all_problems(request: PlanRequest) -> list[str]:
    """What parse_config reports for a request: its declared bounds, then its own checks."""
    return bound_problems(request) + request.problems()


def test_request_problems_are_listed():
    problems = all_problems(dataclasses.replace(_request(), predictor="huge", zero_stage=1, offload="cpu",
                                                batch_size=0))
    assert any("huge" in p for p in problems)
    assert any("--offload needs" in p for p in problems)
    assert any("--batch_size" in p for p in problems)
    with pytest.raises(ConfigError):
        recommend(_request())  # no memory given


def test_plan_cli(tmp_path, capfd):
    out = tmp_path / "ds.json"
    code, stdout, err = run_in_process_output("plan.py", [
        "--predictor", "3b", "--world_size", "8", "--batch_size", "16", "--precision", "bf16", "--memory_gb", "80",
        "--write_ds_config", str(out)], capfd)
    assert code == 0, err
    assert "Recommended: ZeRO-1, micro batch 16" in stdout
    written = json.loads(out.read_text())
    assert written["zero_optimization"]["stage"] == 1 and written["bf16"]["enabled"] is True
    code, err = run_in_process("plan.py", ["--predictor", "huge"], capfd)
    assert code == 2 and "unknown predictor preset 'huge'" in err


def test_memory_and_output_file_are_checked(tmp_path):
    for memory in (float("nan"), float("inf"), 0.0):
        problems = all_problems(_request(memory_gb=memory))
        assert any(p.startswith("--memory_gb must be in (0, inf)") for p in problems), (memory, problems)
    assert any(f"folder {tmp_path / 'missing'} does not exist" in p
               for p in _request(write_ds_config=str(tmp_path / "missing" / "ds.json")).problems())
    assert any("is a folder" in p for p in _request(write_ds_config=str(tmp_path)).problems())
    assert _request(write_ds_config=str(tmp_path / "ds.json")).problems() == []


# ------------------------------------------------------------------------------ offload targets, host per node, disk
def _cpu_node(**values) -> PlanRequest:
    """2 CPU ranks on one node, micro batch 1, short context: the reported OOM setting."""
    return _request(**{**dict(world_size=2, device="cpu", batch_size=1, context=100), **values})


def test_cpu_ranks_share_the_node_memory():
    """2 ranks on a 24 GiB node: large ZeRO-0 no longer fits (each rank's process counts, and both share the host)."""
    p = plan(_cpu_node(predictor="large", zero_stage=0))
    e = p.estimate
    assert e.node_host >= 2 * e.rank_peak > 2 * e.total  # the rank process holds more than the "device" states
    assert not p.fits(24, 0.2)
    rec = recommend(_cpu_node(predictor="large", memory_gb=24))
    assert rec.chosen is not None and rec.chosen.estimate.node_host <= 24 * GIB * 0.8
    assert rec.tried[0].setup.zero == 0 and rec.tried[0] is not rec.chosen
    # On GPU --memory_gb stays per device: the same request fits ZeRO-0 on 24 GiB devices by its device total.
    assert plan(_request(predictor="large", world_size=2, batch_size=1, context=100)).fits(24, 0.2)


def test_nvme_is_a_candidate_only_with_disk_and_when_the_swap_fits():
    assert SHARDING_LADDER == ((0, "none"), (1, "none"), (2, "none"), (3, "none"), (3, "cpu"), (3, "nvme"))
    without = recommend(_cpu_node(predictor="1b", memory_gb=24))
    assert all(p.setup.offload != "nvme" for p in without.tried)
    rec = recommend(_cpu_node(predictor="1b", memory_gb=24, disk_gb=60))
    assert rec.chosen is not None and (rec.chosen.setup.zero, rec.chosen.setup.offload) == (3, "nvme")
    e = rec.chosen.estimate
    counts = model_counts("1b")
    # Per rank: params at bf16 + fp32 master, moments and grads (16 bytes) over the 2 ranks; 2 ranks per node.
    assert e.node_disk == 2 * sum(e.rank_disk.values()) == pytest.approx(18 * counts.total_params, rel=1e-6)
    assert e.node_host <= 24 * GIB * 0.8
    assert not rec.chosen.fits(24, 0.2, disk_gb=e.node_disk / GIB * 0.9)  # the swap must fit the disk
    assert not rec.chosen.fits(24, 0.2)  # no disk given


@pytest.mark.parametrize("zero, offload, precision, expected", [
    (3, "nvme", "fp32", "ds_configs/zero3_nvme.json"), (3, "nvme", "bf16", "ds_configs/zero3_nvme_bf16.json"),
    (3, "cpu", "bf16", "ds_configs/zero3_offload_bf16.json"), (3, "cpu", "fp32", "ds_configs/zero3_offload.json"),
    (3, "none", "bf16", "ds_configs/zero3_bf16.json")])
def test_ds_config_names_the_offload_files(zero, offload, precision, expected):
    from ds_kronos.plan import ds_config_for

    choice = ds_config_for(zero, offload, precision)
    assert (choice.path, choice.overrides) == (expected, {})


def test_nvme_buffers_follow_the_shipped_json():
    """The swap buffers are sized from the JSON (through DeepSpeed's config model): offload_param buffer_count x
    buffer_size elements at the model dtype, optimizer buffer_count x the largest sub-group in fp32."""
    from ds_kronos.deepspeed_json.resolve import load_ds_config

    zero = load_ds_config("ds_configs/zero3_nvme_bf16.json")["zero_optimization"]
    param, sub = zero["offload_param"], zero["sub_group_size"]
    e = plan(_cpu_node(predictor="1b", zero_stage=3, offload="nvme")).estimate
    assert e.rank_states["param_swap_buffers"] == param["buffer_count"] * param["buffer_size"] * 2
    largest = model_counts("1b").largest_tensor_params
    count = zero["offload_optimizer"]["buffer_count"]
    assert count * 4 * sub <= e.rank_states["optimizer_swap_buffers"] <= count * 4 * (sub + largest)
    assert "adam_moments" not in e.rank_states and "fp32_master" not in e.rank_states


def test_build_and_load_can_be_the_peak():
    """ZeRO-2 bf16 from a checkpoint: full fp32 model + state dict, then the exact fp32 copy next to the engine's
    states; ZeRO-3 (zero.Init) builds and loads a shard and one module at a time."""
    counts = model_counts("large")
    zero2 = plan(_cpu_node(predictor="large", zero_stage=2, from_model_folder=True)).estimate
    zero3 = plan(_cpu_node(predictor="large", zero_stage=3, from_model_folder=True)).estimate
    assert zero2.rank_build == {"model": 4 * counts.total_params, "checkpoint": 4 * counts.total_params,
                                "fp32_copy": 4 * counts.total_params}
    assert zero2.rank_build_peak > zero3.rank_build_peak
    assert zero3.rank_build["model"] == 2 * -(-counts.total_params // 2)
    assert zero3.rank_build["checkpoint"] == 4 * counts.largest_tensor_params
    assert plan(_cpu_node(predictor="large", zero_stage=2)).estimate.rank_build["checkpoint"] == 0
    assert zero2.rank_peak == max(zero2.rank_build_peak, zero2.rank_train)


def test_offload_problems():
    with pytest.raises(ConfigError, match="--offload: invalid choice: 'true'"):
        parse_config(PlanRequest, ["--predictor", "base", "--offload", "true"])
    bad = PlanRequest(predictor="base", zero_stage=2, offload="nvme").problems()
    assert any("--offload nvme needs --zero_stage 3" in p for p in bad)
    assert any("--disk_gb must be in (0, inf)" in p for p in all_problems(_request(disk_gb=0.0)))


def test_plan_cli_cpu_node_with_offload(capfd):
    code, stdout, err = run_in_process_output("plan.py", [
        "--predictor", "large", "--zero_stage", "3", "--offload", "cpu", "--world_size", "2", "--batch_size", "1",
        "--context", "100", "--device", "cpu", "--precision", "bf16", "--memory_gb", "24", "--disk_gb", "60"], capfd)
    assert code == 0, err
    assert "ZeRO-3 + CPU offload" in stdout and "node host (estimate.node_host)" in stdout
    assert "host memory per node (shared by its ranks)" in stdout and "node disk" in stdout


def test_lora_counts_the_adapters_from_rank_and_targets():
    """--finetune lora: rank x (in + out) per adapted layer (every block's 4 attention and 3 feed-forward
    projections and the dependency layer's 4), the same count as peft's own model; the rest is frozen."""
    c = model_counts("base").config
    d, ff = c.d_model, c.ff_dim
    per_rank = c.n_layers * (4 * 2 * d + 3 * (d + ff)) + 4 * 2 * d
    lora = model_counts("base", 8)
    assert lora.trained_params == 8 * per_rank == 1_521_664
    assert lora.total_params == model_counts("base").total_params + lora.trained_params
    assert lora.adapted_weight_params == c.n_layers * (4 * d * d + 3 * d * ff) + 4 * d * d
    assert model_counts("base", 8, ("q_proj", "v_proj")).trained_params == 8 * (c.n_layers + 1) * 2 * 2 * d
    from peft import LoraConfig, get_peft_model

    tiny = get_peft_model(Kronos.from_preset("tiny"), LoraConfig(r=4, target_modules=["q_proj", "w2"]))
    assert model_counts("tiny", 4, ("q_proj", "w2")).trained_params == sum(
        p.numel() for p in tiny.parameters() if p.requires_grad)


def test_lora_keeps_every_parameter_but_states_for_the_adapters_only():
    counts, full_counts = model_counts("large", 8), model_counts("large")
    P, T = counts.total_params, counts.trained_params
    zero0 = plan(_request(predictor="large", zero_stage=0, precision="fp32", finetune="lora")).estimate
    assert (zero0.params, zero0.grads, zero0.optimizer) == (4 * P, 4 * T, 8 * T)
    # ZeRO-2 bf16 on 8 ranks: DeepSpeed's estimator for the adapters, plus the frozen model in bf16 on every rank.
    zero2 = plan(_request(predictor="large", zero_stage=2, world_size=8, finetune="lora")).estimate
    assert zero2.model_states == zero2.deepspeed_model_states == 2 * T + int(18 * T / 8) + 2 * (P - T)
    full = plan(_request(predictor="large", zero_stage=2, world_size=8)).estimate
    assert full.grads + full.optimizer > 100 * (zero2.grads + zero2.optimizer) and zero2.params == 2 * P
    zero3 = plan(_cpu_node(predictor="large", zero_stage=3, offload="cpu", finetune="lora")).estimate
    assert zero3.rank_states["fp32_master"] == 4 * -(-T // 2) and zero3.rank_states["lp_partition"] == 2 * -(-P // 2)
    # Rank 0 keeps the frozen model's exact fp32 values for the exports (bf16); an export adds the merged layers.
    assert zero2.rank0_frozen_copy == 4 * (P - T) and full.rank0_frozen_copy == 0
    assert zero2.export_state == 4 * (P + counts.adapted_weight_params)
    assert full_counts.trained_params == full_counts.total_params
    # A LoRA rank imports peft (measured); a full fine-tuning rank does not.
    assert zero2.rank_baseline == BASELINE_PROCESS_BYTES + LORA_IMPORT_BYTES
    assert full.rank_baseline == BASELINE_PROCESS_BYTES


def test_lora_options_are_checked_against_the_preset():
    assert _request(finetune="lora").problems() == []
    assert _request(finetune="lora", lora_rank=900).problems() == [
        "--lora_rank 900 is larger than the targeted layer transformer.0.self_attn.q_proj (832 x 832): choose at "
        "most 832"]
    assert "'attn' matches no module" in _request(finetune="lora", lora_targets=["attn"]).problems()[0]
    assert _request(lora_rank=900).problems() == []  # only with --finetune lora
