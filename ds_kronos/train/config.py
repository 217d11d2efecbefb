"""Options of the two training jobs: the predictor (``launch/train.py``) and the tokenizer
(``launch/train_tokenizer.py``). They share every option of the trainer; each adds what its model needs. Options are
declared in groups (``DataOptions``, ``ScheduleOptions``, ...: :mod:`ds_kronos.option_groups`) that ``--help`` shows;
the config object a job gets is flat (``config.save_every``).

Defaults follow upstream's finetune/config.py where it has one (batch 50, 30 epochs, n_train_iter 2000 x batch,
n_val_iter 400 x batch, seed 100, clip 5). The DeepSpeed JSON owns the optimizer, precision and ZeRO settings;
options that also exist there (batch size, accumulation, lr) are "not set" (None) by default, so that an
explicit JSON value is used, an "auto" JSON value is filled from the option, and a contradiction is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_kronos.adapters import DEFAULT_LORA_TARGETS
from ds_kronos.config import ProcessOptions, option, output_dir_problems, problems_of
from ds_kronos.data.sources import data_spec_problems, parse_data_spec
from ds_kronos.data.split_choice import SplitChoice
from ds_kronos.data.verify import prepared_data_problems
from ds_kronos.errors import ConfigError
from ds_kronos.forecast.config import clip_option
from ds_kronos.option_groups import CHECKPOINTING, DATA, EVALUATION, FINETUNING, LOGGING, MODEL, PERFORMANCE, SCHEDULE
from ds_kronos.train.control.preemption import parse_signals
from ds_kronos.train.control.skipped_steps import parse_step_ranges
from ds_kronos.train.engine.finetune import DEFAULT_LORA_ALPHA, DEFAULT_LORA_RANK, FINETUNE_MODES, FinetuneSpec
from ds_kronos.train.validation.selection import SELECT_BY, Selection

DEFAULT_MICRO_BATCH = 50
DEFAULT_GRAD_ACCUM = 1
DEFAULT_FORECAST_ORIGINS = 64
"""Validation origins of --select_by crps/rank_ic (with DEFAULT_FORECAST_PATHS: see README, selection)."""
DEFAULT_FORECAST_PATHS = 8


def model_option_problems(flag: str, name: str, kind: str) -> list[str]:
    """A ``--tokenizer``/``--predictor`` value: a preset name, or a model folder whose config.json is valid
    (read now, so that a bad one is refused before any process group or model exists; the weights are checked
    when they are loaded)."""
    from ds_kronos.errors import ModelFolderError
    from ds_kronos.model.configs import (
        PREDICTOR_ALIASES,
        PREDICTOR_PRESETS,
        TOKENIZER_ALIASES,
        TOKENIZER_PRESETS,
        KronosConfig,
        KronosTokenizerConfig,
        resolve_preset,
    )
    from ds_kronos.model.published import CONFIG_NAME, names_model_folder, read_config, resolve_folder

    config_class, presets, aliases = ((KronosConfig, PREDICTOR_PRESETS, PREDICTOR_ALIASES) if kind == "predictor"
                                      else (KronosTokenizerConfig, TOKENIZER_PRESETS, TOKENIZER_ALIASES))
    try:
        if names_model_folder(name):
            folder = resolve_folder(name)
            config_class.from_dict(read_config(folder), source=str(folder / CONFIG_NAME))
        else:
            resolve_preset(name, presets, aliases, kind)
    except ModelFolderError as exc:
        return [f"--{flag}: {exc}"]
    return []


def ds_config_file_problems(path: str | None) -> list[str]:
    """The DeepSpeed JSON, read and checked now (ds_kronos.deepspeed_json.checks), not by every rank later."""
    from ds_kronos.deepspeed_json.resolve import load_ds_config

    return problems_of(lambda: load_ds_config(path or ""))


def rollback_checkpoint_problem(save_every: int, epochs: int, max_steps: int,
                                steps_per_epoch: int | None = None) -> str | None:
    """Why ``--on_divergence rollback`` would never have a checkpoint to go back to: the first one (every
    ``--save_every`` steps, else at the end of each epoch) would come no earlier than the run's last step. Before the
    data sizes the run (``steps_per_epoch`` None) only the cases the options alone decide are found."""
    total = max_steps or (epochs * steps_per_epoch if steps_per_epoch else None)
    if save_every:
        late, when = total is not None and save_every >= total, f"every {save_every} steps (--save_every)"
    else:
        late = (epochs == 1 and not max_steps) or (steps_per_epoch is not None and steps_per_epoch >= total)
        when = "at the end of each epoch (--save_every 0)"
    if not late:
        return None
    last = f" (step {total})" if total else ""
    return (f"--on_divergence rollback: no checkpoint would be written before the run's last step{last}, as "
            f"checkpoints come {when}, so there would be nothing to roll back to: give a smaller --save_every")


@dataclass(kw_only=True)
class DataOptions:
    """What the run reads: the prepared dataset and how much of it each epoch and evaluation sees."""

    GROUP = DATA

    data: str = option(None, help="prepared dataset folder or store (launch/prepare_data.py output), or a mixture "
                                  "of several as PATH:WEIGHT,PATH:WEIGHT (docs/data_format.md, 'Mixtures')")
    n_train_iter: int = option(100_000, help="training samples per epoch, over all ranks (capped by the data)", ge=1)
    n_val_iter: int = option(20_000, ge=1,
                             help="validation samples per evaluation, over all ranks (capped by the data; per "
                                  "source with a mixture)")
    clip: float = clip_option(help="clip normalised features to [-clip, clip]")
    train_range: str | None = option(None, help="a store's train split as START,END dates, instead of the one it was "
                                                "prepared with (no re-preparation)")
    val_range: str | None = option(None, help="a store's validation split as START,END dates")
    test_range: str | None = option(None, help="a store's test split as START,END dates")

    def split_choice(self) -> SplitChoice | None:
        """The split the job asks its stores for (None: each store's default)."""
        return SplitChoice.from_options(train_range=self.train_range, val_range=self.val_range,
                                        test_range=self.test_range)

    def data_problems(self) -> list[str]:
        """``--data`` and the ranges: one path as always, or every source of a mixture opened, verified and
        agreeing with the others (one line for the first problem)."""
        try:
            split = self.split_choice()
            plain = not self.data or (split is None and parse_data_spec(self.data)[0].weight is None
                                      and self.source_count() == 1)
        except ConfigError as exc:
            return [str(exc)]
        return prepared_data_problems(self.data) if plain else data_spec_problems(self.data, split)

    def source_count(self) -> int:
        """How many sources ``--data`` names (0 when it names none or cannot be read)."""
        try:
            return len(parse_data_spec(self.data or ""))
        except ConfigError:
            return 0


@dataclass(kw_only=True)
class ScheduleOptions:
    """How long the run trains, in what batches, at what learning rate (the DeepSpeed JSON owns the optimizer)."""

    GROUP = SCHEDULE

    deepspeed_config: str = option("ds_configs/zero2.json", help="DeepSpeed JSON (ZeRO stage, optimizer, precision)")
    epochs: int = option(30, help="passes over n_train_iter samples each", ge=1)
    max_steps: int = option(0, help="stop after this many optimizer steps (0: epochs decide); sets the schedule "
                                     "length", ge=0)
    batch_size: int | None = option(None, help="micro batch per rank; default 50 unless the JSON sets it", ge=1)
    grad_accum: int | None = option(None, help="gradient accumulation steps; default 1 unless the JSON sets it", ge=1)
    lr: float | None = option(None, help="peak learning rate; default the JSON's (4e-5 in ds_configs/)", gt=0)
    lr_schedule: str = option("config", choices=("config", "onecycle"),
                              help="'config': the scheduler in the JSON (WarmupCosineLR); 'onecycle': torch "
                                   "OneCycleLR exactly as upstream (also cycles AdamW's beta1 0.85-0.95)")
    seed: int = option(100, help="seed of model init (presets), data order and sampling")


@dataclass(kw_only=True)
class EvaluationOptions:
    """When the run validates, and when it stops early."""

    GROUP = EVALUATION

    eval_every: int = option(0, help="also validate every K optimizer steps (0: once per epoch)", ge=0)
    eval_at_start: bool = option(True, help="validate before the first step: the start model is then a candidate "
                                            "for best_model/ like any evaluation")
    patience: int = option(0, help="stop after K evaluations in a row without improvement of the selection metric "
                                   "(0: never stop early)", ge=0)
    min_delta: float = option(0.0, help="an evaluation improves on the best only by more than this (in the "
                                        "selection metric's units)", ge=0)


@dataclass(kw_only=True)
class CheckpointOptions:
    """What the run writes and how it survives preemption and divergence."""

    GROUP = CHECKPOINTING

    save_dir: str = option("runs/predictor", help="output folder: best_model/, checkpoints/, summary.json, plots")
    save_every: int = option(0, help="DeepSpeed checkpoint every N optimizer steps (0: at the end of each epoch)", ge=0)
    keep_last: int = option(2, help="DeepSpeed checkpoints to keep", ge=1)
    resume: bool = option(False, help="continue from save_dir/checkpoints/latest (model, optimizer, scheduler, data "
                                      "position, RNG); with no checkpoint there yet, start from scratch")
    exit_after_steps: int = option(0, help="stop this invocation after N optimizer steps with a checkpoint, as if "
                                           "preempted (for testing resume)", ge=0)
    save_on_signal: list[str] = option(default_factory=lambda: ["TERM", "USR1"],
                                       help="signals on which every rank saves a checkpoint at the end of the current "
                                            "step and the job exits with code 75 (continue with --resume); any of "
                                            "TERM, USR1, USR2, INT, HUP, XCPU, or none (default: TERM,USR1)")
    on_divergence: str = option("stop", choices=("stop", "rollback"),
                                help="when the loss diverges (non-finite, or over 10x the first): stop the run (exit "
                                     "2), or roll back to the last checkpoint, skip the steps since the last good "
                                     "check and go on (docs/reliability.md#divergence)")
    rollback_lr_factor: float = option(1.0, gt=0, le=1, help="--on_divergence rollback: from each roll-back on, the "
                                       "lr schedule's value times this (0.5: half after the first, a quarter after "
                                       "the second)")
    max_rollbacks: int = option(3, ge=0, help="--on_divergence rollback: roll-backs per run; a divergence after that "
                                              "many stops the run as with --on_divergence stop")
    skip_steps: list[str] = option(default_factory=list,
                                   help="optimizer steps to pass over untrained, their data unused, e.g. 7 or "
                                        "5-8,20-21 (counted from 1, as in the log): reproduces a roll-back's skip from "
                                        "the start")


@dataclass(kw_only=True)
class LoggingOptions:
    """The progress line and the experiment trackers."""

    GROUP = LOGGING

    log_every: int = option(10, help="progress line every N optimizer steps", ge=1)
    peak_tflops: float | None = option(None, gt=0, help="peak dense TFLOP/s of one device, for the MFU in the log "
                                       "(default: the datasheet figure of a known GPU at the run's precision; on "
                                       "CPU none, MFU n/a)")
    comet: str = option("off", choices=("off", "offline", "online"),
                        help="comet_ml logging: online needs COMET_API_KEY; offline writes an archive under "
                             "save_dir/comet")
    comet_project: str = option("kronos-finetune", help="comet project name")
    comet_name: str | None = option(None, help="comet experiment name")


@dataclass(kw_only=True)
class PerformanceOptions:
    """Speed and memory: the same arithmetic, computed differently."""

    GROUP = PERFORMANCE

    num_workers: int | None = option(None, help="DataLoader workers per rank (default: 0 on CPU, 2 on GPU)", ge=0)
    activation_checkpointing: bool = option(False, help="recompute transformer blocks in backward (saves memory)")
    compile: bool = option(False, help="compile the model with DeepSpeed's engine.compile (torch.compile, the "
                           "accelerator's backend) before the first step")
    overlap_grad_reduce: bool = option(False, help="at ZeRO-0, start each bucket's gradient all-reduce during "
                                       "backward, as torch DDP does, instead of DeepSpeed's one all-reduce after it "
                                       "(same arithmetic; no effect at ZeRO-1/2/3, with BF16_Optimizer or one rank; "
                                       "off by default until measured on GPUs: docs/performance.md)")
    grad_bucket_mb: float = option(25.0, help="gradient MiB per all-reduce with --overlap_grad_reduce (torch DDP's "
                                   "bucket_cap_mb default)", gt=0)
    nvme_dir: str | None = option(None, help="folder for ZeRO-Infinity's NVMe swap files when the JSON offloads to "
                                  "\"nvme\" (default: save_dir/nvme_swap; removed at the end of the run)")


@dataclass(kw_only=True)
class CommonTrainConfig(PerformanceOptions, LoggingOptions, CheckpointOptions, EvaluationOptions, ScheduleOptions,
                        DataOptions, ProcessOptions):
    """Options shared by both training jobs (one flat config object; the groups are what --help shows)."""

    def selection(self) -> Selection:
        """How best_model/ is chosen and when the run stops early (ds_kronos.train.validation.selection)."""
        return Selection("loss", self.patience, self.min_delta)

    def trained(self) -> str:
        """What the run trains, as recorded in its checkpoints (a resume must train the same)."""
        return FinetuneSpec().signature()

    def problems(self) -> list[str]:
        problems = self.option_problems()
        if problems:
            return problems  # the checks below import DeepSpeed and torch: worth it only for otherwise valid options
        return ds_config_file_problems(self.deepspeed_config) + self.model_problems()

    def model_problems(self) -> list[str]:
        """Problems of the model folders or preset names the job starts from."""
        return []

    def option_problems(self) -> list[str]:
        """The checks that need neither DeepSpeed nor torch."""
        return (self.data_problems() + output_dir_problems("--save_dir", self.save_dir)
                + problems_of(lambda: parse_signals(self.save_on_signal))
                + problems_of(lambda: parse_step_ranges(self.skip_steps))
                + self.rollback_problems())

    def rollback_problems(self) -> list[str]:
        if self.on_divergence != "rollback":
            return [] if self.rollback_lr_factor == 1.0 else [
                f"--rollback_lr_factor {self.rollback_lr_factor:g} applies to roll-backs: add --on_divergence rollback"]
        if self.max_rollbacks == 0:
            return ["--on_divergence rollback with --max_rollbacks 0 would never roll back: give 1 or more (or "
                    "--on_divergence stop)"]
        problem = rollback_checkpoint_problem(self.save_every, self.epochs, self.max_steps)
        return [problem] if problem else []


@dataclass(kw_only=True)
class PredictorModelOptions:
    """The predictor job's models: the frozen tokenizer and the predictor it fine-tunes."""

    GROUP = MODEL

    tokenizer: str = option("tiny", help="frozen tokenizer: model folder (e.g. from launch/train_tokenizer.py) "
                                         "or a preset name for a random one")
    predictor: str = option("tiny", help="predictor model folder to fine-tune, or a preset name (random init)")
    teacher_forcing: bool = option(False, help="condition the s2 head on the true s1 token instead of a sampled one")
    tokenizer_dtype: str = option("auto", choices=("auto", "fp32", "bf16", "fp16"),
                                  help="frozen tokenizer dtype: auto = fp16 on GPU (upstream: fp32; see README), "
                                       "fp32 on CPU")


@dataclass(kw_only=True)
class ForecastSelectionOptions:
    """Selecting best_model/ by sampled forecasts of validation origins (ds_kronos.train.validation.selection)."""

    GROUP = EVALUATION

    select_by: str = option("loss", choices=SELECT_BY,
                            help="what picks best_model/ (and drives --patience): the validation token loss, or "
                                 "the sampled forecasts of fixed validation origins: crps (lower is better) or "
                                 "rank_ic (higher is better)")
    val_forecast_origins: int | None = option(
        None, ge=0, help="validation origins forecast at every evaluation (default: "
                         f"{DEFAULT_FORECAST_ORIGINS} with --select_by crps/rank_ic, 0 = none with loss; set it "
                         "with loss to report forecast scores without selecting by them)")
    val_paths: int = option(DEFAULT_FORECAST_PATHS, ge=1, help="sampled paths per validation origin")
    beat_start_p: float = option(0.05, gt=0, le=1,
                                 help="--select_by crps/rank_ic: a trained model replaces the start model only if "
                                      "its per-date improvement on the validation origins is significant at this "
                                      "one-sided p-value (paired Newey-West t-test); 1 = any improvement")


@dataclass(kw_only=True)
class FinetuneOptions:
    """What is trained (ds_kronos.train.engine.finetune)."""

    GROUP = FINETUNING

    finetune: str = option("full", choices=FINETUNE_MODES,
                           help="full: every parameter; lora: low-rank adapters (peft) on --lora_targets, the "
                                "predictor frozen; freeze: every parameter but those --freeze names")
    lora_rank: int = option(DEFAULT_LORA_RANK, ge=1, help="--finetune lora: rank r of each adapter (B A, r x in "
                            "and out x r)")
    lora_alpha: float = option(DEFAULT_LORA_ALPHA, gt=0, help="--finetune lora: the adapter's output is scaled by "
                               "alpha / rank")
    lora_dropout: float = option(0.0, ge=0, lt=1, help="--finetune lora: dropout on the adapters' input")
    lora_targets: list[str] = option(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        help="--finetune lora: modules to adapt, by the last part of their name (peft's target_modules): default "
             "the attention projections (self- and cross-attention) and the feed-forward of every block")
    freeze: list[str] = option(
        default_factory=list, help="--finetune freeze: globs over parameter names (as in model.safetensors) to "
        "freeze; '!GLOB' exempts, the last match wins. e.g. 'embedding.*,time_emb.*' (embeddings), "
        "'transformer.[0-3].*' (blocks 0-3), '*,!head.*' (heads only)")


@dataclass(kw_only=True)
class TrainConfig(PredictorModelOptions, ForecastSelectionOptions, FinetuneOptions, CommonTrainConfig):
    """Fine-tune a Kronos predictor over a frozen tokenizer with DeepSpeed."""

    def selection(self) -> Selection:
        return Selection(self.select_by, self.patience, self.min_delta, self.beat_start_p)

    def trained(self) -> str:
        return self.finetune_spec().signature()

    def finetune_spec(self) -> FinetuneSpec:
        return FinetuneSpec(mode=self.finetune, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                            lora_dropout=self.lora_dropout, lora_targets=tuple(self.lora_targets),
                            freeze=tuple(self.freeze))

    def forecast_origins(self) -> int:
        """Origins of the forecast validation (0: none)."""
        if self.val_forecast_origins is not None:
            return self.val_forecast_origins
        return DEFAULT_FORECAST_ORIGINS if self.select_by != "loss" else 0

    def option_problems(self) -> list[str]:
        problems = super().option_problems()
        if self.select_by != "loss" and self.forecast_origins() == 0:
            problems.append(f"--select_by {self.select_by} scores forecasts of validation origins: "
                            f"--val_forecast_origins must be 1 or more")
        if self.forecast_origins() and self.source_count() > 1:
            problems.append(f"--select_by {self.select_by} / --val_forecast_origins: forecast validation scores "
                            f"origins of one source; with several --data sources select by loss (the per-source "
                            f"losses are reported) and give --val_forecast_origins 0")
        if self.select_by == "crps" and self.val_paths < 2:
            problems.append(f"--select_by crps needs --val_paths 2 or more (the CRPS scores a distribution of "
                            f"sampled paths; one path is a point forecast), got {self.val_paths}")
        return problems + self.finetune_spec().option_problems()

    def model_problems(self) -> list[str]:
        from ds_kronos.train.engine.finetune import finetune_problems

        problems = (model_option_problems("tokenizer", self.tokenizer, "tokenizer")
                    + model_option_problems("predictor", self.predictor, "predictor"))
        return problems or finetune_problems(self.finetune_spec(), self.predictor)


@dataclass(kw_only=True)
class TokenizerModelOptions:
    """The tokenizer job's model."""

    GROUP = MODEL

    tokenizer: str = option("tiny", help="tokenizer model folder to fine-tune, or a preset name (random init)")


@dataclass(kw_only=True)
class TokenizerTrainConfig(TokenizerModelOptions, CommonTrainConfig):
    """Fine-tune a Kronos tokenizer with DeepSpeed (upstream's first stage)."""

    save_dir: str = option("runs/tokenizer", help="output folder: best_model/, checkpoints/, summary.json, plots")
    deepspeed_config: str = option("ds_configs/tokenizer_zero2.json",
                                   help="DeepSpeed JSON (upstream's tokenizer settings: lr 2e-4, clipping 2.0)")

    def model_problems(self) -> list[str]:
        return model_option_problems("tokenizer", self.tokenizer, "tokenizer")
