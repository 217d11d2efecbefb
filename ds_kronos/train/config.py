"""Options of the two training jobs: the predictor (``launch/train.py``) and the tokenizer
(``launch/train_tokenizer.py``). They share every option of the trainer; each adds what its model needs.

Defaults follow upstream's finetune/config.py where it has one (batch 50, 30 epochs, n_train_iter 2000 x batch,
n_val_iter 400 x batch, seed 100, clip 5). The DeepSpeed JSON owns the optimizer, precision and ZeRO settings;
options that also exist there (batch size, accumulation, lr) are "not set" (None) by default, so that an
explicit JSON value is used, an "auto" JSON value is filled from the option, and a contradiction is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_kronos.config import option, prepared_data_problems

DEFAULT_MICRO_BATCH = 50
DEFAULT_GRAD_ACCUM = 1


@dataclass(kw_only=True)
class CommonTrainConfig:
    """Options shared by both training jobs."""

    data: str = option(None, help="prepared dataset folder (launch/prepare_data.py output)")
    save_dir: str = option("runs/predictor", help="output folder: best_model/, checkpoints/, summary.json, plots")
    deepspeed_config: str = option("ds_configs/zero2.json", help="DeepSpeed JSON (ZeRO stage, optimizer, precision)")
    local_rank: int = option(-1, help="set by the deepspeed launcher")

    epochs: int = option(30, help="passes over n_train_iter samples each")
    max_steps: int = option(0, help="stop after this many optimizer steps (0: epochs decide); sets the schedule "
                                     "length")
    n_train_iter: int = option(100_000, help="training samples per epoch, over all ranks (capped by the data)")
    n_val_iter: int = option(20_000, help="validation samples per evaluation, over all ranks (capped by the data)")
    batch_size: int | None = option(None, help="micro batch per rank; default 50 unless the JSON sets it")
    grad_accum: int | None = option(None, help="gradient accumulation steps; default 1 unless the JSON sets it")
    lr: float | None = option(None, help="peak learning rate; default the JSON's (4e-5 in ds_configs/)")
    lr_schedule: str = option("config", choices=("config", "onecycle"),
                              help="'config': the scheduler in the JSON (WarmupCosineLR); 'onecycle': torch "
                                   "OneCycleLR exactly as upstream (also cycles AdamW's beta1 0.85-0.95)")
    seed: int = option(100, help="seed of model init (presets), data order and sampling")

    eval_every: int = option(0, help="also validate every K optimizer steps (0: once per epoch)")
    eval_at_start: bool = option(True, help="validate before the first step (the baseline the run must beat)")
    save_every: int = option(0, help="DeepSpeed checkpoint every N optimizer steps (0: at the end of each epoch)")
    keep_last: int = option(2, help="DeepSpeed checkpoints to keep")
    resume: bool = option(False, help="continue from save_dir/checkpoints/latest (model, optimizer, scheduler, data "
                                      "position, RNG)")
    exit_after_steps: int = option(0, help="stop this invocation after N optimizer steps with a checkpoint, as if "
                                           "preempted (for testing resume)")

    log_every: int = option(10, help="progress line every N optimizer steps")
    comet: str = option("off", choices=("off", "offline", "online"),
                        help="comet_ml logging: online needs COMET_API_KEY; offline writes an archive under "
                             "save_dir/comet")
    comet_project: str = option("kronos-finetune", help="comet project name")
    comet_name: str | None = option(None, help="comet experiment name")

    num_workers: int | None = option(None, help="DataLoader workers per rank (default: 0 on CPU, 2 on GPU)")
    threads: int | None = option(None, help="torch threads per process (default: CPU cores / local processes)")
    activation_checkpointing: bool = option(False, help="recompute transformer blocks in backward (saves memory)")
    clip: float = option(5.0, help="clip normalised features to [-clip, clip]")

    def problems(self) -> list[str]:
        problems = prepared_data_problems(self.data)
        if not self.deepspeed_config:
            problems.append("--deepspeed_config is required")
        for name in ("epochs", "n_train_iter", "n_val_iter", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "exit_after_steps"):
            if getattr(self, name) < 0:
                problems.append(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "grad_accum", "num_workers", "threads"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "num_workers" else 1):
                problems.append(f"--{name} must be positive, got {value}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if not self.clip > 0:
            problems.append(f"--clip must be > 0, got {self.clip}")
        return problems


@dataclass(kw_only=True)
class TrainConfig(CommonTrainConfig):
    """Fine-tune a Kronos predictor over a frozen tokenizer with DeepSpeed."""

    tokenizer: str = option("tiny", help="frozen tokenizer: checkpoint folder (e.g. from launch/train_tokenizer.py) "
                                         "or a preset name for a random one")
    predictor: str = option("tiny", help="predictor checkpoint folder to fine-tune, or a preset name (random init)")
    teacher_forcing: bool = option(False, help="condition the s2 head on the true s1 token instead of a sampled one")
    tokenizer_dtype: str = option("auto", choices=("auto", "fp32", "bf16", "fp16"),
                                  help="frozen tokenizer dtype: auto = fp16 on GPU (upstream: fp32; see README), "
                                       "fp32 on CPU")


@dataclass(kw_only=True)
class TokenizerTrainConfig(CommonTrainConfig):
    """Fine-tune a Kronos tokenizer with DeepSpeed (upstream's first stage)."""

    tokenizer: str = option("tiny", help="tokenizer checkpoint folder to fine-tune, or a preset name (random init)")
    save_dir: str = option("runs/tokenizer", help="output folder: best_model/, checkpoints/, summary.json, plots")
    deepspeed_config: str = option("ds_configs/tokenizer_zero2.json",
                                   help="DeepSpeed JSON (upstream's tokenizer settings: lr 2e-4, clipping 2.0)")
