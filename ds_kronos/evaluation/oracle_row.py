"""The oracle row of the evaluation (``--oracle CORPUS_DIR``): on a store prepared from a synthetic corpus
(``launch/make_market.py``), the true process's own predictive paths at every origin
(:func:`ds_kronos.data.synthetic.oracle_paths`), scored beside the random walk and the arch baselines.

Each rank draws its own origins' paths, as many as the model's, from ``[seed, ORACLE_STREAM, row]``: the same paths
whatever the ranks. The process's state is filtered from the symbol's bars in the split before the origin (at most
:data:`ORACLE_HISTORY`); the report's ``gap_closed`` = (CRPS random walk - CRPS model) / (CRPS random walk - CRPS
oracle), close, normalised units: 1 is the oracle's skill, 0 the random walk's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ds_kronos.data.series import CLOSE
from ds_kronos.data.synthetic import SymbolSpec, load_symbol_spec, oracle_paths, oracle_variance
from ds_kronos.data.synthetic.corpus import CORPUS_FILE
from ds_kronos.errors import ConfigError, DataError
from ds_kronos.evaluation.arch_baselines import FIT_OK, BaselineForecasts
from ds_kronos.evaluation.origins import Origins

ORACLE = "oracle"
ORACLE_STREAM = 5  # random walk 1, bootstrap 2, PIT 3, arch baselines 4
# The filter starts at the long-run variance where the history does not reach the listing; its error fades as
# beta^bars, under 1e-20 after 1000 bars for any beta <= 0.95.
ORACLE_HISTORY = 1000


def _recorded_sources(manifest: dict[str, Any]) -> list[Path]:
    """The input files or folders a prepared set or store says it was made from."""
    entries = list(manifest.get("sources") or []) + ([manifest["source"]] if manifest.get("source") else [])
    paths: list[Path] = []
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        paths += [Path(p) for p in (path if isinstance(path, list) else [path] if path else [])]
    return paths


def corpus_specs(corpus: str, manifest: dict[str, Any], symbols: list[str], freq: str | None) -> list[SymbolSpec]:
    """The true parameters of each of ``symbols`` (the split's, in order), or a ConfigError naming why the store
    cannot have been prepared from ``corpus``."""
    root = Path(corpus)
    if not (root / CORPUS_FILE).is_file():
        raise ConfigError(f"--oracle {corpus}: not a synthetic corpus (no {CORPUS_FILE}; write one with "
                          f"launch/make_market.py)")
    sources = _recorded_sources(manifest)
    resolved = root.resolve()
    if sources and not any(resolved in (s.resolve(), *s.resolve().parents) for s in sources):
        raise ConfigError(f"--oracle {corpus}: the evaluated data was not prepared from this corpus (it was made "
                          f"from {sources[0]})")
    specs = []
    for symbol in symbols:
        try:
            spec = load_symbol_spec(root, symbol)
        except DataError:
            raise ConfigError(f"--oracle {corpus}: symbol {symbol!r} of the evaluated data is not in the corpus "
                              f"(was the data prepared from it?)") from None
        if freq is not None and spec.freq != freq:
            raise ConfigError(f"--oracle {corpus}: symbol {symbol!r} has bars of {spec.freq} in the corpus but "
                              f"{freq} in the evaluated data")
        specs.append(spec)
    return specs


def oracle_seed(seed: int, row: int) -> int:
    """One integer seed per origin, independent of the ranks."""
    return int(np.random.SeedSequence([seed, ORACLE_STREAM, row]).generate_state(1)[0])


def forecast_oracle(specs: list[SymbolSpec], values: np.ndarray, timestamps: np.ndarray, offsets: np.ndarray,
                    origins: Origins, horizon: int, paths: int, seed: int) -> BaselineForecasts:
    """The oracle's close paths [n, S, H, 1] and variance of the log return [n, H, 1] at each of ``origins`` (this
    rank's) of the split's ``values`` [rows, 6] and ``timestamps`` (int64 ns)."""
    t0 = time.perf_counter()
    n = len(origins)
    out_paths = np.empty((n, paths, horizon, 1), dtype=np.float32)
    out_variance = np.empty((n, horizon, 1), dtype=np.float32)
    for i, (row, symbol) in enumerate(zip(origins.rows.tolist(), origins.symbols.tolist())):
        start = max(int(offsets[symbol]), row - ORACLE_HISTORY)
        history = (np.asarray(timestamps[start:row], dtype=np.int64), np.asarray(values[start:row], dtype=np.float64))
        spec = specs[symbol]
        out_paths[i, :, :, 0] = oracle_paths(spec, history, horizon, paths, oracle_seed(seed, row))[:, :, CLOSE]
        out_variance[i, :, 0] = oracle_variance(spec, history, horizon)
    return BaselineForecasts(origins.rows, out_paths, out_variance, np.full((n, 1), FIT_OK, dtype=np.float32),
                             time.perf_counter() - t0)


def gap_closed(walk: float | None, model: float | None, oracle: float | None) -> float | None:
    """(walk - model) / (walk - oracle): the share of the random walk's distance to the oracle the model closes;
    None where a score is missing or the oracle is no better than the random walk."""
    if walk is None or model is None or oracle is None or not walk > oracle:
        return None
    return (walk - model) / (walk - oracle)


def oracle_section(rows: dict[str, Any]) -> dict[str, Any]:
    """``report.json["oracle"]``: the CRPS (close, normalised) of the three rows and the gap the model closed."""
    def crps(name: str) -> float | None:
        row = rows.get(name)
        return None if row is None else row["features"]["close"]["crps"]["normalised"]["mean"]

    walk, model, oracle = crps("random_walk"), crps("model"), crps(ORACLE)
    return {"crps": {"random_walk": walk, "model": model, "oracle": oracle},
            "gap_closed": gap_closed(walk, model, oracle),
            "definition": "(CRPS random_walk - CRPS model) / (CRPS random_walk - CRPS oracle), close, normalised "
                          "units; 1 = the true process's skill, 0 = the random walk's"}


def format_oracle(section: dict[str, Any]) -> str:
    gap = section["gap_closed"]
    crps = section["crps"]
    return (f"oracle (the true process): CRPS {crps['oracle']:.4f} vs random walk {crps['random_walk']:.4f} and "
            f"model {crps['model']:.4f}; gap closed by the model "
            + ("-" if gap is None else f"{gap:+.3f}") + " (1 = oracle, 0 = random walk)")
