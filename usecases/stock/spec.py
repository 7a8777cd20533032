"""Stock forecasting on daily OHLCV bars: next-week realised volatility or next-day return.

Regression on a time series. Default data: the S&P 500 daily table shipped inside `arch` (1999-01-04 ..
2018-12-31, real, no download); `--data` takes a CSV or Parquet of one instrument, or of several with a
`Ticker` column (one model across tickers, features per ticker). Windows are counted in trading days, with
the target's horizon as the gap between train, validation and test; the booster's parameters are chosen by
walk-forward folds inside the training window. Baselines: naive trailing volatility and HAR-RV for
`volatility`, zero return and the majority direction for `return`. A model without skill is not registered.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from usecases.params import TrainingParams, with_default
from usecases.search_space import TuningSpec, float_range, int_range
from usecases.spec import (
    Baseline,
    BaselineGate,
    Cadence,
    ChallengerRule,
    GateSpec,
    Metrics,
    ModelSpec,
    Slice,
    SplitSpec,
    UseCaseSpec,
)

# Imports inside functions: `Params` alone serves `mlops --help` and the Prefect UI's form, so NumPy,
# pandas, arch, GX and the stages behind the functions below load only when they run.

# NYSE/Nasdaq close at 16:00 New York time; 16:30 leaves time for the day's bars to land. The time zone keeps
# it after the close across daylight-saving changes.
TRAINING_SCHEDULE = Cadence("30 16 * * 1-5", "America/New_York", "weekdays at 16:30 New York time")
MONITORING_SCHEDULE = Cadence("15 16 * * 1-5", "America/New_York", "weekdays at 16:15 New York time")

TIME = "Date"
REGISTERED = {"volatility": "stock-volatility-forecaster", "return": "stock-return-forecaster"}
# Live evidence (`mlops compare stock`): one forecast per ticker and trading day, so a quarter of days before
# judging; MAE must fall by 1 % (relative) with its 95 % paired-bootstrap interval above zero; a challenger
# still not better after a year of labelled days is retired.
CHALLENGER = ChallengerRule(min_pairs=60, min_positives=0, min_gain=0.01, retire_after_pairs=250)
MIN_TRAIN_STEPS = 500  # the shortest training window the history check accepts when --train-steps is unset


class Params(TrainingParams):
    """Stock training run. Without `data`, the S&P 500 daily bars shipped inside `arch` (5,031 days)."""

    target: Literal["volatility", "return"] = Field(
        default="volatility",
        description="volatility: realised volatility of the next 5 trading days; return: next-day log return",
    )
    test_steps: int = Field(default=750, ge=20, le=5000, description="Test window, trading days at the end.")
    validation_steps: int = Field(
        default=250, ge=20, le=2000, description="Validation window (early stopping), trading days."
    )
    train_steps: int | None = Field(
        default=None,
        ge=100,
        le=20000,
        description="Training window, trading days; empty: all history before.",
    )
    end: str | None = Field(
        default=None, description="Last day of the test window (YYYY-MM-DD); empty: data end."
    )
    folds: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Walk-forward folds for model selection in the training window; 0: off.",
    )
    max_depth: int = Field(default=2, ge=1, le=12, description="XGBoost tree depth (when folds is 0).")
    learning_rate: float = Field(default=0.05, gt=0, le=1, description="XGBoost learning rate (eta).")
    rounds: int = Field(default=2000, ge=1, le=20000, description="Maximum boosting rounds (early stopping).")
    baseline_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Gate: how much lower (relative) the MAE must be than the best naive baseline's.",
    )
    # Recency after regime changes (docs/healing.md): two years' half-life, in trading days. On 2018 (the
    # test window 2017-12-26 .. 2018-12-21) it lowered MAE by 1.8 % and RMSE by 2.0 % against equal weights.
    half_life: float | None = with_default("half_life", 500.0)


def registered_model(params: Params) -> str:
    return params.registered_model or REGISTERED[params.target]


def horizon(params: Params) -> int:
    from usecases.stock.features import HORIZONS

    return HORIZONS[params.target]


def min_history(params: Params) -> int:
    """Trading days per ticker needed to fill the feature windows and the train/validation/test windows."""
    from usecases.stock.features import WARMUP

    h = horizon(params)
    train = params.train_steps or MIN_TRAIN_STEPS
    return WARMUP + 1 + train + params.validation_steps + params.test_steps + 2 * h + h


def load(params: Params):
    import pandas as pd

    from tasks.ingest import read_table

    if params.data:
        frame = read_table(params.data)
        source = str(params.data)
    else:
        from arch.data import sp500

        frame = sp500.load().reset_index()
        source = "arch.data.sp500 (S&P 500 daily bars, 1999-01-04 .. 2018-12-31)"
    if TIME in frame.columns and not pd.api.types.is_datetime64_any_dtype(frame[TIME]):
        # Unparseable dates become NaT and are reported by the raw data check.
        frame[TIME] = pd.to_datetime(frame[TIME], errors="coerce")
    if "Adj Close" not in frame.columns and "Close" in frame.columns:
        frame["Adj Close"] = frame["Close"]  # no adjusted series given: the close is taken as adjusted
    frame.attrs["source"] = source
    return frame


# --- baselines: fit(train, features, target) -> predict(frame) -----------------------------------------


def fit_naive(column: str):
    def fit(train, features, target):
        return lambda frame: frame[column].to_numpy(dtype="float64")

    return fit


def fit_har(train, features, target):
    """HAR-RV (Corsi 2009) in logs, fitted on the train window:
    log RV(next 5d) ~ log RV 1d + log RV 5d + log RV 22d."""
    import numpy as np

    from usecases.stock.features import HAR_FEATURES

    x = np.column_stack([np.ones(len(train)), train[list(HAR_FEATURES)].to_numpy(dtype="float64")])
    coef = np.linalg.lstsq(x, np.log(train[target].to_numpy(dtype="float64")), rcond=None)[0]

    def predict(frame):
        x = np.column_stack([np.ones(len(frame)), frame[list(HAR_FEATURES)].to_numpy(dtype="float64")])
        return np.exp(x @ coef)

    return predict


def fit_zero(train, features, target):
    import numpy as np

    return lambda frame: np.zeros(len(frame))


def fit_majority(train, features, target):
    """The train window's majority direction, as its median return (whose sign is that direction)."""
    import numpy as np

    y = train[target].to_numpy(dtype="float64")
    direction = 1.0 if (y > 0).mean() >= 0.5 else -1.0
    value = direction * max(abs(float(np.median(y))), 1e-12)
    return lambda frame: np.full(len(frame), value)


# --- metrics ---------------------------------------------------------------------------------------------


def volatility_metrics(frame, predictions, context) -> dict[str, float]:
    from tasks.evaluate import regression_metrics
    from usecases.stock.features import TARGETS

    return regression_metrics(frame[TARGETS["volatility"]].to_numpy(dtype="float64"), predictions)


def return_metrics(frame, predictions, context) -> dict[str, float]:
    """MAE and RMSE of the log return, directional accuracy (up = a positive return; a forecast of 0 says
    "not up"), and the MAE of the next close the forecast implies (close x exp(forecast))."""
    import numpy as np

    from tasks.evaluate import regression_metrics
    from usecases.stock.features import TARGETS

    y = frame[TARGETS["return"]].to_numpy(dtype="float64")
    predictions = np.asarray(predictions, dtype="float64")
    metrics = regression_metrics(y, predictions)
    metrics["directional_accuracy"] = float(np.mean((predictions > 0) == (y > 0)))
    implied = frame["close"].to_numpy(dtype="float64") * np.exp(predictions)
    metrics["next_close_mae"] = float(
        np.mean(np.abs(implied - frame["next_close"].to_numpy(dtype="float64")))
    )
    return metrics


# --- slices: (test rows, training window) -> one group label per row -------------------------------------


def regime(frame, train):
    """Calm / normal / stressed: trailing 22-day realised volatility against the training window's terciles
    (per ticker when several, so a volatile stock is not always "stressed")."""
    import numpy as np

    labels = np.empty(len(frame), dtype=object)
    tickers, values = frame["Ticker"].astype(str).to_numpy(), frame["rv_22d"].to_numpy(dtype="float64")
    trained = train["Ticker"].astype(str).to_numpy()
    for name in np.unique(tickers):
        history = train["rv_22d"].to_numpy(dtype="float64")[trained == name]
        if not len(history):  # a ticker new since training: the whole training window's terciles
            history = train["rv_22d"].to_numpy(dtype="float64")
        low, high = np.quantile(history, [1 / 3, 2 / 3])
        mask = tickers == name
        labels[mask] = np.where(
            values[mask] <= low, "calm", np.where(values[mask] > high, "stressed", "normal")
        )
    return labels


def ticker(frame, train):
    return frame["Ticker"].astype(str).to_numpy()


# --- what the use case declares, per target: baselines, descriptions, slices, and the parameter-read parts --

VOLATILITY_BASELINES = (
    Baseline("naive_5d", fit_naive("rv_5d"), "trailing 5-day realised volatility"),
    Baseline("naive_22d", fit_naive("rv_22d"), "trailing 22-day realised volatility"),
    Baseline("har", fit_har, "HAR-RV (Corsi 2009) on log 1/5/22-day realised volatility, train window"),
)
RETURN_BASELINES = (
    Baseline("zero", fit_zero, "zero return"),
    Baseline("majority", fit_majority, "the train window's majority direction (its median return)"),
)

DESCRIPTIONS = {
    "volatility": (
        "Stock volatility forecaster: realised volatility of the next 5 trading days (sqrt of the mean "
        "squared daily log return), from past returns, realised and range-based volatility, momentum and "
        "volume (all scale-free, per ticker). XGBoost on the log target, boosted from HAR-RV's forecast "
        "(Corsi 2009) as base margin; gated against trailing 5- and 22-day realised volatility and the "
        "champion. predict() returns volatility in daily log-return units."
    ),
    "return": (
        "Stock return forecaster: the next trading day's log return (the implied next close is "
        "close x exp(forecast)), from past returns, realised and range-based volatility, momentum and "
        "volume (scale-free, per ticker). XGBoost, gated against a zero-return forecast and the majority "
        "direction, and the champion."
    ),
}

SLICES = (
    Slice("regime", regime, "trailing 22-day volatility vs the training window's terciles"),
    Slice("ticker", ticker, "one group per instrument (skipped with one)"),
)


def _tuning(params: Params) -> TuningSpec:
    """`mlops tune stock`: the booster and the recency half-life, scored by MAE on the run's walk-forward
    folds (at least 2) inside the training window, the target's horizon between fit and fold."""
    return TuningSpec(
        space=(
            float_range("eta", 0.005, 0.2, log=True),
            int_range("max_depth", 1, 6),
            float_range("min_child_weight", 5.0, 300.0, log=True),
            float_range("subsample", 0.5, 1.0),
            float_range("colsample_bytree", 0.4, 1.0),
            float_range("lambda", 0.1, 100.0, log=True),
            float_range("half_life", 100.0, 3000.0, log=True, target="run"),
        ),
        folds=max(params.folds, 2),
        pruning_warmup=50,
    )


def _gates(params: Params) -> GateSpec:
    """MAE below the naive baselines' by the run's margin (and, for returns, direction better than the
    majority's); the run's gate options."""
    margin = params.baseline_margin
    if params.target == "volatility":
        naive = ("naive_5d", "naive_22d")
        baseline = (BaselineGate("mae", naive, greater_is_better=False, relative_margin=margin),)
    else:
        baseline = (
            BaselineGate("mae", ("zero", "majority"), greater_is_better=False, relative_margin=margin),
            BaselineGate("directional_accuracy", ("majority",), greater_is_better=True),
        )
    return GateSpec(baseline=baseline, **params.gate_options())


def _split(params: Params) -> SplitSpec:
    """Windows in trading days, the target's horizon between them."""
    return SplitSpec(
        test=params.test_steps,
        validation=params.validation_steps,
        gap=horizon(params),
        train=params.train_steps,
        unit="steps",
        end=params.end,
    )


def _model(params: Params) -> ModelSpec:
    """XGBoost on the conditional median; for volatility on the log target, boosted from HAR-RV's forecast.
    Depth and leaf weight chosen by walk-forward folds."""
    from usecases.stock.features import HAR_FEATURES

    volatility = params.target == "volatility"
    return ModelSpec(
        params={
            "objective": "reg:absoluteerror",  # the conditional median: what MAE rewards
            "eval_metric": "mae",
            "max_depth": params.max_depth,
            "eta": params.learning_rate,
            "min_child_weight": 50,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "lambda": 10.0,
            # Thousands of rows: one thread is as fast, and OpenMP threads on a busy 2-core machine can
            # spin-wait a fit 10-20x slower.
            "nthread": 1,
        },
        num_boost_round=params.rounds,
        early_stopping_rounds=100,
        target_transform="log" if volatility else "identity",
        offset_features=HAR_FEATURES if volatility else (),
        search={"max_depth": [2, 3], "min_child_weight": [20, 100]},
        folds=params.folds,
    )


def _metrics(params: Params) -> Metrics:
    """MAE first (lower is better), on the columns the target's metrics read."""
    from usecases.stock.features import TARGETS

    volatility = params.target == "volatility"
    return Metrics(
        compute=volatility_metrics if volatility else return_metrics,
        primary="mae",
        greater_is_better=False,
        reads=(TARGETS["volatility"],) if volatility else (TARGETS["return"], "close", "next_close"),
    )


def build_spec(params: Params) -> UseCaseSpec:
    from data_checks import stock as checks
    from usecases.stock.features import FEATURES, TARGETS, WARMUP, build_features

    volatility = params.target == "volatility"
    target = TARGETS[params.target]
    history = min_history(params)
    return UseCaseSpec(
        name="stock",
        registered_model=registered_model(params),
        problem="regression",
        description=DESCRIPTIONS[params.target],
        load=load,
        raw_suite=lambda: checks.raw_suite(min_history=history),
        # Scoring needs only enough history to fill the longest feature window, not a training history.
        score_suite=lambda: checks.raw_suite(min_history=WARMUP + 1),
        raw_check_view=checks.check_view,
        feature_suite=lambda: checks.feature_suite(target, FEATURES, positive_target=volatility),
        build_features=lambda raw: build_features(raw, params.target),
        features=FEATURES,
        target=target,
        time_column=TIME,
        id_columns=(TIME, "Ticker"),
        score_column=f"{params.target}_forecast",
        # the longest window (252 trading days) in calendar days, with room for holidays
        feature_history=timedelta(days=int(WARMUP * 7 / 5) + 30),
        split=_split(params),
        model=_model(params),
        baselines=VOLATILITY_BASELINES if volatility else RETURN_BASELINES,
        metrics=_metrics(params),
        gates=_gates(params),
        tags={"target": params.target, "horizon_days": str(horizon(params))},
        slices=SLICES,
        # No key to hold out (one series per ticker, one ticker by default), so no refit either: a refitted
        # champion would have trained on the next run's test window, and the champion gate would favour it.
        # Recency (`half_life`, in trading days) is the stock use case's lever after a regime change.
        continual=params.continual(),
        tuning=_tuning(params),
        challenger=CHALLENGER,
    )
