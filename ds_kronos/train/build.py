"""Building a training run's inputs: the data (datasets, samplers, loaders and the resolved batch and schedule),
the task (the model and its loss) and the forecast validation. The DeepSpeed engine around the model is built by
ds_kronos.train.engine.build.

The Trainer calls these in order; each returns what it built, so the Trainer holds the run's parts and the loop,
not the recipe for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ds_kronos.atomic import recover_folders
from ds_kronos.config import DEFAULT_MAX_CONTEXT
from ds_kronos.console import say
from ds_kronos.data import ShardedWindowSampler, WindowDataset, verify_prepared
from ds_kronos.deepspeed_json.resolve import BatchLayout, load_ds_config, resolve_run
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.forecast.sampler_file import resolve_sampler, selection_sampler_writer
from ds_kronos.memory_usage import peak_rss_bytes
from ds_kronos.model.published import is_model_folder
from ds_kronos.runtime import Runtime, barrier, init_runtime, rank_seed, seed_everything
from ds_kronos.train.checkpoint.checkpointer import Checkpointer
from ds_kronos.train.checkpoint.nvme import prepare_swap_folder, remove_swap_files
from ds_kronos.train.checkpoint.resume import find_resume_source
from ds_kronos.train.checkpoint.save_dir_lock import SaveDirLock, hold_save_dir
from ds_kronos.train.checkpoint.training_state import remove_leftovers, run_layout
from ds_kronos.train.config import (
    DEFAULT_GRAD_ACCUM,
    DEFAULT_MICRO_BATCH,
    CommonTrainConfig,
    TokenizerTrainConfig,
    TrainConfig,
)
from ds_kronos.train.context import RunContext
from ds_kronos.train.control.preemption import StopRequests, worker_init
from ds_kronos.train.control.rollback import rollback_enabled
from ds_kronos.train.control.run_control import RunControl
from ds_kronos.train.control.stop_file import StopFile
from ds_kronos.train.engine.build import build_engine
from ds_kronos.train.observe.monitors import check_monitors
from ds_kronos.train.observe.observer import Observer
from ds_kronos.train.observe.summary import memory, summary, write_outputs
from ds_kronos.train.tasks import PredictorTask, TokenizerTask
from ds_kronos.train.validation.forecast_validation import ForecastValidation
from ds_kronos.train.validation.validator import Validator


@dataclass
class RunData:
    """The run's data and what the DeepSpeed JSON resolved to once the data's size was known."""

    train_set: WindowDataset
    val_set: WindowDataset
    train_sampler: ShardedWindowSampler
    train_loader: DataLoader
    val_loader: DataLoader
    batch: BatchLayout
    ds_config: dict[str, Any]
    """The resolved DeepSpeed config (batch sizes, optimizer, scheduler filled in)."""
    steps_per_epoch: int
    total_steps: int
    epochs: int

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch.grad_accum


def build_data(config: CommonTrainConfig, runtime: Runtime, ds_json: dict[str, Any]) -> RunData:
    """Verify the prepared data (once per node and change), open the splits and resolve the batch and schedule."""
    c, rt = config, runtime
    prepared = verify_prepared(c.data, local_rank=rt.local_rank)
    train_set = WindowDataset(prepared, "train", max_samples=c.n_train_iter, seed=c.seed, clip=c.clip)
    val_set = WindowDataset(prepared, "val", max_samples=c.n_val_iter, seed=c.seed, shuffle=False, clip=c.clip)

    def micro_batches_per_epoch(micro_batch: int) -> int:
        # How the sampler deals an epoch to the ranks decides the steps in it.
        return ShardedWindowSampler(len(train_set), world_size=rt.world_size, batch_size=micro_batch,
                                    drop_last=True).batches_per_epoch()

    spec = resolve_run(ds_json, c.deepspeed_config, batch_size=c.batch_size, grad_accum=c.grad_accum,
                       world_size=rt.world_size, micro_batches_per_epoch=micro_batches_per_epoch, epochs=c.epochs,
                       max_steps=c.max_steps, lr=c.lr, use_onecycle=c.lr_schedule == "onecycle", on_cpu=rt.on_cpu,
                       default_micro=DEFAULT_MICRO_BATCH, default_accum=DEFAULT_GRAD_ACCUM)
    micro = spec.batch.micro_batch
    train_sampler = ShardedWindowSampler(len(train_set), rank=rt.rank, world_size=rt.world_size, batch_size=micro,
                                         drop_last=True)
    val_sampler = ShardedWindowSampler(len(val_set), rank=rt.rank, world_size=rt.world_size, batch_size=micro,
                                       drop_last=False)
    workers = c.num_workers if c.num_workers is not None else (0 if rt.on_cpu else 2)

    def loader(dataset: WindowDataset, sampler: ShardedWindowSampler) -> DataLoader:
        # A private generator: creating a DataLoader iterator must not consume the global torch RNG, or a resumed
        # run (which creates its iterator mid-epoch) would sample differently from an uninterrupted one.
        return DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=workers,
                          pin_memory=rt.device.type == "cuda", generator=torch.Generator(),
                          worker_init_fn=worker_init(c.save_on_signal))  # they outlive a preemption signal

    return RunData(train_set=train_set, val_set=val_set, train_sampler=train_sampler,
                   train_loader=loader(train_set, train_sampler), val_loader=loader(val_set, val_sampler),
                   batch=spec.batch, ds_config=spec.ds_config, steps_per_epoch=spec.steps_per_epoch,
                   total_steps=spec.total_steps, epochs=spec.epochs)


def build_task(config: CommonTrainConfig, runtime: Runtime, ds_config: dict[str, Any]
               ) -> PredictorTask | TokenizerTask:
    """The job's model and loss; a ZeRO-3 run builds the predictor partitioned."""
    if isinstance(config, TrainConfig):
        return PredictorTask(tokenizer=config.tokenizer, predictor=config.predictor,
                             teacher_forcing=config.teacher_forcing, tokenizer_dtype=config.tokenizer_dtype,
                             device=runtime.device, activation_checkpointing=config.activation_checkpointing,
                             partition_config=ds_config if DeepSpeedView.of(ds_config).partitioned else None,
                             rank=runtime.rank, finetune=config.finetune_spec())
    if isinstance(config, TokenizerTrainConfig):
        return TokenizerTask(tokenizer=config.tokenizer, device=runtime.device)
    raise TypeError(f"no training task for {type(config).__name__}")


def build_forecast_validation(config: CommonTrainConfig, data: RunData, task: PredictorTask | TokenizerTask,
                              ds_config: dict[str, Any]) -> ForecastValidation | None:
    """The fixed validation origins scored by forecast at every evaluation, or None (the tokenizer job; the
    predictor with ``--select_by loss`` and no ``--val_forecast_origins``)."""
    if not isinstance(config, TrainConfig) or config.forecast_origins() == 0:
        return None
    val = data.val_set
    return ForecastValidation(val.arrays, val.lookback, val.predict, origins=config.forecast_origins(),
                              paths=config.val_paths, clip=config.clip, seed=config.seed,
                              sampler=resolve_sampler(config.predictor, None, None),
                              max_context=DEFAULT_MAX_CONTEXT,
                              pad_forwards=DeepSpeedView.of(ds_config).partitioned)


@dataclass
class Run:
    """A built run: its context and components, and what its end reports or cleans up."""

    context: RunContext
    control: RunControl
    checkpoints: Checkpointer
    validator: Validator
    observer: Observer
    model_peak_rss: int
    """Peak resident memory after building (and loading) the model, before DeepSpeed's engine."""
    build_peak_rss: int
    """... and after the engine's set-up (building, loading and partitioning the model)."""
    swap_dir: Path | None
    removes_swap_dir: bool
    save_dir_lock: SaveDirLock | None

    def finish(self, position, status: str, started: float) -> dict[str, Any]:
        """summary.json (ds_kronos.train.observe.summary) and the loss curve (rank 0); returns the summary.
        Collective (the memory figures and a barrier). ``started``: the run's perf_counter at start."""
        progress, rt = self.observer.progress, self.context.runtime
        figures = memory(rt, self.model_peak_rss, self.build_peak_rss, self.swap_dir)
        result = summary(self.context, position, status, started=started,
                         efficiency=progress.efficiency if progress else None, selection=self.validator.selection,
                         forecasts=self.validator.forecasts, last_checkpoint=self.checkpoints.last_step,
                         skipped=self.control.skips.ranges, memory_figures=figures)
        if rt.is_main:
            write_outputs(self.context, position, self.validator.selection, result)
        barrier()
        return result

    def remove_swap_files(self) -> None:
        """This rank's NVMe swap files (no collective: a failing run cleans up too)."""
        if self.swap_dir is not None:
            remove_swap_files(self.swap_dir, self.context.runtime.rank, remove_dir=self.removes_swap_dir)


def build_run(config: CommonTrainConfig, stops: StopRequests) -> Run:
    """Everything a training run needs, in order: the runtime, the save_dir lock and start-up clean-up, the data,
    the NVMe swap folder, the checkpoint to resume from, the task, the engine; then the components."""
    ds_json = load_ds_config(config.deepspeed_config)  # fail fast, before processes wait on each other
    check_monitors(ds_json, config.deepspeed_config, config.comet)
    rt = init_runtime(config.threads, config.dist_timeout)
    save_dir = Path(config.save_dir)
    save_dir_lock = hold_save_dir(save_dir, rt)  # before anything touches save_dir
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    seed_everything(config.seed)  # identical preset init on every rank
    stop_file = StopFile(save_dir, rt.is_main)
    if rt.is_main:
        for note in remove_leftovers(save_dir / "checkpoints") + recover_folders(save_dir, is_model_folder):
            say(f"start-up clean-up: {note}")
    data = build_data(config, rt, ds_json)
    layout = run_layout(data.batch, data.ds_config, config.trained())  # recorded in each checkpoint
    swap_dir, removes_swap_dir = prepare_swap_folder(data.ds_config, config.nvme_dir, config.save_dir, rt)
    resume_source = (find_resume_source(save_dir / "checkpoints", data.batch, rt, say, data.ds_config,
                                        config.trained()) if config.resume else None)
    rollback_enabled(config, data.steps_per_epoch, resuming=bool(resume_source))  # refuses a run that never could
    task = build_task(config, rt, data.ds_config)
    model_peak_rss = peak_rss_bytes()
    forecasts = build_forecast_validation(config, data, task, data.ds_config)
    # The model is built (identically on every rank); from here each rank draws its own random numbers.
    seed_everything(rank_seed(config.seed, rt.rank))
    built = build_engine(config, task, data.ds_config, data.total_steps, resuming=bool(resume_source),
                         universal=bool(resume_source and resume_source.universal))
    context = RunContext(config=config, runtime=rt, data=data, task=task, ds_view=DeepSpeedView.of(data.ds_config),
                         built=built, save_dir=save_dir)
    control = RunControl(context, stops, stop_file)
    # Exports carry the sampler settings their forecasts were scored with (None: no forecast validation).
    export_extra = None if forecasts is None else selection_sampler_writer(forecasts.sampler)
    checkpoints = Checkpointer(context, resume_source, layout, export_extra, before_save=control.check)
    validator = Validator(context, forecasts)
    return Run(context, control, checkpoints, validator, Observer(context, validator.selection.metric, forecasts),
               model_peak_rss, peak_rss_bytes(), swap_dir, removes_swap_dir, save_dir_lock)
