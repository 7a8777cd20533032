"""Card-fraud detection on transactions in the Fraud Detection Handbook's raw schema.

Binary classification of each transaction; labels become known only after a delay (7 days), so the split
keeps that gap between windows and the terminal-risk features only use labels older than it. The test window
follows the handbook's protocol: cards already known to be compromised are not scored, and card
precision@100 per day is reported next to the threshold-free metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from usecases.spec import Cadence, TrainingParams

# The heavy imports (GX, MLflow, scikit-learn) live in the functions below: `Params` alone serves `--help`
# and the Prefect UI's form, and should not cost ~10 s of imports.

TRAINING_SCHEDULE = Cadence("0 2 * * *", "UTC", "daily at 02:00 UTC")
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


def registered_model(params: Params) -> str:
    return "fraud-detector"


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
    from tasks.evaluate import binary_metrics
    from usecases.fraud.metrics import card_precision_at_k

    metrics = binary_metrics(frame[TARGET].to_numpy(), scores, context["threshold"])
    metrics["card_precision_at_100"] = card_precision_at_k(frame, scores, k=100)
    return metrics


def build_spec(params: Params):
    from datetime import timedelta

    from data_checks import fraud as checks
    from tasks.evaluate import best_f1_threshold
    from tasks.gate import AbsoluteGate, BaselineGate, GateSpec
    from tasks.monitor import MonitorThresholds
    from tasks.split import SplitSpec
    from usecases.fraud.features import FEATURES, WINDOWS, build_features
    from usecases.fraud.metrics import remove_known_compromised
    from usecases.spec import Baseline, Metrics, ModelSpec, UseCaseSpec

    return UseCaseSpec(
        name="fraud",
        registered_model=registered_model(params),
        problem="binary",
        description=(
            "Card-fraud detector: the probability that a card transaction is fraudulent, from the Fraud "
            "Detection Handbook's 15 baseline features (amount, weekend, night, customer spending over "
            "1/7/30 days, terminal risk over 1/7/30 days using labels older than the "
            f"{params.delay_days}-day delay). XGBoost, gated against logistic regression and the champion."
        ),
        load=load,
        raw_suite=checks.raw_suite,
        feature_suite=checks.feature_suite,
        # Scoring and monitoring: labels arrive after the delay, so the newest rows (or all) have none yet.
        score_suite=checks.score_suite,
        score_feature_suite=lambda: checks.feature_suite(labelled=False),
        build_features=lambda raw: build_features(raw, delay_days=params.delay_days),
        features=tuple(FEATURES),
        target=TARGET,
        time_column=TIME,
        id_columns=("TRANSACTION_ID",),
        score_column="fraud_score",
        feature_history=timedelta(days=max(WINDOWS) + params.delay_days),
        split=SplitSpec(
            train=params.train_days,
            validation=params.validation_days,
            test=params.test_days,
            gap=params.delay_days,
            unit="days",
            end=params.end,
        ),
        model=ModelSpec(
            params={
                "max_depth": params.max_depth,
                "eta": params.learning_rate,
                "nthread": 2,
                **({"max_delta_step": 1} if params.imbalance == "max_delta_step" else {}),
            },
            num_boost_round=params.rounds,
            early_stopping_rounds=50,
            balance_classes=params.imbalance == "scale_pos_weight",
        ),
        baselines=(
            Baseline("baseline", fit_logistic_regression, "logistic regression, standardised features"),
        ),
        metrics=Metrics(
            compute=compute_metrics,
            primary="average_precision",
            greater_is_better=True,
            calibrate=lambda frame, scores: best_f1_threshold(frame, scores, TARGET),
        ),
        gates=GateSpec(
            absolute=(
                AbsoluteGate("average_precision", params.min_average_precision),
                AbsoluteGate("roc_auc", params.min_roc_auc),
            ),
            baseline=(BaselineGate("average_precision", ("baseline",)),),
            champion_margin=params.champion_margin,
        ),
        test_filter=lambda test, table: remove_known_compromised(test, table, delay_days=params.delay_days),
        # A week's average precision rests on a few dozen fraud cards: a window is "degraded" only when it
        # falls a quarter below the test value (or below the absolute gate). The weekend share of a window
        # depends on which days it covers, so it is reported, never counted as drift.
        monitoring=MonitorThresholds(metric_margin=0.25, exempt=("TX_DURING_WEEKEND",)),
    )
