"""Building a training run: the runtime, the save_dir lock, the inputs (ds_kronos.train.inputs), the NVMe swap
folder, the checkpoint to resume from, the engine, and then the components around the loop, each with the run's
frozen context (ds_kronos.train.context) and the state it owns. The Trainer holds the run's parts and the loop, not
the recipe for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds_kronos.atomic import recover_folders
from ds_kronos.console import say
from ds_kronos.deepspeed_json.resolve import load_ds_config
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.errors import ConfigError
from ds_kronos.forecast.sampler_file import selection_sampler_writer
from ds_kronos.memory_usage import peak_rss_bytes
from ds_kronos.model.published import is_model_folder
from ds_kronos.runtime import barrier, init_runtime, rank_seed, seed_everything
from ds_kronos.train.checkpoint.checkpointer import Checkpointer
from ds_kronos.train.checkpoint.nvme import prepare_swap_folder, remove_swap_files
from ds_kronos.train.checkpoint.resume import find_resume_source
from ds_kronos.train.checkpoint.save_dir_lock import SaveDirLock, hold_save_dir
from ds_kronos.train.checkpoint.training_state import remove_leftovers, run_layout
from ds_kronos.train.config import (
    CommonTrainConfig,
    rollback_checkpoint_problem,
)
from ds_kronos.train.context import RunContext
from ds_kronos.train.control.preemption import StopRequests
from ds_kronos.train.control.rollback import ROLLBACK
from ds_kronos.train.control.run_control import RunControl
from ds_kronos.train.control.stop_file import StopFile
from ds_kronos.train.engine.build import build_engine
from ds_kronos.train.inputs import build_data, build_forecast_validation, build_task
from ds_kronos.train.observe.monitors import check_monitors
from ds_kronos.train.observe.observer import Observer
from ds_kronos.train.observe.summary import memory, summary, write_outputs
from ds_kronos.train.validation.validator import Validator


def rollback_enabled(config, steps_per_epoch: int, resuming: bool) -> bool:
    """Whether ``--on_divergence rollback`` is chosen; refuses, once the data sized the epochs (before the model is
    built), a run that could never roll back."""
    enabled = config.on_divergence == ROLLBACK
    problem = rollback_checkpoint_problem(config.save_every, config.epochs, config.max_steps, steps_per_epoch)
    if enabled and problem and not resuming:
        raise ConfigError(problem)  # what the options alone could not tell: the data sized the epochs
    return enabled


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
    built = build_engine(task, data.ds_config, data.total_steps, onecycle=config.lr_schedule == "onecycle",
                         compiled=config.compile, resuming=bool(resume_source),
                         overlap_bucket_bytes=(int(config.grad_bucket_mb * 2 ** 20) if config.overlap_grad_reduce
                                               else None),
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
