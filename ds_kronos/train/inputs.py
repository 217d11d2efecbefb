"""A training run's inputs: the data (datasets, samplers, loaders and the resolved batch and schedule), the task
(the model and its loss) and the forecast validation. ds_kronos.train.build calls these in order, then builds the
DeepSpeed engine around the model (ds_kronos.train.engine.build) and the run's components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ds_kronos.config import DEFAULT_MAX_CONTEXT
from ds_kronos.data import ShardedWindowSampler, WindowDataset
from ds_kronos.data.blend import BlendedWindowDataset, SourceWindows
from ds_kronos.data.copies import check_same_copies
from ds_kronos.data.sources import OpenedSource, open_sources
from ds_kronos.deepspeed_json.resolve import BatchLayout, resolve_run
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.errors import ConfigError
from ds_kronos.forecast.sampler_file import resolve_sampler
from ds_kronos.runtime import Runtime, all_gather_objects
from ds_kronos.train.config import (
    DEFAULT_GRAD_ACCUM,
    DEFAULT_MICRO_BATCH,
    CommonTrainConfig,
    TokenizerTrainConfig,
    TrainConfig,
)
from ds_kronos.train.control.preemption import worker_init
from ds_kronos.train.tasks import PredictorTask, TokenizerTask
from ds_kronos.train.validation.forecast_validation import ForecastValidation


@dataclass
class RunData:
    """The run's data and what the DeepSpeed JSON resolved to once the data's size was known."""

    train_set: WindowDataset | BlendedWindowDataset
    val_set: WindowDataset | SourceWindows
    train_sampler: ShardedWindowSampler
    train_loader: DataLoader
    val_loader: DataLoader
    batch: BatchLayout
    ds_config: dict[str, Any]
    """The resolved DeepSpeed config (batch sizes, optimizer, scheduler filled in)."""
    steps_per_epoch: int
    total_steps: int
    epochs: int
    sources: list[dict[str, Any]]
    """Per source of ``--data``: path, weight, windows and samples per epoch (summary.json's ``sources``)."""

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch.grad_accum


def build_data(config: CommonTrainConfig, runtime: Runtime, ds_json: dict[str, Any]) -> RunData:
    """Verify the prepared data (once per node and change), open the splits and resolve the batch and schedule."""
    c, rt = config, runtime
    opened = open_sources(c.data, split=c.split_choice(), local_rank=rt.local_rank)
    for source in opened:  # each node may hold its own copy, at its own path: the same content
        check_same_copies(source.dataset, all_gather_objects)
    train_set, val_set, sources = open_splits(opened, c)

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
                   total_steps=spec.total_steps, epochs=spec.epochs, sources=sources)


def open_splits(opened: list[OpenedSource], c: CommonTrainConfig
                ) -> tuple[WindowDataset | BlendedWindowDataset, WindowDataset | SourceWindows, list[dict[str, Any]]]:
    """The training and validation datasets of the opened sources, and their description. One source is read as
    always (a WindowDataset); several are blended for training (``--n_train_iter`` caps the epoch, which otherwise
    ends where a source would repeat a window) and validated side by side (``--n_val_iter`` per source)."""
    if len(opened) == 1:
        prepared = opened[0].dataset
        train_set = WindowDataset(prepared, "train", max_samples=c.n_train_iter, seed=c.seed, clip=c.clip)
        val_set = WindowDataset(prepared, "val", max_samples=c.n_val_iter, seed=c.seed, shuffle=False, clip=c.clip)
        return train_set, val_set, [{"path": opened[0].path, "weight": 1.0, "windows": train_set.num_windows,
                                     "train_samples": len(train_set), "val_windows": val_set.num_windows,
                                     "val_samples": len(val_set)}]
    datasets, weights = [s.dataset for s in opened], [s.exact_weight for s in opened]
    train_set = BlendedWindowDataset(datasets, weights, "train", seed=c.seed, clip=c.clip)
    if len(train_set) > c.n_train_iter:
        train_set = BlendedWindowDataset(datasets, weights, "train", num_samples=c.n_train_iter, seed=c.seed,
                                         clip=c.clip)
    val_set = SourceWindows(datasets, "val", max_samples=c.n_val_iter, seed=c.seed, shuffle=False, clip=c.clip)
    sources = [{"path": s.path, **described, "val_windows": part.num_windows, "val_samples": len(part)}
               for s, described, part in zip(opened, train_set.sources(), val_set.parts)]
    return train_set, val_set, sources


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
    if not isinstance(val, WindowDataset):  # refused at config time (TrainConfig.option_problems)
        raise ConfigError("forecast validation scores origins of one source, not of a mixture")
    return ForecastValidation(val.arrays, val.lookback, val.predict, origins=config.forecast_origins(),
                              paths=config.val_paths, clip=config.clip, seed=config.seed,
                              sampler=resolve_sampler(config.predictor, None, None),
                              max_context=DEFAULT_MAX_CONTEXT,
                              pad_forwards=DeepSpeedView.of(ds_config).partitioned)
