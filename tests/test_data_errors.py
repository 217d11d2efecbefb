"""Bad input through the launch scripts' mains, as their command lines run them (in this process: every check ends
before any process starts; tests/test_bad_inputs.py runs both scripts as real interpreters too): one clear line
naming the file or symbol, exit code 2, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_in_process


def _csv(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _cases(tmp: Path, qlib_dir: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the one-line message must contain)."""
    empty = tmp / "empty_qlib"
    empty.mkdir()
    rows = [f"2024-01-02 09:{30 + i:02d}:00,1,2,0.5,1.5,100" for i in range(20)]
    no_close = _csv(tmp / "NOCLOSE.csv", "timestamps,open,high,low,volume",
                    [r.rsplit(",", 2)[0] + ",100" for r in rows])
    text_val = _csv(tmp / "TEXTY.csv", "timestamps,open,high,low,close,volume",
                    rows[:5] + ["2024-01-02 10:00:00,1,2,abc,1.5,100"] + rows[6:])
    short = _csv(tmp / "SHORT.csv", "timestamps,open,high,low,close,volume", rows)
    exists = tmp / "already_there"
    exists.mkdir()
    (exists / "manifest.json").write_text("{}")
    q = ["--qlib_dir", str(qlib_dir)]
    return {
        "missing_qlib_dir": (["--qlib_dir", str(tmp / "nope"), "--out", "OUT"],
                             f"{tmp / 'nope'}: Qlib folder not found"),
        "empty_qlib_dir": (["--qlib_dir", str(empty), "--out", "OUT"], f"{empty}: not a Qlib provider folder"),
        "unknown_instrument": (q + ["--instrument", "csi999", "--out", "OUT"], "unknown instrument 'csi999'"),
        "unknown_symbol": (q + ["--instrument", "SH999999,SZ999999", "--out", "OUT"], "SH999999, SZ999999"),
        "range_without_data": (q + ["--instrument", "all", "--train_range", "1990-01-01,1995-12-31", "--out", "OUT"],
                               "train range 1990-01-01..1995-12-31 has no symbol"),
        "no_data_at_all": (q + ["--instrument", "all", "--train_range", "1990-01-01,1990-12-31", "--val_range",
                                "1991-01-01,1991-12-31", "--test_range", "1992-01-01,1992-12-31", "--out", "OUT"],
                           "instruments/all.txt: no symbols listed"),
        "csv_missing_column": (["--csv", no_close, "--split", "0.8,0.1,0.1", "--out", "OUT"],
                               f"{no_close}: missing required column 'close'"),
        "csv_non_numeric": (["--csv", text_val, "--split", "0.8,0.1,0.1", "--out", "OUT"],
                            f"{text_val}: column 'low' has a non-numeric value 'abc' on line 7"),
        "all_series_too_short": (["--csv", short, "--split", "0.8,0.1,0.1", "--out", "OUT"],
                                 f"{short}: every series is shorter than one window"),
        "output_exists": (q + ["--instrument", "all", "--out", str(exists)], f"{exists}: output path exists"),
        "qlib_and_csv": (q + ["--csv", short, "--out", "OUT"], "give exactly one of --qlib_dir DIR, --csv FILE"),
        "bad_range": (q + ["--train_range", "2011-01-01", "--out", "OUT"], "--train_range: expected START,END"),
        "demo_output_exists": (["--out", str(qlib_dir)], f"{qlib_dir}: output path exists"),
    }


@pytest.fixture(scope="module")
def cases(demo_qlib_dir, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, _cases(tmp, demo_qlib_dir)


def run_case(tmp: Path, table: dict, name: str, capfd) -> tuple[int, str, Path, str]:
    argv, expected = table[name]
    out = tmp / f"out_{name}"
    script = "make_demo_data.py" if name.startswith("demo") else "prepare_data.py"
    code, err = run_in_process(script, [str(out) if a == "OUT" else a for a in argv], capfd)
    return code, err, out, expected


CASES = ["missing_qlib_dir", "empty_qlib_dir", "unknown_instrument", "unknown_symbol", "range_without_data",
         "no_data_at_all", "csv_missing_column", "csv_non_numeric", "all_series_too_short", "output_exists",
         "qlib_and_csv", "bad_range", "demo_output_exists"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_clear_line(cases, name, capfd, monkeypatch):
    tmp, table = cases
    monkeypatch.chdir(tmp)
    returncode, stderr, out, expected = run_case(tmp, table, name, capfd)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith(("prepare_data.py: error: ", "make_demo_data.py: error: "))
    assert expected in lines[0], lines[0]
    assert not out.exists()
    assert not list(tmp.glob("*.tmp-*"))


def test_existing_output_is_untouched(cases, capfd):
    tmp, table = cases
    assert run_case(tmp, table, "output_exists", capfd)[0] == 2
    assert (tmp / "already_there" / "manifest.json").read_text() == "{}"
