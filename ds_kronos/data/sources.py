"""Several prepared datasets (stores or format-1 folders) as one job's data: ``--data A:0.7,B:0.3``.

The spec is a comma-separated list of paths, each with an optional ``:WEIGHT`` (a positive number such as 0.7, 3 or
1/3; weights are relative and normalised). Either every path has a weight or none has (equal shares): a mix is
refused rather than guessed. The sources may have any bar frequencies, but every window must be cut alike, so they
must agree on lookback, predict and the value and time-feature columns.

Opening verifies each source as a single ``--data`` is verified (:func:`ds_kronos.data.verify.verify_prepared`: the
content once per node and change), with the same split choice for every store. What the trainer builds from the
opened sources: :class:`ds_kronos.data.blend.BlendedWindowDataset` (training) and
:class:`ds_kronos.data.blend.SourceWindows` (validation, per source); see docs/data_format.md, "Mixtures".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from ds_kronos.data.prepared import PreparedDataset
from ds_kronos.data.split_choice import SplitChoice
from ds_kronos.data.verify import verify_prepared
from ds_kronos.errors import ConfigError, UserError

AGREED_FIELDS: tuple[str, ...] = ("lookback", "predict", "value_columns", "time_feature_columns")
"""Manifest fields every source of a mixture must share (they decide how a window is cut and what it holds)."""


@dataclass(frozen=True)
class DataSource:
    """One entry of a ``--data`` spec: the path and its weight as given (None: no weight given)."""

    path: str
    weight: Fraction | None


@dataclass(frozen=True)
class OpenedSource:
    """A verified source: its path, its normalised weight (the weights of a spec sum to 1) and the opened data."""

    path: str
    weight: float
    exact_weight: Fraction
    dataset: PreparedDataset


def _weight(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return None


def parse_data_spec(spec: str) -> tuple[DataSource, ...]:
    """``A:0.7,B:0.3`` or ``A,B`` (equal shares) or ``A``; ConfigError (one line) for an empty entry, a weight
    <= 0, weights given for some paths only, or a path named twice."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--data is required: a prepared dataset or store, or several as PATH:WEIGHT,PATH:WEIGHT")
    sources = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"--data {spec}: an empty entry (two commas, or one at an end)")
        path, _, tail = item.rpartition(":")
        weight = _weight(tail) if path else None
        if weight is None:  # no ':NUMBER' at the end: the whole entry is the path
            path = item
        elif weight <= 0:
            raise ConfigError(f"--data {spec}: the weight of {path} is {tail}; weights must be positive")
        sources.append(DataSource(path.strip(), weight))
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        bare = ", ".join(s.path for s in sources if s.weight is None)
        raise ConfigError(f"--data {spec}: {bare} has no weight; give every source a weight, or none for equal shares")
    seen: dict[str, str] = {}
    for s in sources:
        real = os.path.realpath(s.path)
        if real in seen:
            raise ConfigError(f"--data {spec}: {s.path} names the same data as {seen[real]}; list each source once "
                              f"(its weight sets its share)")
        seen[real] = s.path
    return tuple(sources)


def _disagreement(a: OpenedSource, b: OpenedSource) -> str | None:
    for field in AGREED_FIELDS:
        va, vb = a.dataset.manifest.get(field), b.dataset.manifest.get(field)
        if va != vb:
            return (f"--data: {b.path} has {field} {vb} but {a.path} has {va}; every source of a mixture needs the "
                    f"same {', '.join(AGREED_FIELDS)} (prepare them alike)")
    return None


def open_sources(spec: str, *, split: SplitChoice | None = None, local_rank: int | None = None,
                 log: Callable[[str], None] | None = None) -> list[OpenedSource]:
    """Parse ``spec``, verify and open every source (with ``split`` for stores), and check that they agree.
    One line (ConfigError, or DataError from the verification) for the first problem."""
    parsed = parse_data_spec(spec)
    exact = [s.weight if s.weight is not None else Fraction(1) for s in parsed]
    total = sum(exact)
    opened = []
    for source, weight in zip(parsed, exact):
        if not os.path.isdir(source.path):
            raise ConfigError(f"--data {source.path}: no such folder (a prepared dataset or store)")
        dataset = verify_prepared(source.path, local_rank=local_rank, log=log, split=split)
        opened.append(OpenedSource(source.path, float(weight / total), weight / total, dataset))
        problem = _disagreement(opened[0], opened[-1])
        if problem:
            raise ConfigError(problem)
    return opened


def data_spec_problems(spec: str | None, split: SplitChoice | None = None) -> list[str]:
    """The ``--data`` check of a job's config, for one source or a mixture: [] when every source opens, verifies
    and agrees with the others, else the one line saying why not."""
    try:
        open_sources(spec or "", split=split)
    except UserError as exc:
        return [str(exc)]
    return []
