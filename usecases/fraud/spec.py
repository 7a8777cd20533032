"""Card-fraud detection on transactions in the Fraud Detection Handbook's raw schema.

Binary classification of each transaction; labels become known only after a delay (7 days), so the split
keeps that gap between windows and the terminal-risk features only use labels older than it. The test window
follows the handbook's protocol: cards already known to be compromised (frauds since the start of the
training window) are not scored, and card precision@100 per day is reported next to the threshold-free
metrics; `*_all_history` are the same metrics with every fraud in the input counted as known.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from usecases.params import TrainingParams, with_default
from usecases.search_space import TuningSpec, choice, float_range, int_range
from usecases.spec import (
    AbsoluteGate,
    Baseline,
    BaselineGate,
    Cadence,
    ChallengerRule,
    GateSpec,
    Metrics,
    ModelSpec,
    MonitorThresholds,
    OnlineSpec,
    Slice,
    SplitSpec,
    UseCaseSpec,
)

# Imports inside functions: `Params` alone serves `mlops --help` and the Prefect UI's form, so NumPy,
# pandas, scikit-learn, GX and the stages behind the functions below load only when they run (~10 s).

# Weekly: a week of new labels per run, and the forgetting gate's windows are weeks.
TRAINING_SCHEDULE = Cadence("0 2 * * 1", "UTC", "weekly, Mondays at 02:00 UTC")
MONITORING_SCHEDULE = Cadence("0 1 * * *", "UTC", "daily at 01:00 UTC")

TARGET = "TX_FRAUD"
TIME = "TX_DATETIME"


class Params(TrainingParams):
    """Fraud training run. Without `data`, transactions come from the seeded handbook simulator."""

    customers: int = Field(default=2000, ge=50, le=100_000, description="Simulator: number of customers.")
    terminals: int = Field(default=4000, ge=50, le=200_000, description="Simulator: number of terminals.")
    days: int = Field(default=120, ge=60, le=730, description="Simulator: days of transactions.")
    train_days: int = Field(default=21, ge=1, le=365, description="Training window, in days.")
    validation_days: int = Field(default=7, ge=1, le=90, description="Validation window (early stopping).")
    test_days: int = Field(default=7, ge=1, le=90, description="Test window, at the end of the data.")
    delay_days: int = Field(default=7, ge=0, le=60, description="Label delay: gap between windows.")
    end: str | None = Field(
        default=None, description="Last day of the test window (YYYY-MM-DD); empty: data end."
    )
    max_depth: int = Field(default=6, ge=1, le=16, description="XGBoost tree depth.")
    learning_rate: float = Field(default=0.1, gt=0, le=1, description="XGBoost learning rate (eta).")
    rounds: int = Field(default=300, ge=1, le=5000, description="Maximum boosting rounds (early stopping).")
    imbalance: Literal["max_delta_step", "scale_pos_weight"] = Field(
        default="max_delta_step",
        description="Class-imbalance handling: cap each tree's logit step (keeps probabilities calibrated; "
        "best average precision here) or weight frauds by the negative/positive ratio.",
    )
    min_average_precision: float = Field(default=0.3, ge=0, le=1, description="Gate: minimum test AP.")
    min_roc_auc: float = Field(default=0.75, ge=0, le=1, description="Gate: minimum test ROC AUC.")
    # Healing (docs/healing.md, bench/heal.py): serve a refit up to the newest label; replay older frauds
    # beside the recent window; weigh the newest days most; hold out a tenth of the cards so that every gate
    # has rows no model saw.
    refit: bool = with_default("refit", True)
    replay: int | None = with_default("replay", 56)
    replay_negatives: float = with_default("replay_negatives", 0.1)
    half_life: float | None = with_default("half_life", 14.0)
    holdout_share: float = with_default("holdout_share", 0.1)


def registered_model(params: Params) -> str:
    return params.registered_model or "fraud-detector"


def load(params: Params):
    import pandas as pd

    from tasks.ingest import read_table
    from usecases.fraud.simulator import simulate_transactions

    if params.data:
        frame = read_table(params.data)
        if TIME in frame.columns and not pd.api.types.is_datetime64_any_dtype(frame[TIME]):
            # Unparseable timestamps become NaT and are reported by the raw data check.
            frame[TIME] = pd.to_datetime(frame[TIME], errors="coerce")
        frame.attrs["source"] = str(params.data)
        return frame
    frame = simulate_transactions(
        n_customers=params.customers, n_terminals=params.terminals, n_days=params.days, seed=params.seed
    )
    frame.attrs["source"] = (
        f"simulator(customers={params.customers}, terminals={params.terminals}, days={params.days}, "
        f"seed={params.seed})"
    )
    return frame


def fit_logistic_regression(train, features: list[str], target: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(train[features].to_numpy(), train[target].to_numpy())
    return lambda frame: model.predict_proba(frame[features].to_numpy())[:, 1]


def compute_metrics(frame, scores, context) -> dict[str, float]:
    """Binary metrics and card precision@100 on the handbook's population; where the test filter marked them,
    average precision and card precision@100 also with every earlier fraud known (`*_all_history`)."""
    import numpy as np
    from sklearn.metrics import average_precision_score

    from tasks.evaluate import binary_metrics
    from usecases.fraud.metrics import KNOWN_BEFORE_TRAINING, card_precision_at_k

    metrics = binary_metrics(frame[TARGET].to_numpy(), scores, context["threshold"])
    metrics["card_precision_at_100"] = card_precision_at_k(frame, scores, k=100)
    if KNOWN_BEFORE_TRAINING in frame.columns:
        keep = ~frame[KNOWN_BEFORE_TRAINING].to_numpy(dtype=bool)
        y = frame[TARGET].to_numpy()[keep]
        rest = np.asarray(scores)[keep]
        both = len(np.unique(y)) == 2
        metrics["average_precision_all_history"] = (
            float(average_precision_score(y, rest)) if both else float("nan")
        )
        metrics["card_precision_at_100_all_history"] = (
            card_precision_at_k(frame[keep], rest, k=100) if keep.any() else float("nan")
        )
    return metrics


# --- slices: (test rows, training window) -> one group label per row -------------------------------------


def amount_band(frame, train):
    import numpy as np

    # 220: the simulator's scenario 1 (every larger amount is fraud); the others split the bulk of payments.
    bands = np.array(["lt25", "25_75", "75_220", "ge220"], dtype=object)
    return bands[np.searchsorted([25.0, 75.0, 220.0], frame["TX_AMOUNT"].to_numpy(), side="right")]


def night(frame, train):
    return frame["TX_DURING_NIGHT"].map({1: "night", 0: "day"}).to_numpy()


def weekend(frame, train):
    return frame["TX_DURING_WEEKEND"].map({1: "weekend", 0: "weekday"}).to_numpy()


def customer_history(frame, train):
    """New (or rarely active) customers: fewer than 30 transactions in their last 30 days."""
    import numpy as np

    return np.where(frame["CUSTOMER_ID_NB_TX_30DAY_WINDOW"].to_numpy() < 30, "new", "established")


def terminal_risk(frame, train):
    """The terminal's fraud share over 30 days behind the label delay: none seen, up to 5 %, above."""
    import numpy as np

    risk = frame["TERMINAL_ID_RISK_30DAY_WINDOW"].to_numpy()
    return np.where(risk <= 0, "none", np.where(risk <= 0.05, "low", "high"))


# --- what the use case declares: baselines, slices, monitoring, and the parts that read the parameters ----

BASELINES = (Baseline("baseline", fit_logistic_regression, "logistic regression, standardised features"),)

SLICES = (
    Slice("amount", amount_band, "TX_AMOUNT below 25, 25-75, 75-220, 220 and above"),
    Slice("night", night, "00:00-06:59 vs the rest of the day"),
    Slice("weekend", weekend, "Saturday and Sunday vs weekdays"),
    Slice("customer", customer_history, "new: fewer than 30 transactions in the customer's 30 days"),
    Slice("terminal_risk", terminal_risk, "terminal's 30-day fraud share behind the delay: 0, <=5 %, >5 %"),
)

# A week's average precision rests on a few dozen fraud cards: a window is "degraded" only when it falls a
# quarter below the test value (or below the absolute gate). Amounts move four features at once (the amount
# and the customer's three averages): three of fifteen is already drift. The weekend share of a window
# depends on which days it covers, so it is reported, never counted.
MONITORING = MonitorThresholds(metric_margin=0.25, drift_share=0.2, exempt=("TX_DURING_WEEKEND",))

# Live evidence (`mlops compare fraud`): at the handbook's ~9,600 transactions a day, a challenger is judged
# within a week. Average precision must rise by 2 % (relative) with its 95 % paired-bootstrap interval above
# zero; one still not better after 50,000 labelled pairs is retired. Card precision@100 is what the
# investigators see each day, so it is reported per day beside average precision.
CHALLENGER = ChallengerRule(
    min_pairs=5000,
    min_positives=50,
    min_gain=0.02,
    retire_after_pairs=50_000,
    daily=("card_precision_at_100", "average_precision"),
)


# `mlops tune fraud`: the booster, the class-imbalance handling, and the training window's length, replay and
# recency, scored by average precision on 3 walk-forward folds behind the label delay.
TUNING = TuningSpec(
    space=(
        float_range("eta", 0.01, 0.3, log=True),
        int_range("max_depth", 2, 10),
        float_range("min_child_weight", 0.5, 50.0, log=True),
        float_range("subsample", 0.5, 1.0),
        float_range("colsample_bytree", 0.4, 1.0),
        float_range("lambda", 0.01, 50.0, log=True),
        float_range("alpha", 0.001, 5.0, log=True),
        float_range("gamma", 0.001, 5.0, log=True),
        choice("imbalance", "max_delta_step", "scale_pos_weight", target="run"),
        int_range("train_days", 7, 42, step=7, target="run"),
        int_range("replay", 0, 84, step=14, target="run"),
        float_range("half_life", 3.0, 60.0, log=True, target="run"),
    ),
    folds=3,
)


def _describe(params: Params) -> str:
    return (
        "Card-fraud detector: the probability that a card transaction is fraudulent, from the Fraud "
        "Detection Handbook's 15 baseline features (amount, weekend, night, customer spending over "
        "1/7/30 days, terminal risk over 1/7/30 days using labels older than the "
        f"{params.delay_days}-day delay). XGBoost, gated against logistic regression and the champion."
    )


def _split(params: Params) -> SplitSpec:
    """Train, validation and test windows in days, the label delay between them."""
    return SplitSpec(
        train=params.train_days,
        validation=params.validation_days,
        test=params.test_days,
        gap=params.delay_days,
        unit="days",
        end=params.end,
    )


def _model(params: Params) -> ModelSpec:
    """XGBoost with the run's depth, rate and rounds, and its class-imbalance handling."""
    return ModelSpec(
        params={
            "max_depth": params.max_depth,
            "eta": params.learning_rate,
            "nthread": 2,
            **({"max_delta_step": 1} if params.imbalance == "max_delta_step" else {}),
        },
        num_boost_round=params.rounds,
        early_stopping_rounds=50,
        balance_classes=params.imbalance == "scale_pos_weight",
    )


def _metrics() -> Metrics:
    """Average precision first, at the threshold that maximises F1 on validation."""
    from tasks.evaluate import best_f1_threshold
    from usecases.fraud.metrics import KNOWN_BEFORE_TRAINING

    return Metrics(
        compute=compute_metrics,
        primary="average_precision",
        greater_is_better=True,
        calibrate=lambda frame, scores: best_f1_threshold(frame, scores, TARGET),
        reads=(TARGET, TIME, "CUSTOMER_ID", KNOWN_BEFORE_TRAINING),
    )


def _gates(params: Params) -> GateSpec:
    """Test AP and ROC AUC above the run's floors, AP above logistic regression's; the run's gate options."""
    return GateSpec(
        absolute=(
            AbsoluteGate("average_precision", params.min_average_precision),
            AbsoluteGate("roc_auc", params.min_roc_auc),
        ),
        baseline=(BaselineGate("average_precision", ("baseline",)),),
        **params.gate_options(),
    )


def _check(suite: str, **options):
    """A suite of data_checks/fraud.py, imported when it is built: GX takes seconds to import, and the model
    server builds this spec only for its features."""

    def build():
        from data_checks import fraud as checks

        return getattr(checks, suite)(**options)

    return build


def build_spec(params: Params) -> UseCaseSpec:
    from usecases.fraud.features import FEATURES, WINDOWS, build_features, online_features
    from usecases.fraud.metrics import handbook_test_filter
    from usecases.fraud.reasons import reason_text

    # The handbook's known set starts with the training window: these days of data precede the test window.
    history = params.train_days + params.validation_days + 2 * params.delay_days

    return UseCaseSpec(
        name="fraud",
        registered_model=registered_model(params),
        problem="binary",
        description=_describe(params),
        load=load,
        raw_suite=_check("raw_suite"),
        feature_suite=_check("feature_suite"),
        # Scoring and monitoring: labels arrive after the delay, so the newest rows (or all) have none yet.
        score_suite=_check("score_suite"),
        score_feature_suite=_check("feature_suite", labelled=False),
        build_features=lambda raw: build_features(raw, delay_days=params.delay_days),
        features=tuple(FEATURES),
        target=TARGET,
        time_column=TIME,
        id_columns=("TRANSACTION_ID",),
        score_column="fraud_score",
        feature_history=timedelta(days=max(WINDOWS) + params.delay_days),
        feature_keys={
            "CUSTOMER_ID": tuple(f for f in FEATURES if f.startswith("CUSTOMER_ID_")),
            "TERMINAL_ID": tuple(f for f in FEATURES if f.startswith("TERMINAL_ID_")),
        },
        split=_split(params),
        model=_model(params),
        baselines=BASELINES,
        metrics=_metrics(),
        gates=_gates(params),
        test_filter=lambda test, table: handbook_test_filter(test, table, params.delay_days, history),
        slices=SLICES,
        monitoring=MONITORING,
        continual=params.continual(holdout_key="CUSTOMER_ID"),
        reason=reason_text,
        tuning=TUNING,
        challenger=CHALLENGER,
        online=OnlineSpec(
            event_id="TRANSACTION_ID",
            time=TIME,
            keys=("CUSTOMER_ID", "TERMINAL_ID"),
            values=("TX_AMOUNT",),
            label=TARGET,
            history=timedelta(days=max(WINDOWS) + params.delay_days),
            compute=lambda event, earlier: online_features(event, earlier, params.delay_days),
        ),
    )
