"""Estimate: how well the model probably does on new data before its labels arrive.

Binary: confidence-based performance estimation (CBPE) from scores calibrated on the validation window.
Regression: expected MAE (and RMSE) from the validation window's error per prediction level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tasks.monitoring.numeric import finite_values


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
    values = finite_values(predictions)
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
