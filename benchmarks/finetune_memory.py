"""Full fine-tuning against LoRA on this machine: peak memory per rank, samples/s, the ZeRO config each needs, and
the planner's figures next to them (issue 23 item 5).

    DS_ACCELERATOR=cpu python benchmarks/finetune_memory.py                          # base and large (~10 min a round)
    DS_ACCELERATOR=cpu python benchmarks/finetune_memory.py --variants base --rounds 3 --recommended false

Every row is one real run of ``launch/train.py`` through the deepspeed launcher, made by benchmarks/scale_run.py's
``run_one`` (2 CPU ranks x 1 thread, micro batch 2 per rank, 100 tokens per sample, the preset's random init, the
frozen ``base`` tokenizer preset, the demo market, a few optimizer steps; each rank's peak resident memory from
``summary.json`` ``memory.peak_rss_bytes``, the machine's peak sampled, seconds per step from the progress lines).
For each variant:

* ``full`` and ``lora`` (rank 8, the default targets) through the same JSON (``--compare_config``, default
  ``ds_configs/zero2_bf16.json``), back to back in every round, the order alternating between rounds: the LoRA /
  full samples/s ratio of each round is measured in one invocation;
* with ``--recommended`` (the first round only), each mode again through the JSON that ``launch/plan.py`` recommends
  for this machine (``--memory_gb``: the least-sharded ZeRO stage, without offload where possible, that fits with
  the planner's 20% margin) when it differs from the compared one: it shows which config each mode needs, and checks
  that it trains and that its plan holds.

Printed: a table of every run (measured / planned rank peak, which must be within 25%) and the ratios per round. The
LAST line is one JSON object with every row.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from scale_run import GIB, ScaleRunConfig, prepare_demo, run_one

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.errors import UserError
from ds_kronos.model import PREDICTOR_PRESETS

MODES = ("full", "lora")
PLAN_TOLERANCE = 0.25


@dataclass(kw_only=True)
class FinetuneMemoryConfig:
    """Full fine-tuning against LoRA: memory, speed and the config each needs, measured."""

    variants: list[str] = option(default_factory=lambda: ["base", "large"], nargs="+",
                                 help=f"presets ({', '.join(PREDICTOR_PRESETS)})")
    compare_config: str = option("ds_configs/zero2_bf16.json", help="the JSON both modes run through in every round")
    rounds: int = option(1, ge=1, help="rounds of the full/LoRA pairs (each gives one ratio per variant)")
    recommended: bool = option(True, help="also run each mode once through the JSON the planner recommends for "
                                          "--memory_gb (when it differs from --compare_config)")
    memory_gb: float = option(24.0, gt=0, help="host memory of this machine, GiB, for the planner's recommendation")
    world_size: int = option(2, ge=1, help="ranks (CPU processes)")
    steps: int = option(5, ge=3, help="optimizer steps per run")
    micro_batch: int = option(2, ge=1, help="samples per rank per step")
    lr: float = option(1e-4, gt=0, help="peak learning rate of every run")
    work_dir: str = option("runs/finetune_memory", help="demo data and run folders (removed after each run)")
    data: str | None = option(None, help="prepared dataset (default: the demo market, prepared into --work_dir)")
    timeout_s: float = option(3600.0, gt=0, help="seconds one run may take")

    def problems(self) -> list[str]:
        return [f"--variants: unknown preset {v!r}" for v in self.variants if v not in PREDICTOR_PRESETS]


def recommended_config(cfg: FinetuneMemoryConfig, variant: str, mode: str, context: int, work: Path) -> str:
    """The planner's least-sharded JSON that fits ``--memory_gb`` for this run, as a file path (a shipped file, or
    one written into ``work`` when the planner merges changes into one)."""
    from ds_kronos.plan import PlanRequest
    from ds_kronos.plan.planner import recommend

    request = PlanRequest(predictor=variant, world_size=cfg.world_size, batch_size=cfg.micro_batch, context=context,
                          precision="bf16", device="cpu", memory_gb=cfg.memory_gb, finetune=mode)
    chosen = recommend(request).chosen
    if chosen is None or chosen.request.batch_size != cfg.micro_batch or chosen.request.activation_checkpointing:
        raise UserError(f"{variant} {mode}: the planner finds no config at micro batch {cfg.micro_batch} without "
                         f"activation checkpointing within {cfg.memory_gb:g} GiB")
    if not chosen.ds_config.overrides:
        return chosen.ds_config.path
    path = work / f"planned_{variant}_{mode}_{Path(chosen.ds_config.path).stem}.json"
    chosen.ds_config.write(path)
    return str(path)


def _context(data: Path) -> int:
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    return int(manifest["lookback"]) + int(manifest["predict"])


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    columns = ["preset", "--finetune", "config", "trained params", "s/step, median (min-max)", "samples/s",
               "peak RSS per rank, GiB", "machine peak, GiB", "planned rank / node, GiB",
               "measured / planned: rank, machine"]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        spread, p = r["sec_per_step_spread"], r["planned"]
        out.append(f"| {r['variant']} | {r['finetune']} | {Path(r['ds_config']).name} | "
                   f"{r['parameters']['trained']:,} of {r['parameters']['total']:,} | {r['sec_per_step']:.2f} "
                   f"({spread[0]:.2f}-{spread[1]:.2f}) | {r['samples_per_s']:.3f} | "
                   f"{', '.join(_gib(v) for v in r['rank_peak_rss_bytes'])} | {_gib(r['machine_peak_rss_bytes'])} | "
                   f"{_gib(p['rank_peak'])} / {_gib(p['node_host'])} | {r['rank_peak_ratio']:.2f}, "
                   f"{r['machine_peak_ratio']:.2f} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_config(FinetuneMemoryConfig, argv)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data) if cfg.data else prepare_demo(work)
    runner = ScaleRunConfig(variants=[], world_size=cfg.world_size, steps=cfg.steps, micro_batch=cfg.micro_batch,
                            lr=cfg.lr, work_dir=str(work), data=str(data), timeout_s=cfg.timeout_s)
    rows: list[dict[str, Any]] = []
    ratios: dict[str, list[float]] = {v: [] for v in cfg.variants}
    port = 29800

    def run(variant: str, mode: str, config: str, round_index: int) -> dict[str, Any]:
        nonlocal port
        port += 1
        print(f"round {round_index + 1}: {variant} --finetune {mode} through {config}", flush=True)
        row = {**run_one(runner, variant, data, port, config=config, finetune=mode), "round": round_index + 1}
        rows.append(row)
        return row

    for round_index in range(cfg.rounds):
        for variant in cfg.variants:
            order = MODES if round_index % 2 == 0 else MODES[::-1]
            pair = {mode: run(variant, mode, cfg.compare_config, round_index) for mode in order}
            ratios[variant].append(pair["lora"]["samples_per_s"] / pair["full"]["samples_per_s"])
            print(f"  {variant}: LoRA / full samples/s {ratios[variant][-1]:.3f}", flush=True)
            if cfg.recommended and round_index == 0:
                for mode in MODES:
                    config = recommended_config(cfg, variant, mode, _context(data), work)
                    if Path(config).name != Path(cfg.compare_config).name:
                        run(variant, mode, config, round_index)
    print(table(rows))
    for variant, values in ratios.items():
        print(f"{variant}: LoRA / full samples/s through {Path(cfg.compare_config).name}, per round: "
              f"{', '.join(f'{v:.3f}' for v in values)} (median {statistics.median(values):.3f})")
    outside = [r for r in rows if abs(r["rank_peak_ratio"] - 1) > PLAN_TOLERANCE]
    for r in outside:
        print(f"plan off by more than {PLAN_TOLERANCE:.0%}: {r['variant']} {r['finetune']} {r['ds_config']}: "
              f"measured / planned rank peak {r['rank_peak_ratio']:.2f}")
    print(json.dumps({"rows": rows, "lora_over_full_samples_per_s": ratios}))


if __name__ == "__main__":
    run_main(main)
