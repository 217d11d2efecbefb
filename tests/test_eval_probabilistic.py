"""Probabilistic scores of sampled paths, the baselines and the IC's significance, each against an independent
computation (hand formulas in plain numpy, closed forms of the normal distribution, theory for a forecast that
samples the true distribution). Pure numpy: no process is started."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm as normal

from ds_kronos.errors import UserError
from ds_kronos.evaluation import probabilistic as prob
from ds_kronos.evaluation.baselines import bootstrap_paths, random_walk_paths
from ds_kronos.evaluation.significance import hac_lags, hac_mean_test


def energy_crps(paths: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """The energy form by its definition: mean |X - y| - mean over all pairs |X - X'| / 2, loops over origins."""
    out = np.empty(actual.shape)
    for i in range(actual.shape[0]):
        for h in range(actual.shape[1]):
            x = paths[i, :, h]
            out[i, h] = np.mean(np.abs(x - actual[i, h])) - 0.5 * np.mean(np.abs(x[:, None] - x[None, :]))
    return out


def test_crps_is_the_energy_form_and_a_point_mass_gives_the_absolute_error():
    rng = np.random.default_rng(0)
    paths, actual = rng.normal(size=(7, 5, 3)), rng.normal(size=(7, 3))
    np.testing.assert_allclose(prob.crps_values(paths, actual), energy_crps(paths, actual), rtol=1e-12, atol=1e-12)
    # By hand: paths {0, 2}, y = 1: mean|X - y| = 1, mean|X - X'| over 4 pairs = 1 -> 0.5.
    assert prob.crps_values(np.array([[[0.0], [2.0]]]), np.array([[1.0]]))[0, 0] == pytest.approx(0.5)
    point = rng.normal(size=(4, 1, 2))
    target = rng.normal(size=(4, 2))
    np.testing.assert_allclose(prob.crps_values(point, target), np.abs(point[:, 0] - target))


def test_samples_of_the_true_distribution_score_as_theory_says():
    # y ~ N(0, 1) and the forecast samples N(0, 1) too: E[CRPS_energy] = (1 + 1/S) / sqrt(pi) for S members,
    # the PIT is uniform, every central band covers its nominal share and P(up) is calibrated.
    rng = np.random.default_rng(1)
    n, S, H = 20_000, 20, 2
    paths, actual = rng.normal(size=(n, S, H)), rng.normal(size=(n, H))
    crps = prob.crps_values(paths, actual)
    assert crps.mean() == pytest.approx((1 + 1 / S) / math.sqrt(math.pi), rel=0.01)
    pit = prob.pit_summary(prob.pit_values(paths, actual, np.random.default_rng(2)))
    assert pit["ks_distance"] < 0.012  # the 1% critical value for 40 000 draws is 0.0081; H=2 are independent here
    assert np.allclose(pit["density"], 1.0, atol=0.05)
    quantiles = [0.1, 0.25, 0.75, 0.9]
    bands = prob.path_quantiles(paths, quantiles)
    inside = (actual >= bands[..., 0]) & (actual <= bands[..., 3])
    # Sample quantiles of 20 draws: the 10-90% band of the empirical distribution covers (S-1)/(S+1) * 0.8 ... the
    # exact coverage of order statistics; linear interpolation between x_(2.9) and x_(18.1) in 1-based order:
    # E[F(x_(k))] = k / (S + 1), so the expected coverage is (18.1 - 2.9) / 21.
    assert inside.mean() == pytest.approx((18.1 - 2.9) / 21, abs=0.01)


def test_p_up_of_the_true_distribution_is_reliable():
    # Origins with different drifts mu ~ N(0, 1): y ~ N(mu, 1) and 400 paths from N(mu, 1), so P(up) = Phi(mu)
    # up to the sampling noise of 400 draws (sd <= 0.025); each reliability bin's observed frequency matches its
    # mean forecast, and the Brier score is that of Phi(mu): E[Phi(mu)(1 - Phi(mu))] over mu.
    rng = np.random.default_rng(7)
    n, S = 20_000, 400
    mu = rng.normal(size=(n, 1))
    paths = mu[:, None, :] + rng.normal(size=(n, S, 1))
    actual = mu + rng.normal(size=(n, 1))
    p_up = prob.up_probability(paths, np.zeros(n))
    result = prob.brier(p_up, actual > 0)
    for row in result["reliability"]:
        assert row["count"] > 500 and row["observed"] == pytest.approx(row["mean_forecast"], abs=0.03)
    p_true = normal.cdf(mu)
    assert result["mean"] == pytest.approx(np.mean(p_true * (1 - p_true)), abs=0.006)
    assert result["mean"] == pytest.approx(np.mean((p_up - (actual > 0)) ** 2))


def test_an_under_dispersed_forecast_is_seen_by_every_score():
    rng = np.random.default_rng(3)
    n, S = 5_000, 20
    actual = rng.normal(size=(n, 1))
    good, narrow = rng.normal(size=(n, S, 1)), 0.3 * rng.normal(size=(n, S, 1))
    assert prob.crps_values(narrow, actual).mean() > prob.crps_values(good, actual).mean()
    # The closed form for the narrow forecast N(0, 0.09) at S = infinity is a lower bound of its energy CRPS mean.
    sigma = 0.3
    z = actual[:, 0] / sigma
    closed = sigma * (z * (2 * normal.cdf(z) - 1) + 2 * normal.pdf(z) - 1 / math.sqrt(math.pi))
    assert prob.crps_values(narrow, actual).mean() == pytest.approx(closed.mean() + sigma / math.sqrt(math.pi) / S,
                                                                    rel=0.02)
    pit = prob.pit_summary(prob.pit_values(narrow, actual, np.random.default_rng(4)))
    assert pit["density"][0] > 2 and pit["density"][-1] > 2  # a U-shaped histogram
    band = prob.path_quantiles(narrow, [0.1, 0.9])
    assert ((actual >= band[..., 0]) & (actual <= band[..., 1])).mean() < 0.5


def test_pit_by_hand_with_ties():
    paths = np.array([[[1.0], [2.0], [3.0]]])  # S = 3
    for y, low, high in [(0.0, 0.0, 0.25), (2.5, 0.5, 0.75), (2.0, 0.25, 0.75), (9.0, 0.75, 1.0)]:
        pit = prob.pit_values(paths, np.array([[y]]), np.random.default_rng(0))[0, 0]
        assert low <= pit <= high, (y, pit)  # rank 0..3 over S + 1 = 4, a tie spreads over two ranks


def test_wql_and_mase_by_hand():
    # Two origins, one horizon, quantiles 0.1 and 0.9.
    actual = np.array([[10.0], [-20.0]])
    bands = np.array([[[8.0, 12.0]], [[-15.0, -5.0]]])
    # QS_0.1: (10 > 8) 0.1 * 2 = 0.2; (-20 < -15) 0.9 * 5 = 4.5.
    # QS_0.9: (10 < 12) 0.1 * 2 = 0.2; (-20 < -5) 0.1 * 15 = 1.5.
    wql = prob.weighted_quantile_loss(bands, actual, [0.1, 0.9])
    assert wql["mean"] == pytest.approx(((2 * 4.7 / 30) + (2 * 1.7 / 30)) / 2)
    result = prob.mase(np.array([[11.0], [-18.0]]), actual, np.array([2.0, 0.0]))
    assert result["mean"] == pytest.approx(0.5) and result["origins_left_out"] == 1


def test_brier_reliability_and_volatility_by_hand():
    p_up = np.array([[0.05], [0.05], [0.95], [0.55]])
    up = np.array([[False], [True], [True], [False]])
    result = prob.brier(p_up, up)
    assert result["mean"] == pytest.approx(np.mean([0.05 ** 2, 0.95 ** 2, 0.05 ** 2, 0.55 ** 2]))
    table = {tuple(row["bin"]): row for row in result["reliability"]}
    assert table[(0.0, 0.1)]["count"] == 2 and table[(0.0, 0.1)]["observed"] == 0.5
    assert table[(0.9, 1.0)]["observed"] == 1.0 and table[(0.5, 0.6)]["mean_forecast"] == pytest.approx(0.55)
    close = np.array([[[110.0, 99.0]], [[90.0, 99.0]]]).reshape(1, 2, 2)  # one origin, 2 paths, 2 bars
    vol = prob.volatility_error(close, np.array([100.0]), np.array([[101.0, 101.0]]))
    # predicted |r|: bar 1 (0.1 + 0.1) / 2 = 0.1; bar 2 (|99/110 - 1| + |99/90 - 1|) / 2; realised 0.01 and 0.
    bar2 = (abs(99 / 110 - 1) + abs(99 / 90 - 1)) / 2
    assert vol["mae_per_horizon"] == pytest.approx([0.09, bar2])
    assert vol["mean_realised"] == pytest.approx(0.005)


def test_fewer_than_two_paths_is_a_user_error():
    with pytest.raises(UserError, match="at least 2 sampled paths"):
        prob.require_paths(np.zeros((3, 1, 2, 6)))


def test_random_walk_and_bootstrap_paths():
    rng = np.random.default_rng(5)
    history = np.cumsum(rng.normal(scale=[1.0, 3.0], size=(2, 200, 2)), axis=1)
    paths = random_walk_paths(history, horizon=4, paths=40_000, window=20, seed=0)
    sigma = np.diff(history, axis=1)[:, -20:].std(axis=1, ddof=1)
    assert paths.shape == (2, 40_000, 4, 2)
    np.testing.assert_allclose(paths.mean(axis=1), np.repeat(history[:, -1][:, None], 4, axis=1),
                               atol=4 * sigma.max() * 2 / math.sqrt(40_000))
    np.testing.assert_allclose(paths.std(axis=1), sigma[:, None, :] * np.sqrt(np.arange(1, 5))[None, :, None],
                               rtol=0.03)
    again = random_walk_paths(history, 4, 40_000, 20, seed=0)
    np.testing.assert_array_equal(paths, again)  # seeded: the same on every rank count
    boot = bootstrap_paths(history, horizon=3, paths=50, seed=0)
    changes = np.diff(history, axis=1)
    first = boot[:, :, 0] - history[:, -1][:, None]  # [n, S, F]: each a whole history bar's changes
    for i in range(2):
        bars = {tuple(row) for row in np.round(changes[i], 9)}
        assert all(tuple(row) in bars for row in np.round(first[i], 9))


def test_newey_west_by_hand_and_the_lag_rule():
    assert hac_lags(100, 10, 10) == 4 and hac_lags(8, 10, 10) == 2 and hac_lags(100, 20, 2) == 9
    rng = np.random.default_rng(6)
    series = rng.normal(0.02, 0.1, size=60)
    lags = 3
    result = hac_mean_test(series, lags)
    # Bartlett-weighted long-run variance of the demeaned series, small-sample corrected by T / (T - 1).
    e = series - series.mean()
    T = series.size
    gamma = [e[k:] @ e[:T - k] / T for k in range(lags + 1)]
    long_run = gamma[0] + 2 * sum((1 - k / (lags + 1)) * gamma[k] for k in range(1, lags + 1))
    se = math.sqrt(long_run / T * T / (T - 1))
    assert result["hac_se"] == pytest.approx(se, rel=1e-10)
    assert result["t"] == pytest.approx(series.mean() / se, rel=1e-10)
    from scipy.stats import t as student
    assert result["p_value"] == pytest.approx(2 * student.sf(abs(series.mean() / se), T - 1), rel=1e-8)
    assert hac_mean_test(series[:2], lags)["t"] is None
