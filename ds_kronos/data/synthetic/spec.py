"""What a synthetic market is: its parameters (a market spec, YAML or JSON, or the defaults), their checks, and the
per-symbol specs drawn from them (plain JSON next to the bars, read back by the oracle).

A market's returns follow, per bar t of a symbol (bar units: the long-run variance of a bar is ``bar_variance``)::

    r_t = ar r_{t-1} + s_t e_t,   e_t = sqrt(h_t) z_t,   z_t ~ Student-t(nu) scaled to unit variance
    h_{t+1} = omega + (alpha + gamma 1[e_t < 0]) e_t^2 + beta h_t,   omega = bar_variance (1 - alpha - beta - gamma/2)

``s_t`` is the intraday seasonal scale of the bar's position in the day (:mod:`ds_kronos.data.synthetic.calendar`),
1 for daily bars. The GJR process is covariance-stationary only when alpha + beta + gamma/2 < 1.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ds_kronos.config import from_mapping, load_file
from ds_kronos.errors import ConfigError, DataError

SPLITS = ("pretrain", "heldout")
DAILY = "1D"
_INTRADAY = re.compile(r"^(\d+)(min|h)$")
_SESSION = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
SYMBOLS_FILE = "symbols.json"


@dataclass(kw_only=True)
class MarketSpec:
    """One market: its trading day, bar frequencies and dynamics (per-bar GJR-GARCH-t, see the module docstring)."""

    name: str
    split: str = "pretrain"                 # pretrain, or heldout (never in a pretraining mixture)
    sessions: list[str] = field(default_factory=lambda: ["09:30-11:30", "13:00-15:00"])  # wall clock, in order
    frequencies: list[str] = field(default_factory=lambda: [DAILY, "1h", "5min"])        # 1D, Nh or Nmin
    annual_vol: float = 0.25                # long-run volatility of a symbol's daily return, annualised (median)
    vol_dispersion: float = 0.3             # log-normal spread of the symbols' volatility levels
    alpha: float = 0.06                     # GARCH reaction to a squared shock
    beta: float = 0.9                       # GARCH persistence of the variance
    gamma: float = 0.04                     # GJR leverage: extra reaction to a negative shock
    nu: float = 5.0                         # Student-t degrees of freedom (> 2), jittered +-20% per symbol
    ar: float = 0.0                         # AR(1) of the returns (< 0: weak mean reversion)
    overnight: float = 0.2                  # share of a day's variance in the overnight gap (daily: open vs close)
    lunch: float = 0.02                     # share of a day's variance in each break between sessions
    u_shape: float = 1.5                    # intraday U: a bar at the open/close has 1 + u_shape x the midday rate
    volume_elasticity: float = 1.0          # volume ~ (h_t / bar_variance) ** (elasticity / 2)
    volume_shock: float = 0.3               # log volume per unit of the bar's |z| above its mean
    volume_noise: float = 0.3               # std of log volume noise
    listed_at_start: float = 0.7            # share of symbols trading from the first bar (others list later)
    delisted: float = 0.15                  # share of symbols that delist before the last bar
    trading_days: int = 252                 # trading days per year (annual_vol -> daily variance)

    def stationarity(self) -> float:
        return self.alpha + self.beta + self.gamma / 2.0

    def problems(self) -> list[str]:
        p = []
        if not _NAME.match(self.name):
            p.append(f"name {self.name!r} must start with a letter and hold only letters, digits and _")
        if self.split not in SPLITS:
            p.append(f"split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.annual_vol <= 0 or self.vol_dispersion < 0 or self.volume_noise < 0:
            p.append("annual_vol must be > 0 and vol_dispersion, volume_noise >= 0 (a variance cannot be negative)")
        if min(self.alpha, self.beta, self.alpha + self.gamma) < 0:
            p.append(f"alpha {self.alpha:g}, beta {self.beta:g}, alpha + gamma {self.alpha + self.gamma:g} must be "
                     f">= 0 (else the GARCH variance can turn negative)")
        if self.stationarity() >= 1:
            p.append(f"non-stationary GARCH: alpha + beta + gamma/2 = {self.stationarity():g} >= 1 (its variance "
                     f"has no long-run level)")
        if not self.nu > 2:
            p.append(f"nu {self.nu:g} must be > 2 (a Student-t with nu <= 2 has no finite variance)")
        if not -1 < self.ar < 1:
            p.append(f"ar {self.ar:g} must be in (-1, 1)")
        if min(self.overnight, self.lunch, self.u_shape) < 0:
            p.append("overnight, lunch and u_shape must be >= 0")
        if not 0 <= self.listed_at_start <= 1 or not 0 <= self.delisted <= 1:
            p.append("listed_at_start and delisted are shares in [0, 1]")
        if self.trading_days < 1:
            p.append("trading_days must be >= 1")
        try:
            spans = session_minutes(self.sessions)
        except ValueError as exc:
            return p + [str(exc)]
        if self.overnight + self.lunch * (len(spans) - 1) >= 1:
            p.append("overnight + lunch x breaks must be < 1 (the gaps' share of a day's variance)")
        if not self.frequencies:
            p.append("no frequencies")
        for freq in self.frequencies:
            try:
                minutes = frequency_minutes(freq)
            except ValueError as exc:
                p.append(str(exc))
                continue
            shortest = min(b - a for a, b in spans)
            if minutes and minutes > shortest:
                p.append(f"frequency {freq!r} is longer than its shortest session ({shortest} min)")
        if len(set(self.frequencies)) != len(self.frequencies):
            p.append("a frequency is listed twice")
        return p


def frequency_minutes(freq: str) -> int:
    """Bar length in minutes of an intraday frequency ('5min', '1h'); 0 for daily ('1D'). ValueError otherwise."""
    if freq == DAILY:
        return 0
    match = _INTRADAY.match(str(freq))
    minutes = int(match.group(1)) * (60 if match.group(2) == "h" else 1) if match else 0
    if minutes <= 0:
        raise ValueError(f"bad frequency {freq!r} (use {DAILY}, Nh or Nmin with N >= 1)")
    return minutes


def session_minutes(sessions: list[str]) -> list[tuple[int, int]]:
    """Sessions as (start, end) minutes after midnight, checked: well-formed, in order, not overlapping."""
    spans = []
    for text in sessions:
        match = _SESSION.match(str(text).strip())
        if not match:
            raise ValueError(f"bad session {text!r} (use HH:MM-HH:MM)")
        h0, m0, h1, m1 = map(int, match.groups())
        start, end = h0 * 60 + m0, h1 * 60 + m1
        if not (m0 < 60 and m1 < 60 and 0 <= start < end <= 24 * 60):
            raise ValueError(f"bad session {text!r}: it must start before it ends, within one day")
        if spans and start < spans[-1][1]:
            raise ValueError(f"session {text!r} starts before the previous one ends")
        spans.append((start, end))
    if not spans:
        raise ValueError("no trading session")
    return spans


def default_markets() -> list[MarketSpec]:
    """Four markets of different persistence, tails, leverage and trading days; the last is held out."""
    return [
        MarketSpec(name="ALPHA", sessions=["09:30-11:30", "13:00-15:00"], annual_vol=0.30, alpha=0.05, beta=0.93,
                   gamma=0.03, nu=5.0, ar=-0.02),
        MarketSpec(name="BETA", sessions=["09:30-16:00"], annual_vol=0.22, alpha=0.12, beta=0.72, gamma=0.08,
                   nu=4.0, ar=0.0, u_shape=2.0),
        MarketSpec(name="GAMMA", sessions=["08:00-16:30"], annual_vol=0.20, alpha=0.03, beta=0.91, gamma=0.08,
                   nu=6.0, ar=-0.05, u_shape=1.0),
        MarketSpec(name="DELTA", split="heldout", sessions=["09:00-11:30", "12:30-15:00"], annual_vol=0.28,
                   alpha=0.07, beta=0.87, gamma=0.06, nu=4.5, ar=-0.03),
    ]


def check_markets(markets: list[MarketSpec], source: str) -> list[MarketSpec]:
    """The markets, or one ConfigError line naming every problem."""
    problems = [f"market {m.name}: {text}" for m in markets for text in m.problems()]
    names = [m.name for m in markets]
    if not markets:
        problems.append("no market")
    if len(set(names)) != len(names):
        problems.append("market names must be unique")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return markets


def load_markets(path: str | None) -> list[MarketSpec]:
    """The markets of a spec file (YAML or JSON: ``markets: [{name: ..., alpha: ...}, ...]``), or the defaults."""
    if path is None:
        return check_markets(default_markets(), "default markets")
    data = load_file(path)
    unknown = sorted(set(data) - {"markets"})
    if unknown or not isinstance(data.get("markets"), list):
        raise ConfigError(f"{path}: expected a mapping with one key, markets: a list of markets"
                          + (f" (unknown key(s) {', '.join(map(str, unknown))})" if unknown else ""))
    markets = []
    for i, item in enumerate(data["markets"]):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{path}: market {i + 1} is not a mapping with a name")
        markets.append(from_mapping(MarketSpec, item, source=f"{path}: market {item['name']}"))
    return check_markets(markets, path)


@dataclass(frozen=True)
class SymbolSpec:
    """Everything the true process of one symbol is: its market's dynamics at its frequency, its own level of
    volatility, tails and volume, its first price, and when it lists and delists (ISO wall-clock times)."""

    symbol: str
    market: str
    split: str
    freq: str
    sessions: tuple[str, ...]
    overnight: float
    lunch: float
    u_shape: float
    alpha: float
    beta: float
    gamma: float
    ar: float
    nu: float
    bar_variance: float
    volume_base: float
    volume_elasticity: float
    volume_shock: float
    volume_noise: float
    price0: float
    listed: str
    delisted: str | None

    @property
    def omega(self) -> float:
        return self.bar_variance * (1.0 - self.alpha - self.beta - self.gamma / 2.0)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"sessions": list(self.sessions)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SymbolSpec":
        return cls(**{**data, "sessions": tuple(data["sessions"])})


MARKET_FIELDS = ("market", "split", "freq", "sessions", "overnight", "lunch", "u_shape", "alpha", "beta", "gamma",
                 "ar", "volume_elasticity", "volume_shock", "volume_noise")
"""Fields every symbol of one market and frequency shares: written once per symbols.json, not per symbol."""


def write_symbol_specs(path: Path, specs: list[SymbolSpec]) -> None:
    """``symbols.json``: the shared fields once, then each symbol's own (plain JSON, never a pickle)."""
    shared = {k: v for k, v in specs[0].to_json().items() if k in MARKET_FIELDS}
    own = {s.symbol: {k: v for k, v in s.to_json().items() if k not in MARKET_FIELDS and k != "symbol"}
           for s in specs}
    path.write_text(json.dumps({"market": shared, "symbols": own}, indent=1) + "\n", encoding="utf-8")


def read_symbol_specs(path: Path) -> dict[str, SymbolSpec]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: SymbolSpec.from_json({**data["market"], **own, "symbol": name})
                for name, own in data["symbols"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a synthetic market's symbol specs ({exc})") from None


def load_symbol_spec(corpus: str | Path, symbol: str) -> SymbolSpec:
    """The spec of ``symbol`` in a corpus written by launch/make_market.py (symbol names are MARKET-FREQ-NNNNN)."""
    parts = symbol.split("-")
    path = Path(corpus) / parts[0] / (parts[1] if len(parts) == 3 else "") / SYMBOLS_FILE
    specs = read_symbol_specs(path) if len(parts) == 3 and path.is_file() else {}
    if symbol not in specs:
        raise DataError(f"{corpus}: no synthetic symbol {symbol!r} (expected MARKET-FREQ-NNNNN with {path})")
    return specs[symbol]


def draw_symbol_specs(market: MarketSpec, freq: str, bars_per_day: int, count: int, first_stamp: list[str],
                      last_stamp: list[str | None], rng: np.random.Generator) -> list[SymbolSpec]:
    """``count`` symbols of ``market`` at ``freq``: their own volatility level, tails, volume and first price."""
    vol = market.annual_vol * np.exp(market.vol_dispersion * rng.standard_normal(count))
    nu = np.maximum(market.nu * rng.uniform(0.8, 1.2, count), 2.5)
    volume_base = np.exp(rng.uniform(np.log(1e4), np.log(1e6), count)) * (1 if freq == DAILY else 1 / bars_per_day)
    price0 = np.exp(rng.uniform(np.log(5.0), np.log(200.0), count))
    return [SymbolSpec(symbol=f"{market.name}-{freq}-{i:05d}", market=market.name, split=market.split, freq=freq,
                       sessions=tuple(market.sessions), overnight=market.overnight, lunch=market.lunch,
                       u_shape=market.u_shape, alpha=market.alpha, beta=market.beta, gamma=market.gamma, ar=market.ar,
                       nu=float(nu[i]), bar_variance=float(vol[i] ** 2 / market.trading_days / bars_per_day),
                       volume_base=float(volume_base[i]), volume_elasticity=market.volume_elasticity,
                       volume_shock=market.volume_shock, volume_noise=market.volume_noise, price0=float(price0[i]),
                       listed=first_stamp[i], delisted=last_stamp[i]) for i in range(count)]
