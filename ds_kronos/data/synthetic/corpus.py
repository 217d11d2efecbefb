"""Writing a synthetic corpus: for every market and frequency, Parquet files of a block of symbols each, streamed
in chunks of bars (memory bounded by ``--chunk_bars``, whatever the corpus size), in the long format the store
reads (``launch/prepare_data.py --parquet``: symbol, timestamps, open, high, low, close, volume, amount).

Layout (written into a temporary sibling folder, renamed into place when complete)::

    OUT/corpus.json                       markets, their split (pretrain / heldout), files and bar counts, speed
    OUT/MARKET/market.json                the market spec as used
    OUT/MARKET/FREQ/symbols.json          each symbol's true parameters (what the oracle reads)
    OUT/MARKET/FREQ/part-NNNNN.parquet    bars of a block of symbols, rows in time order

Everything is a function of the seed and of the market's name and frequency (not of which other markets are made).
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ds_kronos.config import option
from ds_kronos.data.output import staged_output
from ds_kronos.data.synthetic.calendar import DayTemplate, day_template, first_day, grid_stamps
from ds_kronos.data.synthetic.process import BAR_FIELDS, Params, State, bars
from ds_kronos.data.synthetic.spec import (
    SYMBOLS_FILE,
    MarketSpec,
    SymbolSpec,
    check_markets,
    draw_symbol_specs,
    load_markets,
    write_symbol_specs,
)
from ds_kronos.errors import ConfigError

CORPUS_FILE = "corpus.json"
SCHEMA = pa.schema([("symbol", pa.dictionary(pa.int32(), pa.string())), ("timestamps", pa.timestamp("ns"))]
                   + [(name, pa.float64()) for name in BAR_FIELDS])


@dataclass(kw_only=True)
class MakeMarketConfig:
    """Write a synthetic multi-market, multi-frequency pretraining corpus (Parquet) with its true parameters."""

    out: str | None = option(None, help="folder to create (must not exist unless --overwrite)")
    spec: str | None = option(None, help="market spec file (YAML or JSON, `markets: [...]`); default: four markets "
                                         "(ALPHA, BETA, GAMMA pretrain; DELTA held out), see docs/pretraining.md")
    markets: list[str] | None = option(None, help="only these markets of the spec (comma list)")
    frequencies: list[str] | None = option(None, help="bar frequencies for every market instead of the spec's "
                                                      "(1D, Nh, Nmin)")
    symbols: int = option(200, help="symbols per market and frequency", ge=1)
    days: int = option(250, help="business days of the calendar (bars per symbol: days x bars per day)", ge=2)
    start: str = option("2020-01-01", help="first calendar day (YYYY-MM-DD)")
    seed: int = option(0, help="random seed (same seed and options, same corpus)")
    symbols_per_file: int = option(1000, help="symbols per Parquet file", ge=1)
    chunk_bars: int = option(2_000_000, help="bars generated at once (bounds memory: ~150 bytes a bar)", ge=1)
    compression: str = option("snappy", choices=("snappy", "zstd", "none"), help="Parquet compression")
    overwrite: bool = option(False, help="replace an existing corpus at --out")

    def problems(self) -> list[str]:
        problems = [] if self.out else ["--out is required"]
        try:
            first_day(self.start)
        except ValueError:
            problems.append(f"--start {self.start!r} is not a date (YYYY-MM-DD)")
        return problems

    def chosen_markets(self) -> list[MarketSpec]:
        markets = load_markets(self.spec)
        if self.markets:
            unknown = sorted(set(self.markets) - {m.name for m in markets})
            if unknown:
                raise ConfigError(f"--markets: no market {', '.join(unknown)} in "
                                  f"{self.spec or 'the defaults'} ({', '.join(m.name for m in markets)})")
            markets = [m for m in markets if m.name in self.markets]
        if self.frequencies:
            markets = [dataclasses.replace(m, frequencies=list(self.frequencies)) for m in markets]
        return check_markets(markets, "--frequencies" if self.frequencies else self.spec or "default markets")


def _stream(*names: str) -> int:
    return zlib.crc32("/".join(names).encode("utf-8"))


def _listings(market: MarketSpec, count: int, bars: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """First and last bar of each symbol: a share trade from the start, the rest list later; some delist."""
    first = np.where(rng.uniform(size=count) < market.listed_at_start, 0,
                     rng.integers(1, max(2, int(0.8 * bars)), count))
    life = rng.uniform(0.2, 1.0, count) * (bars - first)
    last = np.where(rng.uniform(size=count) < market.delisted, first + life.astype(np.int64), bars - 1)
    return first.astype(np.int64), np.minimum(last, bars - 1).astype(np.int64)


def _stamp_text(template: DayTemplate, day0: np.datetime64, bar: int) -> str:
    return str(grid_stamps(template, day0, np.array([bar]))[0][0].astype("datetime64[ns]").astype("datetime64[s]"))


def block_bars(specs: list[SymbolSpec], first: np.ndarray, last: np.ndarray, template: DayTemplate,
               day0: np.datetime64, total: int, rows: int, rng: np.random.Generator) -> Iterator[tuple]:
    """The bars of ``specs`` (listed at bar ``first``, delisted after bar ``last``) over ``total`` bars of the grid,
    ``rows`` bars of each at a time: (timestamps [T], where each trades [T, S], bars [T, S] by field)."""
    params = Params.of(specs)
    state = State.at_listing(params, np.array([s.price0 for s in specs]))
    listings = np.unique(first[first > 0])
    for t0 in range(0, total, rows):
        index = np.arange(t0, min(t0 + rows, total))
        stamps, k = grid_stamps(template, day0, index)
        active = (index[:, None] >= first) & (index[:, None] <= last)
        resets = {int(t - t0): np.flatnonzero(first == t) for t in listings[(listings >= t0) & (listings < t0 + rows)]}
        yield stamps, active, bars(params, state, template.scale[k], template.gap[k], rng, resets, active)


def _write_block(path: Path, specs: list[SymbolSpec], first: np.ndarray, last: np.ndarray, template: DayTemplate,
                 day0: np.datetime64, total: int, config: MakeMarketConfig, rng: np.random.Generator) -> int:
    """One Parquet file: the bars of ``specs`` over the whole calendar, ``config.chunk_bars`` at a time."""
    names = pa.array([s.symbol for s in specs], pa.string())
    columns = np.arange(len(specs), dtype=np.int32)
    rows = max(1, config.chunk_bars // len(specs))
    written = 0
    compression = None if config.compression == "none" else config.compression
    # Dictionary encoding only for the symbol: on the float columns it costs half the write time and saves ~1%.
    with pq.ParquetWriter(path, SCHEMA, compression=compression, use_dictionary=["symbol"]) as writer:
        for stamps, active, drawn in block_bars(specs, first, last, template, day0, total, rows, rng):
            keep = active.ravel()
            symbol = pa.DictionaryArray.from_arrays(pa.array(np.broadcast_to(columns, active.shape).ravel()[keep]),
                                                    names)
            stamp = pa.array(np.broadcast_to(stamps[:, None], active.shape).ravel()[keep], pa.timestamp("ns"))
            fields = [pa.array(drawn[name].ravel()[keep]) for name in BAR_FIELDS]
            writer.write_table(pa.Table.from_arrays([symbol, stamp, *fields], schema=SCHEMA))
            written += int(keep.sum())
    return written


def _write_market_freq(folder: Path, market: MarketSpec, freq: str, config: MakeMarketConfig) -> dict:
    template = day_template(market.sessions, freq, market.overnight, market.lunch, market.u_shape)
    day0 = first_day(config.start)
    total = config.days * template.bars_per_day
    rng = np.random.default_rng([config.seed, _stream(market.name, freq)])
    first, last = _listings(market, config.symbols, total, rng)
    specs = draw_symbol_specs(market, freq, template.bars_per_day, config.symbols,
                              [_stamp_text(template, day0, int(b)) for b in first],
                              [None if b == total - 1 else _stamp_text(template, day0, int(b)) for b in last], rng)
    folder.mkdir(parents=True)
    write_symbol_specs(folder / SYMBOLS_FILE, specs)
    files, count = [], 0
    for b, lo in enumerate(range(0, config.symbols, config.symbols_per_file)):
        hi = min(lo + config.symbols_per_file, config.symbols)
        name = f"part-{b:05d}.parquet"
        count += _write_block(folder / name, specs[lo:hi], first[lo:hi], last[lo:hi], template, day0, total, config,
                              np.random.default_rng([config.seed, _stream(market.name, freq), b + 1]))
        files.append(f"{market.name}/{freq}/{name}")
    return {"symbols": config.symbols, "bars_per_day": template.bars_per_day, "bars": count, "files": files}


def write_corpus(config: MakeMarketConfig, log: Callable[[str], None] = print) -> dict:
    """Write the corpus of ``config``; returns its index (``corpus.json``)."""
    markets = config.chosen_markets()
    out = Path(config.out)
    t0 = time.perf_counter()
    index: dict = {"seed": config.seed, "start": config.start, "days": config.days, "markets": {}}
    with staged_output(out, config.overwrite, lambda p: (p / CORPUS_FILE).is_file(), "a synthetic corpus") as tmp:
        for market in markets:
            (tmp / market.name).mkdir()
            (tmp / market.name / "market.json").write_text(json.dumps(dataclasses.asdict(market), indent=1) + "\n",
                                                           encoding="utf-8")
            entry = {"split": market.split, "frequencies": {}}
            for freq in market.frequencies:
                entry["frequencies"][freq] = _write_market_freq(tmp / market.name / freq, market, freq, config)
                log(f"{market.name} {freq}: {entry['frequencies'][freq]['bars']:,} bars")
            index["markets"][market.name] = entry
        seconds = time.perf_counter() - t0
        index["bars"] = sum(f["bars"] for m in index["markets"].values() for f in m["frequencies"].values())
        index["seconds"] = round(seconds, 3)
        index["bars_per_second"] = round(index["bars"] / max(seconds, 1e-9))
        index["splits"] = {split: sorted(name for name, m in index["markets"].items() if m["split"] == split)
                           for split in ("pretrain", "heldout")}
        (tmp / CORPUS_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return index
