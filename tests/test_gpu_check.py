"""benchmarks/gpu_check.sh, the GPU acceptance check, rehearsed on the CPU (--dry-run): its cheap sections pass and
the report is one JSON line, also written to $OUT; a section past its time cap is reported and the next one runs.
(The whole dry-run, training sections included, takes minutes: docs/gpu_check.md.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, env

pytestmark = pytest.mark.processes

CHEAP = ["environment", "golden", "tokenizer_fp16", "kv_cache"]


def test_dry_run_of_the_cheap_sections_reports_each_ok(tmp_path):
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--sections",
                             ",".join(CHEAP)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=env(PYTHON=sys.executable, WHEELS="", OUT=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["sections"]) == CHEAP
    assert report["ok"] and report["failed"] == [], json.dumps(report)[-3000:]
    assert sorted(p.name for p in (tmp_path / "gpu_check_logs").iterdir()) == sorted(f"{n}.log" for n in CHEAP)
    golden = report["sections"]["golden"]
    assert golden["fp32"]["max_abs"] <= 1e-5 and golden["fp32"]["ids_changed_share"] == {"s1_ids": 0, "s2_ids": 0}
    assert 0 < golden["bf16"]["max_abs"] <= golden["tolerances"]["bf16"]["atol"]  # bf16 really ran in bf16
    assert report["sections"]["kv_cache"]["identical"]
    assert 0 <= report["sections"]["tokenizer_fp16"]["fp16"]["either_changed"] < 1


def test_a_section_past_its_cap_is_reported_and_the_next_still_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "DRY_RUN_CAP_S", 0.2)  # less than importing torch takes
    report = gpu_check.check(["golden", "kv_cache"], dry_run=True, budget_s=60, workdir=tmp_path)
    assert not report["ok"] and report["failed"] == ["golden", "kv_cache"]
    for section in report["sections"].values():
        assert section["error"].startswith("timed out") and section["seconds"] < 10
