"""Every bad input of issue 10 through the real launch scripts: exit code 2, exactly one line
``prog: error: ...`` naming what is wrong, no traceback, and no output left behind. One case runs under the real
deepspeed launcher on 2 ranks to show the line comes from one rank only. Then the pieces the table relies on, in
process: the OSError mapping (a full disk, a read-only file system), who prints under a launcher, option files
read with the command line's types, and the DeepSpeed JSON checks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from helpers import REPO, run_job


@contextmanager
def unwritable(folder: Path) -> Iterator[bool]:
    """Make ``folder`` refuse new entries for the duration; yields False where this cannot be done here (root
    ignores permission bits, so root uses the immutable attribute, which needs chattr and a file system with it)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield True
        finally:
            folder.chmod(0o755)
        return
    locked = shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        yield locked
    finally:
        if locked:
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def _csv(path: Path, edit: tuple[int, str, str] | None = None, empty: bool = False) -> str:
    """200 one-minute bars (open 10, high 11, low 9, close 10.5, volume 100); ``edit`` = (line, column, text)."""
    header = ["timestamps", "open", "high", "low", "close", "volume"]
    rows = [[f"2024-01-02 {9 + i // 60:02d}:{i % 60:02d}:00", "10", "11", "9", "10.5", "100"] for i in range(200)]
    if empty:
        rows = [[r[0], "", "", "", "", ""] for r in rows]
    if edit is not None:
        line, column, text = edit
        rows[line - 2][header.index(column)] = text
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return str(path)


def _ds_json(path: Path, change) -> str:
    config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    change(config)
    path.write_text(json.dumps(config))
    return str(path)


def _damaged_copy(source: Path, target: Path, damage) -> str:
    shutil.copytree(source, target)
    for stale in target.glob(".ds_kronos_verified*"):
        stale.unlink()
    damage(target)
    return str(target)


def _nan_rows(folder: Path) -> None:
    values = np.load(folder / "train" / "values.npy", mmap_mode="r+")
    values[100:200, 3] = np.nan  # 100 rows of close: today this trains normally
    values.flush()


def _bad_offsets(folder: Path) -> None:
    offsets = np.load(folder / "val" / "offsets.npy", mmap_mode="r+")
    offsets[1] = offsets[2] + 7  # no longer increasing: today this fails mid-training
    offsets.flush()


def _manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _rows_as_text(manifest: dict) -> dict:
    manifest["splits"]["train"]["rows"] = "many"
    return manifest


def _s1_bits_40(folder: Path) -> str:
    from ds_kronos.model import Kronos

    Kronos.from_preset("tiny").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["s1_bits"] = 40  # 2**40 embedding rows: 281 TB before anything could fail cleanly
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _cases(tmp: Path, prepared: Path) -> dict[str, tuple[str, list[str], list[str], str | None]]:
    """name -> (script, argv, texts the one line must contain, output path that must not exist afterwards)."""
    a_file = tmp / "a_file"
    a_file.write_text("not a folder\n")
    locked = tmp / "locked"
    locked.mkdir()
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("lookback: abc\n")
    train_yaml = tmp / "train.yaml"
    train_yaml.write_text("epochs: many\n")
    csv_folder = tmp / "FOLDER.csv"
    csv_folder.mkdir()
    fractions = ["--split", "0.8,0.1,0.1", "--lookback", "10", "--predict", "2"]

    def prepare(csv: str, out: str = "OUT") -> list[str]:
        return ["--csv", csv, *fractions, "--out", out]

    def train(*extra: str, data: str | Path = prepared, save_dir: str = "OUT") -> list[str]:
        return ["--data", str(data), "--save_dir", save_dir, *extra]

    def ds(name: str, change) -> list[str]:
        return train("--deepspeed_config", _ds_json(tmp / f"{name}.json", change))

    cases = {
        # --- preparation: values (item 3) ---
        "all_nan_csv": ("prepare_data.py", prepare(_csv(tmp / "ALLNAN.csv", empty=True)),
                        ["ALLNAN.csv: column 'open' is empty (NaN) on every line"], "OUT"),
        "inf_value": ("prepare_data.py", prepare(_csv(tmp / "INF.csv", (8, "high", "inf"))),
                      ["INF: line 8 of", "column 'high'", "not a finite number"], "OUT"),
        "overflows_float32": ("prepare_data.py", prepare(_csv(tmp / "HUGE.csv", (9, "volume", "1e308"))),
                              ["HUGE: line 9 of", "column 'vol'", "1e+308 is beyond"], "OUT"),
        "non_positive_price": ("prepare_data.py", prepare(_csv(tmp / "ZERO.csv", (10, "low", "0"))),
                               ["ZERO: line 10 of", "column 'low'", "price 0 is not positive"], "OUT"),
        "high_below_low": ("prepare_data.py", prepare(_csv(tmp / "INVERTED.csv", (11, "high", "8"))),
                           ["INVERTED: line 11 of", "column 'high'", "high 8 is below low"], "OUT"),
        "negative_volume": ("prepare_data.py", prepare(_csv(tmp / "NEG.csv", (12, "volume", "-3"))),
                            ["NEG: line 12 of", "column 'vol'", "-3 is negative"], "OUT"),
        # --- preparation: paths and options (item 6) ---
        "unreadable_input": ("prepare_data.py", prepare(str(csv_folder)), [f"{csv_folder}: is a folder"], "OUT"),
        "out_is_a_file": ("prepare_data.py", prepare(_csv(tmp / "OK1.csv"), str(a_file)),
                          [f"{a_file}: output path exists"], None),
        "out_below_a_file": ("prepare_data.py", prepare(_csv(tmp / "OK2.csv"), str(a_file / "sub")),
                             [f"{a_file} is a file, not a folder"], str(a_file / "sub")),
        "out_unwritable": ("prepare_data.py", prepare(_csv(tmp / "OK3.csv"), str(locked / "new" / "out")),
                           [f"cannot write into {locked} ("], str(locked / "new")),
        "yaml_option_of_wrong_type": ("prepare_data.py", ["--config", str(bad_yaml), "--csv", "x.csv", "--out", "OUT"],
                                      ["option lookback: expected an integer, got 'abc'"], "OUT"),
        "demo_out_below_a_file": ("make_demo_data.py", ["--out", str(a_file / "demo")],
                                  [f"{a_file} is a file, not a folder"], None),
        # --- planner ---
        "memory_gb_nan": ("plan.py", ["--predictor", "tiny", "--memory_gb", "nan"],
                          ["--memory_gb: invalid float value: 'nan'"], None),
        "write_ds_config_missing_folder": ("plan.py", ["--predictor", "tiny", "--write_ds_config",
                                                       str(tmp / "missing" / "ds.json")],
                                           [f"folder {tmp / 'missing'} does not exist"], str(tmp / "missing")),
        # --- training: the prepared set (item 3) ---
        "sha256_mismatch_nan_rows": ("train.py", train(data=_damaged_copy(prepared, tmp / "nan_rows", _nan_rows)),
                                     ["train/values.npy: sha256", "differs from the manifest"], "OUT"),
        "offsets_not_increasing": ("train.py", train(data=_damaged_copy(prepared, tmp / "offsets", _bad_offsets)),
                                   ["val/offsets.npy: symbol", "grow by each symbol's rows"], "OUT"),
        "manifest_of_wrong_type": ("train.py", train(data=_damaged_copy(
            prepared, tmp / "manifest_list", lambda f: _manifest(f, lambda m: [m]))),
            ["manifest.json: expected a JSON object, got list"], "OUT"),
        "manifest_of_wrong_shape": ("train.py", train(data=_damaged_copy(
            prepared, tmp / "manifest_rows", lambda f: _manifest(f, _rows_as_text))),
            ["manifest.json: splits.train.rows must be an integer >= 0, got 'many'"], "OUT"),
        # --- training: outputs, options, models (item 6) ---
        "save_dir_is_a_file": ("train.py", train(save_dir=str(a_file)), [f"--save_dir {a_file}: is a file"], None),
        "save_dir_unwritable": ("train.py", train(save_dir=str(locked / "run")),
                                [f"folder {locked} is not writable"], str(locked / "run")),
        "train_yaml_option_of_wrong_type": ("train.py", ["--config", str(train_yaml), *train()],
                                            ["option epochs: expected an integer, got 'many'"], "OUT"),
        "s1_bits_40": ("train.py", train("--predictor", _s1_bits_40(tmp / "s1_bits_40")),
                       ["s1_bits must be at most 16, got 40"], "OUT"),
        "select_by_crps_one_path": ("train.py", train("--select_by", "crps", "--val_paths", "1"),
                                    ["--select_by crps needs --val_paths 2 or more", "got 1"], "OUT"),
        "select_by_without_origins": ("train.py", train("--select_by", "rank_ic", "--val_forecast_origins", "0"),
                                      ["--select_by rank_ic scores forecasts", "--val_forecast_origins must be 1"],
                                      "OUT"),
        # --- training: --finetune (issue 23 item 7) ---
        "lora_target_matches_nothing": ("train.py", train("--finetune", "lora", "--lora_targets", "q_proj,qkv"),
                                        ["--lora_targets: 'qkv' matches no module of the predictor (adaptable:"],
                                        "OUT"),
        "lora_rank_above_the_layer": ("train.py", train("--finetune", "lora", "--lora_rank", "100"),
                                      ["--lora_rank 100 is larger than the targeted layer", "(64 x 64)"], "OUT"),
        "freeze_everything": ("train.py", train("--finetune", "freeze", "--freeze", "*"),
                              ["--freeze * freezes every parameter of the predictor"], "OUT"),
        "unknown_signal": ("train.py", train("--save_on_signal", "TERM,BOGUS"),
                           ["--save_on_signal: unknown or unsupported signal 'BOGUS'", "or none"], "OUT"),
        # --- the container entrypoint (issue 32) ---
        "entrypoint_no_command": ("entrypoint.py", [], ["no command to run (usage: python launch/entrypoint.py"],
                                  None),
        "entrypoint_unforwardable_signal": ("entrypoint.py", ["--forward", "TERM,KILL", "--", "true"],
                                            ["--forward: unknown or unsupported signal 'KILL'"], None),
        # --- training: DeepSpeed JSON (item 6) ---
        "ds_zero_stage_4": ("train.py", ds("stage4", lambda c: c["zero_optimization"].update(stage=4)),
                            ["zero_optimization.stage must be 0, 1, 2 or 3, got 4"], "OUT"),
        "ds_negative_lr": ("train.py", ds("neglr", lambda c: c["optimizer"]["params"].update(lr=-1e-4)),
                           ["optimizer.params.lr must be a positive number", "-0.0001"], "OUT"),
        "ds_string_for_object": ("train.py", ds("string", lambda c: c.update(zero_optimization="stage 2")),
                                 ["zero_optimization must be an object", "'stage 2'"], "OUT"),
        "ds_unknown_optimizer": ("train.py", ds("adamx", lambda c: c["optimizer"].update(type="AdamX")),
                                 ["optimizer.type 'AdamX' is not an optimizer DeepSpeed knows (did you mean"], "OUT"),
        "ds_unknown_zero_key": ("train.py", ds("zerokey", lambda c: c["zero_optimization"].update(overlap_com=True)),
                                ["unknown key zero_optimization.overlap_com (did you mean 'overlap_comm'?)"], "OUT"),
        "ds_micro_batch_0": ("train.py", ds("micro0", lambda c: c.update(train_micro_batch_size_per_gpu=0)),
                             ["train_micro_batch_size_per_gpu must be a positive integer or \"auto\", got 0"], "OUT"),
        "ds_micro_batch_abc": ("train.py", ds("microabc", lambda c: c.update(train_micro_batch_size_per_gpu="abc")),
                               ["train_micro_batch_size_per_gpu must be a positive integer", "got 'abc'"], "OUT"),
        "ds_unknown_top_level_key": ("train.py", ds("toplevel", lambda c: c.update(
            zero_optimisation=c.pop("zero_optimization"))),
            ["unknown key 'zero_optimisation' (did you mean 'zero_optimization'?)"], "OUT"),
        # --- training: DeepSpeed's monitors (issue 24 item 7); today an OSError traceback from inside initialize ---
        "ds_monitor_path_is_a_file": ("train.py", ds("monitor", lambda c: c.update(
            csv_monitor={"enabled": True, "output_path": str(a_file)})),
            [f"csv_monitor.output_path/job_name {a_file}/DeepSpeedJobName: {a_file} is a file, not a folder"], "OUT"),
        "ds_comet_section_and_comet_option": (
            "train.py", ds("comet", lambda c: c.update(comet={"enabled": True, "online": False})) + [
                "--comet", "offline"],
            ["comet.enabled and --comet offline would each start a comet_ml experiment", "use one of them"], "OUT"),
    }
    if Path("/dev/full").exists():  # a device that answers every write with ENOSPC: a full disk, for real
        cases["full_disk"] = ("plan.py", ["--predictor", "tiny", "--write_ds_config", "/dev/full"],
                              ["no space left on /dev/full"], None)
    return cases


LOCKED_CASES = {"out_unwritable", "save_dir_unwritable"}


@pytest.fixture(scope="module")
def table(demo_prepared_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_inputs")
    cases = _cases(tmp, demo_prepared_dir)

    def run(name: str):
        script, argv, expected, out = cases[name]
        out = str(tmp / f"out_{name}") if out == "OUT" else out
        argv = [out if a == "OUT" else a for a in argv]
        result = run_job(script, argv, cwd=tmp)
        return name, (script, result, expected, out)

    with unwritable(tmp / "locked") as locked:
        # Two at a time: the machine has two cores, and each run is one interpreter start.
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = dict(pool.map(run, [n for n in cases if locked or n not in LOCKED_CASES]))
    return tmp, done, locked


CASE_NAMES = [
    "all_nan_csv", "inf_value", "overflows_float32", "non_positive_price", "high_below_low", "negative_volume",
    "unreadable_input", "out_is_a_file", "out_below_a_file", "out_unwritable", "yaml_option_of_wrong_type",
    "demo_out_below_a_file", "memory_gb_nan", "write_ds_config_missing_folder", "full_disk",
    "sha256_mismatch_nan_rows", "offsets_not_increasing", "manifest_of_wrong_type", "manifest_of_wrong_shape",
    "save_dir_is_a_file", "save_dir_unwritable", "train_yaml_option_of_wrong_type", "s1_bits_40",
    "select_by_crps_one_path", "select_by_without_origins",
    "lora_target_matches_nothing", "lora_rank_above_the_layer", "freeze_everything", "unknown_signal",
    "entrypoint_no_command", "entrypoint_unforwardable_signal",
    "ds_zero_stage_4", "ds_negative_lr", "ds_string_for_object", "ds_unknown_optimizer", "ds_unknown_zero_key",
    "ds_micro_batch_0", "ds_micro_batch_abc", "ds_unknown_top_level_key", "ds_monitor_path_is_a_file",
    "ds_comet_section_and_comet_option",
]


@pytest.mark.processes
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_ends_in_one_line(table, name):
    tmp, done, locked = table
    # Never skipped: a machine that cannot make a folder unwritable (root without chattr +i) or has no /dev/full
    # fails here, so a green run always means every case was exercised.
    assert name in done, ("cannot make a folder unwritable here (root needs chattr +i on this file system)"
                          if name in LOCKED_CASES else "no /dev/full here to simulate a full disk")
    script, result, expected, out = done[name]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    if out is not None:
        assert not Path(out).exists(), f"{out} was left behind"
    assert not list(tmp.rglob("*.tmp-*")), "a temporary folder was left behind"


def test_every_case_is_in_the_table(tmp_path, demo_prepared_dir):
    assert set(_cases(tmp_path, demo_prepared_dir)) <= set(CASE_NAMES)


@pytest.mark.processes
def test_a_data_error_under_the_launcher_is_one_line_from_one_rank(demo_prepared_dir, tmp_path):
    """Both ranks meet the same damaged set (100 rows of NaN after preparation): one line, from rank 0."""
    data = _damaged_copy(demo_prepared_dir, tmp_path / "nan_rows", _nan_rows)
    result = run_job("train.py", ["--data", data, "--save_dir", str(tmp_path / "run")], processes=2, cwd=tmp_path)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "error:" in line]
    assert result.returncode != 0
    assert len(errors) == 1, errors
    assert "train.py: error: " in errors[0] and "values.npy: sha256" in errors[0] and "[rank" not in errors[0]
    assert "Traceback" not in output
    assert not (tmp_path / "run").exists()


# --- the pieces, in process ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, filename, expected", [
    (errno.ENOSPC, "/data/run/ckpt.pt", "no space left on /data/run/ckpt.pt"),
    (errno.ENOSPC, None, "no space left on device"),
    (errno.EROFS, "/mnt/ro/out", "/mnt/ro/out: read-only file system"),
    (errno.EACCES, "/srv/out", "/srv/out: permission denied"),
    (errno.ENOTDIR, "/tmp/file/sub", "/tmp/file/sub: not a folder (a file is in the way)"),
])
def test_os_errors_about_the_users_files_become_one_line(code, filename, expected, monkeypatch, capsys):
    from ds_kronos.cli import EXIT_USER_ERROR, run_main

    def main(argv):
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.delenv("DS_KRONOS_TRACEBACK", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as stop:
        run_main(main)
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err.strip().endswith(f"error: {expected}")


def test_a_write_that_loses_its_errno_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """numpy's tofile (inside np.save) raises a bare OSError when the disk is full (seen on a 64 KiB tmpfs)."""
    import shutil as shutil_module

    from ds_kronos.cli import describe_os_error
    from ds_kronos.errors import naming_path

    def failing_write():
        with naming_path(tmp_path / "out"):
            raise OSError()

    with pytest.raises(OSError) as err:
        failing_write()
    assert err.value.errno is None and err.value.filename == str(tmp_path / "out")  # space left: not guessed
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: shutil_module._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError) as err:
        failing_write()
    assert describe_os_error(err.value) == f"no space left on {tmp_path / 'out'}"


def test_other_errors_keep_their_traceback(monkeypatch):
    from ds_kronos.cli import run_main

    def missing(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/where/the/code/expected/it")

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/x")

    monkeypatch.delenv("DS_KRONOS_TRACEBACK", raising=False)
    with pytest.raises(FileNotFoundError):  # may be a bug: not disguised as the user's mistake
        run_main(missing)
    with pytest.raises(ZeroDivisionError):
        run_main(lambda argv: 1 / 0)
    monkeypatch.setenv("DS_KRONOS_TRACEBACK", "1")
    with pytest.raises(OSError):
        run_main(full)


def test_only_rank_0_reports_what_every_rank_meets(monkeypatch, capsys):
    import ds_kronos.cli as cli
    from ds_kronos.errors import DataError, UserError

    monkeypatch.setattr(cli, "QUIET_RANK_GRACE_S", 0.0)
    monkeypatch.setattr(cli, "_group_ready", lambda: True)  # after the process group exists, as in training

    def failing(error: Exception):
        def main(argv):
            raise error
        return main

    for rank, error, printed in [(0, DataError("bad data"), True), (1, DataError("bad data"), False),
                                 (1, UserError("out of memory on this GPU", rank_specific=True), True)]:
        monkeypatch.setenv("RANK", str(rank))
        with pytest.raises(SystemExit):
            cli.run_main(failing(error))
        err = capsys.readouterr().err
        assert bool(err) == printed, (rank, err)
        if printed and rank:
            assert err.startswith(f"[rank {rank}] ")


def test_a_data_error_in_a_dataloader_worker_is_still_one_line(demo_prepared_dir, tmp_path, monkeypatch, capsys):
    """torch re-raises a worker's exception with the worker's traceback inside its message."""
    from torch.utils.data import DataLoader

    from ds_kronos.cli import run_main
    from ds_kronos.data import PreparedDataset, WindowDataset

    data = _damaged_copy(demo_prepared_dir, tmp_path / "nan_rows", _nan_rows)
    dataset = WindowDataset(PreparedDataset.open(data), "train", shuffle=False)

    def main(argv):
        for _ in DataLoader(dataset, batch_size=64, num_workers=1):
            pass

    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit):
        run_main(main)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.endswith("non-finite value in the prepared data (check the folder with "
                        "ds_kronos.data.verify_prepared)") and "error: split 'train', symbol " in err


def test_option_files_get_the_command_lines_types(tmp_path):
    from ds_kronos.config import parse_config
    from ds_kronos.data.prepare_config import PrepareConfig
    from ds_kronos.errors import ConfigError

    path = tmp_path / "prepare.yaml"
    # YAML reads 1e-4-like numbers without a dot as strings and dates as dates; both mean what they say.
    path.write_text("qlib_dir: q\nout: o\ntrain_range: [2012-01-01, 2019-12-31]\nlookback: 60.0\nsplit: null\n"
                    "overwrite: 'yes'\n")
    config = parse_config(PrepareConfig, ["--config", str(path)])
    assert config.train_range == ["2012-01-01", "2019-12-31"] and config.lookback == 60
    assert config.overwrite is True and config.split is None
    path.write_text("lookback: 1.5\nbad_rows: maybe\noverwrite: [1]\ninstrument: {a: 1}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(PrepareConfig, ["--config", str(path), "--qlib_dir", "q", "--out", "o"])
    message = str(err.value)
    assert "\n" not in message
    for text in ("option lookback: expected an integer, got 1.5", "option bad_rows: 'maybe' is not one of refuse, "
                 "drop", "option overwrite: expected true/false, got [1]", "option instrument: expected a string"):
        assert text in message, message


def test_shipped_deepspeed_configs_and_common_keys_pass():
    from ds_kronos.deepspeed_json.checks import ds_config_problems, known_top_level_keys

    for path in sorted((REPO / "ds_configs").glob("*.json")):
        assert ds_config_problems(json.loads(path.read_text())) == [], path.name
    common = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
              "scheduler", "fp16", "bf16", "zero_optimization", "gradient_clipping", "steps_per_print",
              "wall_clock_breakdown", "activation_checkpointing", "flops_profiler", "tensorboard", "wandb",
              "csv_monitor", "comet", "communication_data_type", "prescale_gradients", "checkpoint", "data_types",
              "aio", "zero_allow_untested_optimizer", "torch_autocast", "compile", "tensor_parallel"}
    assert common <= known_top_level_keys()
    auto = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    auto["zero_optimization"]["reduce_bucket_size"] = "auto"  # DeepSpeed's own models accept "auto" values
    auto["bf16"] = {"enabled": "auto"}
    assert ds_config_problems(auto) == []


def test_monitor_sections_are_checked_as_deepspeed_reads_them(tmp_path, monkeypatch):
    """DeepSpeed's own models decide what is on ("yes" is) and which keys exist; an enabled monitor whose package
    is missing names the install; a disabled one is not looked at."""
    import importlib.util

    from ds_kronos.deepspeed_json.checks import ds_config_problems
    from ds_kronos.train.observe.monitors import monitor_problems

    config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    config["tensorboard"] = {"enabled": "yes", "output_path": str(a_file / "below"), "job_name": "run"}
    config["csv_monitor"] = {"enabled": False, "output_path": str(a_file)}
    config["wandb"] = {"enabled": True, "projct": "x"}
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else found(name))
    assert ds_config_problems(config) == ["unknown key wandb.projct (did you mean 'project'?)"]
    assert monitor_problems(config) == [
        "tensorboard.enabled needs the tensorboard package, which is not installed (pip install '.[tensorboard]')",
        f"tensorboard.output_path/job_name {a_file}/below/run: {a_file} is a file, not a folder"]
    config = {"comet": {"enabled": True, "online": False}}
    assert monitor_problems(config) == [] and monitor_problems(config, "online")[0].startswith(
        "comet.enabled and --comet online would each start a comet_ml experiment")
    assert monitor_problems({"comet": {"enabled": False}}, "offline") == []


def test_comet_ml_ends_a_running_experiment_when_another_starts(tmp_path, monkeypatch):
    """Why a comet section and --comet are refused together: DeepSpeed starts its experiment (comet_ml.start) inside
    deepspeed.initialize, --comet's starts after it, and comet_ml then ends DeepSpeed's, which logs nothing more."""
    import comet_ml

    monkeypatch.setenv("COMET_DISABLE_AUTO_LOGGING", "1")
    monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(tmp_path / "deepspeed"))
    deepspeeds = comet_ml.start(online=False)  # as deepspeed/monitor/comet.py starts it
    ours = comet_ml.OfflineExperiment(offline_directory=str(tmp_path / "ours"), display_summary_level=0)
    try:
        assert deepspeeds.ended and not ours.ended
    finally:
        ours.end()


def test_deepspeed_json_problems_are_listed_in_one_line(tmp_path):
    from ds_kronos.deepspeed_json.resolve import load_ds_config
    from ds_kronos.errors import ConfigError

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 0, "betas": [0.9]}},
                                "scheduler": {"type": "WarmupCosine", "params": {"total_num_steps": -1}},
                                "gradient_accumulation_steps": True, "amp": {"enabled": True},
                                "bf16": {"enabled": True, "loss_scale": 1}}))
    with pytest.raises(ConfigError) as err:
        load_ds_config(str(path))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--deepspeed_config {path}: ")
    for text in ("optimizer.params.lr must be a positive number", "optimizer.params.betas must be two numbers",
                 "scheduler.type 'WarmupCosine' is not a scheduler DeepSpeed knows (did you mean 'WarmupCosineLR'?)",
                 "scheduler.params.total_num_steps must be an integer >= 1", "gradient_accumulation_steps must be a "
                 "positive integer", "amp: ", "unknown key bf16.loss_scale"):
        assert text in message, (text, message)
