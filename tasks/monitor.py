"""Monitor: the statistics behind `mlops monitor`, watching a promoted model on data it has not seen.

Labels arrive late (fraud is confirmed weeks later, a volatility target only once the horizon has passed), so
the monitor answers three questions from what is available now, each against a *reference profile* recorded
when the version was trained:

1. Did the inputs move? Per feature a PSI on the reference's decile bins plus a second test fit for the
   feature (KS for continuous features, a scaled Wasserstein-1 distance for discrete ones); the same PSI on
   the model's scores. Statistic thresholds, not p-values: on millions of rows every p-value is ~0.
2. Is the model probably worse? Binary: confidence-based performance estimation (CBPE) from scores
   calibrated on the validation window. Regression: expected MAE from the validation window's error per
   prediction level.
3. What is the verdict? "degraded" when the estimated or realised primary metric falls too far below the
   version's test value, "drift" when only the inputs moved, otherwise "healthy", with reasons.

The statistics are plain numpy/pandas (scikit-learn for the isotonic calibration, matplotlib lazily for the
report), testable without an orchestrator or a tracking server; the stages at the end wire them to the data,
MLflow and Prefect for `flows/monitoring.py`. The profile is a plain JSON-able dict, stored as an artifact of
the version's training run (`tasks/profile.py`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.stage import mlflow_stage, stage

FORMAT_VERSION = 1
PERCENTILES = np.linspace(0.0, 1.0, 101)
DISCRETE_MAX = 10  # at most this many distinct training values: the feature is "discrete"
DISTINCT_CAP = 1000  # distinct values are counted up to this number (the profile stores the capped count)
MAX_KNOTS = 512  # calibration knots kept in the profile
PSI_EPSILON = 1e-4  # floor for bin fractions in PSI, so an empty bin gives a large but finite term


# --- thresholds and results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorThresholds:
    """When a statistic means "moved" or "worse"; defaults are the usual rules of thumb.

    `psi`/`score_psi`: 0.1 is a small shift, > 0.2 a significant one. `ks`: sup distance between CDFs.
    `wasserstein`: mass moved, in units of the reference's standard deviation. `drift_share`: share of drifted
    features that makes the inputs "drifted". `metric_margin`: relative worsening of the primary metric vs the
    version's test value that means "degraded". `min_rows`: fewer scored rows and the estimates are not
    trusted. `absolute_minimum`: the worst acceptable primary metric (a floor when greater is better, a
    ceiling otherwise), or None.
    """

    psi: float = 0.2
    ks: float = 0.1
    wasserstein: float = 0.1
    drift_share: float = 0.3
    score_psi: float = 0.2
    metric_margin: float = 0.1
    min_rows: int = 500
    absolute_minimum: float | None = None
    # One feature past this multiple of its thresholds is drift on its own (new terminals move only the
    # terminal counts; night activity only the night flag), whatever the share of drifted features.
    feature_severity: float = 2.0
    # Features reported but never counted as drifted: those whose share depends on which calendar days a
    # window covers (a weekend flag over a 3-day window), which no retraining would change.
    exempt: tuple[str, ...] = ()


DEFAULT_THRESHOLDS = MonitorThresholds()


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift: PSI, the second test ("ks" | "wasserstein") and its statistic, null shares.

    `severity` is the largest statistic/threshold ratio (> 1 means drifted); features are ranked by it.
    """

    feature: str
    kind: str
    psi: float
    test: str
    statistic: float
    null_share_ref: float
    null_share_current: float
    drifted: bool
    reason: str
    severity: float

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Verdict:
    """The monitor's answer: status "healthy" | "drift" | "degraded" and the reasons, most important first."""

    status: str
    reasons: list[str] = field(default_factory=list)
    primary: str = ""
    test_value: float | None = None
    estimated_value: float | None = None
    realised_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


# --- reference profile -------------------------------------------------------------------------------------


def build_profile(
    train: pd.DataFrame,
    features: Sequence[str],
    problem: Literal["binary", "regression"],
    target: str,
    validation: pd.DataFrame,
    validation_predictions: np.ndarray,
    test_predictions: np.ndarray,
    test_metrics: Mapping[str, float],
    primary: str,
    greater_is_better: bool,
    bins: int = 10,
) -> dict[str, Any]:
    """Record what "normal" looked like when the version was trained, as a JSON-able dict.

    Drift is measured against the training window (what the model learnt from); score drift against the test
    window (the last scores seen before promotion); the calibration map (binary) or error model (regression)
    comes from the validation window, which the booster did not fit (only early-stopped on). The test metrics
    are the bar the verdict compares against.
    """
    if problem not in ("binary", "regression"):
        raise ValueError(f"problem must be 'binary' or 'regression', not {problem!r}")
    missing = [f for f in features if f not in train.columns]
    if missing:
        raise KeyError(f"features missing from the training frame: {missing}")
    val_pred = np.asarray(validation_predictions, dtype="float64").ravel()
    y_val = validation[target].to_numpy(dtype="float64", na_value=np.nan)
    if len(y_val) != len(val_pred):
        raise ValueError(f"{len(val_pred)} validation predictions for {len(y_val)} validation rows")
    usable = np.isfinite(val_pred) & np.isfinite(y_val)
    val_pred, y_val = val_pred[usable], y_val[usable]
    test_pred = _finite_array(test_predictions)

    profile: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "problem": problem,
        "target": target,
        "bins": int(bins),
        "rows": {"train": len(train), "validation": len(validation), "test": len(test_pred)},
        "features": {f: _feature_profile(_values(train[f]), bins) for f in features},
        "scores": {
            "validation": _distribution(val_pred, bins),
            "test": _distribution(test_pred, bins),
        },
        "calibration": None,
        "validation_positive_rate": None,
        "error_model": None,
        "test_metrics": {str(k): _finite_or_none(v) for k, v in test_metrics.items()},
        "primary": primary,
        "greater_is_better": bool(greater_is_better),
    }
    if problem == "binary":
        profile["calibration"] = _fit_calibration(val_pred, y_val)
        profile["validation_positive_rate"] = _num(np.mean(y_val)) if len(y_val) else None
    else:
        profile["error_model"] = _fit_error_model(val_pred, y_val, bins)
    # CBPE/expected error on the test window itself: if this is far from the realised test metrics, the
    # estimates are biased for this version and the report shows it.
    profile["test_estimated"] = {k: _num(v) for k, v in estimate_performance(profile, test_pred).items()}
    return profile


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
        edges = _quantile_edges(finite, bins)
    entry["quantiles"] = np.quantile(finite, PERCENTILES).tolist() if len(finite) else []
    entry["edges"] = edges.tolist()
    entry["fractions"] = _bin_fractions(edges, finite).tolist() if len(finite) else []
    if len(finite):
        entry["mean"], entry["std"] = float(np.mean(finite)), float(np.std(finite))
    return entry


def _distribution(values: np.ndarray, bins: int) -> dict[str, Any]:
    edges = _quantile_edges(values, bins)
    return {
        "quantiles": np.quantile(values, PERCENTILES).tolist() if len(values) else [],
        "edges": edges.tolist(),
        "fractions": _bin_fractions(edges, values).tolist() if len(values) else [],
        "mean": float(np.mean(values)) if len(values) else None,
    }


def _quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points at the quantiles 1/bins ... (bins-1)/bins, ties collapsed.

    Bins are right-closed, (c[i-1], c[i]], with open outer bins, so a point mass sitting on a cut (many zero
    amounts) stays in one bin, and values outside the training range still land in a bin.
    """
    if len(values) == 0:
        return np.array([], dtype="float64")
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def _bin_fractions(edges: Sequence[float] | np.ndarray, values: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype="float64")
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def _fit_calibration(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression of label on score: a monotone map to probabilities, stored as np.interp knots.

    Monotone so the ranking (and so AP/AUC) is untouched; non-parametric so any miscalibration shape is fixed.
    Long knot lists are thinned to `MAX_KNOTS` (endpoints kept; linear interpolation in between).
    """
    from sklearn.isotonic import IsotonicRegression

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
    edges = _quantile_edges(predictions, bins)
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


# --- drift -------------------------------------------------------------------------------------------------


def psi(
    ref_edges: Sequence[float],
    ref_fractions: Sequence[float],
    values: np.ndarray | pd.Series | Sequence[float],
    *,
    ref_null_share: float | None = None,
    eps: float = PSI_EPSILON,
) -> float:
    """Population stability index of `values` on the reference's bins: sum (cur - ref) * ln(cur / ref).

    Fractions are floored at `eps` so an empty bin (in either window) adds a large but finite term. Nulls are
    dropped, unless `ref_null_share` is given: then "null" is one more bin, so a feature going missing counts.
    """
    current = np.asarray(values, dtype="float64").ravel()
    is_null = np.isnan(current)
    finite = current[~is_null]
    ref = np.asarray(ref_fractions, dtype="float64")
    if len(ref) == 0:  # no non-null reference values: only the null bin has mass
        ref = np.zeros(len(ref_edges) + 1)
    cur = _bin_fractions(ref_edges, finite) if len(finite) else np.zeros(len(ref_edges) + 1)
    if ref_null_share is not None:
        cur_null = float(is_null.mean()) if len(current) else 0.0
        ref = np.append(ref * (1.0 - ref_null_share), ref_null_share)
        cur = np.append(cur * (1.0 - cur_null), cur_null)
    if len(ref) != len(cur):
        raise ValueError(f"{len(ref)} reference fractions for {len(ref_edges)} edges")
    ref, cur = np.maximum(ref, eps), np.maximum(cur, eps)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_statistic(ref_quantiles: Sequence[float], values: np.ndarray) -> float:
    """sup_x |F_ref(x) - F_cur(x)|, with F_ref interpolated linearly between the stored percentiles.

    Repeated percentiles (a point mass) make F_ref jump there; the supremum is taken over both one-sided
    limits at every reference knot and every current value, where the maximum of |step - piecewise linear|
    must lie. Resolution is about 1 % (101 percentiles), well below the threshold.
    """
    q = np.asarray(ref_quantiles, dtype="float64")
    current = np.sort(np.asarray(values, dtype="float64"))
    current = current[~np.isnan(current)]
    if len(q) == 0 or len(current) == 0:
        return float("nan")
    probs = np.linspace(0.0, 1.0, len(q))
    knots, first = np.unique(q, return_index=True)
    last = len(q) - 1 - np.unique(q[::-1], return_index=True)[1]
    f_lo, f_hi = probs[first], probs[last]  # F just below and at each knot
    uniq = current[np.r_[True, current[1:] != current[:-1]]]
    points = np.union1d(knots, uniq)
    n = len(current)
    cur_right = np.searchsorted(current, points, side="right") / n
    cur_left = np.searchsorted(current, points, side="left") / n
    ref_right = _ref_cdf(knots, f_lo, f_hi, points, left=False)
    ref_left = _ref_cdf(knots, f_lo, f_hi, points, left=True)
    return float(max(np.max(np.abs(ref_right - cur_right)), np.max(np.abs(ref_left - cur_left))))


def _ref_cdf(knots: np.ndarray, f_lo: np.ndarray, f_hi: np.ndarray, x: np.ndarray, left: bool) -> np.ndarray:
    j = np.searchsorted(knots, x, side="right") - 1  # last knot <= x
    jc = np.clip(j, 0, len(knots) - 1)
    out = np.zeros(len(x))
    at_knot = (j >= 0) & (knots[jc] == x)
    out[at_knot] = (f_lo if left else f_hi)[jc[at_knot]]
    out[(j >= len(knots) - 1) & ~at_knot] = 1.0
    inner = (j >= 0) & (j < len(knots) - 1) & ~at_knot
    if inner.any():
        lo, hi = j[inner], j[inner] + 1
        t = (x[inner] - knots[lo]) / (knots[hi] - knots[lo])
        out[inner] = f_hi[lo] + t * (f_lo[hi] - f_hi[lo])
    return out


def scaled_wasserstein(
    ref_values: Sequence[float], ref_fractions: Sequence[float], values: np.ndarray
) -> float:
    """Wasserstein-1 distance between the reference's discrete distribution and the current values, divided
    by the reference's standard deviation (exact, from its values and fractions).

    Why not KS for discrete features: with a handful of values KS is just the largest change of one cumulative
    share and ignores how far the mass moved (0 -> 1 and 0 -> 9 look alike). W1 is the mass moved times the
    distance it moved; dividing by the reference's spread makes it unit-free and comparable across features
    (0.1 = a tenth of a standard deviation). A constant reference has no spread: the value range of both
    windows is used instead.
    """
    current = np.asarray(values, dtype="float64")
    current = current[~np.isnan(current)]
    ref_v = np.asarray(ref_values, dtype="float64")
    ref_w = np.asarray(ref_fractions, dtype="float64")
    if len(current) == 0 or len(ref_v) == 0:
        return float("nan")
    cur_v, cur_counts = np.unique(current, return_counts=True)
    distance = _wasserstein1(ref_v, ref_w, cur_v, cur_counts / len(current))
    mean = float(np.sum(ref_w * ref_v) / np.sum(ref_w))
    spread = math.sqrt(float(np.sum(ref_w * (ref_v - mean) ** 2) / np.sum(ref_w)))
    if spread <= 0:
        spread = float(max(ref_v.max(), cur_v.max()) - min(ref_v.min(), cur_v.min()))
    return distance / spread if spread > 0 else 0.0


def _wasserstein1(u: np.ndarray, u_w: np.ndarray, v: np.ndarray, v_w: np.ndarray) -> float:
    """W1 = integral of |F_u - F_v| for two weighted discrete distributions."""
    points = np.union1d(u, v)
    order_u, order_v = np.argsort(u), np.argsort(v)
    cdf_u = np.cumsum(u_w[order_u]) / np.sum(u_w)
    cdf_v = np.cumsum(v_w[order_v]) / np.sum(v_w)
    f_u = _step(u[order_u], cdf_u, points[:-1])
    f_v = _step(v[order_v], cdf_v, points[:-1])
    return float(np.sum(np.abs(f_u - f_v) * np.diff(points)))


def _step(sorted_x: np.ndarray, cdf: np.ndarray, at: np.ndarray) -> np.ndarray:
    i = np.searchsorted(sorted_x, at, side="right") - 1
    return np.where(i >= 0, cdf[np.clip(i, 0, len(cdf) - 1)], 0.0)


def feature_drift(
    profile: Mapping[str, Any], current: pd.DataFrame, thresholds: MonitorThresholds = DEFAULT_THRESHOLDS
) -> list[FeatureDrift]:
    """Drift of every profiled feature in `current`, worst first.

    A feature drifts when its PSI (nulls as one more bin) or its second test exceeds the threshold; PSI sees
    any reshuffling of mass between bins, KS/W1 see shifts within and beyond bins that PSI's coarse bins miss.
    """
    missing = [f for f in profile["features"] if f not in current.columns]
    if missing:
        raise KeyError(f"profiled features missing from the current data: {missing}")
    drifts = []
    for name, ref in profile["features"].items():
        values = _values(current[name])
        null_cur = float(np.isnan(values).mean()) if len(values) else 0.0
        value_psi = psi(ref["edges"], ref["fractions"], values, ref_null_share=ref["null_share"])
        if ref["kind"] == "discrete":
            test, limit = "wasserstein", thresholds.wasserstein
            statistic = scaled_wasserstein(ref["values"], ref["fractions"], values)
        else:
            test, limit = "ks", thresholds.ks
            statistic = ks_statistic(ref["quantiles"], values)
        stat = 0.0 if math.isnan(statistic) else statistic
        severity = max(value_psi / thresholds.psi, stat / limit)
        drifted = (value_psi > thresholds.psi or stat > limit) and name not in thresholds.exempt
        parts = [
            f"PSI {value_psi:.3f} {'>' if value_psi > thresholds.psi else '<='} {thresholds.psi:g}",
            f"{test} {stat:.3f} {'>' if stat > limit else '<='} {limit:g}"
            if not math.isnan(statistic)
            else f"{test} n/a (a window has no non-null values)",
        ]
        if abs(null_cur - ref["null_share"]) >= 0.01:
            parts.append(f"null share {ref['null_share']:.1%} -> {null_cur:.1%}")
        drifts.append(
            FeatureDrift(
                feature=name,
                kind=ref["kind"],
                psi=value_psi,
                test=test,
                statistic=statistic,
                null_share_ref=float(ref["null_share"]),
                null_share_current=null_cur,
                drifted=drifted,
                reason=("drifted: " if drifted else "exempt: " if name in thresholds.exempt else "stable: ")
                + "; ".join(parts),
                severity=severity,
            )
        )
    return sorted(drifts, key=lambda d: (not d.drifted, -d.severity, d.feature))


def drifted_share(drifts: Sequence[FeatureDrift]) -> float:
    """Share of features that drifted: one feature moving is common, many at once is a regime change."""
    return sum(d.drifted for d in drifts) / len(drifts) if drifts else 0.0


def score_drift(profile: Mapping[str, Any], scores: np.ndarray) -> float:
    """PSI of the current scores/predictions on the test window's score bins.

    The model's output summarises all inputs as the model weighs them: a moved score distribution matters even
    when each feature moved only a little.
    """
    ref = profile["scores"]["test"]
    return psi(ref["edges"], ref["fractions"], _finite_array(scores))


# --- performance estimation --------------------------------------------------------------------------------


def calibrate(profile: Mapping[str, Any], scores: np.ndarray) -> np.ndarray:
    """Map raw scores to probabilities with the validation window's isotonic map (binary profiles)."""
    scores = np.asarray(scores, dtype="float64")
    calibration = profile.get("calibration")
    if not calibration:
        return np.clip(scores, 0.0, 1.0)
    return np.interp(scores, calibration["x"], calibration["y"])


def estimate_performance(
    profile: Mapping[str, Any], predictions: np.ndarray, k: int = 100
) -> dict[str, float]:
    """Performance expected on `predictions` before labels exist; "rows" is the number of rows it rests on.

    Binary (CBPE): with calibrated probabilities p the labels are modelled as independent Bernoulli(p). Rows
    are ranked by raw score (ties grouped, as sklearn does); expected true positives above rank k are
    cumsum(p), so the expected precision at k is cumsum(p)/k and the estimated average precision is
    sum_k p_k * precision_k / sum p -- a ratio of expectations, which estimates E[AP] closely once there are
    a few dozen expected positives. Also: expected ROC AUC (expected TPR/FPR curve), expected precision in
    the top `k` (mean p there) and the expected positive rate. Only as good as the calibration: under concept
    drift (same scores, different fraud rate) it cannot see the change; realised metrics can.

    Regression: expected MAE (and RMSE) = the validation error of each prediction's bin, averaged.
    """
    values = _finite_array(predictions)
    out: dict[str, float] = {"rows": float(len(values))}
    if len(values) == 0:
        return out
    if profile["problem"] == "binary":
        p = calibrate(profile, values)
        out.update(_expected_ranking_metrics(values, p))
        top = p[np.argsort(-values, kind="stable")[: max(int(k), 1)]]
        out[f"precision_at_{k}"] = float(np.mean(top))
        out["positive_rate"] = float(np.mean(p))
    else:
        model = profile["error_model"]
        index = np.searchsorted(np.asarray(model["edges"], dtype="float64"), values, side="left")
        out["mae"] = float(np.mean(np.asarray(model["mae"])[index]))
        out["rmse"] = math.sqrt(float(np.mean(np.asarray(model["mse"])[index])))
    return out


def _expected_ranking_metrics(scores: np.ndarray, p: np.ndarray) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")
    s, q = scores[order], p[order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last row of each group of tied scores
    cum_tp = np.cumsum(q)[ends]
    cum_n = (ends + 1).astype("float64")
    positives = float(cum_tp[-1])
    negatives = float(len(s) - positives)
    out: dict[str, float] = {}
    if positives > 0:
        gained = np.diff(np.r_[0.0, cum_tp])
        out["average_precision"] = float(np.sum(gained * cum_tp / cum_n) / positives)
    if positives > 0 and negatives > 0:
        tpr = np.r_[0.0, cum_tp / positives]
        fpr = np.r_[0.0, (cum_n - cum_tp) / negatives]
        out["roc_auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return out


# --- verdict -----------------------------------------------------------------------------------------------


def verdict(
    profile: Mapping[str, Any],
    drifts: Sequence[FeatureDrift],
    drift_share: float,
    score_psi: float | None,
    estimated: Mapping[str, float],
    realised: Mapping[str, float] | None,
    thresholds: MonitorThresholds = DEFAULT_THRESHOLDS,
) -> Verdict:
    """Combine drift and performance into one status a person (or an alert) acts on.

    "degraded": the estimated or realised primary metric is worse than the version's test value by more than
    `metric_margin` (relative, direction-aware), or worse than `absolute_minimum` -- the model should be
    retrained or rolled back. "drift": the inputs or scores moved beyond thresholds but performance is not
    shown worse -- look, and consider retraining. "healthy" otherwise. Estimates on fewer than `min_rows` rows
    are not used (said in the reasons).
    """
    primary = profile["primary"]
    greater = bool(profile["greater_is_better"])
    test_value = profile["test_metrics"].get(primary)
    rows = estimated.get("rows")
    estimate_trusted = rows is None or rows >= thresholds.min_rows
    estimated_value = _finite_or_none(estimated.get(primary))
    realised_value = _finite_or_none((realised or {}).get(primary))

    degraded: list[str] = []
    notes: list[str] = []
    checks = [("realised", realised_value)]
    if estimate_trusted:
        checks.append(("estimated", estimated_value))
    else:
        notes.append(
            f"only {int(rows)} rows scored (< {thresholds.min_rows}): estimated metrics not trusted, not used"
        )
    if estimated_value is None and estimate_trusted and realised_value is None:
        notes.append(f"{primary} cannot be estimated without labels and no realised value was given")
    for source, value in checks:
        if value is None:
            continue
        if test_value is not None and math.isfinite(test_value):
            worse = _relative_worsening(value, test_value, greater)
            if worse > thresholds.metric_margin:
                degraded.append(
                    f"{source} {primary} {value:.4g} is {worse:.1%} worse than the version's test value "
                    f"{test_value:.4g} (margin {thresholds.metric_margin:.0%})"
                )
        floor = thresholds.absolute_minimum
        if floor is not None and (value < floor if greater else value > floor):
            bound = "minimum" if greater else "maximum"
            degraded.append(f"{source} {primary} {value:.4g} is past the absolute {bound} {floor:.4g}")

    drift_reasons: list[str] = []
    ranked = sorted(drifts, key=lambda d: (not d.drifted, -d.severity, d.feature))
    moved = [d for d in ranked if d.drifted]
    named = ", ".join(f"{d.feature} (PSI {d.psi:.3f}, {d.test} {_fmt(d.statistic, 3)})" for d in moved[:10])
    if len(moved) > 10:
        named += f", and {len(moved) - 10} more"
    share_text = f"{len(moved)}/{len(drifts)} features drifted ({drift_share:.0%}"
    strong = [d for d in moved if d.severity >= thresholds.feature_severity]
    if drifts and drift_share >= thresholds.drift_share:
        drift_reasons.append(f"{share_text} >= {thresholds.drift_share:.0%}): {named}")
    elif strong:
        drift_reasons.append(
            f"{share_text}), {len(strong)} of them past {thresholds.feature_severity:g}x a threshold: {named}"
        )
    elif moved:
        notes.append(f"{share_text} < {thresholds.drift_share:.0%}): {named}")
    if score_psi is not None and score_psi > thresholds.score_psi:
        drift_reasons.append(f"score PSI {score_psi:.3f} > {thresholds.score_psi:g} vs the test window")
    elif score_psi is not None:
        notes.append(f"score PSI {score_psi:.3f} <= {thresholds.score_psi:g}")

    if degraded:
        status = "degraded"
    elif drift_reasons:
        status = "drift"
        seen = [f"{src} {_fmt(val)}" for src, val in checks if val is not None]
        notes.insert(
            0,
            f"{primary} not shown worse than the version's test value {_fmt(test_value)} ({', '.join(seen)})"
            if seen
            else f"{primary} unknown: neither a trusted estimate nor a realised value",
        )
    else:
        status = "healthy"
    return Verdict(
        status=status,
        reasons=degraded + drift_reasons + notes,
        primary=primary,
        test_value=_finite_or_none(test_value),
        estimated_value=estimated_value,
        realised_value=realised_value,
    )


def _relative_worsening(value: float, reference: float, greater_is_better: bool) -> float:
    """How much worse `value` is than `reference`, relative to |reference| (positive = worse)."""
    worse = (reference - value) if greater_is_better else (value - reference)
    if reference == 0:
        return math.inf if worse > 0 else 0.0
    return worse / abs(reference)


# --- report ------------------------------------------------------------------------------------------------


def render_report(
    profile: Mapping[str, Any],
    current_features: pd.DataFrame,
    drifts: Sequence[FeatureDrift],
    score_psi: float | None,
    estimated: Mapping[str, float],
    realised: Mapping[str, float] | None,
    verdict: Verdict,
    title: str,
    history: list[dict] | None = None,
    scores: np.ndarray | None = None,
) -> str:
    """One self-contained HTML page (plots inlined as base64 PNG) a person can open from an artifact store.

    Verdict and reasons on top, then metrics (estimated vs realised, over time with `history`: a list of
    {"period", "estimated", "realised"}), the feature table worst first, the score distribution (current
    scores when `scores` is given) and each feature's reference vs current bin fractions.
    """
    esc = html.escape
    primary = profile["primary"]
    colour = {"healthy": "#2e7d32", "drift": "#ef6c00", "degraded": "#c62828"}.get(verdict.status, "#555")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<div class='verdict' style='border-color:{colour}'><h2 style='color:{colour}'>"
        f"{esc(verdict.status.upper())}</h2><ul>",
        *(f"<li>{esc(r)}</li>" for r in verdict.reasons),
        "</ul></div>",
        f"<p class='meta'>{len(current_features)} current rows; reference: "
        + esc(", ".join(f"{k} {v}" for k, v in profile.get("rows", {}).items()))
        + f" rows; problem {esc(str(profile['problem']))}; primary metric {esc(primary)} "
        f"({'higher' if profile['greater_is_better'] else 'lower'} is better)</p>",
    ]

    # metrics
    test_metrics = profile.get("test_metrics", {})
    test_estimated = profile.get("test_estimated") or {}
    names = [primary] + sorted((set(estimated) | set(realised or {})) - {primary, "rows"})
    parts.append(
        "<h2>Performance</h2><table><tr><th>metric</th><th>version's test value</th>"
        "<th>estimated on test window</th><th>estimated now</th><th>realised now</th></tr>"
    )
    for name in names:
        cells = [
            test_metrics.get(name),
            test_estimated.get(name),
            estimated.get(name),
            (realised or {}).get(name),
        ]
        row_class = " class='primary'" if name == primary else ""
        parts.append(
            f"<tr{row_class}><td>{esc(name)}</td>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>"
        )
    parts.append("</table>")
    if history:
        parts.append(f"<h3>{esc(primary)} over time</h3>{_img(_history_png(history, primary, test_metrics))}")

    # features
    parts.append(
        "<h2>Features</h2><table><tr><th>feature</th><th>kind</th><th>PSI</th><th>test</th><th>statistic</th>"
        "<th>null ref</th><th>null now</th><th>drifted</th><th>reason</th></tr>"
    )
    ranked = sorted(drifts, key=lambda d: (not d.drifted, -d.severity, d.feature))
    for d in ranked:
        parts.append(
            f"<tr class='{'drifted' if d.drifted else ''}'><td>{esc(d.feature)}</td><td>{esc(d.kind)}</td>"
            f"<td>{_fmt(d.psi, 3)}</td><td>{esc(d.test)}</td><td>{_fmt(d.statistic, 3)}</td>"
            f"<td>{d.null_share_ref:.1%}</td><td>{d.null_share_current:.1%}</td>"
            f"<td>{'yes' if d.drifted else 'no'}</td><td>{esc(d.reason)}</td></tr>"
        )
    parts.append("</table>")

    # score distribution
    ref_scores = profile["scores"]["test"]
    series = {"test window": np.asarray(ref_scores["fractions"], dtype="float64")}
    if scores is not None:
        current_scores = _finite_array(scores)
        series["current"] = _bin_fractions(ref_scores["edges"], current_scores)
    score_title = "scores" + (f" (PSI {score_psi:.3f})" if score_psi is not None else "")
    parts.append(
        f"<h2>Score distribution</h2>{_img(_bars_png(_bin_labels(ref_scores['edges']), series, score_title))}"
    )
    if scores is None:
        parts.append("<p class='meta'>current scores not given: reference only.</p>")

    # per feature
    parts.append("<h2>Feature distributions (reference bins)</h2><div class='grid'>")
    for d in ranked:
        ref = profile["features"].get(d.feature)
        if ref is None or d.feature not in current_features.columns:
            continue
        values = _values(current_features[d.feature])
        finite = values[~np.isnan(values)]
        labels = (
            [_short(v) for v in ref["values"]] if ref["kind"] == "discrete" else _bin_labels(ref["edges"])
        )
        ref_frac = np.asarray(ref["fractions"], dtype="float64") * (1 - ref["null_share"])
        cur_frac = _bin_fractions(ref["edges"], finite) * (len(finite) / max(len(values), 1))
        if ref["null_share"] > 0 or d.null_share_current > 0:
            labels, ref_frac = [*labels, "null"], np.append(ref_frac, ref["null_share"])
            cur_frac = np.append(cur_frac, d.null_share_current)
        if len(ref_frac) != len(cur_frac):  # feature entirely null in training: nothing to plot
            continue
        png = _bars_png(labels, {"reference": ref_frac, "current": cur_frac}, d.feature)
        parts.append(
            f"<div class='card{' drifted' if d.drifted else ''}'><b>{esc(d.feature)}</b> "
            f"PSI {_fmt(d.psi, 3)}, {esc(d.test)} {_fmt(d.statistic, 3)}<br>{_img(png)}</div>"
        )
    parts.append(f"</div><p class='meta'>profile format {esc(str(profile.get('format_version')))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "font-size:13px;text-align:left}tr.drifted td{background:#fff3e0}tr.primary td{font-weight:bold}"
    ".verdict{border:3px solid;padding:.5em 1em;border-radius:6px}.meta{color:#666;font-size:12px}"
    ".grid{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ddd;padding:4px;font-size:12px}"
    ".card.drifted{border-color:#ef6c00}"
)


def _img(png: bytes) -> str:
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _figure(width: float = 3.6, height: float = 2.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)  # Agg canvas: no pyplot, no display, no global figure state
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _bars_png(labels: Sequence[str], series: Mapping[str, np.ndarray], title: str) -> bytes:
    fig = _figure()
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, fractions) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, fractions, width, label=name)
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("share", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    return _png(fig)


def _history_png(history: Sequence[Mapping[str, Any]], primary: str, test_metrics: Mapping) -> bytes:
    fig = _figure(6.0, 2.6)
    ax = fig.subplots()
    periods = [str(h.get("period")) for h in history]
    x = np.arange(len(periods))
    for key, marker in (("estimated", "o--"), ("realised", "s-")):
        y = [_finite_or_none(h.get(key)) for h in history]
        y = [np.nan if v is None else v for v in y]
        ax.plot(x, y, marker, label=key)
    test_value = _finite_or_none(test_metrics.get(primary))
    if test_value is not None:
        ax.axhline(test_value, color="grey", lw=1, ls=":", label="version's test value")
    ax.set_xticks(x, periods, rotation=45, fontsize=6)
    ax.set_ylabel(primary, fontsize=7)
    ax.legend(fontsize=6)
    return _png(fig)


def _bin_labels(edges: Sequence[float]) -> list[str]:
    if len(edges) == 0:
        return ["all"]
    labels = [f"<={_short(edges[0])}"]
    labels += [f"{_short(a)}-{_short(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [*labels, f">{_short(edges[-1])}"]


# --- helpers -----------------------------------------------------------------------------------------------


def _values(series: pd.Series) -> np.ndarray:
    """A column as float64 with nulls (and +-inf) as NaN; booleans count as 0/1."""
    values = series.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


def _finite_array(values: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype="float64").ravel()
    return array[np.isfinite(array)]


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return _num(value)
    except (TypeError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return _num(obj)
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


def _fmt(value: Any, digits: int = 4) -> str:
    value = _finite_or_none(value)
    return "–" if value is None else f"{value:.{digits}g}"


def _short(value: float) -> str:
    return f"{value:.3g}"


# --- the monitoring stages ----------------------------------------------------------------------------------
# The flow (`flows/monitoring.py`) runs them in order: the window of new data, the assessment against the
# version's profile, the records (MLflow run, HTML report, Prefect artifact) and the alert event.

DEGRADED_EVENT = "mlops.model.degraded"


@dataclass(frozen=True)
class Window:
    """The new data as features: `table` holds every row (history included, for the features and the test
    filter), `monitored` the rows from `since` on, which are scored and compared."""

    table: pd.DataFrame
    monitored: pd.DataFrame
    since: pd.Timestamp
    source: str


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    drifts: list[FeatureDrift]
    drift_share: float
    score_psi: float | None
    estimated: dict[str, float]
    realised: dict[str, float] | None
    rows: int
    labelled_rows: int
    history: list[dict]
    scores: np.ndarray = field(repr=False)

    @property
    def drifted(self) -> list[str]:
        return [d.feature for d in self.drifts if d.drifted]


def thresholds_for(spec, params) -> MonitorThresholds:
    """The spec's thresholds, the primary metric's absolute gate as the floor, and the run's overrides."""
    from dataclasses import replace

    base = spec.monitoring or DEFAULT_THRESHOLDS
    floors = [g.threshold for g in spec.gates.absolute if g.metric == spec.metrics.primary]
    if base.absolute_minimum is None and floors:
        base = replace(base, absolute_minimum=floors[0])
    overrides = {
        k: getattr(params, k)
        for k in ("psi", "drift_share", "metric_margin", "min_rows")
        if getattr(params, k, None) is not None
    }
    return replace(base, **overrides)


@stage
def monitoring_window(spec, path: str, since: str | None) -> Window:
    """Read and check the new data, build its features on the scoring path, and cut the monitored rows."""
    from tasks.ingest import DataReadError, read_table
    from tasks.score import check_frame, parse_times
    from tasks.tracking import run_logger

    log = run_logger()
    raw = parse_times(read_table(path), spec.time_column)
    raw_suite, feature_suite = spec.scoring_suites
    view = spec.raw_check_view(raw) if spec.raw_check_view else raw
    check_frame(view, raw_suite, "monitoring input, raw", log)
    table = spec.build_features(raw)
    check_frame(table, feature_suite, "monitoring input, features", log)
    times = table[spec.time_column]
    # By default, rows before the feature history's span lack the past their features look back over.
    start = pd.Timestamp(since) if since else times.min() + (spec.feature_history or pd.Timedelta(0))
    monitored = table.loc[times >= start]
    if monitored.empty:
        raise DataReadError(
            f"{path}: no rows on or after {start.date()} to monitor (the data ends {times.max().date()}); "
            "pass --since, or give more history before the window"
        )
    log.info("monitoring %d rows from %s (%d rows in the input)", len(monitored), start.date(), len(raw))
    return Window(table, monitored, start, str(path))


@stage
def assess(
    profile: Mapping[str, Any], window: Window, model, spec, thresholds: MonitorThresholds
) -> Assessment:
    """Drift, score drift, the metric estimated from scores and realised on labelled rows, and the verdict.

    Metrics are estimated and realised on the population the version's test metrics came from (the use
    case's test filter applied, e.g. fraud leaves out cards already known to be compromised)."""
    monitored = window.monitored
    scores = np.asarray(model.predict(monitored), dtype="float64")
    drifts = feature_drift(profile, monitored, thresholds)
    share = drifted_share(drifts)
    score_psi = score_drift(profile, scores)
    population = spec.test_filter(monitored, window.table) if spec.test_filter else monitored
    population_scores = scores[monitored.index.get_indexer(population.index)]
    estimated = estimate_performance(profile, population_scores)
    labelled = population[spec.target].notna().to_numpy()
    realised = None
    if labelled.sum() >= 1:
        realised = _realised(spec, profile, population[labelled], population_scores[labelled])
    history = _history(spec, profile, population, population_scores, labelled)
    result = verdict(profile, drifts, share, score_psi, estimated, realised, thresholds)
    return Assessment(
        result,
        drifts,
        share,
        score_psi,
        estimated,
        realised,
        len(monitored),
        int(labelled.sum()),
        history,
        scores,
    )


def _realised(spec, profile: Mapping[str, Any], frame: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    context = dict(profile.get("metric_context") or {})
    if spec.problem == "binary":
        frame = frame.assign(**{spec.target: frame[spec.target].astype("int64")})
        if frame[spec.target].nunique() < 2:
            return {}  # one class only: ranking metrics are undefined
    try:
        metrics = spec.metrics.compute(frame, scores, context)
    except Exception:  # e.g. a metric needing columns or rows this window lacks
        return {}
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def _history(spec, profile, population: pd.DataFrame, scores: np.ndarray, labelled: np.ndarray) -> list[dict]:
    """Estimated vs realised primary metric per period (days for short windows, weeks for longer ones)."""
    primary = profile["primary"]
    times = pd.to_datetime(population[spec.time_column])
    span = (times.max() - times.min()).days if len(times) else 0
    freq = "D" if span <= 35 else "W"
    periods = times.dt.to_period(freq).to_numpy()
    out = []
    for period in pd.unique(periods):
        mask = periods == period
        estimated = estimate_performance(profile, scores[mask]).get(primary)
        realised = None
        if labelled[mask].any():
            realised = _realised(spec, profile, population[mask & labelled], scores[mask & labelled]).get(
                primary
            )
        out.append(
            {"period": str(period), "estimated": estimated, "realised": realised, "rows": int(mask.sum())}
        )
    return out


@mlflow_stage
def record_assessment(
    assessment: Assessment, profile: Mapping[str, Any], window: Window, model, spec, origin: str
) -> str:
    """One MLflow run in `<use case>-monitoring` (metrics, the HTML report, the assessment as JSON) and a
    Prefect table artifact with the verdict; returns the MLflow run id."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from prefect import runtime
    from prefect.artifacts import create_table_artifact

    from tasks import tracking

    client = MlflowClient()
    experiment = tracking.experiment_id(f"{spec.name}-monitoring")
    v = assessment.verdict
    run = client.create_run(
        experiment,
        run_name=f"{model.name}-v{model.version}-{window.since.date()}",
        tags={
            "use_case": spec.name,
            "registered_model": model.name,
            "model_version": str(model.version),
            "verdict": v.status,
            "profile": origin,
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            "mlflow.note.content": f"{v.status}: " + "; ".join(v.reasons[:3]),
        },
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    primary = profile["primary"]
    values = {f"drift.{d.feature}": d.psi for d in assessment.drifts}
    values.update({f"drift_test.{d.feature}": d.statistic for d in assessment.drifts})
    values.update(
        drift_share=assessment.drift_share,
        score_drift=assessment.score_psi,
        rows=assessment.rows,
        labelled_rows=assessment.labelled_rows,
    )
    values.update({f"estimated_{k}": val for k, val in assessment.estimated.items() if k != "rows"})
    values.update({f"realised_{k}": val for k, val in (assessment.realised or {}).items()})
    metrics = [
        Metric(k, float(val), now, 0) for k, val in values.items() if val is not None and np.isfinite(val)
    ]
    for i, point in enumerate(assessment.history):
        for kind in ("estimated", "realised"):
            if point[kind] is not None and np.isfinite(point[kind]):
                metrics.append(Metric(f"{kind}_{primary}_by_period", float(point[kind]), now, i))
    params = [
        Param("data", window.source[:6000]),
        Param("since", str(window.since.date())),
        Param("model", f"{model.name}/{model.version}"),
    ]
    client.log_batch(run_id, metrics=metrics, params=params)
    report = render_report(
        profile,
        window.monitored,
        assessment.drifts,
        assessment.score_psi,
        assessment.estimated,
        assessment.realised,
        v,
        f"{model.name} v{model.version}: {v.status} ({window.since.date()} ..)",
        history=assessment.history,
        scores=assessment.scores,
    )
    client.log_text(run_id, report, "monitoring_report.html")
    client.log_dict(run_id, _assessment_record(assessment, model, window, origin), "assessment.json")
    client.set_terminated(run_id, "FINISHED")
    create_table_artifact(
        key=f"monitoring-{spec.name}",
        table=[
            {"what": "verdict", "value": v.status},
            {"what": "model", "value": f"{model.name} v{model.version}"},
            {"what": "rows (labelled)", "value": f"{assessment.rows:,} ({assessment.labelled_rows:,})"},
            {"what": f"test {primary}", "value": _fmt(v.test_value)},
            {"what": f"estimated {primary}", "value": _fmt(v.estimated_value)},
            {"what": f"realised {primary}", "value": _fmt(v.realised_value)},
            {"what": "drifted features", "value": ", ".join(assessment.drifted) or "none"},
            {"what": "score PSI", "value": _fmt(assessment.score_psi, 3)},
            *({"what": "reason", "value": r} for r in v.reasons),
            {"what": "MLflow run", "value": run_id},
        ],
        description=f"{model.name} v{model.version}: {v.status}",
    )
    return run_id


def _assessment_record(assessment: Assessment, model, window: Window, origin: str) -> dict:
    return _jsonable(
        {
            "registered_model": model.name,
            "version": str(model.version),
            "data": window.source,
            "since": str(window.since.date()),
            "profile": origin,
            "verdict": assessment.verdict.to_dict(),
            "drift_share": assessment.drift_share,
            "score_psi": assessment.score_psi,
            "estimated": assessment.estimated,
            "realised": assessment.realised,
            "rows": assessment.rows,
            "labelled_rows": assessment.labelled_rows,
            "features": [d.to_dict() for d in assessment.drifts],
            "history": assessment.history,
        }
    )


@stage
def alert(assessment: Assessment, model, spec, window: Window, run_id: str) -> bool:
    """`mlops.model.degraded` when the verdict is not healthy: the training deployment's trigger retrains on
    it (debounced), so retraining starts on evidence and the retrained candidate still meets every gate."""
    if assessment.verdict.status == "healthy":
        return False
    from prefect.events import emit_event

    v = assessment.verdict
    emit_event(
        event=DEGRADED_EVENT,
        resource={
            "prefect.resource.id": f"mlflow.registered-model.{model.name}",
            "mlops.use-case": spec.name,
        },
        payload={
            "use_case": spec.name,
            "registered_model": model.name,
            "version": str(model.version),
            "verdict": v.status,
            "reasons": v.reasons[:10],
            "drifted_features": assessment.drifted,
            "estimated": v.estimated_value,
            "realised": v.realised_value,
            "primary": v.primary,
            "data": window.source,
            "mlflow_run_id": run_id,
        },
    )
    return True
