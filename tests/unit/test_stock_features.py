"""Stock features, targets, data checks and walk-forward folds, on the real S&P 500 bars shipped in `arch`.

The leak tests are the point: a feature of day t must not change when anything after t changes or is cut
off, per ticker, and nothing is fitted on the data to scale it (features are scale-free by construction).
"""

import numpy as np
import pandas as pd
import pytest
from arch.data import sp500

from data_checks import stock as checks
from tasks.split import rolling_origin_folds, split_frame
from tasks.validate import validate_frame
from usecases.spec import SplitSpec
from usecases.stock import spec as stock_spec
from usecases.stock.features import (
    EXTRA_COLUMNS,
    FEATURES,
    HAR_FEATURES,
    TARGETS,
    WARMUP,
    build_features,
)

PAST_ONLY = [*FEATURES, *EXTRA_COLUMNS]


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return sp500.load().reset_index()


@pytest.fixture(scope="module")
def table(bars) -> pd.DataFrame:
    return build_features(bars, "volatility")


def _features_up_to(table: pd.DataFrame, cutoff) -> pd.DataFrame:
    return table.loc[table["Date"] <= cutoff, ["Ticker", "Date", *PAST_ONLY]].reset_index(drop=True)


def test_shape_and_completeness(bars, table):
    assert len(bars) == 5031 and bars["Date"].min() == pd.Timestamp("1999-01-04")
    assert len(table) == len(bars) - WARMUP  # the 252-day windows fill on the 253rd day
    assert table[list(PAST_ONLY)].notna().all().all()
    assert np.isfinite(table[list(FEATURES)].to_numpy()).all()
    # the target lies beyond the data for the last 5 days only: kept (batch scoring forecasts from them)
    assert table[TARGETS["volatility"]].isna().sum() == 5
    assert table[TARGETS["volatility"]].iloc[:-5].notna().all()
    assert set(HAR_FEATURES) <= set(FEATURES)


@pytest.mark.parametrize("position", [600, 2500, 4900])
def test_no_feature_at_t_uses_data_after_t(bars, table, position):
    cutoff = bars["Date"].iloc[position]
    expected = _features_up_to(table, cutoff)

    truncated = build_features(bars.iloc[: position + 1], "volatility")
    pd.testing.assert_frame_equal(_features_up_to(truncated, cutoff), expected)

    altered = bars.copy()
    later = altered["Date"] > cutoff
    rng = np.random.default_rng(position)
    factor = np.exp(rng.normal(0, 0.2, later.sum()))
    for column in ("Open", "High", "Low", "Close", "Adj Close"):
        altered.loc[later, column] = altered.loc[later, column] * factor
    altered.loc[later, "Volume"] = altered.loc[later, "Volume"] * 7
    for target in ("volatility", "return"):
        pd.testing.assert_frame_equal(_features_up_to(build_features(altered, target), cutoff), expected)


def test_targets_look_exactly_one_horizon_ahead(bars):
    log_close = np.log(bars["Adj Close"].to_numpy())
    r = np.diff(log_close, prepend=np.nan)
    vol = build_features(bars, "volatility").set_index("Date")
    ret = build_features(bars, "return").set_index("Date")
    for i in (300, 2000, 5020):
        day = bars["Date"].iloc[i]
        assert vol.loc[day, "rv_next_5d"] == pytest.approx(np.sqrt(np.mean(r[i + 1 : i + 6] ** 2)), rel=1e-12)
        assert ret.loc[day, "ret_next_1d"] == pytest.approx(r[i + 1], rel=1e-12)
        assert ret.loc[day, "next_close"] == pytest.approx(bars["Adj Close"].iloc[i + 1])
        # trailing realised volatility (the naive baselines) ends at t itself
        assert vol.loc[day, "rv_22d"] == pytest.approx(np.sqrt(np.mean(r[i - 21 : i + 1] ** 2)), rel=1e-12)


def test_features_are_computed_per_ticker(bars):
    """Two instruments in one table get exactly the features each gets alone: no window crosses tickers."""
    other = bars.iloc[1000:].copy()
    for column in ("Open", "High", "Low", "Close", "Adj Close"):
        other[column] = other[column] * 0.37  # another price level, dates that start later
    other["Volume"] = other["Volume"] // 3
    both = pd.concat([bars.assign(Ticker="SPX"), other.assign(Ticker="OTHER")], ignore_index=True)
    both = both.sample(frac=1.0, random_state=0)  # input order must not matter for the features
    combined = build_features(both, "volatility")
    for name, alone in (("SPX", bars), ("OTHER", other)):
        expected = build_features(alone.assign(Ticker=name), "volatility").reset_index(drop=True)
        got = combined[combined["Ticker"] == name].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)
    # scale-free: the same returns at 0.37x the price level give the same features
    shared = combined.pivot(index="Date", columns="Ticker", values="rv_66d_rel").dropna()
    np.testing.assert_allclose(shared["SPX"], shared["OTHER"], rtol=1e-9, atol=1e-12)


def test_split_keeps_a_horizon_gap_so_train_targets_never_reach_validation(table):
    labelled = table[table[TARGETS["volatility"]].notna()]
    splits = split_frame(labelled, SplitSpec(test=750, validation=250, gap=5, unit="steps"), "Date")
    days = labelled["Date"].drop_duplicates().reset_index(drop=True)
    position = {d: i for i, d in enumerate(days)}
    last_train, first_val = position[splits.train["Date"].max()], position[splits.validation["Date"].min()]
    last_val, first_test = position[splits.validation["Date"].max()], position[splits.test["Date"].min()]
    # a train row's target uses days t+1..t+5: all before the first validation day
    assert first_val - last_train == 6 and first_test - last_val == 6
    assert len(splits.test) == 750 and len(splits.validation) == 250


def test_walk_forward_folds_expand_and_keep_the_gap(table):
    train = table.iloc[:3000]
    folds = rolling_origin_folds(train, "Date", folds=3, gap=5, unit="steps")
    assert len(folds) == 3
    days = train["Date"].reset_index(drop=True)
    previous_end = None
    for fit, validation in folds:
        gap = days[days.between(fit["Date"].max(), validation["Date"].min(), inclusive="neither")]
        assert len(gap) == 5
        assert len(validation) == 3000 // 5
        if previous_end is not None:
            assert fit["Date"].max() > previous_end  # the origin rolls forward, the training part grows
        previous_end = fit["Date"].max()


# --- data checks on the real bars -------------------------------------------------------------------------


def _raw_report(frame: pd.DataFrame):
    return validate_frame(checks.check_view(frame), checks.raw_suite(min_history=1768))


def test_real_bars_pass_and_nothing_is_reported_as_a_large_move(bars):
    report = _raw_report(bars)
    assert report.success, report.summary()
    moves = [o for o in report.outcomes if o.column == "_daily_move"]
    assert moves and moves[0].success and moves[0].observed.startswith("0 unexpected")


def test_a_large_move_is_reported_not_refused(bars):
    jumped = bars.copy()
    later = jumped.index >= 3000
    for column in ("Open", "High", "Low", "Close", "Adj Close"):
        jumped.loc[later, column] = jumped.loc[later, column] * 1.4
    report = _raw_report(jumped)
    assert report.success, report.summary()
    move = next(o for o in report.outcomes if o.column == "_daily_move")
    assert move.success and move.observed.startswith("1 unexpected value")


def _defect(bars: pd.DataFrame, defect: str) -> pd.DataFrame:
    frame = bars.copy()
    if defect == "negative_price":
        frame.loc[100, "Low"] = -1.0
    elif defect == "high_below_close":
        frame.loc[200, "High"] = frame.loc[200, "Close"] - 1.0
    elif defect == "low_above_open":
        frame.loc[201, "Low"] = frame.loc[201, "Open"] + 1.0
    elif defect == "negative_volume":
        frame.loc[300, "Volume"] = -5
    elif defect == "duplicate_date":
        frame = pd.concat([frame.iloc[:401], frame.iloc[400:]], ignore_index=True)
    elif defect == "decreasing_dates":
        frame.loc[[500, 501], "Date"] = frame.loc[[501, 500], "Date"].to_numpy()
    elif defect == "ten_day_gap":
        start = frame.loc[600, "Date"]
        frame = frame[(frame["Date"] <= start) | (frame["Date"] >= start + pd.Timedelta(days=10))]
    elif defect == "missing_column":
        frame = frame.drop(columns="Low")
    elif defect == "short_history":
        frame = frame.iloc[-1000:]
    return frame


@pytest.mark.parametrize(
    "defect, column",
    [
        ("negative_price", "Low"),
        ("high_below_close", "High"),
        ("low_above_open", "Open"),
        ("negative_volume", "Volume"),
        ("duplicate_date", "_days_since_previous"),
        ("decreasing_dates", "_days_since_previous"),
        ("ten_day_gap", "_days_since_previous"),
        ("missing_column", "Low"),
        ("short_history", "_rows_per_ticker"),
    ],
)
def test_defects_fail_the_raw_suite(bars, defect, column):
    report = _raw_report(_defect(bars, defect))
    assert not report.success
    assert any(
        column in (f.column or "") or column in str(f.details.get("kwargs")) for f in report.failures
    ), report.summary()


def test_min_history_follows_the_windows():
    params = stock_spec.Params()
    assert stock_spec.min_history(params) == WARMUP + 1 + 500 + 250 + 750 + 3 * 5
    assert stock_spec.min_history(stock_spec.Params(target="return", train_steps=1000)) == (
        WARMUP + 1 + 1000 + 250 + 750 + 3
    )


def test_feature_suite_passes_on_the_real_table(bars):
    for target in ("volatility", "return"):
        frame = build_features(bars, target)
        suite = checks.feature_suite(TARGETS[target], FEATURES, positive_target=target == "volatility")
        report = validate_frame(frame, suite)
        assert report.success, report.summary()
