"""Is the model's loss different from each baseline's by more than chance? Diebold-Mariano tests and a model
confidence set over the forecasters' per-date losses.

A loss per origin (CRPS of the close in normalised units, or QLIKE of the variance forecast, each the mean over the
horizons) is averaged over the symbols of each origin date, so every forecaster has one loss per date on the same
dates. Diebold-Mariano: the per-date differential d_t = loss_model - loss_baseline, its mean tested against zero
with the Newey-West HAC t-test of :mod:`ds_kronos.evaluation.significance` (same lag rule: max(floor(4
(T/100)^(2/9)), ceil(pred_len/stride) - 1); two-sided p-value, negative mean = the model is better). The model
confidence set is ``arch.bootstrap.MCS`` (Hansen, Lunde and Nason 2011; range statistic, stationary bootstrap,
1000 replications, seeded) over the per-date losses of all forecasters at size 10%: the set that contains the best
forecaster with 90% confidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ds_kronos.evaluation.significance import MIN_DATES, hac_lags, hac_mean_test

MCS_SIZE = 0.10
MCS_REPS = 1000


def per_date(losses: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """Mean [T] of the per-origin ``losses`` [n] over each origin date (dates in sorted order)."""
    unique, index = np.unique(np.asarray(dates), return_inverse=True)
    total = np.bincount(index, weights=np.asarray(losses, dtype=np.float64), minlength=unique.size)
    return total / np.bincount(index, minlength=unique.size)


def diebold_mariano(model: np.ndarray, other: np.ndarray, dates: np.ndarray, pred_len: int,
                    stride: int) -> dict[str, Any]:
    """The test of the module docstring for per-origin losses ``model`` and ``other`` [n]."""
    differential = per_date(model, dates) - per_date(other, dates)
    test = hac_mean_test(differential, hac_lags(differential.size, pred_len, stride))
    return {"mean_difference": float(differential.mean()) if differential.size else None, "t": test["t"],
            "p_value": test["p_value"], "dates": test["dates"], "lags": test["lags"]}


def model_confidence_set(losses: dict[str, np.ndarray], dates: np.ndarray, seed: int) -> dict[str, Any]:
    """arch's MCS over the per-date losses of every forecaster in ``losses`` (per origin [n] each). Forecasters
    with identical losses (a reference equal to the model) enter once and share the result: arch's range
    statistic cannot rank exact ties."""
    series = {name: per_date(values, dates) for name, values in losses.items()}
    first_of: dict[str, str] = {}
    for name, values in series.items():
        first_of[name] = next((other for other in first_of.values() if np.array_equal(series[other], values)), name)
    distinct = list(dict.fromkeys(first_of.values()))
    table = np.column_stack([series[name] for name in distinct])
    if table.shape[0] < MIN_DATES or len(distinct) < 2:
        return {"size": MCS_SIZE, "included": None, "p_values": None, "dates": int(table.shape[0]),
                "note": f"needs at least {MIN_DATES} dates and 2 distinct forecasters"}
    from arch.bootstrap import MCS

    mcs = MCS(table, size=MCS_SIZE, reps=MCS_REPS, method="R", bootstrap="stationary", seed=seed)
    mcs.compute()
    p_of = {distinct[int(i)]: float(p) for i, p in mcs.pvalues.iloc[:, 0].items()}
    included = {distinct[int(i)] for i in mcs.included}
    return {"size": MCS_SIZE, "method": "range statistic, stationary bootstrap", "reps": MCS_REPS,
            "dates": int(table.shape[0]), "included": [name for name in series if first_of[name] in included],
            "p_values": {name: p_of[first_of[name]] for name in series}}


def tests_section(crps: dict[str, np.ndarray], qlike: dict[str, np.ndarray], dates: np.ndarray, pred_len: int,
                  stride: int, seed: int, model: str = "model") -> dict[str, Any]:
    """``report.json["tests"]``: DM of ``model`` against every other row, and the MCS, for CRPS and QLIKE."""
    section: dict[str, Any] = {
        "method": "Diebold-Mariano on per-date loss differentials (model - row; negative = model better), "
                  "Newey-West HAC t-test, two-sided; model confidence set: arch.bootstrap.MCS at 10%",
        "lag_rule": "max(floor(4 (T/100)^(2/9)), ceil(pred_len/stride) - 1)"}
    for loss, table in (("crps", crps), ("qlike", qlike)):
        if model not in table:
            section[loss] = None
            continue
        section[loss] = {
            "diebold_mariano": {name: diebold_mariano(table[model], values, dates, pred_len, stride)
                                for name, values in table.items() if name != model},
            "mcs": model_confidence_set(table, dates, seed)}
    return section


def format_tests(section: dict[str, Any]) -> str:
    """Per loss: each row's mean differential to the model with its DM p-value, and the confidence set."""
    lines = ["Diebold-Mariano (model - row, per date; negative = model better) and the 10% model confidence set"]
    for loss in ("crps", "qlike"):
        part = section.get(loss)
        if part is None:
            continue
        cells = []
        for name, test in part["diebold_mariano"].items():
            p = "-" if test["p_value"] is None else f"{test['p_value']:.3f}"
            diff = "-" if test["mean_difference"] is None else f"{test['mean_difference']:+.4f}"
            cells.append(f"{name} {diff} (p {p})")
        included = part["mcs"]["included"]
        lines.append(f"  {loss}: " + ", ".join(cells))
        lines.append(f"  {loss} MCS: " + ("-" if included is None else ", ".join(included)))
    return "\n".join(lines)
