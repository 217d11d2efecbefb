"""Choosing best_model/ (issue 23 items 1-3), in process: the selection rule and early stopping, the fixed forecast
origins, and the forecast scores against a direct computation. The runs through the deepspeed launcher are in
tests/test_selection_runs.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ds_kronos.data import verify_prepared
from ds_kronos.data.series import CLOSE
from ds_kronos.errors import ConfigError
from ds_kronos.forecast.sampler import sample_paths
from ds_kronos.forecast.sampler_file import SamplerSettings
from ds_kronos.model import Kronos, KronosTokenizer
from ds_kronos.runtime import stream_seed
from ds_kronos.train.config import TrainConfig
from ds_kronos.train.position import Position
from ds_kronos.train.validation import forecast_validation
from ds_kronos.train.validation.forecast_validation import (
    CHUNK_ORIGINS,
    FORECAST_STREAM,
    ForecastValidation,
    choose_origins,
)
from ds_kronos.train.validation.selection import Selection, SelectionState, scoring_setup


def feed(selection: Selection, scores: list[float | None]) -> tuple[SelectionState, list[bool]]:
    state = SelectionState()
    return state, [selection.consider(state, step, value) for step, value in enumerate(scores)]


def test_the_start_stays_best_unless_beaten_by_more_than_min_delta():
    selection = Selection("crps", patience=0, min_delta=0.01)
    state, improved = feed(selection, [0.50, 0.495, 0.49, 0.52])
    assert improved == [True, False, False, False]  # 0.49 is not 0.01 below 0.50
    assert state.best_step == 0 and state.start == 0.50
    assert selection.improved_on_start(state) is False
    assert (state.best_later, state.best_later_step) == (0.49, 2)
    line = selection.verdict_line(state)
    assert "no evaluation improved on the start model by crps" in line and "step 2" in line and "0.49" in line
    state, improved = feed(selection, [0.50, 0.48, 0.47])
    assert improved == [True, True, False] and state.best_step == 1
    assert selection.improved_on_start(state) is True


def test_rank_ic_is_better_when_higher_and_undefined_scores_never_win():
    selection = Selection("rank_ic")
    state, improved = feed(selection, [0.01, None, float("nan"), 0.03, 0.02])
    assert improved == [True, False, False, True, False]
    assert state.best == 0.03 and state.best_step == 3
    assert state.scores[1] == (1, None) and state.scores[2] == (2, None)


def test_patience_counts_evaluations_in_a_row_without_improvement():
    selection = Selection("loss", patience=2)
    state, _ = feed(selection, [5.0, 4.0, 4.5, 3.0, 3.5])  # the improvement at step 3 resets the count
    assert state.stop_reason is None and state.stale == 1
    selection.consider(state, 5, 3.2)
    assert state.stale == 2
    assert state.stop_reason.startswith("early stop: loss did not improve on 3 (step 3)")


def test_no_start_score_means_no_verdict_about_the_start():
    selection = Selection("crps")
    state, _ = feed(selection, [])
    for step, value in ((4, 0.5), (8, 0.4)):
        selection.consider(state, step, value)
    assert selection.improved_on_start(state) is None and selection.verdict_line(state) is None


def test_the_selection_state_survives_a_checkpoint_round_trip():
    position = Position(step=12)
    selection = Selection("crps", patience=3)
    for step, value in ((0, 0.5), (6, 0.4), (12, 0.45)):
        selection.consider(position.selection, step, value)
    selection.consider(position.selection, 18, 0.44, {1: 0.4, 2: 0.5})
    position.selection.start_daily = [(1, 0.5), (2, 0.6), (3, 0.7)]
    restored = Position.from_client_state(position.to_client_state())
    assert restored.selection == position.selection
    assert Position.from_client_state({"step": 3}).selection == SelectionState()  # a checkpoint from before


def test_a_resumed_selection_must_be_scored_as_it_was():
    # Issue 31 item 2: a state selected by loss resumed with --select_by crps let a CRPS of 0.61 "beat" a loss of
    # 2.36; with rank_ic (higher is better) nothing ever improved. The state records how it was scored.
    by_loss, forecasts = scoring_setup("loss", 75, None), {"origins": 16, "paths": 4, "spread": 1.0}
    state = SelectionState()
    assert Selection("loss").adopt(state, by_loss) is None and state.scoring == by_loss
    Selection("loss").consider(state, 0, 2.36)
    for metric in ("crps", "rank_ic"):
        with pytest.raises(ConfigError, match=rf"selected by loss \(val_samples 75\); this run scores {metric} "
                                              r"\(origins 16, paths 4, spread 1.0\)"):
            Selection(metric).adopt(state, scoring_setup(metric, 75, forecasts))
    assert Selection("loss").adopt(state, scoring_setup("loss", 75, None)) is None  # the same: resumed as is
    # The same metric on another set-up (here a recalibrated start folder's sampler.json): both values named.
    by_crps = SelectionState()
    Selection("crps").adopt(by_crps, scoring_setup("crps", 75, forecasts))
    Selection("crps").consider(by_crps, 0, 0.61)
    with pytest.raises(ConfigError, match=r"selected by crps \(spread 1.0\); this run scores crps \(spread 1.3\)"):
        Selection("crps").adopt(by_crps, scoring_setup("crps", 75, {**forecasts, "spread": 1.3}))
    # A state from before the set-up was recorded: resumed by loss when its scores are the validation losses.
    old = Position.from_client_state({"step": 4, "history": {"val": [[0, 2.36], [2, 2.3]]},
                                      "selection": {"scores": [[0, 2.36], [2, 2.3]], "best": 2.3, "best_step": 2}})
    assert old.selection.scoring is None
    with pytest.raises(ConfigError, match="does not record how it was scored"):
        Selection("crps").adopt(old.selection, scoring_setup("crps", 75, forecasts), old.history.val)
    by_crps_before = SelectionState(scores=[(0, 0.61), (2, 0.6)], best=0.6, best_step=2)
    with pytest.raises(ConfigError, match="its scores are not the validation losses"):
        Selection("loss").adopt(by_crps_before, by_loss, old.history.val)
    note = Selection("loss").adopt(old.selection, by_loss, old.history.val)
    assert "resumed as selected by loss" in note and old.selection.scoring == by_loss
    # Nothing scored yet: any metric may start.
    assert Selection("crps").adopt(SelectionState(), scoring_setup("crps", 75, forecasts)) is None


def test_the_forecast_set_up_names_what_the_scores_depend_on(demo_prepared_dir):
    prepared = verify_prepared(str(demo_prepared_dir))

    def setup(origins: int = 20, spread: float = 1.0) -> dict:
        return ForecastValidation(prepared.split("val"), prepared.lookback, prepared.predict, origins=origins, paths=4,
                                  clip=5.0, seed=7, sampler=SamplerSettings(spread=spread), max_context=512,
                                  pad_forwards=False).setup()

    base = setup()
    assert base == setup() and base["origins"] == 20 and base["spread"] == 1.0
    assert {k for k, v in setup(spread=1.3).items() if base[k] != v} == {"spread"}
    assert {k for k, v in setup(origins=10).items() if base[k] != v} == {"origins", "origins_digest"}


def paired(gains: list[float], base: float = 0.5) -> tuple[dict[int, float], dict[int, float]]:
    """The start's per-date CRPS and a candidate's that is better by ``gains`` (per date)."""
    start = {date: base + 0.01 * (date % 3) for date in range(len(gains))}
    return start, {date: start[date] - gain for date, gain in zip(start, gains)}


def test_a_trained_model_must_beat_the_start_by_more_than_chance():
    """By forecast, the start stays best_model/ unless the paired per-date gain is significant (one-sided HAC t)."""
    wiggle = np.sin(1.7 * np.arange(23))
    wiggle = (wiggle - wiggle.mean()) / wiggle.std()
    noise = (0.004 + 0.03 * wiggle).tolist()  # a mean gain of 0.004 with a spread of 0.03 between dates: chance
    start, candidate = paired(noise)
    selection = Selection("crps")  # beat_start_p 0.05 by default
    state = SelectionState()
    assert selection.consider(state, 0, np.mean(list(start.values())), start)
    assert not selection.consider(state, 32, np.mean(list(candidate.values())), candidate)
    assert state.best_step == 0 and selection.improved_on_start(state) is False
    test = state.best_later_test
    assert test["dates"] == 23 and test["gain"] == pytest.approx(np.mean(noise)) and not test["passes"]
    assert 0.1 < test["p_one_sided"] < 0.5 and test["t"] > 0
    line = selection.verdict_line(state)
    assert "paired over 23 dates" in line and ">= --beat_start_p 0.05" in line and "best_model/ is the start" in line
    # The same scores without the test: the noisy gain is taken.
    loose = Selection("crps", beat_start_p=1.0)
    state = SelectionState()
    assert [loose.consider(state, s, np.mean(list(d.values())), d) for s, d in ((0, start), (32, candidate))] == [
        True, True]
    assert state.best_later_test is None
    # A gain that holds on nearly every date passes, and the verdict says by how much.
    steady = (0.01 + 0.003 * wiggle).tolist()
    start, candidate = paired(steady)
    state = SelectionState()
    selection.consider(state, 0, np.mean(list(start.values())), start)
    assert selection.consider(state, 32, np.mean(list(candidate.values())), candidate)
    assert state.best_later_test["passes"] and state.best_later_test["p_one_sided"] < 1e-6
    assert "best_model/ is step 32" in selection.verdict_line(state)
    assert selection.summary(state)["best_trained_test"]["t"] > 5


def test_the_test_against_the_start_follows_the_metrics_direction_and_needs_three_dates():
    selection = Selection("rank_ic")
    state = SelectionState()
    start = {d: 0.0 + 0.01 * (d % 2) for d in range(10)}
    worse = {d: v - 0.05 for d, v in start.items()}  # lower RankIC: worse, however steady
    selection.consider(state, 0, 0.005, start)
    assert not selection.consider(state, 8, 0.0 - 0.045, worse)
    better = {d: v + 0.05 + 0.001 * d for d, v in start.items()}
    assert selection.consider(state, 16, 0.055, better)
    # Two common dates: no test, min_delta alone decides (and the summary says there was none).
    state = SelectionState()
    selection.consider(state, 0, 0.01, {1: 0.0, 2: 0.02})
    assert selection.consider(state, 8, 0.02, {1: 0.01, 2: 0.03, 5: 0.5})
    assert state.best_later_test is None
    # By loss there are no per-date scores to pair: min_delta alone.
    assert Selection("loss").test_against_start(state, {1: 0.0}) is None


def test_train_config_checks_the_selection_options():
    def problems(**options) -> list[str]:
        return [p for p in TrainConfig(data="x", **options).option_problems() if "select_by" in p]

    assert problems(select_by="crps", val_paths=1) == [
        "--select_by crps needs --val_paths 2 or more (the CRPS scores a distribution of sampled paths; one path is "
        "a point forecast), got 1"]
    assert problems(select_by="rank_ic", val_paths=1) == []  # the RankIC of the mean path needs no spread
    assert problems(select_by="crps", val_forecast_origins=0)
    assert TrainConfig(select_by="crps").forecast_origins() > 0
    assert TrainConfig().forecast_origins() == 0  # loss selection costs nothing extra by default
    assert TrainConfig(val_forecast_origins=8).forecast_origins() == 8


def test_fixed_origins_are_whole_dates_spread_over_the_split():
    # 3 symbols x 100 bars on one calendar, the third symbol starting 40 bars late.
    lengths = [100, 100, 60]
    timestamps = np.concatenate([np.arange(100), np.arange(100), np.arange(40, 100)]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    origins = choose_origins(timestamps, offsets, lookback=10, pred_len=5, count=12)
    dates = timestamps[origins.rows - 1]
    assert len(origins) <= 12
    for date in np.unique(dates):  # every symbol that has an origin at a chosen date is in
        expected = 3 if date >= 40 + 9 else 2
        assert (dates == date).sum() == expected
    assert dates.min() < 30 and dates.max() > 80  # spread, not the first dates only
    again = choose_origins(timestamps, offsets, lookback=10, pred_len=5, count=12)
    assert np.array_equal(origins.rows, again.rows)


def test_forecast_scores_are_the_crps_and_rank_ic_of_the_sampled_paths(demo_prepared_dir, tiny_checkpoints,
                                                                       monkeypatch):
    prepared = verify_prepared(str(demo_prepared_dir))
    split = prepared.split("val")
    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_folder_or_preset(str(tiny_checkpoints[0]))
    model = Kronos.from_folder_or_preset(str(tiny_checkpoints[1]))
    sampler = SamplerSettings(spread=1.5)  # a calibrated sampler.json's spread factor applies here too
    validation = ForecastValidation(split, prepared.lookback, prepared.predict, origins=CHUNK_ORIGINS + 5, paths=4,
                                    clip=5.0, seed=7, sampler=sampler, max_context=512, pad_forwards=False)
    runtime = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    monkeypatch.setattr(forecast_validation, "all_reduce_sum", lambda tensor: tensor)
    scores = validation.score(SimpleNamespace(module=model), tokenizer, runtime)

    # The same paths, one origin at a time (so batching does not matter), widened by hand around their mean and
    # scored by the energy form of the CRPS.
    w, L, H = validation.windows, prepared.lookback, prepared.predict
    crps, returns = [], []
    for i, row in enumerate(validation.origins.rows):
        generator = torch.Generator().manual_seed(stream_seed(7, FORECAST_STREAM, int(row)))
        paths = sample_paths(tokenizer, model, torch.from_numpy(w.norm[i:i + 1, :L]),
                             torch.from_numpy(w.stamp[i:i + 1, :L]), torch.from_numpy(w.stamp[i:i + 1, L:]), 512, H,
                             5.0, sampler.temperature, 0, sampler.top_p, 4, [generator])[0, :, -H:, CLOSE].double()
        paths = paths.mean(0) + 1.5 * (paths - paths.mean(0))
        actual = torch.from_numpy(w.norm[i, L:, CLOSE]).double()
        energy = (paths - actual).abs().mean(0) - (paths[:, None] - paths[None]).abs().mean((0, 1)) / 2
        crps.append(energy.mean().item())
        close = paths.mean(0)[-1].item() * float(w.std[i, 0, CLOSE]) + float(w.mean[i, 0, CLOSE])
        returns.append(close / float(w.raw[i, L - 1, CLOSE]) - 1)
    assert scores.crps == pytest.approx(np.mean(crps), rel=1e-5)
    assert scores.skill == pytest.approx(1 - scores.crps / validation.random_walk_crps)
    from ds_kronos.evaluation.metrics import daily_ic
    _, _, rank_ic = daily_ic(validation.dates, np.array(returns), validation.real_returns)
    assert rank_ic.size > 0 and scores.rank_ic == pytest.approx(rank_ic.mean(), rel=1e-5)
    # Per date: what the selection pairs with the start's (each date's mean CRPS over its origins, its RankIC).
    dates = validation.dates
    assert scores.daily["crps"] == pytest.approx({int(d): np.mean(np.array(crps)[dates == d]) for d in set(dates)},
                                                 rel=1e-5)
    assert list(scores.daily["rank_ic"].values()) == pytest.approx(rank_ic.tolist(), rel=1e-5)
    assert math.isfinite(validation.random_walk_crps) and validation.random_walk_crps > 0


def test_the_baselines_are_scored_once_and_equal_on_one_rank_and_two(demo_prepared_dir, monkeypatch):
    """The selection line's strongest baseline: the econometric baselines' CRPS on the validation origins, fitted once,
    dealt to the ranks by symbol (as the evaluation does) and summed, so the figures do not depend on the world size."""
    prepared = verify_prepared(str(demo_prepared_dir))

    def validation() -> ForecastValidation:
        return ForecastValidation(prepared.split("val"), prepared.lookback, prepared.predict,
                                  origins=2 * CHUNK_ORIGINS + 5, paths=4, clip=5.0, seed=7, sampler=SamplerSettings(),
                                  max_context=512, pad_forwards=False)

    def rank(r: int, world_size: int) -> SimpleNamespace:
        return SimpleNamespace(rank=r, world_size=world_size, device=torch.device("cpu"))

    one = validation()
    assert one.strongest_baseline() is None  # nothing fitted before the first evaluation
    monkeypatch.setattr(forecast_validation, "all_reduce_sum", lambda tensor: tensor)
    one._score_baselines(rank(0, 1))
    # Two ranks: rank 1's share, then rank 0's with rank 1's added as the all-reduce would.
    shares = []
    monkeypatch.setattr(forecast_validation, "all_reduce_sum", lambda tensor: shares.append(tensor) or tensor)
    validation()._score_baselines(rank(1, 2))
    two = validation()
    monkeypatch.setattr(forecast_validation, "all_reduce_sum", lambda tensor: tensor + shares[0])
    two._score_baselines(rank(0, 2))
    assert 0 < shares[0].count_nonzero() < shares[0].numel()  # rank 1 fitted some origins, not all

    assert set(one.baseline_crps) >= {"GARCH-t", "GJR-GARCH-t", "EWMA"}
    assert two.baseline_crps == pytest.approx(one.baseline_crps, rel=1e-12)
    assert two.baseline_fits == one.baseline_fits
    assert all(sum(counts.values()) == len(one) for counts in one.baseline_fits.values())
    assert all(math.isfinite(v) and v > 0 for v in one.baseline_crps.values())
    label, value = one.strongest_baseline()
    assert value == min(one.baseline_crps.values()) and one.baseline_crps[label] == value
    summary = one.summary()
    assert summary["baselines_crps"] == one.baseline_crps and summary["baseline_fits"] == one.baseline_fits
