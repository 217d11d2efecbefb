"""Market data at scale: a sharded, appendable store (format 2) prepared out of core; see docs/data_format.md.

Modules: ``shards`` (files, index), ``partition`` (Parquet -> buckets), ``bucket`` (bucket -> shard), ``build``
(the job: plan, resume, append), ``rows`` and ``view`` (opening a store with split views).
"""
