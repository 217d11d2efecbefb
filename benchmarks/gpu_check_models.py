"""The GPU check's sections that need no training run: the machine, DeepSpeed's compiled ops, golden parity (a),
the tokenizer's fp16 ids (b) and the KV-cache forecasts (e). Each takes ``dry_run`` and ``workdir`` and returns a
JSON-able dict with ``ok``; benchmarks/gpu_check.py runs each in its own process."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "golden"
# Golden tolerances (atol, rtol). fp32: those of tests/test_model_golden.py (TF32 off: it rounds matmul inputs to
# 10 bits). bf16 (weights and inputs in bf16, 8-bit mantissa): 0.1 + 0.05, about 2.5x the largest difference the
# CPU shows for the same arrays (docs/gpu_check.md); ids are not compared in bf16 (a quantizer sign may flip), their
# changed share is reported.
TOLERANCES = {"fp32": (1e-5, 1e-5), "bf16": (0.1, 0.05)}


def device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu"
                        else "cpu")


def no_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def environment(dry_run: bool, workdir: Path) -> dict:
    import deepspeed
    import numpy
    dev = device()
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "deepspeed": deepspeed.__version__, "numpy": numpy.__version__, "numpy_from": str(Path(numpy.__file__)
                                                                                               .parent.parent),
            "device": str(dev), "nvcc": shutil.which("nvcc"), "cxx": shutil.which("c++") or shutil.which("g++"),
            "ninja": shutil.which("ninja"),
            "cuda_home": os.environ.get("CUDA_HOME"), "cpu_count": os.cpu_count()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        from ds_kronos.model.flops import device_peak
        peak = device_peak(props.name)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                    bf16_supported=torch.cuda.is_bf16_supported(), nccl=str(torch.cuda.nccl.version()),
                    datasheet_bf16_tflops=peak.tflops("bf16") if peak else None)
    info["ok"] = dev.type == "cuda" or dry_run
    return info


def ops(dry_run: bool, workdir: Path) -> dict:
    """Compile (or load from torch's extension cache) the optimizers DeepSpeed needs here: FusedAdam on CUDA (its
    default for "AdamW"), DeepSpeedCPUAdam for ZeRO-3's CPU offload. The training sections fall back to torch's
    AdamW (optimizer.params.torch_adam) where FusedAdam cannot be built, and say so."""
    from deepspeed.accelerator import get_accelerator
    (workdir / "ops.started").touch()  # ops.json missing after this: the build was cut off (gpu_check_training)
    names = ["CPUAdamBuilder"] + ([] if device().type == "cpu" else ["FusedAdamBuilder"])
    result: dict = {}
    for name in names:
        builder = get_accelerator().create_op_builder(name)
        started = time.perf_counter()
        try:
            builder.load(verbose=False)
            result[name] = {"ok": True, "seconds": round(time.perf_counter() - started, 1)}
        except Exception as exc:  # a missing compiler or CUDA toolkit: reported, the other sections adapt
            result[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-600:]}
    (workdir / "ops.json").write_text(json.dumps(result))
    result["ok"] = all(r["ok"] for r in result.values())
    return result


def _diff(actual, expected, atol: float, rtol: float) -> dict:
    import numpy as np
    a = actual.detach().float().cpu().double().numpy() if torch.is_tensor(actual) else np.asarray(actual, np.float64)
    e = np.asarray(expected, dtype=np.float64)
    err = np.abs(a - e)
    # Relative to the array's largest magnitude: element-wise ratios explode where upstream's value is near 0.
    return {"max_abs": float(err.max()), "max_rel": float(err.max() / max(np.abs(e).max(), 1e-12)),
            "ok": bool(np.all(err <= atol + rtol * np.abs(e)))}


def _golden_outputs(tokenizer, predictor, v, dev, dtype) -> dict[str, torch.Tensor]:
    """The arrays of tests/test_model_golden.py that run on any device: the tokenizer's eval outputs and ids, and
    the predictor's teacher-forced logits and loss on the stored token ids."""
    x = torch.tensor(v["x"], dtype=dtype, device=dev)
    stamp = torch.tensor(v["stamp"], dtype=torch.float32, device=dev)
    s1_in, s2_in, s1_out, s2_out = (torch.tensor(v[k], device=dev) for k in ("s1_in", "s2_in", "s1_out", "s2_out"))
    with torch.no_grad():
        out = {"z_enc": tokenizer.encode_latent(x)}
        (out["recon_pre"], out["recon_full"]), out["bsq_loss"], _, _ = tokenizer(x)
        out["s1_ids"], out["s2_ids"] = tokenizer.encode(x, half=True)
        out["decoded_full"] = tokenizer.decode(torch.tensor(v["full_ids"], device=dev), half=False)
        out["s1_logits"], out["s2_logits"] = predictor(s1_in, s2_in, stamp[:, :-1], use_teacher_forcing=True,
                                                       s1_targets=s1_out)
        out["loss"] = predictor.head.compute_loss(out["s1_logits"], out["s2_logits"], s1_out, s2_out)[0]
        out["context"] = predictor.decode_s1(s1_in, s2_in, stamp[:, :-1])[1]
    return out


def golden(dry_run: bool, workdir: Path) -> dict:
    import numpy as np

    from ds_kronos.forecast import autoregressive_forecast
    from ds_kronos.model import Kronos, KronosTokenizer
    no_tf32()
    dev, v = device(), np.load(GOLDEN / "vectors.npz")
    result: dict = {"device": str(dev), "tolerances": {k: {"atol": a, "rtol": r} for k, (a, r) in TOLERANCES.items()}}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        atol, rtol = TOLERANCES[precision]
        tokenizer = KronosTokenizer.from_pretrained(GOLDEN / "tokenizer").eval().to(dev, dtype)
        predictor = Kronos.from_pretrained(GOLDEN / "predictor").eval().to(dev, dtype)
        out = _golden_outputs(tokenizer, predictor, v, dev, dtype)
        ids = {k: float((out[k].cpu().numpy() != v[k]).mean()) for k in ("s1_ids", "s2_ids")}
        floats = {k: _diff(t, v[k], atol, rtol) for k, t in out.items() if not k.endswith("_ids")}
        part = {"arrays": floats, "ids_changed_share": ids,
                "max_abs": max(d["max_abs"] for d in floats.values()),
                "max_rel": max(d["max_rel"] for d in floats.values())}
        part["ok"] = all(d["ok"] for d in floats.values()) and (precision != "fp32" or not any(ids.values()))
        if precision == "fp32":  # the greedy forecast (KV cache on this device) against upstream's
            lookback, pred_len = int(v["lookback_window"]), int(v["ar_pred_len"])
            x, stamp = (torch.tensor(v[k], dtype=torch.float32, device=dev) for k in ("x", "stamp"))
            path = autoregressive_forecast(tokenizer, predictor, x[:, :lookback], stamp[:, :lookback],
                                           stamp[:, lookback:], int(v["ar_max_context"][1]), pred_len, clip=5.0,
                                           temperature=1.0, top_k=1, top_p=1.0, sample_count=1)
            part["arrays"]["ar_greedy_grow"] = _diff(path, v["ar_greedy_grow"], atol, rtol)
            part["ok"] = part["ok"] and part["arrays"]["ar_greedy_grow"]["ok"]
        result[precision] = part
    result["ok"] = result["fp32"]["ok"] and result["bf16"]["ok"]
    return result


def _windows(count: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised synthetic OHLCV windows and their time features (benchmarks/forecast_throughput.py's)."""
    from forecast_throughput import normalised, synthetic_series

    from ds_kronos.data.normalise import DEFAULT_CLIP
    values, stamps = synthetic_series(count, length, seed)
    return torch.from_numpy(normalised(values, length, DEFAULT_CLIP)), torch.from_numpy(stamps)


def tokenizer_fp16(dry_run: bool, workdir: Path) -> dict:
    """Share of s1/s2 ids that change when the frozen tokenizer encodes in fp16 (and bf16) instead of fp32
    (benchmarks/tokenizer_precision.py's measure, random preset weights, synthetic windows), and windows/s."""
    from ds_kronos.model import KronosTokenizer
    no_tf32()
    dev = device()
    name, count, length, batch = ("tiny", 64, 64, 32) if dry_run else ("base", 2048, 512, 256)
    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_preset(name).eval().to(dev)
    x, _ = _windows(count, length)
    x = x.to(dev)
    ids, rates = {}, {}
    for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        model = tokenizer.to(dtype)
        with torch.no_grad():
            model.encode(x[:batch].to(dtype), half=True)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            parts = [model.encode(x[i:i + batch].to(dtype), half=True) for i in range(0, count, batch)]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            rates[label] = count / (time.perf_counter() - started)
        ids[label] = [torch.cat([p[k] for p in parts]) for k in (0, 1)]
    result: dict = {"tokenizer": name, "windows": count, "bars": length, "device": str(dev)}
    for label in ("fp16", "bf16"):
        d1, d2 = (ids[label][k] != ids["fp32"][k] for k in (0, 1))
        result[label] = {"s1_changed": d1.float().mean().item(), "s2_changed": d2.float().mean().item(),
                         "either_changed": (d1 | d2).float().mean().item(), "windows_per_s": round(rates[label], 1)}
    result["fp32_windows_per_s"] = round(rates["fp32"], 1)
    result["ok"] = True  # a measurement: random weights, no pass mark (docs/gpu_check.md)
    return result


def kv_cache(dry_run: bool, workdir: Path) -> dict:
    """Forecasts with the KV cache against full recomputation (same seed): equal paths, and decode tokens/s."""
    from ds_kronos.config import DEFAULT_TOP_P
    from ds_kronos.data.normalise import DEFAULT_CLIP
    from ds_kronos.forecast import sample_paths
    from ds_kronos.model import Kronos, KronosTokenizer, preset
    no_tf32()
    dev = device()
    name, series, context, horizon = ("tiny", 4, 32, 4) if dry_run else ("small", 64, 400, 30)
    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_preset(preset(name).tokenizer).eval().to(dev)
    predictor = Kronos.from_preset(name).eval().to(dev)
    x, stamps = _windows(series, context + horizon)
    x, stamps = x[:, :context].to(dev), stamps.to(dev)

    def forecast(use_cache: bool, rows: int = series, steps: int = horizon) -> tuple[torch.Tensor, float]:
        generator = torch.Generator(device=dev).manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        paths = sample_paths(tokenizer, predictor, x[:rows], stamps[:rows, :context],
                             stamps[:rows, context:context + steps], 512, steps, DEFAULT_CLIP, 1.0, 0, DEFAULT_TOP_P,
                             1, generator, use_cache)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return paths, time.perf_counter() - started

    forecast(True, 2, 2), forecast(False, 2, 2)  # warm-up
    (cached, cached_s), (full, full_s) = forecast(True), forecast(False)
    diff = float((cached - full).abs().max())
    return {"preset": name, "series": series, "context": context, "horizon": horizon, "device": str(dev),
            "identical": bool(torch.equal(cached, full)), "max_abs_diff": diff,
            "cached_tokens_per_s": round(series * horizon / cached_s, 1),
            "recompute_tokens_per_s": round(series * horizon / full_s, 1), "speed_up": round(full_s / cached_s, 2),
            "ok": diff <= 1e-4}
