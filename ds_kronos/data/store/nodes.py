"""Preparing one store on several machines: each node prepares a disjoint share of the buckets (``--num_nodes N
--node_rank K``: buckets K, K + N, ...) and lists its shards in ``store.node-K.json``; once every node's shards and
list are in one folder (a shared file system, or copied there), ``--join`` checks that the lists agree and are
complete and writes the store's index from them. Joining reads no array data, so it takes a moment at any size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ds_kronos.atomic import write_text_atomic
from ds_kronos.data.store.shards import INDEX_NAME, write_index
from ds_kronos.errors import DataError

NODE_INDEX_PREFIX = "store.node-"
_SAME = ("lookback", "predict", "bad_rows", "splits", "fields")
"""Settings every node must have prepared with."""


def write_node_index(out: Path, rank: int, nodes: int, buckets: int, meta: dict, entries: list[dict]) -> dict:
    node = {"node_rank": rank, "num_nodes": nodes, "buckets": buckets, "meta": meta, "shards": entries}
    write_text_atomic(out / f"{NODE_INDEX_PREFIX}{rank}.json", json.dumps(node) + "\n")
    return node


def join_store(out: Path, log: Callable[[str], None] = print) -> dict:
    """Write ``out``'s index from the nodes' shard lists; one line naming what is missing or disagrees."""
    if (out / INDEX_NAME).is_file():
        raise DataError(f"--join: {out} is already a complete store ({INDEX_NAME} exists)")
    lists = sorted(out.glob(f"{NODE_INDEX_PREFIX}*.json"))
    if not lists:
        raise DataError(f"--join: {out} holds no {NODE_INDEX_PREFIX}K.json; prepare with --num_nodes and "
                        f"--node_rank on every node first")
    nodes = []
    for path in lists:
        try:
            nodes.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise DataError(f"--join: {path}: unreadable ({exc})") from None
    first = nodes[0]
    for node, path in zip(nodes, lists):
        if (node["num_nodes"], node["buckets"]) != (first["num_nodes"], first["buckets"]) or any(
                node["meta"][k] != first["meta"][k] for k in _SAME):
            raise DataError(f"--join: {path} was prepared with other settings than {lists[0]} (nodes, buckets, "
                            f"lookback, predict, splits, bad-row policy or columns); prepare every node alike")
    missing = sorted(set(range(first["num_nodes"])) - {n["node_rank"] for n in nodes})
    if missing:
        raise DataError(f"--join: no shard list from node(s) {', '.join(map(str, missing))} of "
                        f"{first['num_nodes']} in {out}; copy their {NODE_INDEX_PREFIX}K.json and shards/ here")
    for node in nodes:
        for entry in node["shards"]:
            if not (out / "shards" / entry["name"]).is_dir():
                raise DataError(f"--join: shard {entry['name']} of node {node['node_rank']} is not in "
                                f"{out / 'shards'}; copy that node's shards/ here")
    meta = dict(first["meta"])
    dropped = {"too_short": [], "skipped": [], "bad_rows": {}, "dropped_rows": {}}
    for node in nodes:
        for key in ("too_short", "skipped"):
            dropped[key] += node["meta"]["dropped"][key]
        for key in ("bad_rows", "dropped_rows"):
            dropped[key].update(node["meta"]["dropped"][key])
    meta.update(dropped=dropped, sources=[s for n in nodes for s in n["meta"]["sources"]])
    index = write_index(out, meta, [e for n in nodes for e in n["shards"]])
    for path in lists:
        path.unlink()
    log(f"joined {len(nodes)} nodes' shard lists: {len(index['shards'])} shards in {out}")
    return index
