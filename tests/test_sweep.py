"""Hyper-parameter sweeps without processes (issue 25): the search space and its checks against the train config,
the sweep's one-line errors, the trainer's metrics.jsonl and stop file, the workers' bookkeeping (lost workers,
the --trials budget), the storages and the report. The sweeps with real trials are in tests/test_sweep_runs.py."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import torch

from ds_kronos.config import parse_config
from ds_kronos.errors import ConfigError
from ds_kronos.sweep import report
from ds_kronos.sweep.config import SweepConfig
from ds_kronos.sweep.job import BudgetTaken, Sweep, _report, make_sampler
from ds_kronos.sweep.space import load_space
from ds_kronos.sweep.storage import creation_lock, describe_storage, open_storage, storage_problems
from ds_kronos.sweep.trial_run import MetricsFollower, Outcome, take_over
from ds_kronos.sweep.workers import CONTINUES_ATTR, fail_lost_trials, this_worker
from ds_kronos.train.config import TrainConfig
from ds_kronos.train.control.stop_file import STOP_NAME, StopFile
from ds_kronos.train.observe import metrics_log
from ds_kronos.train.position import Position
from helpers import REPO, forked_holder, run_in_process

optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = """
lr: {low: 1.0e-5, high: 1.0e-2, log: true}
max_steps: {low: 10, high: 50, step: 20}
lora_dropout: {low: 0, high: 0.3}
finetune: [full, lora]
teacher_forcing: {choices: [true, false]}
lora_targets: ["q_proj,v_proj", w1]
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_drawn_values_lie_in_the_space_and_pass_train_py_s_own_checks(tmp_path, demo_prepared_dir):
    space = load_space(write(tmp_path, SPACE))
    study = optuna.create_study()
    for number in range(12):
        trial = study.ask()
        study.sampler = make_sampler("tpe", 0, number)
        params = space.suggest(trial)
        study.tell(trial, 1.0)
        assert 1e-5 <= params["lr"] <= 1e-2 and params["max_steps"] in (10, 30, 50)
        assert 0 <= params["lora_dropout"] <= 0.3 and params["teacher_forcing"] in (True, False)
        config = parse_config(TrainConfig, ["--data", str(demo_prepared_dir), *space.arguments(params)])  # a trial's
        assert config.lr == params["lr"] and config.teacher_forcing is params["teacher_forcing"]
        assert config.lora_targets == params["lora_targets"].split(",")
    assert space.describe().startswith("lr in [1e-05, 0.01, log]; max_steps in [10, 50, step 20]")


def test_each_trial_draws_from_its_own_seed():
    """Trial k's draws depend on (seed, k) only: two workers never draw the same start, one worker repeats."""
    def draws(seed: int, numbers) -> list[float]:
        values = []
        for number in numbers:
            study = optuna.create_study(sampler=make_sampler("random", seed, number))
            values.append(study.ask().suggest_float("lr", 0, 1))
        return values

    assert draws(0, [0, 1, 2]) == draws(0, [0, 1, 2])
    assert len(set(draws(0, [0, 1, 2]))) == 3 and draws(1, [0]) != draws(0, [0])


def test_a_bad_space_is_refused_in_one_line_naming_every_problem(tmp_path):
    bad = ("lr: {low: 0, high: 1.0e-3, log: true}\nmax_steps: {low: 50, high: 10}\nwarmup: [1, 2]\n"
           "save_dir: [a, b]\nepochs: {low: 1, high: 4, step: 0.5}\nfinetune: {low: 1, high: 2}\n"
           "select_by: [loss, mse]\nbatch_size: {low: 8, high: 32, log: true, step: 8}\nseed: 3\n")
    with pytest.raises(ConfigError) as error:
        load_space(write(tmp_path, bad))
    message = str(error.value)
    assert "\n" not in message
    for part in ("lr low 0: --lr must be > 0, got 0.0", "max_steps: low (50) must be below high (10)",
                 "warmup: not an option of launch/train.py", "save_dir: set by the sweep for each trial",
                 "epochs: step must be a positive integer, got 0.5", "finetune takes str values: give choices",
                 "'mse' is not one of loss, crps, rank_ic", "batch_size: a range has either log: true or a step",
                 "seed: expected a range"):
        assert part in message, part


def test_the_sweep_s_errors_are_one_line_and_exit_2_before_any_trial(tmp_path, capsys, demo_prepared_dir):
    space = write(tmp_path, "lr: [1.0e-3, 1.0e-4]\n")
    auto = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    auto["optimizer"]["params"]["lr"] = "auto"
    auto_config = write(tmp_path, json.dumps(auto), "auto.json")
    data = ["--data", str(demo_prepared_dir)]
    cases = {
        "give train.py's options after --": ["--space", space],
        "--lr is swept (--space) and also given after --": ["--space", space, "--", *data, "--lr", "1e-3"],
        "--save_dir is set by the sweep for each trial": ["--space", space, "--", *data, "--save_dir", "x"],
        "--lr is swept but ds_configs/zero2.json sets optimizer.params.lr=4e-05": ["--space", space, "--", *data],
        "train.py's options (after --): --data /nowhere: no such folder": ["--space", space, "--", "--data",
                                                                           "/nowhere"],
        "--study 'a/b': letters, digits": ["--space", space, "--study", "a/b", "--", *data],
        "--storage journal:///nowhere/x.log: folder /nowhere not found": ["--space", space, "--storage",
                                                                          "journal:///nowhere/x.log", "--"],
    }
    for expected, argv in cases.items():
        code, err = run_in_process("sweep.py", ["--sweep_dir", str(tmp_path / "sweeps"), *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, (expected, err)
    assert not (tmp_path / "sweeps").exists()  # refused before any study or folder exists
    (tmp_path / "sweeps" / "sweep" / "trial_0007").mkdir(parents=True)  # left by a study of that name now gone
    code, err = run_in_process("sweep.py", ["--sweep_dir", str(tmp_path / "sweeps"), "--space", space, "--", *data,
                                            "--deepspeed_config", auto_config], capsys)
    assert code == 2 and "trial_0007: not a trial of study sweep" in err and len(err.strip().splitlines()) == 1


def position_with_evaluations() -> Position:
    position = Position()
    position.history.val = [(0, 7.0), (5, 6.5), (10, 6.2)]
    position.history.forecast = [(0, 1.4, None, -0.2), (5, 1.2, 0.05, 0.1), (10, 1.1, 0.07, 0.2)]
    position.selection.scores = [(0, 1.4), (5, 1.2), (10, None)]
    return position


def test_metrics_jsonl_has_one_line_per_evaluation_and_restarts_with_the_run(tmp_path):
    position = position_with_evaluations()
    tmp_path = tmp_path / "new_run"  # a new run's save_dir does not exist yet when the run starts
    metrics_log.restart(tmp_path, Position(), "crps")  # a new run starts with an empty file
    assert (tmp_path / metrics_log.METRICS_NAME).read_text() == ""
    for count in range(1, 4):
        partial = Position()
        partial.history.val = position.history.val[:count]
        partial.history.forecast = position.history.forecast[:count]
        partial.selection.scores = position.selection.scores[:count]
        metrics_log.append_last(tmp_path, partial, "crps")
    lines = [json.loads(line) for line in (tmp_path / metrics_log.METRICS_NAME).read_text().splitlines()]
    assert lines[1] == {"step": 5, "val_loss": 6.5, "crps": 1.2, "rank_ic": 0.05, "skill": 0.1, "metric": "crps",
                        "value": 1.2}
    assert lines[2]["value"] is None and [line["step"] for line in lines] == [0, 5, 10]
    resumed = position_with_evaluations()  # resumed from its checkpoint at step 5: later lines go
    resumed.history.val, resumed.selection.scores = resumed.history.val[:2], resumed.selection.scores[:2]
    metrics_log.restart(tmp_path, resumed, "crps")
    assert [json.loads(line) for line in (tmp_path / metrics_log.METRICS_NAME).read_text().splitlines()] == lines[:2]


def evaluated(*steps_values: tuple[int, float]) -> Position:
    position = Position()
    position.history.val = list(steps_values)
    position.selection.scores = list(steps_values)  # --select_by loss: the value is the validation loss
    return position


def test_a_roll_back_s_rewrite_of_metrics_jsonl_is_followed_and_optuna_keeps_the_re_trained_values(tmp_path):
    """Issue 31: a roll-back rewrites metrics.jsonl shorter (from its checkpoint) and trains the later steps again;
    the follower must neither read from the middle of a line nor skip the new evaluations, and Optuna must end with
    the re-trained values, not the undone ones."""
    study = optuna.create_study()
    trial = study.ask()
    follower = MetricsFollower(tmp_path / metrics_log.METRICS_NAME)
    seen: list[tuple[int, float]] = []

    def poll() -> None:
        for record in follower.new_records():
            seen.append((record["step"], record["value"]))
            _report(trial, record["step"], record["value"])

    metrics_log.restart(tmp_path, Position(), "loss")
    trained = [(10 * k, 6.0 + k / 7) for k in range(1, 7)]  # long lines: steps 10..60
    for count in range(1, len(trained) + 1):
        metrics_log.append_last(tmp_path, evaluated(*trained[:count]), "loss")
        poll()
    metrics_log.restart(tmp_path, evaluated(*trained[:2]), "loss")  # rolled back to its checkpoint at step 20
    poll()
    again = trained[:2] + [(30, 5.5), (40, 5.25)]  # short lines: steps 30 and 40 trained again
    for count in (3, 4):
        metrics_log.append_last(tmp_path, evaluated(*again[:count]), "loss")
        poll()
    assert seen == trained + [(30, 5.5), (40, 5.25)]  # each step once, and once more with its re-trained value
    assert study.trials[0].intermediate_values == dict(again + trained[4:])
    metrics_log.restart(tmp_path, evaluated(*again), "loss")  # a resumed run rewrites what was reported
    poll()
    assert len(seen) == 8


def test_the_stop_file_rides_on_the_log_all_reduce_and_is_seen_by_rank_0_only(tmp_path):
    (tmp_path / STOP_NAME).touch()
    main, other = StopFile(tmp_path, is_main=True), StopFile(tmp_path, is_main=False)
    assert not (tmp_path / STOP_NAME).exists()  # a request to an earlier run is removed at the start
    losses = torch.tensor([2.0, 3.0])
    assert main.with_flag(losses).tolist() == [2.0, 3.0, 0.0] and main.agree([4.0, 6.0, 0.0], 3) == [4.0, 6.0]
    assert not main.requested and main.status is None
    (tmp_path / STOP_NAME).touch()
    assert other.with_flag(losses).tolist()[-1] == 0.0  # other ranks do not look: they learn it from the sum
    reduced = (main.with_flag(losses) + other.with_flag(losses)).tolist()  # what the all-reduce adds up
    assert other.agree(reduced, 4) == [4.0, 6.0] and other.requested
    assert main.agree(reduced, 4) == [4.0, 6.0] and main.status == "stopped by request (stop file)"


def test_trials_of_workers_gone_from_this_machine_are_failed_and_asked_to_stop(tmp_path):
    study = optuna.create_study()
    here = this_worker()
    gone = {**here, "started": here["started"] - 1}  # this pid, another process: the first one has ended
    elsewhere = {**here, "host": "another-machine", "pid": 1}
    for worker in (here, gone, elsewhere):
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("save_dir", str(tmp_path))
    lines: list[str] = []
    assert fail_lost_trials(study, lines.append) == [1]
    assert [t.state.name for t in study.trials] == ["RUNNING", "FAIL", "RUNNING"]
    assert (tmp_path / STOP_NAME).exists() and "trial 1: marked failed: its sweep worker" in lines[0]


def fake_checkpoint(save_dir: Path) -> None:
    """A complete checkpoint as resume_candidates sees it (a manifest and the files it lists, at their sizes)."""
    tag = save_dir / "checkpoints" / "step00000004"
    tag.mkdir(parents=True)
    (tag / "rng_rank00000.safetensors").write_bytes(b"12345")
    layout = {"micro_batch": 4, "grad_accum": 1, "world_size": 1, "zero_stage": 0}
    (tag / "manifest.json").write_text(json.dumps({"tag": tag.name, "layout": layout,
                                                   "files": {"rng_rank00000.safetensors": 5}}))


def sweep_of(tmp_path: Path, trials: int = 3) -> Sweep:
    config = SweepConfig(space="s.yaml", trials=trials, sweep_dir=str(tmp_path))
    return Sweep(config, load_space(write(tmp_path, "lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")), [],
                 REPO / "launch" / "train.py", tmp_path / "sweep", "loss")


def test_a_lost_trial_with_a_checkpoint_is_continued_in_its_folder_with_resume(tmp_path, monkeypatch):
    """Issue 32: a killed sweep's interrupted trial goes on from its checkpoint (same parameters, same folder,
    --resume) instead of being drawn afresh; one without a checkpoint is failed as before."""
    study = optuna.create_study()
    here = this_worker()
    gone = {**here, "started": here["started"] - 1}
    folders = {0: tmp_path / "sweep" / "trial_0000", 1: tmp_path / "sweep" / "trial_0001"}
    for folder in folders.values():
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.report(7.0, 2)
        trial.set_user_attr("worker", gone)
        trial.set_user_attr("save_dir", str(folder))
        folder.mkdir(parents=True)
        (folder / "train.log").write_text("the first run's log\n")
    fake_checkpoint(folders[0])
    lines: list[str] = []
    assert fail_lost_trials(study, lines.append) == [0, 1]
    assert lines[0].endswith("a new trial continues it from its checkpoint") and "continues" not in lines[1]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"save_dir": str(folders[0]), CONTINUES_ATTR: 0}

    launched = []

    def run(command, save_dir, report_value, continued=False):
        launched.append((command, save_dir, continued))
        assert report_value(4, 6.5) is False  # the resumed run's evaluations go to the new trial
        summary = {"status": "finished", "steps": 8, "selection": {"metric": "loss", "best_score": 6.5}}
        return Outcome(0, 1.0, summary, None)

    monkeypatch.setattr("ds_kronos.sweep.job.run_trial", run)
    sweep = sweep_of(tmp_path)
    study.optimize(sweep.objective, n_trials=1)
    command, save_dir, continued = launched[0]
    assert save_dir == folders[0] and continued and command[-3:] == ["--save_dir", str(folders[0]), "--resume"]
    resumed = study.trials[2]
    assert resumed.state.name == "COMPLETE" and resumed.value == 6.5 and resumed.intermediate_values == {4: 6.5}
    assert resumed.params == study.trials[0].params and resumed.user_attrs["save_dir"] == str(folders[0])
    assert report.trial_rows(study, ["lr"])[2]["note"] == "continues trial 0"
    assert not (tmp_path / "sweep" / "trial_0002").exists()  # no folder of its own


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_failed_by_optuna_s_heartbeat_is_continued_from_its_checkpoint(tmp_path, monkeypatch):
    """Database storages: a trial whose worker (on another machine) stopped beating is failed by Optuna's heartbeat
    check, whose callback queues its continuation."""
    monkeypatch.setattr("ds_kronos.sweep.storage.HEARTBEAT_S", 1)
    monkeypatch.setattr("ds_kronos.sweep.storage.GRACE_S", 1)
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.set_user_attr("save_dir", str(tmp_path / "trial_0000"))
    trial.set_user_attr("worker", {**this_worker(), "host": "another-machine"})
    fake_checkpoint(tmp_path / "trial_0000")
    storage.record_heartbeat(trial._trial_id)  # its worker's last beat
    time.sleep(2.5)
    assert fail_lost_trials(study, print) == []  # not one of this machine's: Optuna's heartbeat failed it
    first, queued = study.get_trials()
    assert first.state.name == "FAIL" and queued.state.name == "WAITING"
    assert queued.user_attrs == {"save_dir": str(tmp_path / "trial_0000"), CONTINUES_ATTR: 0}


def test_a_stopped_sweep_queues_its_trial_s_continuation_and_a_live_holder_is_waited_for(tmp_path, monkeypatch):
    """SIGTERM to a worker (KeyboardInterrupt): the launch saved a checkpoint, so a continuation is queued. A
    continuation does not start while a live job holds the folder (an interrupted trial's training that outlived its
    worker): it asks it to stop, waits, and gives up with the holder's line; once it has gone, the interrupted run's
    stop request, summary.json and metrics.jsonl go and its checkpoints stay."""
    study = optuna.create_study()

    def interrupted(command, save_dir, report_value, continued=False):
        fake_checkpoint(save_dir)  # the launch saved on the SIGTERM it was passed
        raise KeyboardInterrupt

    monkeypatch.setattr("ds_kronos.sweep.job.run_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(sweep_of(tmp_path).objective, n_trials=1)
    first, queued = study.trials
    assert first.state.name == "FAIL" and first.user_attrs["failure"].startswith("interrupted: a new trial continues")
    assert queued.state.name == "WAITING" and queued.user_attrs[CONTINUES_ATTR] == 0

    folder = Path(first.user_attrs["save_dir"])
    for name in ("summary.json", "metrics.jsonl"):
        (folder / name).write_text("{}\n")
    holder = forked_holder(folder)
    try:
        problem = take_over(folder, wait_s=0.6)
        assert problem.startswith(f"not continued: {folder} is in use by another job (") and f"pid {holder}" in problem
        assert (folder / STOP_NAME).exists()  # asked to stop (it saves a checkpoint first)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    assert take_over(folder, wait_s=0.6) is None
    assert sorted(p.name for p in folder.iterdir()) == [".ds_kronos.lock", "checkpoints"]


def test_a_worker_counts_every_worker_s_trials_against_the_budget(tmp_path):
    study = optuna.create_study()
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        trial = study.ask()
        if state != "RUNNING":
            study.tell(trial, 1.0 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    config = SweepConfig(space="s.yaml", trials=3, sweep_dir=str(tmp_path))
    sweep = Sweep(config, load_space(write(tmp_path, "lr: [1.0e-3]\n")), [], REPO / "launch" / "train.py",
                  tmp_path / "sweep", "loss")
    assert sweep.taken(study) == 3  # complete, pruned and running count; failed do not
    # Another worker's running trial 3 took the last place before this worker asked for trial 4: it is not run.
    study.optimize(sweep.objective, n_trials=5, catch=(BudgetTaken,))
    late = study.trials[-1]
    assert late.number == 4 and late.state.name == "FAIL" and late.user_attrs["failure"].startswith("not run")
    assert not (tmp_path / "sweep").exists()  # no folder, no launch; and the worker stopped after it


def test_storages_are_optuna_s_own_and_urls_are_checked(tmp_path):
    assert describe_storage("postgresql://me:secret@db/sweeps") == "postgresql://me:***@db/sweeps"
    assert storage_problems("journal:///") and storage_problems("not a url")
    assert "folder" in storage_problems(f"sqlite:///{tmp_path}/missing/study.db")[0]
    journal = optuna.create_study(storage=open_storage(f"journal://{tmp_path}/study.log"), study_name="a")
    journal.tell(journal.ask(), 1.0)
    reread = optuna.load_study(storage=open_storage(f"journal://{tmp_path}/study.log"), study_name="a")
    assert [t.value for t in reread.trials] == [1.0]
    url = f"sqlite:///{tmp_path}/study.db"
    with creation_lock(url):
        database = optuna.create_study(storage=open_storage(url), study_name="b")
    assert os.path.exists(f"{tmp_path}/study.db.lock") and database.trials == []
    with pytest.raises(ConfigError, match="its database driver is not installed"):
        open_storage("postgresql+psycopg2://localhost/x")  # psycopg2 is not a requirement


def test_the_table_csv_and_overhead_come_from_the_study(tmp_path):
    study = optuna.create_study()
    for number, (state, value) in enumerate([("COMPLETE", 6.5), ("PRUNED", 6.9), ("FAIL", None)]):
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        trial.set_user_attr(report.LAUNCH_ATTR, 0.0)
        trial.set_user_attr(report.STEPS_ATTR, 40 - number)
        if state == "PRUNED":
            trial.report(value, 2)
            trial.set_user_attr(report.PRUNED_AT_ATTR, 2)
        study.tell(trial, value if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    rows = report.trial_rows(study, ["lr"])
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "FAIL"] and rows[1]["objective"] == 6.9
    assert all(r["sweep_seconds"] == r["wall_seconds"] for r in rows)  # nothing launched: all of it the sweep's
    table = report.format_table(rows, ["lr"], "loss").splitlines()
    assert table[0].split() == ["trial", "lr", "loss", "state", "steps", "wall", "s"]
    assert "PRUNED at step 2" in table[2] and table[3].split()[2] == "-"
    report.write_csv(tmp_path / "trials.csv", rows)
    assert (tmp_path / "trials.csv").read_text().splitlines()[0].startswith("number,lr,objective,state")
    assert report.overhead_figures(rows)["trials"] == 3


def test_a_prune_request_that_came_after_the_last_evaluation_leaves_the_trial_complete():
    """The pruner may answer on a run's final evaluation, when it is already finishing: the run never sees the
    stop file, finishes, and is a complete trial with its value; a run that obeyed is a pruned one."""
    finished = {"status": "finished", "steps": 128, "selection": {"metric": "loss", "best_score": 2.5}}
    late = Outcome(0, 30.0, finished, pruned_at=128)
    assert late.complete and late.pruned_at is None and late.value == 2.5
    stopped = Outcome(0, 20.0, {**finished, "steps": 70, "status": "stopped by request (stop file)"}, pruned_at=64)
    assert not stopped.complete and stopped.pruned_at == 64
