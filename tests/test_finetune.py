"""--finetune full|lora|freeze without processes (issue 23 items 4 and 7): the option checks and their messages, the
--freeze pattern rules, and the exports of a LoRA model (the merged published folder and peft's adapter folder give
the logits of the model they were written from). The runs through the deepspeed launcher are in
tests/test_finetune_runs.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ds_kronos.adapters import DEFAULT_LORA_TARGETS, frozen_by
from ds_kronos.forecast.sampler_file import SamplerSettings, resolve_sampler, selection_sampler_writer
from ds_kronos.model import Kronos
from ds_kronos.train.config import TrainConfig
from ds_kronos.train.engine.finetune import (
    ADAPTER_FOLDER,
    FinetuneSpec,
    Finetuning,
    finetune_problems,
    parameter_counts,
)

TINY_NAMES = [name for name, _ in Kronos.from_preset("tiny").named_parameters()]


def problems(**options) -> list[str]:
    config = TrainConfig(data="x", **options)
    return config.finetune_spec().option_problems() + finetune_problems(config.finetune_spec(), config.predictor)


def test_the_defaults_train_everything_and_check_nothing():
    assert TrainConfig().finetune_spec() == FinetuneSpec()
    assert problems() == []
    assert problems(finetune="lora") == []  # the default targets and rank fit the tiny preset


def test_lora_targets_that_match_nothing_or_cannot_be_adapted_are_named():
    found = problems(finetune="lora", lora_targets=["q_proj", "qproj"])
    assert found == ["--lora_targets: 'qproj' matches no module of the predictor (adaptable: emb_s1, emb_s2, "
                     "fusion_proj, minute_embed, hour_embed, weekday_embed, day_embed, month_embed, q_proj, k_proj, "
                     "v_proj, out_proj, w1, w3, w2, proj_s1, proj_s2)"]
    norm = problems(finetune="lora", lora_targets=["norm1"])
    assert len(norm) == 1 and "'norm1' matches RMSNorm modules, which LoRA cannot adapt" in norm[0]
    assert "--lora_targets is empty" in problems(finetune="lora", lora_targets=[])[0]


def test_a_rank_above_the_smallest_targeted_layer_is_refused():
    # tiny: d_model 64, ff 128; the s1 head is 1024 x 64.
    assert problems(finetune="lora", lora_rank=64) == []
    assert problems(finetune="lora", lora_rank=65) == [
        "--lora_rank 65 is larger than the targeted layer transformer.0.self_attn.q_proj (64 x 64): choose at most "
        "64"]
    assert problems(finetune="lora", lora_rank=64, lora_targets=["proj_s1"]) == []
    assert "head.proj_s1 (1024 x 64)" in problems(finetune="lora", lora_rank=65, lora_targets=["proj_s1"])[0]


def test_freeze_patterns_last_match_wins():
    assert frozen_by(["embedding.*"], "embedding.emb_s1.weight")
    assert not frozen_by(["embedding.*"], "head.proj_s1.weight")
    assert frozen_by(["transformer.[0-0].*"], "transformer.0.ffn.w1.weight")
    assert not frozen_by(["transformer.[0-0].*"], "transformer.1.ffn.w1.weight")
    heads_only = ["*", "!head.*"]
    trained = [name for name in TINY_NAMES if not frozen_by(heads_only, name)]
    assert trained == ["head.proj_s1.weight", "head.proj_s1.bias", "head.proj_s2.weight", "head.proj_s2.bias"]
    assert frozen_by(["!head.*", "*"], "head.proj_s1.weight")  # a later plain pattern wins again


def test_freeze_options_are_checked():
    assert problems(finetune="freeze", freeze=["*", "!head.*"]) == []
    assert problems(finetune="freeze") == ["--finetune freeze needs --freeze PATTERNS (globs over parameter names, "
                                           "e.g. 'embedding.*,transformer.[0-3].*'; see --help)"]
    assert problems(freeze=["embedding.*"]) == [
        "--freeze applies to --finetune freeze (this run has --finetune full)"]
    everything = problems(finetune="freeze", freeze=["embedding.*", "*"])
    assert len(everything) == 1 and "freezes every parameter of the predictor: nothing would train" in everything[0]
    nothing = problems(finetune="freeze", freeze=["embeddings.*"])
    assert nothing == ["--freeze: 'embeddings.*' matches no parameter of the predictor (names as in "
                       "model.safetensors, e.g. embedding.emb_s1.weight, embedding.emb_s2.weight, "
                       "embedding.fusion_proj.weight)"]


def test_the_checks_read_a_checkpoint_folder_config(tmp_path):
    torch.manual_seed(0)
    Kronos(Kronos.preset_config("tiny").replace(d_model=32, ff_dim=48, n_heads=2)).save_pretrained(tmp_path)
    found = problems(finetune="lora", lora_rank=40, predictor=str(tmp_path))
    assert found == ["--lora_rank 40 is larger than the targeted layer transformer.0.self_attn.q_proj (32 x 32): "
                     "choose at most 32"]


def test_freeze_freezes_what_the_patterns_name():
    torch.manual_seed(0)
    finetuning = Finetuning(FinetuneSpec(mode="freeze", freeze=("embedding.*", "transformer.0.*")),
                            Kronos.from_preset("tiny"))
    assert finetuning.model is finetuning.base
    for name, param in finetuning.model.named_parameters():
        assert param.requires_grad == (not name.startswith(("embedding.", "transformer.0."))), name
    trained, total = parameter_counts(finetuning.model)
    assert total == sum(p.numel() for p in finetuning.model.parameters()) and 0 < trained < total


@pytest.fixture
def trained_lora():
    """A tiny model under LoRA whose adapters moved away from their start (B is zero at the start)."""
    torch.manual_seed(0)
    finetuning = Finetuning(FinetuneSpec(mode="lora", lora_rank=4, lora_alpha=8), Kronos.from_preset("tiny"))
    with torch.no_grad():
        for name, param in finetuning.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return finetuning


def logits(model, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    s1, s2 = (torch.randint(0, 1024, (3, 12), generator=generator) for _ in range(2))
    stamp = torch.stack([torch.randint(0, n, (3, 12), generator=generator) for n in (60, 24, 7, 32, 13)], dim=-1)
    model.eval()
    with torch.no_grad():
        return model(s1, s2, stamp, use_teacher_forcing=True, s1_targets=s1, causal_s2=True)


def test_lora_trains_only_the_adapters_and_names_the_base_tensors(trained_lora):
    model = trained_lora.model
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in name or ".lora_B." in name for name in trained)
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trained} == set(DEFAULT_LORA_TARGETS)
    # 2 blocks x (4 attention + 3 feed-forward) + 4 cross-attention projections, rank 4
    assert parameter_counts(model)[0] == 4 * (2 * (4 * (64 + 64) + 2 * (64 + 128) + (128 + 64)) + 4 * (64 + 64))
    assert sorted(trained_lora.base_names.values()) == sorted(Kronos.from_preset("tiny").state_dict())
    assert trained_lora.base_names["base_model.model.transformer.0.self_attn.q_proj.base_layer.weight"] == \
        "transformer.0.self_attn.q_proj.weight"
    assert set(trained_lora.adapter_start) == set(trained)


def test_lora_exports_give_the_trained_model_logits(trained_lora, tmp_path):
    from peft import PeftModel

    state = {name: t.detach().clone() for name, t in trained_lora.model.state_dict().items()}
    expected = logits(trained_lora.model)
    trained_lora.publish(tmp_path / "best_model", state)
    # A second export of the same state writes the same folder; a run that scores forecasts adds its sampler.json.
    trained_lora.publish(tmp_path / "best_model", state, selection_sampler_writer(SamplerSettings(spread=1.3)))
    assert resolve_sampler(str(tmp_path / "best_model"), None, None).spread == 1.3
    merged = Kronos.from_pretrained(tmp_path / "best_model")
    for got, want in zip(logits(merged), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    # The merged weights are W + (alpha / r) B A for every adapted layer, the rest unchanged.
    base = {name: state[wrapped] for wrapped, name in trained_lora.base_names.items()}
    merged_state = merged.state_dict()
    prefix = "base_model.model.transformer.1.ffn.w2"
    delta = 8 / 4 * state[f"{prefix}.lora_B.default.weight"] @ state[f"{prefix}.lora_A.default.weight"]
    torch.testing.assert_close(merged_state["transformer.1.ffn.w2.weight"], base["transformer.1.ffn.w2.weight"] + delta,
                               rtol=0, atol=1e-7)
    assert delta.abs().max() > 1e-3
    for name in ("embedding.emb_s1.weight", "head.proj_s1.weight", "transformer.0.norm1.weight"):
        assert torch.equal(merged_state[name], base[name])
    # The adapter alone, in peft's format, over the start model.
    adapter = tmp_path / "best_model" / ADAPTER_FOLDER
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert len(load_file(str(adapter / "adapter_model.safetensors"))) == 2 * 18
    start = Kronos.from_preset("tiny")
    start.load_state_dict(base)
    for got, want in zip(logits(PeftModel.from_pretrained(start, str(adapter))), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_partitioned_start_values_are_read_under_the_engine_names(trained_lora):
    base_file = {name: torch.full((1,), float(i)) for i, name in enumerate(Kronos.from_preset("tiny").state_dict())}
    exact = trained_lora.exact_values(base_file)
    name = "base_model.model.head.proj_s2.bias"
    assert torch.equal(exact[name], base_file["head.proj_s2.bias"])
    adapter = "base_model.model.transformer.0.ffn.w1.lora_A.default.weight"
    assert torch.equal(exact[adapter], trained_lora.adapter_start[adapter])
    assert len(exact) == len(base_file) + len(trained_lora.adapter_start)
    preset = trained_lora.exact_values(None)  # a preset: the adapters alone (the base has no exact values)
    assert set(preset) == set(trained_lora.adapter_start) and torch.equal(preset[adapter], exact[adapter])
    assert "base_model.model.head.proj_s2.bias" not in preset


def test_a_resume_with_other_finetune_options_is_refused_by_name(tmp_path):
    """The checkpoint's manifest records what the run trained; another --finetune is one line before any engine
    exists (DeepSpeed's load would only report missing keys for every tag)."""
    from types import SimpleNamespace

    from ds_kronos.deepspeed_json.resolve import BatchLayout
    from ds_kronos.errors import UserError
    from ds_kronos.train.checkpoint import training_state
    from ds_kronos.train.checkpoint.resume import find_resume_source

    lora = TrainConfig(finetune="lora", lora_rank=4)
    batch, ds_config = BatchLayout(micro_batch=8, grad_accum=1, world_size=1), {"zero_optimization": {"stage": 2}}
    staging = tmp_path / ".step00000003.partial"
    staging.mkdir()
    files = {}
    for name in ("rng_rank00000.safetensors", "mp_rank_00_model_states.pt"):
        (staging / name).write_bytes(b"state")
        files[name] = len(b"state")
    layout = training_state.run_layout(batch, ds_config, lora.trained())
    training_state._publish(tmp_path, staging, "step00000003", layout, files)
    runtime = SimpleNamespace(is_main=True, world_size=1)
    found = find_resume_source(tmp_path, batch, runtime, print, ds_config, lora.trained())
    assert found.layout.trained == "LoRA rank 4 (alpha 16) on q_proj,k_proj,v_proj,out_proj,w1,w2,w3"
    again = TrainConfig(finetune="lora", lora_rank=4, lora_dropout=0.1)  # dropout leaves the state as it is
    assert find_resume_source(tmp_path, batch, runtime, print, ds_config, again.trained()).layout == layout
    with pytest.raises(UserError, match=r"step00000003 was written by a run that trains LoRA rank 4 \(alpha 16\) on "
                                        r"q_proj.*; this run trains every parameter. Resume with the same --finetune"):
        find_resume_source(tmp_path, batch, runtime, print, ds_config, TrainConfig().trained())


def test_lora_starts_from_the_same_fp32_draw_over_a_low_precision_base():
    """ZeRO-3 builds the base model already cast to bf16, and peft casts new adapters to their base layer's dtype:
    the start values are the fp32 draw all the same (as over the fp32 base ZeRO-0/1/2 build), and the draw leaves
    the torch generator where the fp32 build leaves it."""
    spec = FinetuneSpec(mode="lora", lora_rank=4, lora_alpha=8)
    starts, after = [], []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(5)
        finetuning = Finetuning(spec, Kronos.from_preset("tiny").to(dtype))
        starts.append(finetuning.adapter_start)
        after.append(torch.rand(4))
    assert len(starts[0]) == 2 * 18 and starts[0].keys() == starts[1].keys()
    for name, value in starts[0].items():
        assert starts[1][name].dtype == torch.float32 and torch.equal(starts[1][name], value), name
    assert torch.equal(after[0], after[1])
