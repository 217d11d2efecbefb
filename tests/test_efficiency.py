"""Live efficiency figures (issue 24, item 4): the FLOP count that the trainer's log lines and benchmarks/ share, the
datasheet peaks matched on device names, and the figures each log line and summary.json give."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ds_kronos.model import Kronos, KronosTokenizer
from ds_kronos.model.flops import device_peak, flops_per_sample, matmul_params, tokenizer_flops_per_sample
from ds_kronos.model.objective import predict_and_score, tokenize_batch
from ds_kronos.train.observe.efficiency import run_efficiency
from ds_kronos.train.observe.progress import Progress

WINDOW = 36  # bars per training window of the tests' prepared set (lookback 30 + predict 5 + 1)


def linear_flops(run) -> float:
    """FLOPs torch's own counter sees in the matrix products of Linear layers (mm, addmm) of ``run()``."""
    with FlopCounterMode(display=False) as counter:
        run()
    counts = counter.get_flop_counts()["Global"]
    return float(sum(n for op, n in counts.items() if str(op) in ("aten.mm", "aten.addmm")))


def test_the_flop_count_is_torchs_count_of_the_matrix_products_plus_attention(one_torch_thread):
    """One training step's forward and backward (the trainer's objective, sampled s1 conditioning) on a batch of 2:
    torch's FLOP counter finds exactly 6 x Linear weights x tokens per sample in the Linear layers; the formula adds
    the attention matmuls, which the counter leaves out. The tokenizer's first layer computes no input gradient
    (its input is data), which the convention counts anyway: 2 FLOPs per weight and bar."""
    torch.manual_seed(0)
    tokenizer, model = KronosTokenizer.from_preset("tiny"), Kronos.from_preset("tiny")
    x, stamp = torch.randn(2, WINDOW, 6), torch.zeros(2, WINDOW, 5)
    batch = tokenize_batch(tokenizer, x, stamp, torch.device("cpu"), torch.float32)
    tokens, c = WINDOW - 1, model.config
    counted = linear_flops(lambda m=model: predict_and_score(m, m.head, batch, False)[0].backward()) / 2
    attention = 12.0 * (c.n_layers + 1) * c.d_model * tokens ** 2
    assert counted == 6 * matmul_params(model) * tokens
    assert flops_per_sample(c, matmul_params(model), tokens) == counted + attention

    def tokenizer_step() -> None:
        (pre, full), bsq, _, _ = tokenizer(x)
        (pre.square().mean() + full.square().mean() + bsq).backward()

    counted = linear_flops(tokenizer_step) / 2
    attention = 12.0 * (len(tokenizer.encoder) + 2 * len(tokenizer.decoder)) * tokenizer.config.d_model * WINDOW ** 2
    no_input_gradient = 2.0 * tokenizer.embed.weight.numel() * WINDOW
    assert tokenizer_flops_per_sample(tokenizer, WINDOW) == counted + no_input_gradient + attention


def test_frozen_weights_count_no_weight_gradient(one_torch_thread):
    """--finetune freeze of a late block: torch's counter finds 4 FLOPs per frozen weight and token (forward and the
    gradient that flows on to block 0), 6 for the rest, as the formula says. With LoRA the base layers of block 0
    and the input projection need no backward at all (nothing before them trains): the count overstates, but is
    far below counting every weight as trained."""
    from ds_kronos.train.engine.finetune import FinetuneSpec, Finetuning

    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_preset("tiny")
    x, stamp = torch.randn(2, WINDOW, 6), torch.zeros(2, WINDOW, 5)
    batch = tokenize_batch(tokenizer, x, stamp, torch.device("cpu"), torch.float32)
    tokens = WINDOW - 1
    for spec in (FinetuneSpec(mode="freeze", freeze=("transformer.1.*",)), FinetuneSpec(mode="lora")):
        model = Finetuning(spec, Kronos.from_preset("tiny")).model
        c, frozen = model.config, matmul_params(model, frozen_only=True)
        assert 0 < frozen < matmul_params(model)
        counted = linear_flops(lambda m=model: predict_and_score(m, m.head, batch, False)[0].backward()) / 2
        formula = flops_per_sample(c, matmul_params(model), tokens, frozen) - 12.0 * (c.n_layers + 1) * c.d_model \
            * tokens ** 2
        if spec.mode == "freeze":
            assert counted == formula == (6 * matmul_params(model) - 2 * frozen) * tokens
        else:
            assert counted < formula < 0.8 * 6 * matmul_params(model) * tokens


@pytest.mark.parametrize("name,peak,bf16,fp32", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4, 66.9),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5, 51.2),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5, 60.0),
    ("NVIDIA H800", "H100 SXM", 989.4, 66.9),
    ("NVIDIA H200", "H200 SXM", 989.4, 66.9),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5, 60.0),
    ("NVIDIA GH200 480GB", "GH200 (H100 SXM compute)", 989.4, 66.9),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0, 19.5),
    ("NVIDIA A100-PCIE-40GB", "A100", 312.0, 19.5),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0, 19.5),
    ("NVIDIA L40S", "L40S", 362.05, 91.6),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 165.2, 82.6),
    ("Tesla T4", None, None, None),
    ("NVIDIA L4", None, None, None),
])
def test_peaks_are_matched_on_the_device_name(name, peak, bf16, fp32):
    found = device_peak(name)
    if peak is None:
        assert found is None
        return
    assert found.name == peak
    assert (found.tflops("bf16"), found.tflops("fp16"), found.tflops("fp32")) == (bf16, bf16, fp32)


def test_log_line_and_summary_figures(one_torch_thread):
    """tokens/s = samples/s x positions per sample; TFLOP/s per rank = samples/s x FLOPs per sample / ranks; MFU
    against --peak_tflops, "n/a" on a CPU without it."""
    task = SimpleNamespace(kind="predictor", model=Kronos.from_preset("tiny"))
    cpu = torch.device("cpu")
    unknown = run_efficiency(task, WINDOW, 2, cpu, "fp32", None)
    assert unknown.tokens_per_sample == WINDOW - 1 and unknown.peak_tflops is None
    assert unknown.flops_per_sample == flops_per_sample(task.model.config, matmul_params(task.model), WINDOW - 1)
    assert "give --peak_tflops" in unknown.peak_source
    figures = unknown.figures(500.0)
    assert figures["tokens_per_s"] == 500.0 * (WINDOW - 1) and figures["mfu"] is None
    assert math.isclose(figures["tflops_per_rank"], 500.0 * unknown.flops_per_sample / 2 / 1e12)
    training_clock = iter([10.0, 12.0])  # the trainer's training seconds: a validation in between does not count
    progress = Progress(8, 2, 32, unknown, clock=lambda: next(training_clock))
    line = progress.line(1, 0, {"loss": 7.0, "s1": 7.0, "s2": 7.0}, 4e-5)
    assert "| 16 samples/s, 560 tokens/s, " in line and " TFLOP/s/rank, MFU n/a | ETA" in line

    given = run_efficiency(task, WINDOW, 2, cpu, "fp32", 0.02)
    assert given.peak_source == "--peak_tflops"
    assert math.isclose(given.figures(500.0)["mfu"], figures["tflops_per_rank"] / 0.02)
    assert "MFU 65.9%" in given.describe(500.0)  # 500 x 52.7 MFLOP / 2 ranks = 0.0132 TFLOP/s per rank
    summary = given.summary(500.0)
    assert summary["peak_tflops"] == 0.02 and math.isclose(summary["mfu"], 0.658896, rel_tol=1e-5)
    assert unknown.summary(None)["tokens_per_s"] is None

    tokenizer_task = SimpleNamespace(kind="tokenizer", model=KronosTokenizer.from_preset("tiny"))
    bars = run_efficiency(tokenizer_task, WINDOW, 1, cpu, "fp32", None)
    assert bars.tokens_per_sample == WINDOW
    assert bars.flops_per_sample == tokenizer_flops_per_sample(tokenizer_task.model, WINDOW)
