"""Stock features and targets from daily OHLCV bars, one instrument or several (a `Ticker` column).

Every feature of day t is computed from bars up to and including day t (known after that day's close): the
table is sorted by (Ticker, Date) and every shift and rolling window runs within a ticker, so no value of a
later day and no other ticker's data enters it. There is no scaling fitted on the data: features are made
scale-free by construction (log ratios to the 22-day realised volatility, returns in units of it), so one
model serves calm and turbulent years and several tickers alike. Targets look forward and are the only
columns that do:

- `volatility`: realised volatility of the next `horizon` (5) trading days, sqrt(mean(r[t+1..t+5]^2));
- `return`: the next day's log return r[t+1] (with `next_close`, the adjusted close it implies).

r[t] = log(AdjClose[t] / AdjClose[t-1]) within a ticker: adjusted closes, so splits and dividends are no
moves. Rows whose longest window (252 days) is not yet full are dropped. Rows whose target lies beyond the
data (the last `horizon` days) are kept with a missing target: batch scoring forecasts from them, and the
training flow drops them (a target not known yet can neither train nor test).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DATE, TICKER = "Date", "Ticker"
PRICE_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close")
RAW_COLUMNS = (DATE, *PRICE_COLUMNS, "Volume")

HORIZONS = {"volatility": 5, "return": 1}
TARGETS = {"volatility": "rv_next_5d", "return": "ret_next_1d"}
WARMUP = 252  # the longest window, in trading days: rows before it is full are dropped
# |log return| below this counts as this for the 1-day realised volatility's log (a flat day would be -inf)
RV_FLOOR = 1e-4

# HAR-RV regressors (Corsi 2009) in logs: the HAR baseline and the candidate's base margin use them.
HAR_FEATURES: tuple[str, ...] = ("log_rv_1d", "log_rv_5d", "log_rv_22d")

FEATURES: tuple[str, ...] = (
    *HAR_FEATURES,
    # realised volatility over longer windows, relative to the 22-day one (log ratios)
    "rv_66d_rel",
    "rv_252d_rel",
    # range-based volatility (Parkinson high-low, Garman-Klass OHLC) relative to the 22-day realised one
    "parkinson_1d_rel",
    "parkinson_5d_rel",
    "parkinson_22d_rel",
    "garman_klass_1d_rel",
    "garman_klass_5d_rel",
    "garman_klass_22d_rel",
    # downside semi-volatility (leverage effect), relative
    "semivol_down_5d_rel",
    "semivol_down_22d_rel",
    # lagged returns, momentum and the overnight gap in units of the 22-day volatility
    *(f"ret_lag{k}_z" for k in range(5)),
    "momentum_5d_z",
    "momentum_22d_z",
    "gap_z",
    # slower state: quarterly momentum and the drawdown from the 252-day high (log)
    "momentum_66d",
    "drawdown_252d",
    # volume: log ratios of recent to longer average volume
    "volume_1d_22d",
    "volume_5d_22d",
    "volume_22d_252d",
)

# Kept in the table for baselines, metrics and plots; never model inputs.
EXTRA_COLUMNS: tuple[str, ...] = ("close", "rv_5d", "rv_22d")


def prepare(raw: pd.DataFrame) -> pd.DataFrame:
    """The raw columns sorted by (Ticker, Date), with a Ticker column (one instrument: its `Ticker` as is)."""
    frame = raw.copy()
    if TICKER not in frame.columns:
        frame[TICKER] = "default"
    if "Adj Close" not in frame.columns:
        frame["Adj Close"] = frame["Close"]
    frame[DATE] = pd.to_datetime(frame[DATE])
    frame = frame[[TICKER, *RAW_COLUMNS]].sort_values([TICKER, DATE], kind="stable").reset_index(drop=True)
    return frame


def _rolling_mean(values: pd.Series, groups: pd.Series, window: int) -> pd.Series:
    return values.groupby(groups, sort=False).rolling(window, min_periods=window).mean().droplevel(0)


def _rolling_sum(values: pd.Series, groups: pd.Series, window: int) -> pd.Series:
    return values.groupby(groups, sort=False).rolling(window, min_periods=window).sum().droplevel(0)


def _shift(values: pd.Series, groups: pd.Series, periods: int) -> pd.Series:
    return values.groupby(groups, sort=False).shift(periods)


def compute_features(raw: pd.DataFrame) -> pd.DataFrame:
    """Ticker, Date, the EXTRA_COLUMNS and the FEATURES for every row, NaN where a window is not yet full."""
    bars = prepare(raw)
    g = bars[TICKER]
    adj = bars["Adj Close"].astype("float64")
    high, low = bars["High"].astype("float64"), bars["Low"].astype("float64")
    open_, close = bars["Open"].astype("float64"), bars["Close"].astype("float64")
    volume = bars["Volume"].astype("float64")

    ret = np.log(adj) - np.log(_shift(adj, g, 1))
    ret2 = ret**2
    rv = {w: np.sqrt(_rolling_mean(ret2, g, w)) for w in (5, 22, 66, 252)}
    rv[1] = ret.abs()
    log_rv22 = np.log(rv[22])

    hl = np.log(high / low)
    parkinson = hl**2 / (4 * np.log(2))
    garman_klass = (0.5 * hl**2 - (2 * np.log(2) - 1) * np.log(close / open_) ** 2).clip(lower=0)
    down2 = ret2.where(ret < 0, 0.0)
    log_volume = np.log1p(volume)

    def rel(series: pd.Series) -> pd.Series:
        return np.log(np.maximum(series, RV_FLOOR)) - log_rv22

    out = pd.DataFrame(
        {TICKER: bars[TICKER], DATE: bars[DATE], "close": adj, "rv_5d": rv[5], "rv_22d": rv[22]}
    )
    out["log_rv_1d"] = np.log(np.maximum(rv[1], RV_FLOOR))
    out["log_rv_5d"] = np.log(rv[5])
    out["log_rv_22d"] = log_rv22
    out["rv_66d_rel"] = rel(rv[66])
    out["rv_252d_rel"] = rel(rv[252])
    for w in (1, 5, 22):
        out[f"parkinson_{w}d_rel"] = rel(np.sqrt(_rolling_mean(parkinson, g, w)))
        out[f"garman_klass_{w}d_rel"] = rel(np.sqrt(_rolling_mean(garman_klass, g, w)))
    for w in (5, 22):
        out[f"semivol_down_{w}d_rel"] = rel(np.sqrt(_rolling_mean(down2, g, w)))
    for k in range(5):
        out[f"ret_lag{k}_z"] = _shift(ret, g, k) / rv[22]
    out["momentum_5d_z"] = _rolling_sum(ret, g, 5) / rv[22]
    out["momentum_22d_z"] = _rolling_sum(ret, g, 22) / rv[22]
    out["gap_z"] = (np.log(open_) - np.log(_shift(close, g, 1))) / rv[22]
    out["momentum_66d"] = _rolling_sum(ret, g, 66)
    high_252 = adj.groupby(g, sort=False).rolling(WARMUP, min_periods=WARMUP).max().droplevel(0)
    out["drawdown_252d"] = np.log(adj / high_252)
    mean_log_volume = {w: _rolling_mean(log_volume, g, w) for w in (5, 22, 252)}
    out["volume_1d_22d"] = log_volume - mean_log_volume[22]
    out["volume_5d_22d"] = mean_log_volume[5] - mean_log_volume[22]
    out["volume_22d_252d"] = mean_log_volume[22] - mean_log_volume[252]
    out["_ret"] = ret  # for the targets; dropped by build_features
    return out.replace([np.inf, -np.inf], np.nan)


def add_target(features: pd.DataFrame, target: str = "volatility") -> pd.DataFrame:
    """Add the forward-looking target column(s) to `compute_features`' output (the only future data)."""
    if target not in HORIZONS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(HORIZONS)}")
    out = features.copy()
    g = out[TICKER]
    ret = out["_ret"]
    if target == "volatility":
        horizon = HORIZONS[target]
        future_sq = sum(_shift(ret**2, g, -k) for k in range(1, horizon + 1))
        out[TARGETS[target]] = np.sqrt(future_sq / horizon)
    else:
        out[TARGETS[target]] = _shift(ret, g, -1)
        out["next_close"] = _shift(out["close"], g, -1)
    return out


def build_features(raw: pd.DataFrame, target: str = "volatility") -> pd.DataFrame:
    """The feature table: Ticker, Date, EXTRA_COLUMNS, FEATURES and the target, sorted by (Date, Ticker);
    rows whose windows are not yet full are dropped, the target is NaN where it lies beyond the data."""
    table = add_target(compute_features(raw), target)
    table = table.drop(columns="_ret")
    table = table.dropna(subset=[*FEATURES, *EXTRA_COLUMNS])
    return table.sort_values([DATE, TICKER], kind="stable").reset_index(drop=True)
