"""Evaluate: score the candidate, the baselines and the current champion on the same test window.

Whatever depends on a choice (e.g. the decision threshold) is calibrated on the validation window for each
model separately, then applied unchanged to test. Metrics are logged as `test_<metric>` for the candidate and
`<baseline>_test_<metric>` for each baseline; plots go to the MLflow run under `plots/`.

The champion is re-scored here on the test window (the card's table, the slice gate); the champion and
forgetting gates compare on the rows neither model trained on (`tasks/compare.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from champion.loading import load_scoring_model
from champion.store import run_logger
from tasks.split import Splits
from tasks.stage import mlflow_stage, stage
from usecases.vocabulary import CHAMPION

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from usecases.spec import Metrics, Schema


def _pyplot():
    """matplotlib, headless (plots are files logged to MLflow), imported by the stages that draw."""
    import matplotlib  # lazy: matplotlib only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above, after the headless backend is chosen

    return plt


# --- generic metrics, composed by use cases -------------------------------------------------------------


def best_f1_threshold(frame: pd.DataFrame, scores: np.ndarray, target: str) -> dict[str, float]:
    """The score threshold that maximises F1 on the given (validation) window."""
    # lazy: scikit-learn only to compute metrics; the monitoring flow imports this module to score
    from sklearn import metrics as skm

    precision, recall, thresholds = skm.precision_recall_curve(frame[target].to_numpy(), scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.nanargmax(f1[:-1])) if len(thresholds) else 0
    return {"threshold": float(thresholds[best]) if len(thresholds) else 0.5}


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn import metrics as skm  # lazy: as in best_f1_threshold

    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = (float(v) for v in skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    both_classes = len(np.unique(y)) == 2

    def ratio(num: float, den: float) -> float:  # sklearn's zero_division=0, from the counts in hand
        return num / den if den else 0.0

    return {
        "roc_auc": float(skm.roc_auc_score(y, scores)) if both_classes else float("nan"),
        "average_precision": float(skm.average_precision_score(y, scores)) if both_classes else float("nan"),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "threshold": float(threshold),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def regression_metrics(y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    error = predictions - y
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2)))}


# --- plots ----------------------------------------------------------------------------------------------


def binary_plots(y: np.ndarray, scores: np.ndarray, threshold: float, label: str) -> dict[str, plt.Figure]:
    from sklearn import metrics as skm  # lazy: as in best_f1_threshold

    plt = _pyplot()
    figures = {}
    fig, ax = plt.subplots(figsize=(5, 4))
    skm.RocCurveDisplay.from_predictions(y, scores, ax=ax, name=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(f"ROC curve on test ({label})")
    figures["roc_curve"] = fig
    fig, ax = plt.subplots(figsize=(5, 4))
    skm.PrecisionRecallDisplay.from_predictions(y, scores, ax=ax, name=label)
    ax.set_title(f"Precision-recall curve on test ({label})")
    figures["pr_curve"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    skm.ConfusionMatrixDisplay.from_predictions(
        y, (scores >= threshold).astype(int), ax=ax, colorbar=False, values_format="d"
    )
    ax.set_title(f"Confusion matrix, threshold {threshold:.3f} ({label})")
    figures["confusion_matrix"] = fig
    return figures


def regression_plots(times: pd.Series, y: np.ndarray, predictions: np.ndarray, label: str) -> dict:
    plt = _pyplot()
    figures = {}
    # Several series (e.g. tickers) at one time: plot the mean per time; errors by year use every row.
    per_time = pd.DataFrame({"t": times.to_numpy(), "y": y, "p": predictions}).groupby("t").mean()
    several = len(per_time) < len(times)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(per_time.index, per_time["y"], lw=0.8, label="actual" + (" (mean per time)" if several else ""))
    ax.plot(per_time.index, per_time["p"], lw=0.8, label=label)
    ax.set_title(f"Prediction vs actual on test ({label})")
    ax.legend()
    figures["prediction_vs_actual"] = fig
    by_year = pd.DataFrame({"year": times.dt.year.to_numpy(), "abs_error": np.abs(predictions - y)})
    fig, ax = plt.subplots(figsize=(6, 4))
    by_year.groupby("year")["abs_error"].mean().plot.bar(ax=ax)
    ax.set_ylabel("mean absolute error")
    ax.set_title(f"Error by year on test ({label})")
    figures["error_by_year"] = fig
    return figures


def feature_importance_plot(booster, features: Sequence[str]) -> plt.Figure:
    plt = _pyplot()
    gain = booster.get_score(importance_type="total_gain")
    values = pd.Series({f: gain.get(f, 0.0) for f in features}).sort_values()
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(values) + 1.5))
    values.plot.barh(ax=ax)
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance")
    fig.tight_layout()
    return fig


# --- the stage -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One model's test metrics and the context calibrated for it on validation."""

    metrics: dict[str, float]
    context: dict[str, float]
    test_predictions: np.ndarray
    validation_predictions: np.ndarray | None = None


@dataclass(frozen=True)
class Evaluation:
    candidate: Scored
    baselines: dict[str, Scored]

    @property
    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        return {name: s.metrics for name, s in self.baselines.items()}


@dataclass(frozen=True)
class ChampionScore:
    version: str | None
    metrics: dict[str, float] | None = None
    error: str | None = None
    # Its predictions and calibration on this run's windows, the loaded model and its registry tags: the
    # slice and forgetting gates score it on other rows.
    scored: Scored | None = field(default=None, repr=False)
    model: object | None = field(default=None, repr=False)
    tags: dict[str, str] = field(default_factory=dict, repr=False)


def score_model(predict, splits: Splits, metrics_spec) -> Scored:
    context = {}
    validation_predictions = np.asarray(predict(splits.validation), dtype=float)
    if metrics_spec.calibrate is not None:
        context = metrics_spec.calibrate(splits.validation, validation_predictions)
    test_predictions = np.asarray(predict(splits.test), dtype=float)
    metrics = metrics_spec.compute(splits.test, test_predictions, context)
    return Scored(metrics, context, test_predictions, validation_predictions)


def _plots(problem: str, splits: Splits, target: str, time_column: str, scored: Scored, label: str) -> dict:
    y = splits.test[target].to_numpy()
    if problem == "binary":
        return binary_plots(y, scored.test_predictions, scored.context.get("threshold", 0.5), label)
    return regression_plots(splits.test[time_column], y, scored.test_predictions, label)


def _log_figures(client: MlflowClient, run_id: str, figures: Mapping[str, plt.Figure], prefix: str) -> None:
    plt = _pyplot()
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"plots/{prefix}{name}.png")
        plt.close(fig)


@stage
def evaluate(
    candidate, baselines, splits: Splits, metrics_spec: Metrics, schema: Schema, run_id
) -> Evaluation:
    """Candidate and baselines on the test window; metrics and plots to the MLflow run."""
    problem, target, time_column = schema.problem, schema.target, schema.time_column
    client = MlflowClient()
    scored = score_model(candidate.predict, splits, metrics_spec)
    scored_baselines = {b.name: score_model(b.predict, splits, metrics_spec) for b in baselines}
    log_scores(run_id, Evaluation(scored, scored_baselines), "test")
    _log_figures(client, run_id, _plots(problem, splits, target, time_column, scored, "candidate"), "")
    best = _best_baseline(scored_baselines, metrics_spec)
    if best is not None:
        figures = _plots(problem, splits, target, time_column, scored_baselines[best], best)
        _log_figures(client, run_id, figures, f"{best}_")
    _log_figures(
        client,
        run_id,
        {"feature_importance": feature_importance_plot(candidate.booster, candidate.features)},
        "",
    )
    run_logger().info(
        "test %s: candidate %.4g; %s",
        metrics_spec.primary,
        scored.metrics[metrics_spec.primary],
        ", ".join(f"{n} {s.metrics[metrics_spec.primary]:.4g}" for n, s in scored_baselines.items()),
    )
    return Evaluation(scored, scored_baselines)


def log_scores(run_id: str, evaluation: Evaluation, where: str) -> None:
    """`<where>_<metric>` for the candidate and `<baseline>_<where>_<metric>` for each baseline (finite ones)
    on the MLflow run: `test_` for the candidate's test window, `served_` for a refit's held-out rows."""
    logged = {f"{where}_{k}": v for k, v in evaluation.candidate.metrics.items()}
    for name, s in evaluation.baselines.items():
        logged.update({f"{name}_{where}_{k}": v for k, v in s.metrics.items()})
    stamp = int(pd.Timestamp.now().value // 1_000_000)
    metrics = [mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in logged.items() if np.isfinite(v)]
    MlflowClient().log_batch(run_id, metrics=metrics)


def _best_baseline(scored: Mapping[str, Scored], metrics_spec) -> str | None:
    if not scored:
        return None
    sign = 1 if metrics_spec.greater_is_better else -1
    return max(
        scored, key=lambda n: sign * np.nan_to_num(scored[n].metrics[metrics_spec.primary], nan=-np.inf)
    )


@mlflow_stage
def evaluate_champion(registered_model: str, splits: Splits, metrics_spec: Metrics) -> ChampionScore:
    """Re-score the current champion on this run's windows, so the champion gate compares like with like."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(registered_model, CHAMPION)
    except mlflow.exceptions.MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return ChampionScore(None)
        # MLflow's basic auth answers 403, not 404, to a non-admin asking about a model nobody created yet.
        missing = not client.search_registered_models(filter_string=f"name = '{registered_model}'")
        if "PERMISSION_DENIED" in str(exc.error_code) and missing:
            return ChampionScore(None)
        raise
    try:
        model = load_scoring_model(registered_model, version=version.version)  # pinned: the one we read
        scored = score_model(model.predict, splits, metrics_spec)
    except Exception as exc:  # an incompatible champion refuses promotion with the reason, never crashes
        return ChampionScore(str(version.version), error=f"{type(exc).__name__}: {exc}")
    run_logger().info(
        "champion v%s on the same test window: %s %.4f",
        version.version,
        metrics_spec.primary,
        scored.metrics[metrics_spec.primary],
    )
    return ChampionScore(
        str(version.version), scored.metrics, scored=scored, model=model, tags=dict(version.tags)
    )
