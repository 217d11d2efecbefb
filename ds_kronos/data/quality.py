"""Refusing bars that no model should see: non-finite or overflowing values, non-positive prices, high below low,
negative volume or amount.

Every source screens each symbol's bars (float64, in the :data:`~ds_kronos.data.series.VALUE_COLUMNS` layout,
after its own dropping of incomplete rows) before they are cast to float32 and written. By default the first bad
value ends the preparation with one line naming the symbol, the row (a CSV line or a bar's date) and the column;
with ``--bad_rows drop`` the rows are dropped instead and counted per symbol and reason in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ds_kronos.data.series import VALUE_COLUMNS
from ds_kronos.errors import DataError

BAD_ROW_POLICIES: tuple[str, ...] = ("refuse", "drop")
MAX_ABS_VALUE = 1e18
"""Largest magnitude accepted. Windows are normalised in float32: the variance of a window sums squares of
deviations, and 90 of them at 1e18 (8.1e37) still fit under float32's 3.4e38; 1e308 does not even fit float32."""
_PRICES = [VALUE_COLUMNS.index(c) for c in ("open", "high", "low", "close")]
_HIGH, _LOW = VALUE_COLUMNS.index("high"), VALUE_COLUMNS.index("low")
_NON_NEGATIVE = [VALUE_COLUMNS.index(c) for c in ("vol", "amt")]


@dataclass(frozen=True)
class Screened:
    """Which rows of a symbol to keep and, per reason, how many were dropped (empty when none)."""

    keep: np.ndarray
    dropped: dict[str, int]


def _checks(values: np.ndarray) -> tuple[np.ndarray, list[tuple[str, np.ndarray, Callable[[float], str]]]]:
    """(bad-row mask, [(reason, [rows, 6] mask of offending cells, describe(value))]) in order of precedence."""
    finite = np.isfinite(values)
    huge = finite & (np.abs(np.where(finite, values, 0.0)) > MAX_ABS_VALUE)
    ok = finite & ~huge  # the other checks only mean something for usable numbers
    cells = np.zeros_like(finite)
    non_positive = cells.copy()
    non_positive[:, _PRICES] = ok[:, _PRICES] & (values[:, _PRICES] <= 0)
    negative = cells.copy()
    negative[:, _NON_NEGATIVE] = ok[:, _NON_NEGATIVE] & (values[:, _NON_NEGATIVE] < 0)
    inverted = cells.copy()
    inverted[:, _HIGH] = ok[:, _HIGH] & ok[:, _LOW] & (values[:, _HIGH] < values[:, _LOW])
    checks = [
        ("not finite", ~finite, lambda v: f"value {v} is not a finite number"),
        ("too large", huge, lambda v: f"value {v:g} is beyond ±{MAX_ABS_VALUE:g} (it would overflow float32 "
                                      f"arithmetic)"),
        ("non-positive price", non_positive, lambda v: f"price {v:g} is not positive"),
        ("high below low", inverted, lambda v: f"high {v:g} is below low"),
        ("negative volume or amount", negative, lambda v: f"value {v:g} is negative"),
    ]
    bad_rows = np.zeros(len(values), dtype=bool)
    for _, mask, _ in checks:
        bad_rows |= mask.any(axis=1)
    return bad_rows, checks


def screen_bars(symbol: str, values: np.ndarray, describe_row: Callable[[int], str], policy: str = "refuse",
                derived_amount: bool = False) -> Screened:
    """Check ``values`` float64 [rows, 6] of one symbol.

    ``describe_row(i)`` says where row ``i`` came from (``"line 7 of a.csv"``, ``"2024-01-05"``). With policy
    "refuse" the first bad cell (earliest row; within it the first check that fails) raises a DataError naming the
    symbol, row and column; with "drop" the bad rows are left out and counted by their first failing check.
    ``derived_amount``: amt was computed (mean(OHLC) x volume), which the message says when it is the culprit.
    """
    if policy not in BAD_ROW_POLICIES:
        raise ValueError(f"unknown bad-row policy {policy!r}")
    bad_rows, checks = _checks(values)
    if not bad_rows.any():
        return Screened(np.ones(len(values), dtype=bool), {})
    # Each bad row is blamed on its first failing column (source columns before the derived amt), and within it
    # on the first failing check: a volume of 1e308 is "too large", not the inf amount it produces.
    no_column = len(VALUE_COLUMNS)
    first_column = np.stack([np.where(mask.any(axis=1), mask.argmax(axis=1), no_column) for _, mask, _ in checks])
    blame = np.argmin(first_column * len(checks) + np.arange(len(checks))[:, None], axis=0)
    if policy == "refuse":
        row = int(np.flatnonzero(bad_rows)[0])
        check = int(blame[row])
        column = int(first_column[check, row])
        name = VALUE_COLUMNS[column]
        note = " (derived as mean(open, high, low, close) x volume)" if name == "amt" and derived_amount else ""
        raise DataError(f"{symbol}: {describe_row(row)}, column {name!r}{note}: "
                        f"{checks[check][2](float(values[row, column]))}; fix the source, or pass --bad_rows drop "
                        f"to leave such rows out (they are counted in the manifest)")
    dropped = {}
    for index, (reason, _, _) in enumerate(checks):
        count = int((bad_rows & (blame == index)).sum())
        if count:
            dropped[reason] = count
    return Screened(~bad_rows, dropped)
