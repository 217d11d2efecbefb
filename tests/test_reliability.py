"""When things go wrong (issue 10, items 1, 2, 4, 5 and 7): no code from checkpoint files, resume that heals itself,
a divergence guard, no hang when a rank stops answering, nothing half-written left behind.

The runs go through the real deepspeed launcher (2 CPU ranks) or a plain process (1 rank), on the session's demo
data and tiny checkpoints, with the arguments of the zero2 config run (tests/conftest.py), so a resumed run can be
compared with that uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ds_kronos.deepspeed_json.resolve import BatchLayout, load_ds_config
from ds_kronos.errors import UserError
from ds_kronos.model import Kronos
from ds_kronos.runtime import Runtime
from ds_kronos.train.checkpoint import training_state
from ds_kronos.train.checkpoint.resume import find_resume_source
from ds_kronos.train.checkpoint.training_state import RunLayout, remove_leftovers, resume_candidates
from helpers import (
    REPO,
    assert_same_weights,
    common_args,
    deepspeed_train,
    error_lines,
    launch_command,
    run_job,
    stall_a_rank,
    summary,
)


def zero2_args(prepared: Path, checkpoints: tuple[Path, Path], save_dir: Path, *extra: str) -> list[str]:
    return common_args(prepared, checkpoints, save_dir) + ["--deepspeed_config", "ds_configs/zero2.json", *extra]


def set_manifest_size(tag: Path, name: str) -> None:
    manifest = json.loads((tag / "manifest.json").read_text())
    manifest["files"][name] = (tag / name).stat().st_size
    (tag / "manifest.json").write_text(json.dumps(manifest))


class Payload:
    """Unpickling this runs code (os.system), as a planted checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def stopped_run(demo_prepared_dir, tiny_checkpoints, tmp_path_factory) -> Path:
    """The zero2 config run stopped after step 3 with a checkpoint at every step (tags 1, 2, 3)."""
    save_dir = tmp_path_factory.mktemp("stopped") / "run"
    deepspeed_train(zero2_args(demo_prepared_dir, tiny_checkpoints, save_dir, "--save_every", "1", "--keep_last", "5",
                               "--exit_after_steps", "3"))
    return save_dir


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.mark.processes
def test_resume_skips_unsafe_and_incomplete_checkpoints_and_stays_exact(stopped_run, config_runs, tmp_path,
                                                                       demo_prepared_dir, tiny_checkpoints):
    """Newest to oldest: step 3 holds a planted pickle payload (its manifest kept consistent, as a careful attacker
    would), step 2 misses a rank's RNG file, step 1 is complete; ``latest`` points outside the run; a killed save and
    a killed best-model write are lying around. The run resumes from step 1 and ends exactly as the uninterrupted
    zero2 run; the payload never runs."""
    save_dir = copy_run(stopped_run, tmp_path / "run")
    checkpoints = save_dir / "checkpoints"
    marker = tmp_path / "payload_ran"
    model_file = checkpoints / "step00000003" / "mp_rank_00_model_states.pt"
    state = torch.load(model_file, weights_only=True)  # our own file: loads with the restricted unpickler
    state["payload"] = Payload(marker)
    torch.save(state, model_file)
    set_manifest_size(checkpoints / "step00000003", model_file.name)
    (checkpoints / "step00000002" / "rng_rank00001.safetensors").unlink()
    (tmp_path / "other_run" / "checkpoints" / "step00000020").mkdir(parents=True)
    (checkpoints / "latest").write_text("../../other_run/checkpoints/step00000020")
    partial = checkpoints / ".step00000004.partial"
    shutil.copytree(checkpoints / "step00000001", partial)
    (save_dir / ".best_model.tmp-999").mkdir()
    result = run_job("train.py", zero2_args(demo_prepared_dir, tiny_checkpoints, save_dir, "--resume"), processes=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert not marker.exists(), "the planted payload ran"
    assert "not a checkpoint of this run" in out
    assert "skipped step00000003" in out and "not plain training state" in out
    assert "skipped step00000002: rng_rank00001.safetensors is missing" in out
    assert "resumed from step 1" in out
    assert not partial.exists() and not (save_dir / ".best_model.tmp-999").exists()
    assert_same_weights(save_dir / "final_model", config_runs["zero2"] / "final_model")


@pytest.mark.processes
def test_truncated_files_and_empty_pointers_are_passed_over(stopped_run, tmp_path):
    save_dir = copy_run(stopped_run, tmp_path / "run")
    checkpoints = save_dir / "checkpoints"
    shard = checkpoints / "step00000003" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (checkpoints / "latest").write_text("")
    candidates, notes = resume_candidates(checkpoints)
    assert [c.tag for c in candidates] == ["step00000002", "step00000001"]
    assert any("checkpoints/latest is empty" in note for note in notes)
    assert any(note.startswith("skipped step00000003: zero_pp_rank_1_mp_rank_00_optim_states.pt has")
               and "truncated" in note for note in notes)


@pytest.mark.processes
def test_no_complete_checkpoint_is_one_clear_line(stopped_run, tmp_path, demo_prepared_dir, tiny_checkpoints):
    save_dir = copy_run(stopped_run, tmp_path / "run")
    for tag in (save_dir / "checkpoints").glob("step*"):
        (tag / "manifest.json").unlink()
    candidates, notes = resume_candidates(save_dir / "checkpoints")
    assert candidates == [] and len(notes) == 3 and all("no manifest.json" in note for note in notes)
    result = run_job("train.py", zero2_args(demo_prepared_dir, tiny_checkpoints, save_dir, "--resume"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(error_lines(result)) == 1 and "no complete checkpoint to resume from" in error_lines(result)[0]


@pytest.mark.processes
def test_a_run_that_fails_before_training_leaves_nothing_half_written(demo_prepared_dir, tiny_checkpoints, tmp_path):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    # An interrupted replacement of best_model/: the complete previous folder waits under its retired name.
    retired = save_dir / ".best_model.old-4242"
    Kronos.from_pretrained(tiny_checkpoints[1]).save_pretrained(retired)
    (save_dir / ".final_model.tmp-4243").mkdir()
    (save_dir / "checkpoints" / "step00000001").mkdir(parents=True)  # a tag with nothing in it: --resume fails
    result = run_job("train.py", zero2_args(demo_prepared_dir, (tiny_checkpoints[0], Path("tiny")), save_dir,
                                            "--resume"))
    assert result.returncode == 2, result.stderr
    assert "no complete checkpoint to resume from" in result.stderr
    assert [p.name for p in (save_dir / "checkpoints").iterdir()] == ["step00000001"]
    assert not (save_dir / "initial_model").exists()
    assert (save_dir / "best_model" / "config.json").is_file() and not retired.exists()
    assert not (save_dir / ".final_model.tmp-4243").exists()


def lr_config(tmp_path: Path, lr: float) -> Path:
    config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    config["optimizer"]["params"]["lr"] = lr
    path = tmp_path / f"lr_{lr:g}.json"
    path.write_text(json.dumps(config))
    return path


# lr 1e30 gives a NaN loss at step 2, lr 1e6 a loss over 10x the first within a few steps. With --on_divergence
# rollback the run stops as with stop once --max_rollbacks is spent (lr 1e30 diverges again after going back to
# step 1), or when there is no checkpoint yet to go back to (--save_every 50); the reason ends the error line.
@pytest.mark.processes
@pytest.mark.parametrize("lr,launcher,options,expected", [
    (1e30, True, ["--on_divergence", "rollback", "--max_rollbacks", "1"],
     ["non-finite loss", "1 roll-back(s) already (--max_rollbacks 1): stopped"]),
    (1e6, False, [], ["over 10x"]),
    (1e30, False, ["--on_divergence", "rollback", "--save_every", "50"],
     ["non-finite loss", "no checkpoint to roll back to yet (the first is due at step 50"]),
], ids=["rollbacks_spent", "stop", "rollback_without_checkpoint"])
def test_divergence_stops_the_run_and_keeps_the_last_good_state(lr, launcher, options, expected, demo_prepared_dir,
                                                               tiny_checkpoints, tmp_path):
    save_dir = tmp_path / "run"
    tokenizer, predictor = tiny_checkpoints
    args = ["--data", str(demo_prepared_dir), "--tokenizer", str(tokenizer), "--predictor", str(predictor),
            "--save_dir", str(save_dir), "--deepspeed_config", str(lr_config(tmp_path, lr)), "--epochs", "20",
            "--n_train_iter", "128", "--n_val_iter", "16", "--batch_size", "16", "--save_every", "1",
            "--log_every", "1", *options]
    result = run_job("train.py", args, processes=2 if launcher else None)
    assert result.returncode != 0
    errors = error_lines(result)
    assert len(errors) == 1 and "training diverged at step" in errors[0], errors
    assert all(part in errors[0] for part in expected), errors
    assert "Traceback" not in result.stdout + result.stderr
    info = summary(save_dir)
    assert info["status"].startswith("failed: training diverged")
    step = int(errors[0].split("training diverged at step ")[1].split(":")[0])
    assert step <= 8  # noticed within a few steps
    assert info["final_model"] is None and not (save_dir / "final_model").exists()
    assert info["best_model"] is None or (Path(info["best_model"]) / "config.json").is_file()
    rollbacks = info["rollbacks"]
    if "--save_every" in options:  # none written before the divergence, none after it
        assert not (save_dir / "checkpoints").exists() and rollbacks == []
        return
    latest = (save_dir / "checkpoints" / "latest").read_text().strip()
    assert int(latest.removeprefix("step")) < step  # the last good checkpoint, not a diverged one
    candidates, _ = resume_candidates(save_dir / "checkpoints")
    assert candidates and candidates[0].tag == latest
    if "rollback" in options:
        assert [(r["detected_at_step"], r["restored_step"]) for r in rollbacks] == [(2, 1)] and step == 3, rollbacks


@pytest.mark.processes
def test_a_stopped_rank_ends_the_job_within_the_timeout_and_is_named(demo_prepared_dir, tiny_checkpoints, tmp_path):
    args = zero2_args(demo_prepared_dir, tiny_checkpoints, tmp_path / "run", "--epochs", "500",
                      "--eval_at_start", "false", "--dist_timeout", "10")
    command = launch_command("train.py", args)
    returncode, output, elapsed = stall_a_rank(command, when=lambda line: line.startswith("step 2/"))
    assert returncode != 0
    assert elapsed < 30, elapsed  # the timeout (10 s), the check-in (3 s) and the launcher's clean-up
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert errors and all("rank 1 stopped answering" in line for line in errors), output[-3000:]
    assert "--dist_timeout 10" in errors[0]


@pytest.mark.parametrize("failure", ["Timed out waiting 10000ms for recv operation to complete",
                                     "[pair.cc:534] Connection closed by peer [127.0.0.1]:41915"])
def test_a_rank_told_to_end_while_it_waited_leaves_quietly_with_the_signals_code(failure, monkeypatch, capsys):
    """A rank that was stopped (SIGSTOP, swapped out) and continued only to receive the launcher's SIGTERM finds
    its collective failed: it leaves as SIGTERM would have ended it, without an error line blaming another rank."""
    import signal

    from ds_kronos.cli import run_main
    from ds_kronos.runtime import distributed_failures

    def main(argv):
        with distributed_failures(10, lambda: [signal.SIGTERM]):
            raise RuntimeError(failure)

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stop:
        run_main(main, [])
    assert stop.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert ": error:" not in err and "[rank 1]" in err and "SIGTERM arrived while this rank waited" in err

    def bug(argv):  # not a collective failure: a bug keeps its traceback even while the job is being ended
        with distributed_failures(10, lambda: [signal.SIGTERM]):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        run_main(bug, [])


def test_resume_candidates_are_only_complete_step_folders(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "stepABC").mkdir(parents=True)
    (checkpoints / "latest").write_text("/etc")
    escaping = checkpoints / "step00000007"
    escaping.mkdir()
    layout = {"world_size": 1, "micro_batch": 1, "grad_accum": 1, "zero_stage": 0}
    (escaping / "rng_rank00000.safetensors").write_bytes(b"x")
    (escaping / "manifest.json").write_text(json.dumps({"tag": escaping.name, "layout": layout, "files": {
        "rng_rank00000.safetensors": 1, "../../../../etc/hostname": 1}}))
    candidates, notes = resume_candidates(checkpoints)
    assert candidates == []
    assert any("not a checkpoint of this run" in note for note in notes)
    assert any("skipped step00000007: the manifest names a file outside the checkpoint" in note for note in notes)


def staged_tag(folder: Path, content: bytes) -> Path:
    """A one-rank tag's files, as a save writes them into its staging folder."""
    folder.mkdir(parents=True)
    for name in ("rng_rank00000.safetensors", "mp_rank_00_model_states.pt"):
        (folder / name).write_bytes(content)
    return folder


def staged_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.mark.parametrize("new_copy_checks", [True, False], ids=["new_complete", "new_damaged"])
def test_a_kill_inside_the_swap_of_a_re_saved_step_keeps_one_copy(new_copy_checks, tmp_path, monkeypatch):
    """Step 4 saved, then saved again (a run resumed at its last step) and killed between the two renames that swap
    the new tag in: the next start publishes the new copy if its manifest checks, else moves the old one back."""
    checkpoints, tag = tmp_path / "checkpoints", "step00000004"
    staging = checkpoints / f".{tag}.partial"
    layout = RunLayout(batch=BatchLayout(micro_batch=1, grad_accum=1, world_size=1), zero_stage=0)
    training_state._publish(checkpoints, staged_tag(staging, b"old"), tag, layout, staged_files(staging))
    staged_tag(staging, b"newer")
    replace, calls = os.replace, []

    def killed_before_the_second_rename(source, target):
        calls.append(source)
        if len(calls) == 3:  # 1: the manifest, 2: the old tag retired, 3: the new tag moved in
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        training_state._publish(checkpoints, staging, tag, layout, staged_files(staging))
    monkeypatch.setattr(os, "replace", replace)
    assert not (checkpoints / tag).exists() and staging.is_dir() and (checkpoints / f".{tag}.partial-old").is_dir()
    if not new_copy_checks:
        (staging / "mp_rank_00_model_states.pt").write_bytes(b"ne")  # truncated: its manifest does not check
    notes = remove_leftovers(checkpoints)
    expected = b"newer" if new_copy_checks else b"old"
    assert (checkpoints / tag / "mp_rank_00_model_states.pt").read_bytes() == expected
    assert any(("the new copy" if new_copy_checks else "the previous copy") in note for note in notes), notes
    assert [c.tag for c in resume_candidates(checkpoints)[0]] == [tag]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", tag]  # no staging folder left


@pytest.mark.processes
def test_resume_across_zero_1_and_2_continues_exactly(stopped_run, config_runs, tmp_path, demo_prepared_dir,
                                                       tiny_checkpoints):
    """DeepSpeed's ZeRO-1 and ZeRO-2 save the same optimizer state: the ZeRO-2 run resumed at ZeRO-1 ends as the
    uninterrupted ZeRO-2 run."""
    save_dir = copy_run(stopped_run, tmp_path / "run")
    args = common_args(demo_prepared_dir, tiny_checkpoints, save_dir) + ["--deepspeed_config", "ds_configs/zero1.json",
                                                                         "--resume"]
    result = run_job("train.py", args, processes=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from step 3" in result.stdout
    assert_same_weights(save_dir / "final_model", config_runs["zero2"] / "final_model")


@pytest.mark.processes
def test_resume_at_another_zero_stage_is_one_line_naming_both(stopped_run, tmp_path, demo_prepared_dir,
                                                              tiny_checkpoints):
    save_dir = copy_run(stopped_run, tmp_path / "run")
    result = run_job("train.py", common_args(demo_prepared_dir, tiny_checkpoints, save_dir)
                    + ["--deepspeed_config", "ds_configs/zero0.json", "--resume"])
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    errors = error_lines(result)
    assert len(errors) == 1 and "written by a ZeRO-2 run and this run is ZeRO-0" in errors[0], errors


def fake_checkpoints(root: Path, layout: dict, nvme_files: bool = False) -> Path:
    """A complete-looking tag (manifest, RNG files) written with ``layout``; no DeepSpeed files (never loaded)."""
    tag = root / "checkpoints" / "step00000004"
    tag.mkdir(parents=True)
    names = [f"rng_rank{rank:05d}.safetensors" for rank in range(layout["world_size"])]
    if nvme_files:
        names.append("offloaded_tensors/rank00/0_48.tensor.swp")
    for name in names:
        (tag / name).parent.mkdir(parents=True, exist_ok=True)
        (tag / name).write_bytes(b"x")
    (tag / "manifest.json").write_text(json.dumps({"tag": tag.name, "layout": layout, "files": dict.fromkeys(names,
                                                                                                          1)}))
    return root / "checkpoints"


def resume_source(checkpoints: Path, config: str, world_size: int, micro: int = 8):
    ds_config = load_ds_config(f"ds_configs/{config}.json")
    runtime = Runtime(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"))
    return find_resume_source(checkpoints, BatchLayout(micro, 1, world_size), runtime, lambda line: None, ds_config,
                              "every parameter")


@pytest.mark.parametrize("written,config,world_size,expected", [
    ({"zero_stage": 2}, "zero1", 2, None),
    ({"zero_stage": 1}, "zero2", 2, None),
    ({"zero_stage": 0}, "zero2", 2, "written by a ZeRO-0 run and this run is ZeRO-2"),
    ({"zero_stage": 3}, "zero2", 2, "written by a ZeRO-3 run and this run is ZeRO-2"),
    ({"zero_stage": 3, "optimizer_offload": "cpu"}, "zero3_offload", 2, None),
    ({"zero_stage": 3, "optimizer_offload": "none"}, "zero3_offload", 2,
     "optimizer state not offloaded and this run has it offloaded to the CPU"),
    ({"zero_stage": 3, "optimizer_offload": "cpu"}, "zero3_nvme", 2,
     "offloaded to the CPU and this run has it offloaded to NVMe"),
    ({"zero_stage": 3}, "zero3", 2, "offloaded to NVMe and this run has it not offloaded"),  # older manifest
    ({"zero_stage": 3, "optimizer_offload": "nvme"}, "zero3_nvme", 1, "which NVMe optimizer offload does not support"),
], ids=["zero2_to_1", "zero1_to_2", "zero0_to_2", "zero3_to_2", "cpu_to_cpu", "none_to_cpu", "cpu_to_nvme",
        "nvme_to_none", "nvme_elastic"])
def test_resume_refuses_what_deepspeed_cannot_load_before_loading(written, config, world_size, expected, tmp_path):
    """A changed ZeRO stage (but 1 <-> 2) or optimizer offload, and an elastic resume under NVMe, are refused with
    one line before any engine, conversion or load; an older manifest's NVMe tag is told by its offloaded_tensors/."""
    layout = {"world_size": 2, "micro_batch": 8 * world_size // 2, "grad_accum": 1, **written}
    checkpoints = fake_checkpoints(tmp_path, layout, nvme_files="optimizer_offload" not in written
                                   and written["zero_stage"] == 3)
    if expected is None:
        assert resume_source(checkpoints, config, world_size).candidates[0].tag == "step00000004"
    else:
        with pytest.raises(UserError, match=expected) as raised:
            resume_source(checkpoints, config, world_size)
        assert "\n" not in str(raised.value)


def test_resume_with_no_checkpoint_at_all_starts_afresh_but_a_damaged_run_is_refused(tmp_path):
    """A job script that always passes --resume starts from scratch on its first run (one line says so); a folder
    whose checkpoints exist but none of which is complete, or whose `latest` names a tag that is gone, is an error."""
    said = []
    runtime = Runtime(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    ds_config = load_ds_config("ds_configs/zero2.json")

    def find(checkpoints: Path):
        return find_resume_source(checkpoints, BatchLayout(8, 1, 2), runtime, said.append, ds_config, "every parameter")

    assert find(tmp_path / "never_written") is None
    (tmp_path / "empty" / ".step00000002.partial").mkdir(parents=True)  # a first save that never finished
    assert find(tmp_path / "empty") is None
    assert said == [f"--resume: no checkpoint in {tmp_path / name} yet: starting from scratch"
                    for name in ("never_written", "empty")]
    (tmp_path / "damaged" / "step00000004").mkdir(parents=True)
    (tmp_path / "dangling").mkdir()
    (tmp_path / "dangling" / "latest").write_text("step00000004")
    for name in ("damaged", "dangling"):
        with pytest.raises(UserError, match="no complete checkpoint to resume from .* does not start again from"):
            find(tmp_path / name)


def test_restricted_loading_holds_with_the_users_force_no_weights_only_switch(tmp_path, monkeypatch):
    """torch refuses every load when both of its switches are set; a user's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD must
    neither make resume fail nor let a payload run (DeepSpeed passes weights_only=False itself)."""
    from ds_kronos.train.checkpoint.safe_load import weights_only_loading

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    plain, planted, marker = tmp_path / "plain.pt", tmp_path / "planted.pt", tmp_path / "payload_ran"
    torch.save({"w": torch.ones(2)}, plain)
    torch.save({"p": Payload(marker)}, planted)
    with weights_only_loading():
        assert torch.equal(torch.load(plain, weights_only=False)["w"], torch.ones(2))
    with pytest.raises(UserError, match="not plain training state"), weights_only_loading():
        torch.load(planted, weights_only=False)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


class SavingEngine:
    """What save_training_state uses of a DeepSpeed engine. Its save_checkpoint writes as DeepSpeed's does at
    ZeRO-1/2: each rank its optimizer file and rank 0 the model file through the checkpoint engine (DeepSpeed's
    own TorchCheckpointEngine), and rank 0 a recovery script copied outside it."""

    def __init__(self, rank: int):
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        self.rank, self.checkpoint_engine = rank, TorchCheckpointEngine()

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        folder = Path(save_dir) / tag
        if self.rank == 0:
            self.checkpoint_engine.save({"module": {"w": torch.ones(4)}, **client_state},
                                        str(folder / "mp_rank_00_model_states.pt"))
            (folder / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script\n")
        self.checkpoint_engine.save({"state": torch.zeros(100 * (self.rank + 1))},
                                    str(folder / f"zero_pp_rank_{self.rank}_mp_rank_00_optim_states.pt"))

    def use_node_local_storage(self) -> bool:
        return False


def test_the_manifest_lists_every_ranks_files_when_rank_0s_listing_lags(tmp_path, monkeypatch):
    """On a shared filesystem rank 0's listing of the staging folder may miss another node's files (NFS caches
    listings and attributes): the manifest is assembled from each rank's report of its own files. Two ranks as two
    threads (the collectives between them faked with a thread barrier), rank 0 blind to rank 1's files."""
    import threading

    checkpoints, gate, reports = tmp_path / "checkpoints", threading.Barrier(2, timeout=60), [None, None]

    def rank() -> int:
        return int(threading.current_thread().name.removeprefix("rank"))

    def gather(obj):
        reports[rank()] = obj
        gate.wait()
        gathered = list(reports)
        gate.wait()
        return gathered

    listing = Path.rglob

    def lagging_listing(self, pattern):  # rank 0 does not see rank 1's files yet
        return (p for p in listing(self, pattern) if rank() != 0 or "rank_1_" not in p.name and "00001" not in p.name)

    monkeypatch.setattr(training_state, "barrier", lambda: gate.wait())
    monkeypatch.setattr(training_state, "all_gather_objects", gather, raising=False)
    monkeypatch.setattr(Path, "rglob", lagging_listing)
    layout = RunLayout(batch=BatchLayout(micro_batch=1, grad_accum=1, world_size=2), zero_stage=2,
                       optimizer_offload="none")
    errors = []

    def save(r: int) -> None:
        try:
            training_state.save_training_state(SavingEngine(r), Runtime(r, r, 2, torch.device("cpu"), 2),
                                               checkpoints, 4, {"step": 4}, keep_last=2, layout=layout)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            gate.abort()
    threads = [threading.Thread(target=save, args=(r,), name=f"rank{r}") for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    monkeypatch.undo()
    tag = checkpoints / "step00000004"
    files = json.loads((tag / "manifest.json").read_text())["files"]
    assert files == {p.name: p.stat().st_size for p in tag.iterdir() if p.name != "manifest.json"}
    assert {"zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_rank00001.safetensors", "zero_to_fp32.py"} <= set(files)
    candidates, notes = resume_candidates(checkpoints)
    assert [c.tag for c in candidates] == [tag.name], notes


def test_an_elastic_resume_without_room_for_the_conversion_is_one_line(tmp_path, monkeypatch):
    """The universal conversion needs about two more copies of the tag on its filesystem: refused before any engine
    is built when they do not fit, with one line naming both sizes and the way out; passed when they fit."""
    import shutil as shutil_module

    layout = {"world_size": 2, "micro_batch": 8, "grad_accum": 1, "zero_stage": 2, "optimizer_offload": "none"}
    checkpoints = fake_checkpoints(tmp_path, layout)
    (checkpoints / "step00000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 600_000)
    tag_bytes = sum(p.stat().st_size for p in (checkpoints / "step00000004").rglob("*") if p.is_file())
    usage = shutil_module.disk_usage(tmp_path)

    def free(nbytes: int):
        return lambda path: usage._replace(free=nbytes)

    monkeypatch.setattr(shutil_module, "disk_usage", free(2 * tag_bytes - 1))
    with pytest.raises(UserError, match="needs about") as raised:
        resume_source(checkpoints, "zero2", 1, micro=16)
    message = str(raised.value)
    assert "\n" not in message and "step00000004" in message and "resume on 2 rank(s)" in message
    monkeypatch.setattr(shutil_module, "disk_usage", free(2 * tag_bytes))
    assert resume_source(checkpoints, "zero2", 1, micro=16).universal
    assert resume_source(checkpoints, "zero2", 2).universal is False  # same world size: nothing to convert
