"""Preparing a store (format 2) out of core and in parallel, resuming after an interruption, or appending to one.

Symbols are spread over buckets (crc32 of the name) so that one bucket fits a worker's share of ``--memory_gb``.
Parquet input is first partitioned into per-bucket parts (:mod:`ds_kronos.data.store.partition`, one input file
per task); CSV files are grouped by bucket whole. Each bucket becomes one shard (:mod:`ds_kronos.data.store.bucket`)
in a pool of ``--workers`` processes. The plan (inputs, buckets) and each finished task are recorded under
``OUT/.work``: running the same command again after an interruption skips what is done and keeps finished shards.
The index is written last, so a store without ``store.json`` is never taken for a complete one.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
from pathlib import Path
from typing import Callable, Iterable

import pyarrow.parquet as pq

from ds_kronos.atomic import write_text_atomic
from ds_kronos.data.csv_source import has_amount
from ds_kronos.data.prepare_config import PrepareConfig
from ds_kronos.data.store.bucket import BucketJob, run_bucket
from ds_kronos.data.store.nodes import NODE_INDEX_PREFIX, write_node_index
from ds_kronos.data.store.partition import bucket_of, expand_inputs, file_fields, partition_file
from ds_kronos.data.store.shards import INDEX_NAME, read_index, write_index, write_shard
from ds_kronos.errors import DataError, naming_path

GIB = 1 << 30
BASE_BYTES = 200 << 20
"""Resident memory of one preparation process before it holds any bars (interpreter, numpy, pandas, pyarrow)."""
BUCKET_BYTES_PER_BAR = 400
"""Peak bytes per bar while a worker turns a bucket into a shard (Arrow table, float64 copies, sort order)."""
CSV_BYTES_PER_FILE_BYTE = 12
"""Peak bytes per byte of CSV while its file is parsed (pandas reads every field as a string)."""
FINE_BUCKETS = 4
"""Buckets per worker-sized job: consecutive buckets are packed into one job (one shard) by their real sizes,
known once they are partitioned, so jobs come close to a worker's share at any corpus size (memory stays flat)
rather than varying with how the hash happened to spread the symbols."""


def _pool_map(workers: int, function: Callable, tasks: list) -> Iterable:
    if workers <= 1 or len(tasks) <= 1:
        return map(function, tasks)
    pool = multiprocessing.get_context("fork").Pool(min(workers, len(tasks)))
    return _closing(pool, pool.imap_unordered(function, tasks))


def _closing(pool, results: Iterable) -> Iterable:
    try:
        yield from results
    finally:
        pool.terminate()
        pool.join()


def _plan(config: PrepareConfig, generation: int, window: int) -> dict:
    if config.parquet:
        files = expand_inputs(config.parquet, ".parquet")
        fields = [file_fields(p, config.symbol_column) for p in files]
        bars = sum(rows for rows, _ in fields)
        need, amount = bars * BUCKET_BYTES_PER_BAR, all(a for _, a in fields)
    else:
        files = expand_inputs(config.csv, ".csv")
        need, amount = sum(p.stat().st_size for p in files) * CSV_BYTES_PER_FILE_BYTE, all(map(has_amount, files))
    share = (config.memory_gb * GIB) / config.workers - BASE_BYTES
    if share <= 0:
        raise DataError(f"--memory_gb {config.memory_gb:g} is too small for {config.workers} worker(s): each needs "
                        f"about {BASE_BYTES >> 20} MiB before it holds any bars")
    buckets = max(config.workers, math.ceil(need / share)) * FINE_BUCKETS
    # Size and mtime of each input: a resumed preparation reuses parts only of the very same files.
    stamps = [[p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return {"kind": "parquet" if config.parquet else "csv", "inputs": [str(p) for p in files], "stamps": stamps,
            "buckets": buckets,
            "generation": generation, "window": window, "bad_rows": config.bad_rows,
            "symbol_column": config.symbol_column, "amount": amount, "buffer_bytes": int(share // 4),
            "job_bytes": int(share),
            "node": [config.node_rank, config.num_nodes]}


def _owned(bucket: int, plan: dict) -> bool:
    """Whether this node prepares ``bucket`` (with --num_nodes N, node k takes buckets k, k + N, ...)."""
    rank, nodes = plan["node"]
    return bucket % nodes == rank


def _start(out: Path, config: PrepareConfig) -> tuple[dict | None, Path]:
    """The existing index when appending; and the work folder, emptied unless it holds this same plan."""
    if config.append:
        if not (out / INDEX_NAME).is_file():
            raise DataError(f"--append: {out} is not a store (no {INDEX_NAME}); prepare it first without --append")
        return read_index(out), out / ".append"
    if (out / INDEX_NAME).is_file() or (out / "manifest.json").is_file():
        if not config.overwrite:
            raise DataError(f"{out}: output path exists; pass --overwrite to replace it, or --append to add to it")
        shutil.rmtree(out)
    elif out.exists() and (not out.is_dir() or any(p.name not in ("shards", ".work") and not p.name.startswith(
            (".work-node", NODE_INDEX_PREFIX)) for p in out.iterdir())):
        raise DataError(f"{out}: exists and is not a store; refusing to write into it")
    return None, out / (".work" if config.num_nodes == 1 else f".work-node{config.node_rank}")


def _resume_or_reset(work: Path, shards: Path, plan: dict, log: Callable[[str], None]) -> None:
    plan_file = work / "plan.json"
    try:
        if json.loads(plan_file.read_text(encoding="utf-8")) == plan:
            log(f"resuming the interrupted preparation in {work} (finished parts and shards are kept)")
            return
    except (OSError, ValueError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    for folder in shards.glob(f"g{plan['generation']:03d}-b*") if shards.is_dir() else []:
        if _owned(int(folder.name.split("-b")[1]), plan):
            shutil.rmtree(folder)  # shards of another plan's unfinished run
    (work / "done").mkdir(parents=True)
    write_text_atomic(plan_file, json.dumps(plan) + "\n")


def _partition(plan: dict, work: Path, workers: int, log: Callable[[str], None]) -> None:
    pending = [i for i in range(len(plan["inputs"])) if not (work / "done" / f"f{i:06d}").exists()]
    if not pending:
        return
    log(f"partitioning {len(pending)} Parquet file(s) into {plan['buckets']} buckets with {workers} worker(s)")
    tasks = [(i, (Path(plan["inputs"][i]), i, work / "parts", plan["buckets"], plan["symbol_column"],
                  plan["buffer_bytes"], None if plan["node"][1] == 1 else
                  {b for b in range(plan["buckets"]) if _owned(b, plan)})) for i in pending]
    for i, _ in _pool_map(workers, _indexed_partition, tasks):
        (work / "done" / f"f{i:06d}").write_text("", encoding="utf-8")  # all of this file's parts are in place


def _indexed_partition(item: tuple) -> tuple[int, int]:
    return item[0], partition_file(*item[1])


def _bucket_bytes(plan: dict, work: Path, csv_by_bucket: dict[int, list[Path]], b: int) -> tuple[list[Path], int]:
    """A bucket's parts (Parquet) and the memory turning it into a shard is expected to take."""
    if plan["kind"] == "csv":
        return [], sum(p.stat().st_size for p in csv_by_bucket.get(b, [])) * CSV_BYTES_PER_FILE_BYTE
    parts = sorted((work / "parts" / f"b{b:05d}").glob("f*.parquet"))
    return parts, sum(pq.ParquetFile(p).metadata.num_rows for p in parts) * BUCKET_BYTES_PER_BAR


def _groups(plan: dict, work: Path, csv_by_bucket: dict[int, list[Path]]) -> list[tuple[list[int], list[Path]]]:
    """This node's non-empty buckets packed, in order, into jobs of at most a worker's share (a bucket larger than
    that is a job alone): [(buckets, their parts)]. Deterministic, so a resumed run finds the same jobs."""
    groups: list[tuple[list[int], list[Path]]] = []
    held = 0
    for b in range(plan["buckets"]):
        if not _owned(b, plan):
            continue
        parts, size = _bucket_bytes(plan, work, csv_by_bucket, b)
        if size == 0:
            continue
        if not groups or held + size > plan["job_bytes"]:
            groups.append(([], []))
            held = 0
        groups[-1][0].append(b)
        groups[-1][1].extend(parts)
        held += size
    return groups


def _bucket_jobs(plan: dict, work: Path, shards: Path, config: PrepareConfig, stored: dict[str, int]) -> list:
    jobs = []
    csv_by_bucket: dict[int, list[Path]] = {}
    if plan["kind"] == "csv":
        for p in plan["inputs"]:
            csv_by_bucket.setdefault(bucket_of(Path(p).stem, plan["buckets"]), []).append(Path(p))
    for buckets, parts in _groups(plan, work, csv_by_bucket):
        shard = f"g{plan['generation']:03d}-b{buckets[0]:05d}"
        if (work / "done" / f"{shard}.json").exists():
            continue
        shutil.rmtree(shards / shard, ignore_errors=True)  # written, but its result not recorded: do it again
        mine = {s: t for s, t in stored.items() if bucket_of(s, plan["buckets"]) in buckets}
        jobs.append(BucketJob(shard=shard, shards_dir=shards, window=plan["window"], bad_rows=config.bad_rows,
                              parts=parts, csv_files=[p for b in buckets for p in csv_by_bucket.get(b, [])],
                              stored_last=mine))
    return jobs


def _run_buckets(jobs: list[BucketJob], work: Path, workers: int, log: Callable[[str], None]) -> None:
    if jobs:
        log(f"writing {len(jobs)} shard(s) with {workers} worker(s)")
    for job, result in _pool_map(workers, _job_and_result, jobs):
        write_text_atomic(work / "done" / f"{job.shard}.json", json.dumps(result) + "\n")


def _job_and_result(job: BucketJob) -> tuple[BucketJob, dict]:
    return job, run_bucket(job)


def _merge(results: list[dict], old: dict | None, config: PrepareConfig, plan: dict, fields: list[str]) -> tuple:
    entries = [r["entry"] for r in results if r["entry"]]
    dropped = {"too_short": [], "skipped": [], "bad_rows": {}, "dropped_rows": {}} if old is None \
        else json.loads(json.dumps(old["dropped"]))
    for r in results:
        dropped["too_short"] += r["report"]["too_short"]
        dropped["skipped"] += r["report"]["skipped"]
        dropped["bad_rows"].update(r["report"]["bad_rows"])
        dropped["dropped_rows"].update(r["report"]["dropped_rows"])
    freqs = [r["freq"] for r in results if r["freq"]]
    source = {"kind": plan["kind"], "path": plan["inputs"], "fields": fields}
    if old is not None:
        return old["shards"] + entries, {**{k: old[k] for k in ("lookback", "predict", "freq", "bad_rows", "splits",
                                                                  "fields")},
                                         "sources": old["sources"] + [source], "dropped": dropped}
    return entries, {"lookback": config.lookback, "predict": config.predict,
                     "freq": max(set(freqs), key=freqs.count) if freqs else "", "bad_rows": config.bad_rows,
                     "splits": config.split_choice(), "fields": fields, "sources": [source], "dropped": dropped}


def build_store(config: PrepareConfig, log: Callable[[str], None] = print) -> dict:
    """Prepare (or ``--append`` to) the store at ``config.out``; returns its index."""
    out = Path(config.out)
    old, work = _start(out, config)
    generation = 0 if old is None else 1 + max(int(e["name"][1:4]) for e in old["shards"])
    # Appended symbols are kept or dropped by the store's window, not by this command's --lookback/--predict.
    plan = _plan(config, generation, config.window if old is None else int(old["window"]))
    fields = ["open", "high", "low", "close", "volume"] + (["amount"] if plan["amount"] else [])
    if old is not None:
        if fields != old["fields"]:
            raise DataError(f"--append: the input has columns {', '.join(fields)} but the store at {out} was "
                            f"prepared from {', '.join(old['fields'])}; append data with the same columns")
        fields = old["fields"]
    shards = out / "shards"
    with naming_path(out):
        _resume_or_reset(work, shards, plan, log)
        if plan["kind"] == "parquet":
            _partition(plan, work, config.workers, log)
        stored: dict[str, int] = {}
        for e in [] if old is None else old["shards"]:
            for symbol, last in zip(e["symbols"], e["last"]):
                stored[symbol] = max(last, stored.get(symbol, last))
        shards.mkdir(exist_ok=True)
        _run_buckets(_bucket_jobs(plan, work, shards, config, stored), work, config.workers, log)
        results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((work / "done").glob("g*.json"))]
        entries, meta = _merge(results, old, config, plan, fields)
        if config.num_nodes > 1:
            node = write_node_index(out, config.node_rank, config.num_nodes, plan["buckets"], meta, entries)
            shutil.rmtree(work, ignore_errors=True)
            log(f"node {config.node_rank} of {config.num_nodes}: wrote {len(entries)} shard(s); join the nodes' "
                f"shards and run launch/prepare_data.py --join --out {out} once all nodes are done")
            return node
        if not entries:
            raise DataError(f"{', '.join(plan['inputs'][:3])}: no symbol with a full window of {config.window} bars "
                            f"(lookback {config.lookback} + predict {config.predict} + 1); nothing to prepare")
        index = write_index(out, meta, entries)
    shutil.rmtree(work, ignore_errors=True)
    return index


def store_from_qlib(config: PrepareConfig, source: dict, log: Callable[[str], None] = print) -> dict:
    """A store from a Qlib folder read through pyqlib symbol group by symbol group: one bucket of symbols in memory
    at a time (buckets sized from the calendar and ``--memory_gb``), one shard per bucket, no resume."""
    from ds_kronos.data.qlib_source import qlib_universe, read_notes, read_qlib_group

    out = Path(config.out)
    _start(out, config)
    first, last = config.read_dates()
    universe = qlib_universe(config.qlib_dir, config.instrument, first, last)
    from qlib.data import D

    days = len(D.calendar(start_time=first, end_time=last, freq="day"))
    share = config.memory_gb * GIB - BASE_BYTES
    if share <= 0:
        raise DataError(f"--memory_gb {config.memory_gb:g} is too small: the preparation needs about "
                        f"{BASE_BYTES >> 20} MiB before it holds any bars")
    buckets = max(1, math.ceil(len(universe.symbols) * days * BUCKET_BYTES_PER_BAR / share))
    groups: dict[int, list[str]] = {}
    for symbol in universe.symbols:
        groups.setdefault(bucket_of(symbol, buckets), []).append(symbol)
    log(f"reading {len(universe.symbols)} symbols of {config.qlib_dir} through pyqlib in {len(groups)} group(s)")
    entries, too_short, skipped, bad_rows, nan_rows = [], [], list(universe.skipped), {}, 0
    with naming_path(out):
        (out / "shards").mkdir(parents=True, exist_ok=True)
        for b, group in sorted(groups.items()):
            series, group_skipped, group_bad, group_nan = read_qlib_group(universe, group, config.bad_rows)
            skipped += group_skipped
            bad_rows.update(group_bad)
            nan_rows += group_nan
            too_short += [x.symbol for x in series if len(x) < config.window]
            usable = [x for x in series if len(x) >= config.window]
            if usable:
                entries.append(write_shard(out / "shards", f"g000-b{b:05d}", usable))
        for note in read_notes(nan_rows, bad_rows, universe.has_amount):
            log(note)
        if not entries:
            raise DataError(f"{config.qlib_dir}: every series is shorter than one window ({config.window} bars); "
                            f"nothing to prepare")
        dropped = {"too_short": sorted(too_short), "skipped": [list(x) for x in skipped], "bad_rows": bad_rows,
                   "dropped_rows": {}}
        return write_index(out, {"lookback": config.lookback, "predict": config.predict, "freq": "1D",
                                 "bad_rows": config.bad_rows, "splits": config.split_choice(),
                                 "fields": universe.fields, "sources": [{**source, "fields": universe.fields}],
                                 "dropped": dropped}, entries)
