"""Nodes that each hold their own copy of the data (no shared file system), at any path: every copy must have the
same content, and a different one is refused with one line naming the first shard (or file) that differs.

Each node first verifies its own copy against its own index (:func:`ds_kronos.data.verify.verify_prepared`: every
byte hashed, once per node and change), so a copy's index hash stands for its content. Then the ranks compare
those hashes, 64 characters each; only when they differ do they exchange the per-shard hashes that name the shard.
The exchange is the caller's ``gather`` (every rank's object in rank order, e.g.
:func:`ds_kronos.runtime.all_gather_objects`): the data layer starts no collective of its own.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from ds_kronos.data.prepared import PreparedDataset
from ds_kronos.errors import DataError

Gather = Callable[[Any], list[Any]]


def content_hash(prepared: PreparedDataset) -> str:
    """The hash that stands for the whole content: a store's index hash (over its shards' hashes), a format-1
    folder's manifest hash (over its files)."""
    return str(prepared.manifest["sha256"])


def part_hashes(prepared: PreparedDataset) -> dict[str, str]:
    """What the content hash is made of, by name: a store's shards, a format-1 folder's files."""
    if "shards" in prepared.manifest:
        return {entry["name"]: entry["sha256"] for entry in prepared.manifest["shards"]}
    return dict(prepared.manifest["file_sha256"])


def copy_difference(mine: dict[str, str], reference: dict[str, str], kind: str = "shard") -> str | None:
    """The first part (in name order) that one copy lacks or holds with another hash; None when they agree."""
    for name in sorted(set(mine) | set(reference)):
        if name not in mine:
            return f"{kind} {name} is missing"
        if name not in reference:
            return f"{kind} {name} is extra"
        if mine[name] != reference[name]:
            return f"{kind} {name} differs (sha256 {mine[name][:12]}... against {reference[name][:12]}...)"
    return None


def check_same_copies(prepared: PreparedDataset, gather: Gather) -> None:
    """Collective (every rank calls it, after verifying its copy): refuse, on every rank, when some rank's copy
    has other content than rank 0's, naming that rank's host, path and first differing shard."""
    where = {"host": socket.gethostname(), "path": str(prepared.path.resolve())}
    hashes = gather(content_hash(prepared))
    if len(set(hashes)) == 1:
        return
    described = gather({**where, "parts": part_hashes(prepared)})
    reference = described[0]
    for rank, (digest, copy) in enumerate(zip(hashes, described)):
        if digest == hashes[0]:
            continue
        kind = "shard" if "shards" in prepared.manifest else "file"
        difference = copy_difference(copy["parts"], reference["parts"], kind) or "its index differs"
        raise DataError(f"--data: the copy on {copy['host']} at {copy['path']} (rank {rank}) is not the data on "
                        f"{reference['host']} at {reference['path']} (rank 0): {difference}; stage the same "
                        f"prepared data on every node (docs/data_format.md, 'Several nodes')")
