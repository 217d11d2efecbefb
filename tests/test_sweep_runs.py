"""launch/sweep.py with real trials through the deepspeed launcher (issue 25): a seeded sweep prunes its bad trial,
which stops cleanly on 2 ranks, and reports; two workers started at once share one SQLite study, are killed
together mid-trial, and started again go on to --trials without a duplicate, continuing the killed trial that had
saved a checkpoint from it. The checks that start no process are in tests/test_sweep.py."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, env, run_job, summary, train_args

STUDY = "sweep"


def lr_auto_config(folder: Path) -> Path:
    """ds_configs/zero2.json with its lr "auto", so that each trial's --lr is taken."""
    config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    config["optimizer"]["params"]["lr"] = "auto"
    path = folder / "zero2_lr_auto.json"
    path.write_text(json.dumps(config))
    return path


def sweep_args(tmp_path: Path, space: str, sweep_options: list[str], prepared: Path, checkpoints, **train) -> list:
    (tmp_path / "space.yaml").write_text(space)
    return (["--space", str(tmp_path / "space.yaml"), "--sweep_dir", str(tmp_path / "sweeps"), *sweep_options, "--"]
            + train_args(prepared, checkpoints, None, epochs=None, batch_size=8, n_val_iter=24,
                         deepspeed_config=lr_auto_config(tmp_path), **train))


def trials_csv(study_dir: Path) -> list[dict[str, str]]:
    with open(study_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.processes
def test_a_seeded_sweep_prunes_the_bad_trial_which_stops_cleanly(demo_prepared_dir, tiny_checkpoints, tmp_path):
    # Seed 6 draws lr 1e-3 for trial 0 and 1e-9 for trial 1 (asserted below); after one finished trial the median
    # pruner compares trial 1's evaluation at step 8 with trial 0's, which has learnt and is lower (at step 0 both
    # score the same start model).
    args = sweep_args(tmp_path, "lr: [1.0e-3, 1.0e-9]\n",
                      ["--trials", "2", "--sampler_seed", "6", "--pruner_startup_trials", "1", "--num_gpus", "2"],
                      demo_prepared_dir, tiny_checkpoints, max_steps=40, n_train_iter=640, eval_every=8)
    result = run_job("sweep.py", args, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study_dir = tmp_path / "sweeps" / STUDY
    good, bad = trials_csv(study_dir)
    assert (float(good["lr"]), good["state"]) == (1e-3, "COMPLETE")
    assert (float(bad["lr"]), bad["state"], bad["pruned_at"]) == (1e-9, "PRUNED", "8")
    completed = summary(study_dir / "trial_0000")
    assert completed["status"] == "finished" and completed["steps"] == 40
    assert float(good["objective"]) == completed["selection"]["best_score"] < completed["first_val_loss"]

    pruned = summary(study_dir / "trial_0001")  # both ranks stopped at one step, cleanly, long before the end
    assert pruned["status"] == "stopped by request (stop file)"
    assert 8 < pruned["steps"] < 40 and pruned["last_checkpoint"] == pruned["steps"] == int(bad["steps"])
    assert pruned["final_model"] and (study_dir / "trial_0001" / "final_model" / "model.safetensors").is_file()
    lines = (study_dir / "trial_0001" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [s for s, _ in pruned["history"]["val"]]
    assert "stop requested" in (study_dir / "trial_0001" / "train.log").read_text()

    sweep_summary = json.loads((study_dir / "summary.json").read_text())
    assert sweep_summary["states"] == {"COMPLETE": 1, "PRUNED": 1}
    assert sweep_summary["best"]["number"] == 0 and sweep_summary["metric"] == "loss"
    assert sweep_summary["best"]["best_model"] == str(study_dir / "trial_0000" / "best_model")
    assert sweep_summary["sweep_seconds_per_trial"]["trials"] == 2
    assert f"best: trial 0, loss {completed['selection']['best_score']:.6g}" in result.stdout
    assert "PRUNED at step 8" in result.stdout
    for plot in ("history.png", "slice.png", "intermediate_values.png"):
        assert (study_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def start_worker(args: list[str], log: Path) -> subprocess.Popen:
    """A sweep worker in its own session, so that the test can kill it with its trial (one process group)."""
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, str(REPO / "launch" / "sweep.py"), *args], cwd=REPO, env=env(),
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def study_trials(tmp_path: Path):
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'sweeps' / 'study.db'}")
    return {t.number: t for t in study.get_trials()}


@pytest.mark.processes
def test_two_workers_share_a_study_and_go_on_after_a_kill(demo_prepared_dir, tiny_checkpoints, tmp_path):
    args = sweep_args(tmp_path, "lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n", ["--trials", "3", "--pruner", "none"],
                      demo_prepared_dir, tiny_checkpoints, max_steps=12, n_train_iter=96, eval_every=4, save_every=4)
    study_dir = tmp_path / "sweeps" / STUDY
    workers = [start_worker(args, tmp_path / f"first{i}.log") for i in range(2)]
    try:
        deadline = time.time() + 300
        # The second round of trials has started, and trial 2 has saved its first checkpoint (step 4 of 12); the other
        # worker may have ended already (with trial 2 running, the study has its 3 trials).
        while not (study_dir / "trial_0002" / "checkpoints" / "latest").exists():
            assert time.time() < deadline and any(w.poll() is None for w in workers), \
                [(tmp_path / f"first{i}.log").read_text()[-2000:] for i in range(2)]
            time.sleep(0.2)
    finally:
        for worker in workers:  # the whole sweep: both workers and their trials' launchers and ranks
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    before = study_trials(tmp_path)
    killed = sorted(n for n, t in before.items() if t.state.name == "RUNNING")
    finished = {n: t.value for n, t in before.items() if t.state.name == "COMPLETE"}
    assert 2 in killed and len(finished) + len(killed) <= 3
    assert {t.user_attrs.get("worker", {}).get("pid") for t in before.values()} - {None} == {w.pid for w in workers}

    again = [start_worker(args, tmp_path / f"again{i}.log") for i in range(2)]  # the same command, twice at once
    for worker in again:
        assert worker.wait(timeout=400) == 0
    outputs = [(tmp_path / f"again{i}.log").read_text() for i in range(2)]
    after = study_trials(tmp_path)
    complete = {n: t for n, t in after.items() if t.state.name == "COMPLETE"}
    assert len(complete) == 3  # exactly --trials, over both workers
    assert all(after[n].value == value for n, value in finished.items())  # finished trials are kept as they were
    assert all(after[n].state.name == "FAIL" for n in killed)
    assert sum(f"trial {n}: marked failed: its sweep worker" in out for n in killed for out in outputs) == len(killed)
    others = [t for n, t in after.items() if t.state.name == "FAIL" and n not in killed]
    assert all(t.user_attrs["failure"].startswith("not run") for t in others)  # a late draw another worker beat
    assert len({t.params["lr"] for t in complete.values()}) == 3  # every trial its own draw
    # Trial 2 was killed after its checkpoint at step 4 (or 8): a new trial continued it there, from it, to the end.
    continued = {t.user_attrs["continues"]: t for t in after.values() if "continues" in t.user_attrs}
    assert 2 in continued and continued[2].state.name == "COMPLETE", outputs
    assert continued[2].params == before[2].params
    assert continued[2].user_attrs["save_dir"] == before[2].user_attrs["save_dir"] == str(study_dir / "trial_0002")
    assert re.search(r"^resumed from step [48] ", (study_dir / "trial_0002" / "train.log").read_text(), re.M)
    assert summary(study_dir / "trial_0002")["steps"] == 12 and {4, 8, 12} <= set(continued[2].intermediate_values)
    folders = sorted(p.name for p in study_dir.glob("trial_*"))
    assert folders == sorted({Path(t.user_attrs["save_dir"]).name for t in after.values()
                              if "save_dir" in t.user_attrs})
    assert all((Path(t.user_attrs["save_dir"]) / "best_model").is_dir() for t in complete.values())
