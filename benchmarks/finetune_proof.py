"""Does fine-tuning help, and does forecast selection keep it from hurting? The whole pipeline through the real
launch/ scripts on two synthetic markets (issue 23 item 6).

    DS_ACCELERATOR=cpu python benchmarks/finetune_proof.py --finetune_eval_every 32 \\
        --extra_train_args=--val_forecast_origins=512     # everything, as in docs/finetune.md (~16 min here)
    DS_ACCELERATOR=cpu python benchmarks/finetune_proof.py --stages markets tokenizer pretrain

A start model that knows something: the tiny tokenizer and predictor are trained from scratch on a SOURCE market
whose symbols' own daily returns mean-revert (``launch/make_demo_data.py --ar`` < 0), as ``launch/demo.sh`` trains
them (its YAML files), for ``--pretrain_epochs``. Then the predictor is fine-tuned on a TARGET market with another
structure (``--target_ar``, another seed) and a short training history (``--target_train_range``), where too many
steps at a too-high lr overfit. Runs (each through the deepspeed launcher on ``--nproc`` CPU ranks, every
fine-tuning run with ``--select_by crps --patience`` unless named otherwise):

* ``high_lr``: full fine-tuning at ``--high_lr``;
* ``high_lr_by_loss``: the same run selected by token loss without early stopping (``--select_by loss``; the forecast
  scores are still reported): its ``final_model/`` is where the too-high lr ends, its ``best_model/`` what the old
  default keeps;
* ``full``: full fine-tuning at ``--full_lr``; ``lora``: LoRA (``--lora_rank``) at ``--lora_lr``;
* ``same_market``: ``high_lr``'s settings on the SOURCE market itself: nothing new to learn.

Every model is scored on the test split of its market by ``launch/evaluate.py`` (``--eval_paths`` paths per
origin, once per ``--eval_seeds`` seed; each evaluation scores the model and the start model as its reference on the
same origins with the same draws, next to the random walk and the bootstrap). Stages are cached in ``--work_dir``:
one whose output exists is not run again (``--fresh`` removes the work folder first). The LAST line is one JSON
object with every figure.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config
from ds_kronos.errors import UserError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("markets", "tokenizer", "pretrain", "finetune", "evaluate")
RUNS = ("high_lr", "high_lr_by_loss", "full", "lora", "same_market")


@dataclass(kw_only=True)
class ProofConfig:
    """Pre-train on one synthetic market, fine-tune on a shifted one, and score every model on the test split."""

    work_dir: str = option("runs/finetune_proof", help="markets, runs and evaluations go here (stages are cached)")
    stages: list[str] = option(default_factory=lambda: list(STAGES), nargs="+", help=f"stages to run: {STAGES}")
    fresh: bool = option(False, help="remove --work_dir first")
    nproc: int = option(2, ge=1, help="ranks per training and evaluation run (deepspeed launcher, CPU)")
    seed: int = option(100, help="--seed of every training and of the markets' preparation order")
    source_ar: float = option(-0.4, gt=-1, lt=1, help="AR(1) of each symbol's own daily return, source market")
    source_seed: int = option(1, help="source market seed")
    source_symbols: int = option(40, ge=2, help="source market symbols")
    target_ar: float = option(0.3, gt=-1, lt=1, help="AR(1) of each symbol's own daily return, target market")
    target_seed: int = option(2, help="target market seed")
    target_symbols: int = option(40, ge=2, help="target market symbols")
    target_train_range: str = option("2021-07-01,2022-12-31", help="train dates of the target market (short: a "
                                     "small fine-tuning set)")
    pretrain_epochs: int = option(8, ge=1, help="epochs of the source pre-training (n_train_iter 8192 each)")
    pretrain_eval_every: int = option(64, ge=0, help="--eval_every of the pre-training")
    finetune_epochs: int = option(12, ge=1, help="epochs of each fine-tuning run (at most)")
    finetune_train_iter: int = option(2048, ge=1, help="--n_train_iter of each fine-tuning run")
    finetune_eval_every: int = option(16, ge=0, help="--eval_every of each fine-tuning run")
    patience: int = option(4, ge=1, help="--patience of the selected runs")
    high_lr: float = option(2e-3, gt=0, help="the too-high learning rate of full fine-tuning")
    full_lr: float = option(2e-4, gt=0, help="learning rate of the full fine-tuning compared with LoRA")
    lora_lr: float = option(1e-3, gt=0, help="learning rate of the LoRA run")
    lora_rank: int = option(8, ge=1, help="--lora_rank of the LoRA run (alpha = 2 x rank)")
    extra_train_args: list[str] = option(default_factory=list, help="more launch/train.py options for every "
                                         "fine-tuning run (e.g. --val_forecast_origins 256)")
    eval_paths: int = option(20, ge=2, help="--sample_count of the test evaluations")
    eval_seeds: list[int] = option(default_factory=lambda: [100], help="--seed of the test evaluations (one "
                                   "evaluation each)")

    def problems(self) -> list[str]:
        return [f"--stages: unknown stage {s!r} (choose from {', '.join(STAGES)})" for s in self.stages
                if s not in STAGES]


class Pipeline:
    def __init__(self, cfg: ProofConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir).resolve()
        self.python = sys.executable
        self.deepspeed = str(Path(sys.executable).with_name("deepspeed"))
        self.port = 29900

    # ------------------------------------------------------------------------------------------ plumbing
    def run(self, args: list[str], launcher: bool = False, log: Path | None = None) -> None:
        """A launch/ script (through the deepspeed launcher when ``launcher``); its output to ``log``."""
        if launcher:
            self.port += 1
            command = [self.deepspeed, "--num_gpus", str(self.cfg.nproc), "--master_port", str(self.port), *args]
        else:
            command = [self.python, *args]
        env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        print(f"$ {' '.join(command[1:] if not launcher else command)}", flush=True)
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if log is not None:
            log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            raise UserError(f"{args[0]} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)

    def market(self, name: str) -> Path:
        return self.work / name / "prepared"

    def ds_config(self, lr: float) -> Path:
        """ds_configs/zero2.json with this peak lr (the trainer refuses --lr against the file's explicit lr)."""
        from ds_kronos.deepspeed_json.resolve import load_ds_config

        path = self.work / f"zero2_lr{lr:g}.json"
        config = load_ds_config("ds_configs/zero2.json")
        config["optimizer"]["params"]["lr"] = lr
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    # ------------------------------------------------------------------------------------------ stages
    def markets(self) -> None:
        cfg = self.cfg
        for name, ar, seed, symbols, ranges in (
                ("source", cfg.source_ar, cfg.source_seed, cfg.source_symbols, []),
                ("target", cfg.target_ar, cfg.target_seed, cfg.target_symbols,
                 ["--train_range", cfg.target_train_range])):
            if (self.market(name) / "manifest.json").is_file():
                continue
            qlib = self.work / name / "qlib"
            self.run(["launch/make_demo_data.py", "--out", str(qlib), "--overwrite", "true", "--ar", str(ar),
                      "--seed", str(seed), "--symbols", str(symbols)])
            self.run(["launch/prepare_data.py", "--qlib_dir", str(qlib), "--instrument", "csi300", "--out",
                      str(self.market(name)), "--overwrite", "true", *ranges])

    def tokenizer(self) -> None:
        out = self.work / "tokenizer"
        if (out / "summary.json").is_file():
            return
        self.run(["launch/train_tokenizer.py", "--config", "launch/demo/train_tokenizer.yaml", "--data",
                  str(self.market("source")), "--save_dir", str(out), "--seed", str(self.cfg.seed), "--comet", "off"],
                 launcher=True, log=self.work / "tokenizer.log")

    def pretrain(self) -> None:
        out = self.work / "pretrain"
        if (out / "summary.json").is_file():
            return
        self.run(["launch/train.py", "--config", "launch/demo/train_predictor.yaml", "--data",
                  str(self.market("source")), "--tokenizer", str(self.work / "tokenizer" / "best_model"),
                  "--save_dir", str(out), "--seed", str(self.cfg.seed), "--comet", "off",
                  "--epochs", str(self.cfg.pretrain_epochs), "--eval_every", str(self.cfg.pretrain_eval_every),
                  "--val_forecast_origins", "256", "--save_every", str(self.cfg.pretrain_eval_every),
                  "--keep_last", "100"], launcher=True, log=self.work / "pretrain.log")

    def start_model(self) -> Path:
        return self.work / "pretrain" / "best_model"

    def finetune_args(self, name: str) -> list[str]:
        cfg = self.cfg
        market = "source" if name == "same_market" else "target"
        lr = {"full": cfg.full_lr, "lora": cfg.lora_lr}.get(name, cfg.high_lr)
        args = ["launch/train.py", "--deepspeed_config", str(self.ds_config(lr)), "--data", str(self.market(market)),
                "--tokenizer", str(self.work / "tokenizer" / "best_model"), "--predictor", str(self.start_model()),
                "--save_dir", str(self.work / name), "--seed", str(cfg.seed), "--epochs", str(cfg.finetune_epochs),
                "--n_train_iter", str(cfg.finetune_train_iter), "--n_val_iter", "1024", "--batch_size", "32",
                "--eval_every", str(cfg.finetune_eval_every), "--log_every", "32"]
        if name == "high_lr_by_loss":
            args += ["--select_by", "loss", "--val_forecast_origins", "64"]
        else:
            args += ["--select_by", "crps", "--patience", str(cfg.patience)]
        if name == "lora":
            args += ["--finetune", "lora", "--lora_rank", str(cfg.lora_rank), "--lora_alpha", str(2 * cfg.lora_rank)]
        return args + list(cfg.extra_train_args)

    def finetune(self) -> None:
        for name in RUNS:
            if not (self.work / name / "summary.json").is_file():
                self.run(self.finetune_args(name), launcher=True, log=self.work / f"{name}.log")

    def evaluations(self) -> list[tuple[str, str, Path, Path]]:
        """(name, market, model, reference) of every test evaluation."""
        start = self.start_model()
        return [("start_vs_itself_source", "source", start, start),
                ("high_lr", "target", self.work / "high_lr" / "best_model", start),
                ("high_lr_final", "target", self.work / "high_lr_by_loss" / "final_model", start),
                ("high_lr_by_loss", "target", self.work / "high_lr_by_loss" / "best_model", start),
                ("full", "target", self.work / "full" / "best_model", start),
                ("lora", "target", self.work / "lora" / "best_model", start),
                ("same_market", "source", self.work / "same_market" / "best_model", start)]

    def evaluate(self) -> None:
        for name, market, model, reference in self.evaluations():
            for seed in self.cfg.eval_seeds:
                out = self.work / "evaluation" / f"{name}_seed{seed}"
                if (out / "report.json").is_file():
                    continue
                self.run(["launch/evaluate.py", "--data", str(self.market(market)), "--tokenizer",
                          str(self.work / "tokenizer" / "best_model"), "--predictor", str(model),
                          "--reference_predictor", str(reference), "--sample_count", str(self.cfg.eval_paths),
                          "--seed", str(seed), "--out", str(out)], launcher=True, log=out.with_suffix(".log"))

    # ------------------------------------------------------------------------------------------ results
    def results(self) -> dict[str, Any]:
        runs = {}
        for name in RUNS:
            path = self.work / name / "summary.json"
            if not path.is_file():
                continue
            s = json.loads(path.read_text(encoding="utf-8"))
            forecast = s["history"]["forecast"]
            runs[name] = {"status": s["status"], "steps": s["steps"], "improved_on_start": s["improved_on_start"],
                          "best_step": s["selection"]["best_step"], "start_score": s["selection"]["start_score"],
                          "best_score": s["selection"]["best_score"], "metric": s["selection"]["metric"],
                          "val_crps": [[step, crps] for step, crps, _, _ in forecast],
                          "val_loss": s["history"]["val"], "random_walk_val_crps":
                          s["forecast_validation"]["random_walk_crps"] if s["forecast_validation"] else None,
                          "train_seconds": s["train_seconds"], "parameters": s["parameters"]}
        tests: dict[str, Any] = {}
        for name, market, _, _ in self.evaluations():
            for seed in self.cfg.eval_seeds:
                path = self.work / "evaluation" / f"{name}_seed{seed}" / "report.json"
                if path.is_file():
                    tests.setdefault(name, {"market": market, "seeds": []})["seeds"].append(
                        test_scores(json.loads(path.read_text(encoding="utf-8")), seed))
        return {"runs": runs, "tests": tests}


def test_scores(report: dict[str, Any], seed: int) -> dict[str, Any]:
    """CRPS (normalised close) and 80% band coverage of every row of one evaluation."""
    rows = report["probabilistic"]["rows"]
    out: dict[str, Any] = {"seed": seed, "origins": report["counts"]["origins"], "dates": report["counts"]["dates"],
                           "paths": report["probabilistic"]["paths"]}
    for row in ("model", "reference", "random_walk", "bootstrap"):
        close = rows[row]["features"]["close"]
        band = min(close["coverage"], key=lambda b: abs(b["nominal"] - 0.8)) if close["coverage"] else None
        out[row] = {"crps": close["crps"]["normalised"]["mean"], "cover80": band["inside"] if band else None}
    return out


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def table(results: dict[str, Any]) -> str:
    runs, tests = results["runs"], results["tests"]
    out = ["| run | market | stopped at / best step | val CRPS start -> best (RW) | improved_on_start | test CRPS: "
           "model | start | random walk | bootstrap | 80% band: model / start |", "|" + "---|" * 10]
    for name, test in tests.items():
        run = runs.get("high_lr_by_loss" if name == "high_lr_final" else name)
        seeds = test["seeds"]

        def col(row: str, key: str = "crps", seeds: list = seeds) -> str:
            return _spread([s[row][key] for s in seeds])

        if run is not None:
            rw = f"{run['random_walk_val_crps']:.4f}" if run["random_walk_val_crps"] else "-"
            crps = [c for _, c in run["val_crps"]]
            best = (f"{crps[0]:.4f} -> {min(crps):.4f} ({rw})" if run["metric"] != "crps" else
                    f"{run['start_score']:.4f} -> {run['best_score']:.4f} ({rw})")
            steps = f"{run['steps']} / {'final' if name == 'high_lr_final' else run['best_step']}"
            improved = str(run["improved_on_start"])
        else:
            steps, best, improved = "-", "-", "-"
        out.append(f"| {name} | {test['market']} | {steps} | {best} | {improved} | {col('model')} | "
                   f"{col('reference')} | {col('random_walk')} | {col('bootstrap')} | "
                   f"{col('model', 'cover80')} / {col('reference', 'cover80')} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_config(ProofConfig, argv)
    pipeline = Pipeline(cfg)
    if cfg.fresh:
        shutil.rmtree(pipeline.work, ignore_errors=True)
    pipeline.work.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        if stage in cfg.stages:
            getattr(pipeline, stage)()
    results = pipeline.results()
    print(table(results))
    print(json.dumps({"config": cfg.__dict__, **results}))


if __name__ == "__main__":
    run_main(main)
