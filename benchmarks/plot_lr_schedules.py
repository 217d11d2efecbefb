"""Plot the two learning-rate modes against upstream's OneCycleLR for one run length (docs/lr_schedules.png).

    python benchmarks/plot_lr_schedules.py --steps 2000 --out docs/lr_schedules.png
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from ds_kronos.deepspeed_json.resolve import warmup_steps
from ds_kronos.plotting import pyplot, save_figure
from ds_kronos.train.engine.schedule import onecycle_trajectory, warmup_cosine_trajectory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--max_lr", type=float, default=4e-5)
    parser.add_argument("--out", default="docs/lr_schedules.png")
    args = parser.parse_args()
    plt = pyplot()

    onecycle, betas = onecycle_trajectory(args.max_lr, args.steps)
    warmup = warmup_steps(args.steps)
    native = warmup_cosine_trajectory(args.max_lr, args.steps, warmup)
    steps = np.arange(args.steps)
    gap = np.abs(np.array(native) - np.array(onecycle)) / args.max_lr
    print(f"{args.steps} steps, warm-up {warmup}: max |difference| / max_lr during warm-up {gap[:warmup].max():.4f}, "
          f"after {gap[warmup:].max():.2e}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, limit, title in ((axes[0], args.steps, "whole run"), (axes[1], 3 * warmup, "warm-up (zoom)")):
        ax.plot(steps[:limit], onecycle[:limit], label="torch OneCycleLR (upstream; lr_schedule=onecycle)", lw=2)
        ax.plot(steps[:limit], native[:limit], "--", label="DeepSpeed WarmupCosineLR (lr_schedule=config)", lw=2)
        ax.set_title(f"learning rate, {title}")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].plot(steps, betas, label="OneCycleLR beta1", lw=2)
    axes[2].axhline(0.9, color="C1", ls="--", label="WarmupCosineLR beta1 (JSON, fixed)")
    axes[2].set_title("AdamW beta1")
    axes[2].set_xlabel("optimizer step")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_figure(fig, args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
