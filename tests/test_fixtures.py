"""The vendored test data (tests/fixtures/) is complete and unchanged: every file matches the checksum listed in
its README, and every file there is listed, so the provenance notes cover all of it."""

from __future__ import annotations

import hashlib
import re

from helpers import fixtures_dir

# Written by us, not vendored: they describe the rest.
OWN_FILES = {"README.md", "LICENSE-Kronos"}
CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$")


def _listed() -> dict[str, str]:
    text = (fixtures_dir() / "README.md").read_text(encoding="utf-8")
    return {m.group(2): m.group(1) for line in text.splitlines() if (m := CHECKSUM_LINE.match(line))}


def test_every_fixture_is_listed_and_matches_its_checksum():
    listed = _listed()
    on_disk = {p.relative_to(fixtures_dir()).as_posix() for p in fixtures_dir().rglob("*") if p.is_file()}
    assert "kline_5min_2500.csv" in listed and "golden/vectors.npz" in listed
    assert on_disk - OWN_FILES == set(listed), "tests/fixtures/README.md must list exactly the vendored files"
    for name, digest in listed.items():
        assert hashlib.sha256((fixtures_dir() / name).read_bytes()).hexdigest() == digest, name


def test_golden_set_matches_its_own_checksums():
    """The golden set's SHA256SUMS, written by its generator, agrees with the copy (nothing was re-saved)."""
    golden = fixtures_dir() / "golden"
    lines = (golden / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    sums = dict(reversed(CHECKSUM_LINE.match(line).groups()) for line in lines if line.strip())
    assert {"vectors.npz", "grads.npz", "tokenizer/model.safetensors", "predictor/model.safetensors"} <= set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((golden / name).read_bytes()).hexdigest() == digest, name
