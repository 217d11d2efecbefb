"""Is the mean daily IC different from zero? A Newey-West (HAC) t-statistic of the mean, from ``statsmodels``.

The daily IC series is regressed on a constant (``statsmodels.OLS(...).fit(cov_type="HAC")``, Bartlett kernel,
small-sample correction on), so the t-statistic is mean / HAC standard error and the p-value is two-sided from
Student's t with T - 1 degrees of freedom. Lag rule: ``max(floor(4 (T / 100) ** (2 / 9)), ceil(pred_len /
stride) - 1)``: Newey and West's (1994) rule of thumb, raised to the overlap of the forecast windows (windows that
overlap by k origins make the IC series an MA(k) by construction).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_DATES = 3  # a t-statistic from fewer dates says nothing


def hac_lags(dates: int, pred_len: int, stride: int) -> int:
    """The lag rule of the module docstring."""
    rule = math.floor(4.0 * (dates / 100.0) ** (2.0 / 9.0)) if dates > 0 else 0
    return int(max(rule, math.ceil(pred_len / stride) - 1, 0))


def hac_mean_test(series: np.ndarray, lags: int) -> dict[str, Any]:
    """Mean, HAC standard error, t-statistic and two-sided p-value of ``series``; None values with < 3 dates or
    a constant series."""
    values = np.asarray(series, dtype=np.float64)
    empty = {"mean": None, "hac_se": None, "t": None, "p_value": None, "lags": lags, "dates": int(values.size)}
    if values.size < MIN_DATES or float(values.max()) == float(values.min()):
        return empty
    import statsmodels.api as sm

    fit = sm.OLS(values, np.ones((values.size, 1))).fit(cov_type="HAC", cov_kwds={"maxlags": lags,
                                                                                  "use_correction": True},
                                                         use_t=True)
    se = float(fit.bse[0])
    if not math.isfinite(se) or se <= 0:
        return empty
    return {"mean": float(fit.params[0]), "hac_se": se, "t": float(fit.tvalues[0]), "p_value": float(fit.pvalues[0]),
            "lags": lags, "dates": int(values.size)}


def ic_significance(ic: np.ndarray, rank_ic: np.ndarray, pred_len: int, stride: int) -> dict[str, Any]:
    """HAC tests of the daily IC and RankIC series (the same lag for both)."""
    lags = hac_lags(int(np.asarray(ic).size), pred_len, stride)
    return {"ic": hac_mean_test(ic, lags), "rank_ic": hac_mean_test(rank_ic, lags),
            "method": "Newey-West HAC (statsmodels OLS on a constant, Bartlett kernel), two-sided t-test",
            "lag_rule": "max(floor(4 (T/100)^(2/9)), ceil(pred_len/stride) - 1)"}
