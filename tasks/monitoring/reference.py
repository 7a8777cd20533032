"""Reference: the profile a version is monitored against -- built and recorded with its training run, read
(or rebuilt) when it is monitored.

The profile records what "normal" looked like at training: per feature the training window's distribution,
the model's scores on validation and test, the calibration map (binary) or error model (regression) learnt on
validation, the test metrics and the context they were computed with (e.g. the decision threshold). It is a
plain JSON-able dict, stored as the MLflow artifact `monitoring/profile.json` of the version's run. A version
registered before profiles existed gets its profile rebuilt from the run's data source, and says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow import MlflowClient

from champion.store import run_logger
from tasks.evaluate import score_model
from tasks.monitoring.estimate import estimate_performance
from tasks.monitoring.numeric import (
    bin_fractions,
    column_values,
    finite_float,
    finite_or_none,
    finite_values,
    quantile_edges,
)
from tasks.split import cut_again
from tasks.stage import mlflow_stage

if TYPE_CHECKING:
    from champion.loading import ScoringModel
    from tasks.evaluate import Evaluation, Scored
    from tasks.split import Splits
    from usecases.params import TrainingParams
    from usecases.spec import Metrics, Schema, UseCaseSpec

PROFILE_PATH = "monitoring/profile.json"
FORMAT_VERSION = 1
PERCENTILES = np.linspace(0.0, 1.0, 101)
DISCRETE_MAX = 10  # at most this many distinct training values: the feature is "discrete"
DISTINCT_CAP = 1000  # distinct values are counted up to this number (the profile stores the capped count)
MAX_KNOTS = 512  # calibration knots kept in the profile


class ProfileUnavailable(LookupError):
    """No profile recorded for the version and none could be rebuilt."""


# --- building ------------------------------------------------------------------------------------------


def build_profile(
    schema: Schema, metrics: Metrics, splits: Splits, scored: Scored, bins: int = 10
) -> dict[str, Any]:
    """Record what "normal" looked like when the version was trained, as a JSON-able dict.

    Drift is measured against the training window (what the model learnt from); score drift against the test
    window (the last scores seen before promotion); the calibration map (binary) or error model (regression)
    comes from the validation window, which the booster did not fit (only early-stopped on). The test metrics
    (`scored.metrics`, computed with `scored.context`) are the bar the verdict compares against.
    """
    problem, train = schema.problem, splits.recent_train
    if problem not in ("binary", "regression"):
        raise ValueError(f"problem must be 'binary' or 'regression', not {problem!r}")
    missing = [f for f in schema.features if f not in train.columns]
    if missing:
        raise KeyError(f"features missing from the training frame: {missing}")
    val_pred = np.asarray(scored.validation_predictions, dtype="float64").ravel()
    y_val = splits.validation[schema.target].to_numpy(dtype="float64", na_value=np.nan)
    if len(y_val) != len(val_pred):
        raise ValueError(f"{len(val_pred)} validation predictions for {len(y_val)} validation rows")
    usable = np.isfinite(val_pred) & np.isfinite(y_val)
    val_pred, y_val = val_pred[usable], y_val[usable]
    test_pred = finite_values(scored.test_predictions)

    profile: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "problem": problem,
        "target": schema.target,
        "bins": int(bins),
        "rows": {"train": len(train), "validation": len(splits.validation), "test": len(test_pred)},
        "features": {f: _feature_profile(column_values(train[f]), bins) for f in schema.features},
        "scores": {"validation": _distribution(val_pred, bins), "test": _distribution(test_pred, bins)},
        "calibration": None,
        "validation_positive_rate": None,
        "error_model": None,
        "test_metrics": {str(k): finite_or_none(v) for k, v in scored.metrics.items()},
        "primary": metrics.primary,
        "greater_is_better": bool(metrics.greater_is_better),
        "metric_context": {k: float(v) for k, v in scored.context.items()},
        "windows": {k: list(v) for k, v in splits.windows.items()},
    }
    if problem == "binary":
        profile["calibration"] = _fit_calibration(val_pred, y_val)
        profile["validation_positive_rate"] = finite_float(np.mean(y_val)) if len(y_val) else None
    else:
        profile["error_model"] = _fit_error_model(val_pred, y_val, bins)
    # CBPE/expected error on the test window itself: if this is far from the realised test metrics, the
    # estimates are biased for this version and the report shows it.
    estimated = estimate_performance(profile, test_pred)
    profile["test_estimated"] = {k: finite_float(v) for k, v in estimated.items()}
    return profile


def _feature_profile(values: np.ndarray, bins: int) -> dict[str, Any]:
    finite = values[~np.isnan(values)]
    null_share = float(1.0 - len(finite) / len(values)) if len(values) else 0.0
    distinct_values = np.unique(finite)
    distinct = int(min(len(distinct_values), DISTINCT_CAP))
    kind = "discrete" if distinct <= DISCRETE_MAX else "continuous"
    entry: dict[str, Any] = {"kind": kind, "null_share": null_share, "distinct": distinct}
    if kind == "discrete":
        # one bin per value: cut halfway between consecutive values
        edges = (distinct_values[:-1] + distinct_values[1:]) / 2.0
        entry["values"] = distinct_values.tolist()
    else:
        edges = quantile_edges(finite, bins)
    entry["quantiles"] = np.quantile(finite, PERCENTILES).tolist() if len(finite) else []
    entry["edges"] = edges.tolist()
    entry["fractions"] = bin_fractions(edges, finite).tolist() if len(finite) else []
    if len(finite):
        entry["mean"], entry["std"] = float(np.mean(finite)), float(np.std(finite))
    return entry


def _distribution(values: np.ndarray, bins: int) -> dict[str, Any]:
    edges = quantile_edges(values, bins)
    return {
        "quantiles": np.quantile(values, PERCENTILES).tolist() if len(values) else [],
        "edges": edges.tolist(),
        "fractions": bin_fractions(edges, values).tolist() if len(values) else [],
        "mean": float(np.mean(values)) if len(values) else None,
    }


def _fit_calibration(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression of label on score: a monotone map to probabilities, stored as np.interp knots.

    Monotone so the ranking (and so AP/AUC) is untouched; non-parametric so any miscalibration shape is fixed.
    Long knot lists are thinned to `MAX_KNOTS` (endpoints kept; linear interpolation in between).
    """
    from sklearn.isotonic import IsotonicRegression  # why: slow to import, and only binary profiles need it

    if len(scores) == 0:
        return {"x": [0.0, 1.0], "y": [0.0, 1.0]}
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(scores, labels)
    x, y = np.asarray(iso.X_thresholds_, dtype="float64"), np.asarray(iso.y_thresholds_, dtype="float64")
    if len(x) > MAX_KNOTS:
        keep = np.unique(np.round(np.linspace(0, len(x) - 1, MAX_KNOTS)).astype(int))
        x, y = x[keep], y[keep]
    if len(x) == 1:  # a single score value: constant map
        x, y = np.array([x[0], x[0] + 1.0]), np.array([y[0], y[0]])
    return {"x": x.tolist(), "y": y.tolist()}


def _fit_error_model(predictions: np.ndarray, y: np.ndarray, bins: int) -> dict[str, Any]:
    """Mean absolute (and squared) error per prediction-quantile bin on validation.

    Errors usually scale with the prediction (volatility forecasts), so the expected error on new data
    depends on where its predictions fall; looking it up per bin follows a shift in prediction levels.
    """
    error = predictions - y
    edges = quantile_edges(predictions, bins)
    index = np.searchsorted(edges, predictions, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    overall_mae = float(np.mean(np.abs(error))) if len(error) else 0.0
    overall_mse = float(np.mean(error**2)) if len(error) else 0.0
    abs_sum = np.bincount(index, weights=np.abs(error), minlength=len(edges) + 1)
    sq_sum = np.bincount(index, weights=error**2, minlength=len(edges) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(counts > 0, abs_sum / np.maximum(counts, 1), overall_mae)
        mse = np.where(counts > 0, sq_sum / np.maximum(counts, 1), overall_mse)
    return {
        "edges": edges.tolist(),
        "mae": mae.tolist(),
        "mse": mse.tolist(),
        "counts": counts.astype(int).tolist(),
        "overall_mae": overall_mae,
        "overall_rmse": math.sqrt(overall_mse),
    }


# --- storing and reading -------------------------------------------------------------------------------


def profile_to_json(profile: Mapping[str, Any]) -> str:
    """Strict JSON (no NaN/Infinity), so any JSON reader can load the stored profile."""
    return json.dumps(profile, allow_nan=False, sort_keys=True)


def profile_from_json(text: str | bytes) -> dict[str, Any]:
    """Load a stored profile, refusing a format this code does not know (rather than misreading it)."""
    profile = json.loads(text)
    version = profile.get("format_version") if isinstance(profile, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"monitor profile format {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("problem", "features", "scores", "test_metrics", "primary", "greater_is_better"):
        if key not in profile:
            raise ValueError(f"monitor profile lacks {key!r}")
    return profile


@mlflow_stage
def record_profile(spec: UseCaseSpec, splits: Splits, evaluation: Evaluation, run_id: str) -> dict:
    """Build the reference profile of the evaluated candidate and log it to its training run."""
    profile = build_profile(spec.schema, spec.metrics, splits, evaluation.candidate)
    MlflowClient().log_text(run_id, profile_to_json(profile), PROFILE_PATH)
    return profile


@mlflow_stage
def reference_profile(model: ScoringModel, spec: UseCaseSpec, params: TrainingParams) -> tuple[dict, str]:
    """The version's profile and where it came from: "recorded", or "rebuilt" from the run's data source.

    `spec` and `params` are the ones the version was trained with (read from its run), so a rebuild cuts the
    same windows from the same data (a file, or the seeded simulator) and scores them with the version."""
    if model.run_id:
        try:
            text = mlflow.artifacts.load_text(f"runs:/{model.run_id}/{PROFILE_PATH}")
            return profile_from_json(text), "recorded"
        except Exception as exc:  # a version from before profiles, or an unreadable artifact
            run_logger().warning(
                "%s v%s has no monitoring profile (%s): rebuilding it from its training data",
                model.name,
                model.version,
                type(exc).__name__,
            )
    try:
        return _rebuild(model, spec, params), "rebuilt"
    except Exception as exc:
        raise ProfileUnavailable(
            f"{model.name} v{model.version} has no monitoring profile, and rebuilding it from its training "
            f"data ({getattr(params, 'data', None) or 'the embedded default'}) failed: {exc}"
        ) from exc


def _rebuild(model: ScoringModel, spec: UseCaseSpec, params: TrainingParams) -> dict:
    splits = cut_again(spec, spec.load(params))
    scored = score_model(model.predict, splits, spec.metrics)
    return build_profile(spec.schema, spec.metrics, splits, scored)
