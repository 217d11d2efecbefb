"""Install check: one forward/backward pass of a predictor preset over a frozen tokenizer, on random bars.

    python launch/smoke.py --preset small --batch 4 --context 64
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.model import PREDICTOR_PRESETS, Kronos, KronosTokenizer, preset


@dataclass(kw_only=True)
class SmokeConfig:
    """Install check: one forward/backward pass of a predictor preset on random bars."""

    preset: str = option("small", choices=tuple(sorted(PREDICTOR_PRESETS)), help="predictor preset")
    batch: int = option(4, ge=1, help="samples")
    context: int = option(64, ge=1, help="tokens per sample")


def main(argv=None) -> None:
    args = parse_config(SmokeConfig, argv)
    torch.manual_seed(0)
    spec = preset(args.preset)
    tokenizer = KronosTokenizer.from_preset(spec.tokenizer).eval()
    model = Kronos.from_preset(args.preset).train()
    bars = torch.randn(args.batch, args.context + 1, 6)
    stamp = torch.stack([torch.randint(0, n, (args.batch, args.context + 1)) for n in (60, 24, 7, 32, 13)], -1)
    start = time.perf_counter()
    with torch.no_grad():
        s1, s2 = tokenizer.encode(bars, half=True)
    s1_logits, s2_logits = model(s1[:, :-1], s2[:, :-1], stamp[:, :-1])
    loss, s1_loss, s2_loss = model.head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])
    loss.backward()
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    params = sum(p.numel() for p in model.parameters())
    print(f"preset {args.preset}: {params:,} parameters; loss {loss.item():.4f} (s1 {s1_loss.item():.4f}, "
          f"s2 {s2_loss.item():.4f}); grad norm {grad_norm.item():.3f}; {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    run_main(main)
