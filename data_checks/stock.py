"""The stock use case's data checks, as code: one GX suite for the daily bars, one for the feature table.

Daily OHLCV bars (Date, Open, High, Low, Close, Adj Close, Volume; optionally Ticker for several instruments):
positive prices, High >= max(Open, Close) and Low <= min(Open, Close), Volume >= 0, unique and increasing
dates per ticker, no gap over 7 calendar days, a minimum history per ticker, and daily moves beyond ±25 %
reported (listed in the validation result) without failing the run: real markets do move that much, rarely.

Cross-row checks need columns that no single row has, so `check_view` derives them before validation (the
spec's `raw_check_view`; the data itself goes on unchanged):

- `_days_since_previous`: calendar days since the previous row of the same ticker, in file order (0 for a
  duplicate date, negative when dates go backwards, NaN on a ticker's first row, which GX skips);
- `_daily_move`: Adj Close (Close when absent) over the previous row's, minus 1;
- `_rows_per_ticker`: the ticker's number of rows.

The loader parses Date with `pd.to_datetime(errors="coerce")`, so an unparseable date arrives as NaT and is
reported by the not-null check. Suites are built fresh on every call and never added to a data context.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402  (the analytics switch must be set before the import)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations import expectations as gxe  # noqa: E402

RAW_SUITE_NAME = "stock_raw"
FEATURE_SUITE_NAME = "stock_features"

REQUIRED_COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume")
PRICE_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close")
MAX_GAP_DAYS = 7  # 9/11 closed US markets from 2001-09-11 to 09-14: Sep 10 -> Sep 17 is the longest gap
LARGE_MOVE = 0.25  # |daily move| beyond this is reported (1987-10-19: -20.5 % for the S&P 500)

NUMERIC_TYPES = [
    "float64",
    "float32",
    "Float64Dtype",
    "Float32Dtype",
    "int64",
    "int32",
    "Int64Dtype",
    "Int32Dtype",
]
DATETIME_TYPES = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]


def check_view(raw: pd.DataFrame) -> pd.DataFrame:
    """`raw` plus the derived columns the cross-row expectations read (see the module docstring).

    Tolerant of broken input: a derived column whose inputs are missing or unusable is left out (or NaN),
    and the expectations on the inputs themselves report what is wrong.
    """
    view = raw.copy()
    if "Ticker" not in view.columns:
        view["Ticker"] = "default"
    ticker = view["Ticker"].astype("string").fillna("<missing>")
    view["_rows_per_ticker"] = ticker.groupby(ticker).transform("size").astype("int64")
    if "Date" in view.columns:
        dates = pd.to_datetime(view["Date"], errors="coerce")
        view["_days_since_previous"] = (dates - dates.groupby(ticker).shift(1)).dt.days.astype("float64")
    price = "Adj Close" if "Adj Close" in view.columns else "Close"
    if price in view.columns:
        close = pd.to_numeric(view[price], errors="coerce").astype("float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            move = close / close.groupby(ticker).shift(1) - 1.0
        view["_daily_move"] = move.replace([np.inf, -np.inf], np.nan)
    return view


def raw_suite(min_history: int = 1000) -> gx.ExpectationSuite:
    """Schema, completeness, price and volume sanity, dates and history length of the daily bars."""
    expectations: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in REQUIRED_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column="Date", type_list=DATETIME_TYPES),
        *(gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=NUMERIC_TYPES) for c in PRICE_COLUMNS),
        gxe.ExpectColumnValuesToBeInTypeList(column="Volume", type_list=NUMERIC_TYPES),
    ]
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(
            column=c,
            description="Date missing or unparseable (NaT after pd.to_datetime(errors='coerce'))"
            if c == "Date"
            else None,
        )
        for c in (*REQUIRED_COLUMNS, "Ticker")
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(
            column=c, min_value=0, strict_min=True, description=f"{c} must be a positive price"
        )
        for c in PRICE_COLUMNS
    ]
    expectations += [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="High", column_B=c, or_equal=True, description=f"High must be >= {c}"
        )
        for c in ("Open", "Close")
    ]
    expectations += [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=c, column_B="Low", or_equal=True, description=f"Low must be <= {c}"
        )
        for c in ("Open", "Close")
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column="Volume", min_value=0, description="Volume must be >= 0"),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["Ticker", "Date"], description="one row per ticker and date"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="_days_since_previous",
            min_value=1,
            description="dates must be unique and increasing per ticker (days since the previous row)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="_days_since_previous",
            max_value=MAX_GAP_DAYS,
            description=f"no gap over {MAX_GAP_DAYS} calendar days between rows of a ticker",
        ),
        gxe.ExpectColumnMinToBeBetween(
            column="_rows_per_ticker",
            min_value=min_history,
            description=f"at least {min_history:,} trading days of history per ticker",
        ),
        # Reported, not refused: `mostly=0` never fails, and the result lists the moves it found.
        gxe.ExpectColumnValuesToBeBetween(
            column="_daily_move",
            min_value=-LARGE_MOVE,
            max_value=LARGE_MOVE,
            mostly=0.0,
            severity="warning",
            description=f"daily moves beyond ±{LARGE_MOVE:.0%} (reported only)",
        ),
    ]
    return gx.ExpectationSuite(name=RAW_SUITE_NAME, expectations=expectations)


def feature_suite(target: str, features: tuple[str, ...], positive_target: bool) -> gx.ExpectationSuite:
    """Every feature complete and in a sane range, the target present and in range. (Enough history is the
    raw suite's check; batch scoring runs this suite on short inputs too.)

    The target may be missing on the last `horizon` rows (not known yet: batch scoring forecasts from them,
    the training flow drops them), so it has no not-null check here.
    """
    columns = [*features, "Date", "Ticker"]
    expectations: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in [*columns, target]]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]
    # log realised volatilities: a daily volatility above 100 % (log 0) is broken data
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=-20, max_value=0)
        for c in features
        if c.startswith("log_rv_")
    ]
    # everything else is a log ratio or in units of the 22-day volatility: finite and bounded
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=-1000, max_value=1000)
        for c in features
        if not c.startswith("log_rv_")
    ]
    if positive_target:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=target,
                min_value=0,
                max_value=1,
                strict_min=True,
                description="realised volatility must be positive (the model learns its log)",
            )
        )
    else:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=target, min_value=-5, max_value=5))
    return gx.ExpectationSuite(name=FEATURE_SUITE_NAME, expectations=expectations)
