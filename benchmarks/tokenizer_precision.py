"""How many tokens the frozen tokenizer changes in bf16/fp16 against fp32, and how fast each dtype encodes.

    python benchmarks/tokenizer_precision.py --data demo_runs/prepared --tokenizer demo_runs/tokenizer/best_model
    python benchmarks/tokenizer_precision.py --data demo_runs/prepared --tokenizer base   # random base-size weights

Prints, per dtype: windows/s and the share of s1 / s2 ids that differ from fp32 (a flip happens where a quantizer
input sits near zero, so it depends on the weights: use a trained tokenizer for the figure that matters).
"""

from __future__ import annotations

import argparse
import time

import torch

from ds_kronos.data import PreparedDataset, WindowDataset
from ds_kronos.model import KronosTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokenizer", default="base")
    parser.add_argument("--windows", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_folder_or_preset(args.tokenizer).eval()
    dataset = WindowDataset(PreparedDataset.open(args.data), "train", max_samples=args.windows, seed=0)
    x, _ = dataset.get_batch(list(range(len(dataset))))
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = tokenizer.to(dtype)
        with torch.no_grad():
            model.encode(x[: args.batch].to(dtype), half=True)  # warm-up
            start = time.perf_counter()
            parts = [model.encode(x[i:i + args.batch].to(dtype), half=True) for i in range(0, len(x), args.batch)]
            seconds = time.perf_counter() - start
        results[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), len(x) / seconds)
    s1_ref, s2_ref, _ = results["fp32"]
    print(f"tokenizer {args.tokenizer}, {len(x)} windows of {x.shape[1]} bars, {args.threads} threads")
    print(f"{'dtype':6s} {'windows/s':>10s} {'s1 ids differ':>14s} {'s2 ids differ':>14s} {'either':>8s}")
    for name, (s1, s2, rate) in results.items():
        d1, d2 = (s1 != s1_ref), (s2 != s2_ref)
        print(f"{name:6s} {rate:10.0f} {d1.float().mean().item():14.4%} {d2.float().mean().item():14.4%} "
              f"{(d1 | d2).float().mean().item():8.4%}")


if __name__ == "__main__":
    main()
