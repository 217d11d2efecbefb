"""The sweep job: an Optuna study whose trials are ``launch/train.py`` runs.

Before the first trial: the search space is read and checked against the train config
(:mod:`ds_kronos.sweep.space`), train.py's options are checked as train.py would check them (which also verifies
the prepared data once, so every trial reuses the verdict), and the study is created or joined in its storage.
Then Optuna's own loop (``study.optimize``, with its heartbeat on database storages) runs trials until the study
holds ``--trials`` finished ones (complete or pruned): each draws its parameters, runs one launch through the
deepspeed launcher (:mod:`ds_kronos.sweep.trial_run`), reports every evaluation's selection value and is pruned
by the study's pruner. Several workers (processes, on one machine or many) share a study through its storage:
Optuna numbers the trials, so no two workers run the same one, and the count of finished and running trials
decides when each worker stops, so the study ends with ``--trials`` finished trials, not that many per worker.

A worker that is killed leaves its trial RUNNING; a worker started later marks it failed
(:mod:`ds_kronos.sweep.workers`), and the sweep goes on to ``--trials``. An interrupted trial (a worker killed, or
stopped by SIGTERM) whose folder holds a checkpoint is continued: a queued trial with its parameters runs in its
folder with ``--resume``, once no live job holds the folder; one without a checkpoint is drawn afresh. At the
end, each worker writes the table, the plots and summary.json
(:mod:`ds_kronos.sweep.report`).
"""

from __future__ import annotations

import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ds_kronos.config import parse_config
from ds_kronos.console import say
from ds_kronos.deepspeed_json.resolve import load_ds_config, options_fixed_by
from ds_kronos.errors import ConfigError, UserError
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.runtime import stream_seed
from ds_kronos.sweep import report
from ds_kronos.sweep.config import SweepConfig
from ds_kronos.sweep.space import SET_BY_THE_SWEEP, SearchSpace, command_line_value, load_space
from ds_kronos.sweep.storage import creation_lock, describe_storage, open_storage
from ds_kronos.sweep.trial_run import Outcome, run_trial, take_over, trial_command
from ds_kronos.sweep.workers import (
    CONTINUES_ATTR,
    SAVE_DIR_ATTR,
    WORKER_ATTR,
    continue_later,
    fail_lost_trials,
    this_worker,
)
from ds_kronos.train.config import TrainConfig
from ds_kronos.train.validation.selection import HIGHER_IS_BETTER

MAX_CRASHES_IN_A_ROW = 3
"""Trials of one worker in a row that end without a summary.json (the launch itself failing: a crash, memory)
before the worker gives up; a diverged trial is a result, not a crash."""
METRIC_ATTR = "metric"
TRIAL_FOLDER = "trial_{:04d}"


class TrialFailed(Exception):
    """A trial that ran and failed (its reason is in the trial's ``failure`` attribute); the sweep goes on."""


class BudgetTaken(Exception):
    """Other workers took the last trials of ``--trials`` between this worker's count and its new trial."""


def checked_train_options(space: SearchSpace, train_args: list[str], study_dir: Path) -> TrainConfig:
    """train.py's options as every trial gets them (with each swept option at its first value), checked as
    train.py checks them; the swept options must be free in train.py's options and in its DeepSpeed JSON."""
    given = {arg.split("=", 1)[0][2:] for arg in train_args if arg.startswith("--")}
    problems = [f"--{name} is set by the sweep for each trial: leave it out of train.py's options"
                for name in SET_BY_THE_SWEEP if name in given]
    problems += [f"--{name} is swept (--space) and also given after --: give it in one place"
                 for name in space.names if name in given]
    if problems:
        raise ConfigError("; ".join(problems))
    first = {d.name: d.choices[0] if d.kind == "choice" else (int(d.low) if d.kind == "int" else d.low)
             for d in space.dimensions}
    arguments = train_args + SearchSpace.arguments(first) + ["--save_dir", str(study_dir / TRIAL_FOLDER.format(0))]
    try:
        config = parse_config(TrainConfig, arguments)
    except ConfigError as exc:
        raise ConfigError(f"train.py's options (after --): {exc}") from None
    fixed = options_fixed_by(load_ds_config(config.deepspeed_config))
    clashes = [f"--{name} is swept but {config.deepspeed_config} sets {fixed[name]}, which every other value "
               f"contradicts: make it \"auto\" in a copy of the JSON" for name in space.names if name in fixed]
    if clashes:
        raise ConfigError("; ".join(clashes))
    return config


def make_sampler(kind: str, seed: int, trial_number: int):
    """The sampler of one trial, seeded by (seed, trial number)."""
    import optuna

    trial_seed = stream_seed(seed, trial_number) % 2 ** 32
    return optuna.samplers.TPESampler(seed=trial_seed) if kind == "tpe" else optuna.samplers.RandomSampler(trial_seed)


def open_study(config: SweepConfig, metric: str):
    import optuna

    pruner = (optuna.pruners.MedianPruner(n_startup_trials=config.pruner_startup_trials,
                                          n_warmup_steps=config.pruner_warmup_steps)
              if config.pruner == "median" else optuna.pruners.NopPruner())
    with creation_lock(config.storage_url):
        study = optuna.create_study(storage=open_storage(config.storage_url), study_name=config.study,
                                    sampler=make_sampler(config.sampler, config.sampler_seed, 0), pruner=pruner,
                                    direction="maximize" if HIGHER_IS_BETTER[metric] else "minimize",
                                    load_if_exists=True)
        recorded = study.user_attrs.get(METRIC_ATTR)
        if recorded is None:
            study.set_user_attr(METRIC_ATTR, metric)
    if recorded not in (None, metric):
        raise ConfigError(f"study {config.study} in {describe_storage(config.storage_url)} selects by {recorded}, "
                          f"these trials by {metric} (--select_by): use another --study")
    return study


def check_folders(study, study_dir: Path, storage: str) -> None:
    """Trial folders left by another study of the same name would mix with this one's."""
    folders = sorted(p.name for p in study_dir.glob("trial_*") if p.is_dir())
    known = {TRIAL_FOLDER.format(t.number) for t in study.get_trials(deepcopy=False)}
    strays = [name for name in folders if name not in known]
    if strays:
        raise ConfigError(f"{study_dir / strays[0]}: not a trial of study {study.study_name} in {storage} (a "
                          f"study of that name that is gone?): use another --study or --sweep_dir")


@dataclass
class Sweep:
    """One worker's share of a study."""

    config: SweepConfig
    space: SearchSpace
    train_args: list[str]
    train_script: Path
    study_dir: Path
    metric: str
    crashes_in_a_row: int = 0
    ran: list[int] = field(default_factory=list)

    def taken(self, study, below: int | None = None) -> int:
        """Trials that count towards ``--trials`` (finished or running), among those numbered below ``below``."""
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return sum(below is None or t.number < below for t in study.get_trials(deepcopy=False, states=states))

    def objective(self, trial) -> float:
        import optuna

        study = trial.study
        trial.set_user_attr(WORKER_ATTR, this_worker())  # first: a worker killed from here on is noticed
        if self.taken(study, below=trial.number) >= self.config.trials:
            trial.set_user_attr(report.FAILURE_ATTR, "not run: the last of --trials went to other workers")
            study.stop()
            raise BudgetTaken()
        study.sampler = make_sampler(self.config.sampler, self.config.sampler_seed, trial.number)
        params = self.space.suggest(trial)  # a continuation's: the interrupted trial's (queued with them)
        continues = trial.user_attrs.get(CONTINUES_ATTR)
        if continues is None:
            save_dir = self.study_dir / TRIAL_FOLDER.format(trial.number)
            save_dir.mkdir(parents=True)
        else:
            save_dir = Path(trial.user_attrs[SAVE_DIR_ATTR])
            self._take_over(trial, save_dir)
        command = trial_command(self.train_script, self.config.num_gpus, self.config.hostfile,
                                self.train_args + SearchSpace.arguments(params) + ["--save_dir", str(save_dir)]
                                + ([] if continues is None else ["--resume"]))
        trial.set_user_attr(SAVE_DIR_ATTR, str(save_dir))
        trial.set_user_attr("command", shlex.join(command))
        self.ran.append(trial.number)
        say(f"trial {trial.number}: {_describe(params)}: {save_dir}"
            + ("" if continues is None else f" (continues trial {continues} from its checkpoint)"))
        try:
            outcome = run_trial(command, save_dir, lambda step, value: _report(trial, step, value),
                                continued=continues is not None)
        except KeyboardInterrupt:  # the sweep is stopped (its launch was ended, and saved on SIGTERM)
            if continue_later(study, trial.number, params, str(save_dir)):
                trial.set_user_attr(report.FAILURE_ATTR, "interrupted: a new trial continues it from its checkpoint")
            raise
        self._record(trial, outcome)
        if outcome.pruned_at is not None:
            say(f"trial {trial.number}: pruned at step {outcome.pruned_at} ({self.metric} worse than the median of "
                f"the finished trials there); it stopped at step {outcome.steps}: {outcome.status}")
            raise optuna.TrialPruned(f"at step {outcome.pruned_at}")
        if outcome.complete and outcome.value is not None:
            say(f"trial {trial.number}: {self.metric} {outcome.value:.6g} after {outcome.steps} steps "
                f"({outcome.launch_seconds:.1f} s)")
            return outcome.value
        failure = outcome.failure(save_dir)
        trial.set_user_attr(report.FAILURE_ATTR, failure)
        if outcome.refused and continues is None:  # a continuation's refusal is its own (its checkpoint)
            raise ConfigError(f"trial {trial.number}: train.py refused its options: {failure}")
        say(f"trial {trial.number}: failed: {failure}")
        raise TrialFailed(failure)

    @staticmethod
    def _take_over(trial, save_dir: Path) -> None:
        problem = take_over(save_dir)
        if problem:
            trial.set_user_attr(report.FAILURE_ATTR, problem)
            say(f"trial {trial.number}: {problem}")
            raise TrialFailed(problem)

    @staticmethod
    def _record(trial, outcome: Outcome) -> None:
        summary = outcome.summary or {}
        for name, value in ((report.LAUNCH_ATTR, round(outcome.launch_seconds, 3)),
                            (report.STEPS_ATTR, summary.get("steps")), (report.STATUS_ATTR, summary.get("status")),
                            (report.BEST_MODEL_ATTR, summary.get("best_model")),
                            (report.PRUNED_AT_ATTR, outcome.pruned_at)):
            trial.set_user_attr(name, value)

    def after_trial(self, study, trial) -> None:
        """Optuna's callback after each trial of this worker: give up on repeated crashes, fail the trials of
        lost workers, stop when the study has its trials."""
        from optuna.trial import TrialState

        if trial.number in self.ran:
            crashed = trial.state == TrialState.FAIL and trial.user_attrs.get(report.STATUS_ATTR) is None
            self.crashes_in_a_row = self.crashes_in_a_row + 1 if crashed else 0
            if self.crashes_in_a_row >= MAX_CRASHES_IN_A_ROW:
                study.stop()
                raise UserError(f"{MAX_CRASHES_IN_A_ROW} trials in a row ended without a summary.json (last: trial "
                                f"{trial.number}: {trial.user_attrs.get(report.FAILURE_ATTR)}): see their "
                                f"{self.study_dir}/trial_*/train.log")
        fail_lost_trials(study, say)
        if self.taken(study) >= self.config.trials:
            study.stop()


def _report(trial, step: int, value: float) -> bool:
    """Hand one evaluation to Optuna; whether the pruner stops the trial there. A step reported before comes again
    when its run rolled back and trained it again: its new value replaces the undone one (Optuna's ``report`` keeps
    a step's first value, so this goes to the storage as ``report`` itself does, and to the trial's cached copy,
    which ``should_prune`` reads)."""
    if step in trial._cached_frozen_trial.intermediate_values:
        trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
        trial._cached_frozen_trial.intermediate_values[step] = value
    else:
        trial.report(value, step)
    return trial.should_prune()


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{name} {command_line_value(value)}" for name, value in params.items())


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # Optuna marks the running trial failed, and its launch is ended (trial_run)


def run_sweep(config: SweepConfig, train_args: list[str], train_script: Path) -> dict[str, Any]:
    import optuna

    started = time.perf_counter()
    study_dir = Path(config.sweep_dir) / config.study
    space = load_space(config.space)
    train = checked_train_options(space, train_args, study_dir)
    metric = train.select_by
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep says what happens, one line per event
    Path(config.sweep_dir).mkdir(parents=True, exist_ok=True)
    study = open_study(config, metric)
    storage = describe_storage(config.storage_url)
    check_folders(study, study_dir, storage)
    sweep = Sweep(config, space, train_args, train_script, study_dir, metric)
    say(f"sweep {config.study} in {storage}: {config.trials} trials of launch/train.py selected by {metric} "
        f"({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better) over {space.describe()}")
    fail_lost_trials(study, say)
    startup_seconds = time.perf_counter() - started
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if sweep.taken(study) < config.trials:
            study.optimize(sweep.objective, callbacks=[sweep.after_trial], catch=(TrialFailed, BudgetTaken),
                           gc_after_trial=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return write_report(study, sweep, storage, startup_seconds)


def write_report(study, sweep: Sweep, storage: str, startup_seconds: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    names, study_dir = sweep.space.names, sweep.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    rows = report.trial_rows(study, names)
    say(report.format_table(rows, names, sweep.metric))
    report.write_csv(study_dir / report.TABLE_NAME, rows)
    plots = report.write_plots(study, study_dir, names, sweep.metric)
    best = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value, "params": trial.params,
                "best_model": trial.user_attrs.get(report.BEST_MODEL_ATTR),
                "save_dir": trial.user_attrs.get(SAVE_DIR_ATTR)}
        say(f"best: trial {trial.number}, {sweep.metric} {trial.value:.6g} ({_describe(trial.params)}): "
            f"{best['best_model']}")
    counts = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    summary = {"study": study.study_name, "storage": storage, "metric": sweep.metric,
               "direction": study.direction.name.lower(), "trials_requested": sweep.config.trials,
               "states": {name: n for name, n in counts.items() if n}, "space": sweep.space.describe(),
               "sampler": sweep.config.sampler, "seed": sweep.config.sampler_seed, "pruner": sweep.config.pruner,
               "train_arguments": sweep.train_args, "best": best, "trials": rows,
               "sweep_seconds_per_trial": report.overhead_figures(rows),
               "worker_startup_seconds": round(startup_seconds, 3), "this_worker_ran": sweep.ran,
               "table": str(study_dir / report.TABLE_NAME), "plots": [str(study_dir / p) for p in plots]}
    write_json_atomic(study_dir / report.SUMMARY_NAME, summary)
    say(f"table {study_dir / report.TABLE_NAME}, plots {', '.join(plots) or 'none (no complete trial)'}, "
        f"summary {study_dir / report.SUMMARY_NAME}")
    return summary
