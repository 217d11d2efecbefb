"""The training jobs: data -> (frozen tokenizer) -> DeepSpeed engine -> validation -> outputs.

One trainer for both stages; the task (ds_kronos.train.tasks) decides the model and loss. Run recipe (CPU, 2
processes)::

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train_tokenizer.py --data prepared/ --tokenizer tiny \\
        --epochs 2 --batch_size 16 --save_dir runs/tok
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train.py --deepspeed_config ds_configs/zero2.json \\
        --data prepared/ --tokenizer runs/tok/best_model --predictor tiny --epochs 2 --batch_size 16 \\
        --save_dir runs/demo

Outputs in ``save_dir``: ``best_model/`` (lowest validation loss) and ``final_model/`` (last step), both in the
published folder format from the fp32 master weights, ``initial_model/`` (when training starts from a preset),
``checkpoints/`` (DeepSpeed state for ``--resume``), ``summary.json``, ``loss_curve.png`` and, with ``--comet
offline``, ``comet/``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ds_kronos.atomic import recover_folders
from ds_kronos.console import say
from ds_kronos.data import ShardedWindowSampler, WindowDataset, verify_prepared
from ds_kronos.deepspeed_json.resolve import load_ds_config, resolve_run, warmup_steps
from ds_kronos.errors import UserError
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.plan.measure import peak_rss_bytes
from ds_kronos.runtime import (
    Runtime,
    all_reduce_sum,
    barrier,
    init_runtime,
    is_collective_timeout,
    rank_seed,
    seed_everything,
    unresponsive_ranks,
)
from ds_kronos.train.compiled import compile_engine, compile_seconds
from ds_kronos.train.config import (
    DEFAULT_GRAD_ACCUM,
    DEFAULT_MICRO_BATCH,
    CommonTrainConfig,
    TokenizerTrainConfig,
    TrainConfig,
)
from ds_kronos.train.divergence import CHECK_EVERY, Diverged, DivergenceGuard
from ds_kronos.train.grad_overlap import overlap_gradient_reduction
from ds_kronos.train.masters import capture_fp32, frozen_fp32, low_precision, set_fp32_masters
from ds_kronos.train.nvme import (
    SWAP_SUBFOLDER,
    check_nvme_ready,
    fill_nvme_path,
    folder_bytes,
    remove_swap_files,
)
from ds_kronos.train.reporting import CometLogger, History, Progress
from ds_kronos.train.resume import ResumeSource, find_resume_source, load_newest
from ds_kronos.train.schedule import onecycle_factory
from ds_kronos.train.tasks import PredictorTask, TokenizerTask
from ds_kronos.train.training_state import (
    RunLayout,
    gather_fp32_state_dict,
    remove_leftovers,
    run_layout,
    save_training_state,
)
from ds_kronos.train.validation import ValidationResult, validate


@dataclass
class Position:
    """Where the run stands; saved in checkpoints so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    best_val: float = math.inf
    first_val: float | None = None
    last_val: float | None = None
    samples: int = 0
    train_seconds: float = 0.0
    history: History = field(default_factory=History)

    def to_client_state(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["history"] = self.history.to_dict()
        return state

    @classmethod
    def from_client_state(cls, state: dict[str, Any]) -> "Position":
        values = {k: v for k, v in state.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**values, "history": History.from_dict(values.get("history", {}))})


def build_task(config: CommonTrainConfig, runtime: Runtime, ds_config: dict) -> PredictorTask | TokenizerTask:
    if isinstance(config, TrainConfig):
        zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        return PredictorTask(tokenizer=config.tokenizer, predictor=config.predictor,
                             teacher_forcing=config.teacher_forcing, tokenizer_dtype=config.tokenizer_dtype,
                             device=runtime.device, activation_checkpointing=config.activation_checkpointing,
                             partition_config=ds_config if zero3 else None, rank=runtime.rank)
    if isinstance(config, TokenizerTrainConfig):
        return TokenizerTask(tokenizer=config.tokenizer, device=runtime.device)
    raise TypeError(f"no training task for {type(config).__name__}")


class Trainer:
    """Runs one training job (the task decides which model and loss) on a DeepSpeed engine."""

    def __init__(self, config: CommonTrainConfig):
        self._start = time.perf_counter()
        self.config = config
        self.ds_json = load_ds_config(config.deepspeed_config)  # fail fast, before processes wait on each other
        self.runtime: Runtime = init_runtime(config.threads, config.dist_timeout)
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        seed_everything(config.seed)  # identical preset init on every rank
        self.save_dir = Path(config.save_dir)
        self.checkpoint_dir = self.save_dir / "checkpoints"
        if self.runtime.is_main:
            for note in remove_leftovers(self.checkpoint_dir) + recover_folders(self.save_dir):
                say(f"start-up clean-up: {note}")
        self._build_data()
        self.resume_source: ResumeSource | None = (
            find_resume_source(self.checkpoint_dir, self.batch, self.runtime, say, self.ds_config)
            if config.resume else None)
        self.task = build_task(config, self.runtime, self.ds_config)
        self._model_peak_rss = peak_rss_bytes()  # building (and loading) the model, before DeepSpeed's engine
        self.model = self.task.model
        # The model is built (identically on every rank); from here each rank draws its own random numbers.
        seed_everything(rank_seed(config.seed, self.runtime.rank))
        self._build_engine()
        self._build_peak_rss = peak_rss_bytes()  # building, loading and partitioning the model: reported at the end
        self.position = Position()
        self.comet: CometLogger | None = None
        self.guard = DivergenceGuard(fp16=bool(self.ds_config.get("fp16", {}).get("enabled")))
        self._checkpointed_step = -1

    # ----------------------------------------------------------------------------------------------- set-up
    def _build_data(self) -> None:
        c, rt = self.config, self.runtime
        prepared = verify_prepared(c.data, local_rank=rt.local_rank)  # checked once per node and change
        self.train_set = WindowDataset(prepared, "train", max_samples=c.n_train_iter, seed=c.seed, clip=c.clip)
        self.val_set = WindowDataset(prepared, "val", max_samples=c.n_val_iter, seed=c.seed, shuffle=False,
                                     clip=c.clip)
        spec = resolve_run(self.ds_json, c.deepspeed_config, batch_size=c.batch_size, grad_accum=c.grad_accum,
                           world_size=rt.world_size, train_samples=len(self.train_set), epochs=c.epochs,
                           max_steps=c.max_steps, lr=c.lr, use_onecycle=c.lr_schedule == "onecycle", on_cpu=rt.on_cpu,
                           default_micro=DEFAULT_MICRO_BATCH, default_accum=DEFAULT_GRAD_ACCUM)
        self.batch, self.ds_config = spec.batch, spec.ds_config
        self.swap_dir = fill_nvme_path(self.ds_config, c.nvme_dir, c.save_dir)
        if self.swap_dir is not None:
            check_nvme_ready(self.swap_dir)
            if rt.local_rank == 0:
                freed = remove_swap_files(self.swap_dir)  # left by a killed run; before any rank writes new ones
                if freed and rt.is_main:
                    say(f"start-up clean-up: removed {freed / 2**30:.2f} GiB of stale NVMe swap files in "
                        f"{self.swap_dir}")
            barrier()
        self.steps_per_epoch, self.total_steps, self.epochs = spec.steps_per_epoch, spec.total_steps, spec.epochs
        self.train_sampler = ShardedWindowSampler(len(self.train_set), rank=rt.rank, world_size=rt.world_size,
                                                  batch_size=self.batch.micro_batch, drop_last=True)
        val_sampler = ShardedWindowSampler(len(self.val_set), rank=rt.rank, world_size=rt.world_size,
                                           batch_size=self.batch.micro_batch, drop_last=False)
        workers = c.num_workers if c.num_workers is not None else (0 if rt.on_cpu else 2)

        def loader(dataset, sampler) -> DataLoader:
            # A private generator: creating a DataLoader iterator must not consume the global torch RNG, or a
            # resumed run (which creates its iterator mid-epoch) would sample differently from an uninterrupted one.
            return DataLoader(dataset, batch_size=self.batch.micro_batch, sampler=sampler, num_workers=workers,
                              pin_memory=rt.device.type == "cuda", generator=torch.Generator())

        self.train_loader = loader(self.train_set, self.train_sampler)
        self.val_loader = loader(self.val_set, val_sampler)

    def _build_engine(self) -> None:
        import deepspeed

        c = self.config
        use_onecycle = c.lr_schedule == "onecycle"
        if self.resume_source and self.resume_source.universal:
            self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}
        max_lr = self.ds_config["optimizer"]["params"]["lr"]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # bf16/fp16 engines build their fp32 masters from the cast module: keep the exact values to restore them.
        if not low_precision(self.ds_config):
            exact, self.frozen_fp32 = {}, None
        elif self.task.partitioned:
            # Built under zero.Init: the module is already cast and partitioned. The exact values are in the
            # checkpoint file (read one tensor at a time); a preset's values are its cast init.
            weights = self.task.checkpoint_weights
            exact, self.frozen_fp32 = (weights or {}), frozen_fp32(self.model, weights)
        else:
            exact, self.frozen_fp32 = capture_fp32(self.model)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=trainable, config=self.ds_config,
            lr_scheduler=onecycle_factory(max_lr, self.total_steps) if use_onecycle else None)
        if exact and not self.resume_source:  # a resumed run loads its masters from the checkpoint
            set_fp32_masters(self.engine, exact)
        del exact
        self.task.checkpoint_weights = None  # done with the checkpoint file (if any): close it
        if not use_onecycle and getattr(self.scheduler, "last_batch_iteration", None) == -1:
            # DeepSpeed's schedulers start at iteration -1 (lr 0); step once so step 0 uses the warm-up start lr.
            self.scheduler.step()
        self.compile_backend = compile_engine(self.engine) if c.compile else None
        self.grad_reduction = (overlap_gradient_reduction(self.engine, int(c.grad_bucket_mb * 2 ** 20))
                               if c.overlap_grad_reduce else None)

    def _layout(self) -> RunLayout:
        return run_layout(self.runtime.world_size, self.batch.micro_batch, self.batch.grad_accum, self.ds_config)

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        c, rt = self.config, self.runtime
        if self.resume_source:
            self._resume(self.resume_source)
        if rt.is_main:
            self._banner()
            if c.comet != "off":
                self.comet = CometLogger(c.comet, c.comet_project, c.comet_name, self.save_dir / "comet",
                                         {**dataclasses.asdict(c), "world_size": rt.world_size})
        try:
            if self.task.random_init and self.position.step == 0 and not self.resume_source:
                # A preset starts from random weights: keep them, to compare the run with its starting point.
                self._export("initial_model")
            if c.eval_at_start and self.position.step == 0 and not self.position.history.val:
                self._validate("before training")
            status = "stopped (exit_after_steps)" if self._train() else "finished"
        except Diverged as exc:
            self._finish(f"failed: {exc}")
            raise
        summary = self._finish(status)
        if self.comet:
            self.comet.end()
        return summary

    def _resume(self, source: ResumeSource) -> None:
        rt, batch = self.runtime, self.batch
        candidate, state = load_newest(self.engine, rt, self.checkpoint_dir, source, say)
        self.position = pos = Position.from_client_state(state)
        self._checkpointed_step = pos.step
        if source.elastic:
            # The data position is kept in global samples: the same global batch continues the same sample order.
            samples_in_epoch = pos.micro_in_epoch * source.layout.micro_batch * source.layout.world_size
            pos.micro_in_epoch = samples_in_epoch // (batch.micro_batch * rt.world_size)
            seed_everything(rank_seed(self.config.seed, rt.rank, step=pos.step))  # no saved stream for new ranks
        if rt.is_main:
            how = (f"; written by {source.layout.world_size} rank(s), now {rt.world_size}"
                   + (" (DeepSpeed universal checkpoint)" if source.universal else "")) if source.elastic else ""
            say(f"resumed from step {pos.step} (epoch {pos.epoch + 1}, micro-batch {pos.micro_in_epoch}) of "
                f"{candidate.tag}{how}")

    def _banner(self) -> None:
        c, rt, batch = self.config, self.runtime, self.batch
        params = sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters())
        zero = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        precision = "bf16" if self.ds_config.get("bf16", {}).get("enabled") else (
            "fp16" if self.ds_config.get("fp16", {}).get("enabled") else "fp32")
        built = " (built partitioned: deepspeed.zero.Init)" if self.task.partitioned else ""
        offload = ", ".join(f"{key.removeprefix('offload_')}s to {section['device']}" for key, section in
                            self.ds_config.get("zero_optimization", {}).items()
                            if key.startswith("offload_") and isinstance(section, dict)
                            and section.get("device") not in (None, "none"))
        say(f"ds_kronos {self.task.kind} training: {rt.world_size} process(es) on {rt.device.type}, ZeRO-{zero}"
            f"{built}{f' ({offload})' if offload else ''}, {precision}; {self.task.description}; {params:,} "
            f"trainable-model parameters"
            + (f"; compiled (torch.compile, {self.compile_backend}: the first step and validation compile)"
               if self.compile_backend else "")
            + ("; gradient all-reduce overlapped with backward" if self.grad_reduction is not None else ""))
        say(f"data {c.data}: {self.train_set.num_windows:,} train windows ({len(self.train_set):,} per epoch), "
            f"{self.val_set.num_windows:,} val windows ({len(self.val_set):,} per evaluation); window "
            f"{self.train_set.window} bars")
        say(f"batch {batch.micro_batch} per rank x {batch.grad_accum} accumulation x {rt.world_size} ranks = "
            f"{batch.global_batch}; {self.steps_per_epoch} steps/epoch, {self.total_steps} steps over {self.epochs} "
            f"epoch(s); lr schedule {c.lr_schedule} (warm-up {warmup_steps(self.total_steps)} steps)")

    # ----------------------------------------------------------------------------------- validate and export
    def _validate(self, label: str) -> ValidationResult:
        """Validate (collective), keep the best model, report."""
        result = validate(self.engine, self.task, self.val_loader, self.runtime, self.config.seed)
        improved = self._record_validation(result)
        if improved:
            self._export("best_model")
        if self.runtime.is_main:
            self._report_validation(label, result, improved)
        return result

    def _record_validation(self, result: ValidationResult) -> bool:
        pos = self.position
        pos.last_val = result.loss
        if pos.first_val is None:
            pos.first_val = result.loss
        pos.history.val.append((pos.step, result.loss))
        improved = result.loss < pos.best_val
        if improved:
            pos.best_val = result.loss
        return improved

    def _export(self, folder: str) -> None:
        """The fp32 master weights into ``save_dir/folder`` in the published format. Collective."""
        state = gather_fp32_state_dict(self.engine, self.frozen_fp32, keep=self.runtime.is_main)
        if self.runtime.is_main:
            self.model.save_pretrained(self.save_dir / folder, state_dict=state)

    def _report_validation(self, label: str, result: ValidationResult, improved: bool) -> None:
        pos, names = self.position, self.task.names
        note = " (best so far: saved best_model/)" if improved else ""
        parts = ", ".join(f"{name.removeprefix('val_').removesuffix('_loss')} {value:.4f}"
                          for name, value in zip(names.val_components_comet, result.components))
        say(f"validation {label} at step {pos.step}: loss {result.loss:.4f} ({parts}) over {result.samples} "
            f"samples{note}")
        if self.comet:
            self.comet.log(names.val_comet, result.loss, step=pos.step, epoch=pos.epoch)
            for name, value in zip(names.val_components_comet, result.components):
                self.comet.log(name, value, step=pos.step)

    def _checkpoint(self) -> None:
        if self._checkpointed_step == self.position.step:
            return
        self._check_divergence()  # never save a diverged state over the last good one
        save_training_state(self.engine, self.runtime, self.checkpoint_dir, self.position.step,
                            self.position.to_client_state(), self.config.keep_last, self._layout())
        self._checkpointed_step = self.position.step

    # -------------------------------------------------------------------------------------------- training
    def _train(self) -> bool:
        """The epoch loop; returns True when stopped by ``exit_after_steps``."""
        c, pos, batch = self.config, self.position, self.batch
        micro_per_epoch = self.steps_per_epoch * batch.grad_accum
        self._progress = Progress(self.total_steps, self.epochs, batch.global_batch, start_step=pos.step)
        self._running = torch.zeros(len(self.task.names.labels), device=self.runtime.device)
        self._running_count = 0
        self._guard_sum = torch.zeros(2, device=self.runtime.device)  # [loss sum since the last check, first loss]
        self._guard_count = 0
        self.engine.train()
        while pos.step < self.total_steps:
            if pos.micro_in_epoch >= micro_per_epoch:
                pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0
            self.train_sampler.set_epoch(pos.epoch)
            self.train_sampler.set_start_batch(pos.micro_in_epoch)
            self._epoch_start = time.perf_counter()
            for x, stamp in self.train_loader:
                if pos.micro_in_epoch >= micro_per_epoch or pos.step >= self.total_steps:
                    break
                lr_used = self._micro_step(x, stamp)
                if pos.micro_in_epoch % batch.grad_accum:
                    continue
                pos.step += 1
                pos.samples += batch.global_batch
                end_of_epoch = pos.micro_in_epoch >= micro_per_epoch or pos.step >= self.total_steps
                self._after_step(lr_used, end_of_epoch)
                if c.exit_after_steps and pos.step == c.exit_after_steps and pos.step < self.total_steps:
                    pos.train_seconds += time.perf_counter() - self._epoch_start
                    self._checkpoint()
                    if self.runtime.is_main:
                        say(f"stopping after step {pos.step} as asked (--exit_after_steps); resume with --resume")
                    return True
            pos.train_seconds += time.perf_counter() - self._epoch_start
            pos.micro_in_epoch = max(pos.micro_in_epoch, micro_per_epoch)  # the loader is exhausted either way
        self._check_divergence()
        if not pos.history.val or pos.history.val[-1][0] != pos.step:
            self._validate("final")
        self._checkpoint()
        self._export("final_model")
        return False

    def _micro_step(self, x: torch.Tensor, stamp: torch.Tensor) -> float:
        """Forward, backward and (at accumulation boundaries) the optimizer step; returns the lr it applied."""
        losses = self.task.train_losses(self.engine, x, stamp)
        self.engine.backward(losses[0])
        if self.grad_reduction is not None:
            self.grad_reduction.finish()
        lr_used = self.engine.get_lr()[0]  # the lr this step applies (the scheduler moves on in step())
        self.engine.step()
        loss = losses[0].detach().float()
        if self._guard_count == 0 and self.guard.reference is None:
            self._guard_sum[1] = loss  # the first micro-batch, before any update: the divergence reference
        self._guard_sum[0] += loss
        self._guard_count += 1
        self._running += losses.detach().float()
        self._running_count += 1
        self.position.micro_in_epoch += 1
        return lr_used

    def _after_step(self, lr_used: float, end_of_epoch: bool) -> None:
        c, pos = self.config, self.position
        self._lr_used = lr_used
        if pos.step % c.log_every == 0 or pos.step == self.total_steps:
            self._log(lr_used)
        if pos.step % min(c.log_every, CHECK_EVERY) == 0:
            self._check_divergence()
        if (c.eval_every and pos.step % c.eval_every == 0) or end_of_epoch:
            pos.train_seconds += time.perf_counter() - self._epoch_start
            self._check_divergence()
            self._validate("end of epoch" if end_of_epoch else "periodic")
            self._epoch_start = time.perf_counter()
        if (c.save_every and pos.step % c.save_every == 0) or (end_of_epoch and not c.save_every):
            self._checkpoint()

    def _log(self, lr_used: float) -> None:
        rt, pos, names = self.runtime, self.position, self.task.names
        # The global batch's mean (every rank's share), so the logged loss does not depend on how the batch is split
        # across ranks; a host sync, at log intervals only.
        mean = (all_reduce_sum(self._running) / (self._running_count * rt.world_size)).tolist()
        self._running.zero_()
        self._running_count = 0
        pos.history.train.append((pos.step, mean[0]))
        pos.history.lr.append((pos.step, lr_used))
        if rt.is_main:
            say(self._progress.line(pos.step, pos.epoch, dict(zip(names.labels, mean)), lr_used))
            if self.comet:
                for name, value in zip(names.train_comet + (names.lr_comet,), mean + [lr_used]):
                    self.comet.log(name, value, step=pos.step)

    def _check_divergence(self) -> None:
        """Every rank reaches the same verdict from the all-reduced losses since the last check (a host sync)."""
        if not self._guard_count:
            return
        world = self.runtime.world_size
        loss_sum, first_sum = all_reduce_sum(self._guard_sum.clone()).tolist()
        self.guard.set_reference(first_sum / world)
        mean = loss_sum / (self._guard_count * world)
        self._guard_sum.zero_()
        self._guard_count = 0
        self.guard.check(self.position.step, mean, getattr(self, "_lr_used", float("nan")),
                         int(getattr(self.engine, "skipped_steps", 0)))

    # ------------------------------------------------------------------------------------------------- end
    def remove_swap_files(self) -> None:
        """This rank's NVMe swap files (no collective: a failing run cleans up too)."""
        if self.swap_dir is not None:
            remove_swap_files(self.swap_dir, self.runtime.rank, remove_dir=not self.config.nvme_dir)

    def _memory(self) -> dict[str, Any]:
        """Peak resident memory (VmHWM) of each rank after building/loading the model, after the engine's set-up
        and at the end (collective), and this node's NVMe swap files, for summary.json."""
        rt = self.runtime
        peaks = torch.zeros(3, rt.world_size, dtype=torch.float64, device=rt.device)
        peaks[:, rt.rank] = torch.tensor([self._model_peak_rss, self._build_peak_rss, peak_rss_bytes()],
                                         dtype=torch.float64)
        peaks = all_reduce_sum(peaks).tolist()
        return {"model_peak_rss_bytes": [int(v) for v in peaks[0]], "build_peak_rss_bytes": [int(v) for v in peaks[1]],
                "peak_rss_bytes": [int(v) for v in peaks[2]],
                "nvme_swap_bytes": folder_bytes(self.swap_dir / SWAP_SUBFOLDER) if self.swap_dir is not None else None}

    def _finish(self, status: str) -> dict[str, Any]:
        rt, pos = self.runtime, self.position
        best = self.save_dir / "best_model"
        final = self.save_dir / "final_model"
        summary = {
            "task": self.task.kind,
            "status": status,
            "config": dataclasses.asdict(self.config),
            "deepspeed_config": self.ds_config,
            "world_size": rt.world_size,
            "device": rt.device.type,
            "steps": pos.step,
            "total_steps": self.total_steps,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.batch.global_batch,
            "first_val_loss": pos.first_val,
            "best_val_loss": pos.best_val if math.isfinite(pos.best_val) else None,
            "final_val_loss": pos.last_val,
            "train_samples": pos.samples,
            "train_seconds": round(pos.train_seconds, 3),
            "samples_per_s": round(pos.samples / pos.train_seconds, 3) if pos.train_seconds else None,
            "wall_seconds": round(time.perf_counter() - self._start, 3),
            "compiled": bool(getattr(self.engine, "is_compiled", False)),
            "compile_seconds": round(compile_seconds(), 3) if self.compile_backend else None,
            "grad_reduce": "overlapped" if self.grad_reduction is not None else "deepspeed",
            # Only folders that exist: a run that failed or stopped early names no model it did not write.
            "best_model": str(best) if (best / "config.json").is_file() else None,
            "final_model": str(final) if status == "finished" else None,
            "last_checkpoint": self._checkpointed_step if self._checkpointed_step >= 0 else None,
            "history": pos.history.to_dict(),
            "partitioned_construction": self.task.partitioned,
            "memory": self._memory(),
        }
        if rt.is_main:
            write_json_atomic(self.save_dir / "summary.json", summary)
            pos.history.plot(self.save_dir / "loss_curve.png", f"Kronos {self.task.kind} training",
                             "mean of s1 and s2 cross-entropy" if self.task.kind == "predictor"
                             else "(recon_pre + recon_all + bsq) / 2; val: full recon MSE")
            if status in ("finished", "stopped (exit_after_steps)"):
                say(f"done: {status} at step {pos.step}; best val {summary['best_val_loss']}, final val "
                    f"{summary['final_val_loss']}; {summary['samples_per_s']} samples/s; outputs in {self.save_dir}")
        barrier()
        return summary


def run_training(config: CommonTrainConfig) -> dict[str, Any]:
    try:
        trainer = Trainer(config)
        try:
            return trainer.run()
        finally:
            trainer.remove_swap_files()
    except torch.cuda.OutOfMemoryError as exc:  # a user-fixable sizing problem
        raise UserError(f"out of GPU memory: {str(exc).splitlines()[0]} (lower --batch_size, use ZeRO-3, "
                        f"offload or --activation_checkpointing; see launch/plan.py)", rank_specific=True) from None
    except RuntimeError as exc:
        if not is_collective_timeout(exc):
            raise
        raise UserError(stalled_rank_message(config.dist_timeout), rank_specific=True) from None


def stalled_rank_message(timeout_s: float) -> str:
    """After a collective timed out on this rank: which rank(s) stopped answering."""
    import torch.distributed as tdist

    rank, world = tdist.get_rank(), tdist.get_world_size()
    missing = unresponsive_ranks(world, rank)
    who = (f"rank {', '.join(map(str, missing))}" if missing else
           "another rank (which one could not be told: rank 0, which holds the rendezvous store, did not answer)")
    return (f"{who} stopped answering: a collective waited more than --dist_timeout {timeout_s:g} s, so the job "
            f"stops (look at that process: stopped, hung, swapping or out of memory)")
