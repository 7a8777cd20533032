"""Drift: did the inputs or the scores move away from the reference profile?

Per feature a PSI on the reference's decile bins (nulls as one more bin) plus a second test fit for the
feature: KS for continuous features, a scaled Wasserstein-1 distance for discrete ones. The same PSI on the
model's scores. Statistic thresholds, not p-values: on millions of rows every p-value is ~0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.monitoring.numeric import bin_fractions, column_values, finite_values, jsonable
from usecases.spec import MonitorThresholds

PSI_EPSILON = 1e-4  # floor for bin fractions in PSI, so an empty bin gives a large but finite term


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
        return jsonable(asdict(self))


def worst_first(drifts: Sequence[FeatureDrift]) -> list[FeatureDrift]:
    """Drifted features first, then by severity (largest first), then by name."""
    return sorted(drifts, key=lambda d: (not d.drifted, -d.severity, d.feature))


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
    cur = bin_fractions(ref_edges, finite) if len(finite) else np.zeros(len(ref_edges) + 1)
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
    profile: Mapping[str, Any], current: pd.DataFrame, thresholds: MonitorThresholds
) -> list[FeatureDrift]:
    """Drift of every profiled feature in `current`, worst first.

    A feature drifts when its PSI (nulls as one more bin) or its second test exceeds the threshold; PSI sees
    any reshuffling of mass between bins, KS/W1 see shifts within and beyond bins that PSI's coarse bins miss.
    """
    missing = [f for f in profile["features"] if f not in current.columns]
    if missing:
        raise KeyError(f"profiled features missing from the current data: {missing}")
    drifts = [
        _one_feature(name, ref, column_values(current[name]), thresholds)
        for name, ref in profile["features"].items()
    ]
    return worst_first(drifts)


def _one_feature(
    name: str, ref: Mapping[str, Any], values: np.ndarray, thresholds: MonitorThresholds
) -> FeatureDrift:
    null_cur = float(np.isnan(values).mean()) if len(values) else 0.0
    value_psi = psi(ref["edges"], ref["fractions"], values, ref_null_share=ref["null_share"])
    if ref["kind"] == "discrete":
        test, limit = "wasserstein", thresholds.wasserstein
        statistic = scaled_wasserstein(ref["values"], ref["fractions"], values)
    else:
        test, limit = "ks", thresholds.ks
        statistic = ks_statistic(ref["quantiles"], values)
    stat = 0.0 if math.isnan(statistic) else statistic
    exempt = name in thresholds.exempt
    drifted = (value_psi > thresholds.psi or stat > limit) and not exempt
    parts = [
        f"PSI {value_psi:.3f} {'>' if value_psi > thresholds.psi else '<='} {thresholds.psi:g}",
        f"{test} {stat:.3f} {'>' if stat > limit else '<='} {limit:g}"
        if not math.isnan(statistic)
        else f"{test} n/a (a window has no non-null values)",
    ]
    if abs(null_cur - ref["null_share"]) >= 0.01:
        parts.append(f"null share {ref['null_share']:.1%} -> {null_cur:.1%}")
    return FeatureDrift(
        feature=name,
        kind=ref["kind"],
        psi=value_psi,
        test=test,
        statistic=statistic,
        null_share_ref=float(ref["null_share"]),
        null_share_current=null_cur,
        drifted=drifted,
        reason=("drifted: " if drifted else "exempt: " if exempt else "stable: ") + "; ".join(parts),
        severity=max(value_psi / thresholds.psi, stat / limit),
    )


def drifted_share(drifts: Sequence[FeatureDrift]) -> float:
    """Share of features that drifted: one feature moving is common, many at once is a regime change."""
    return sum(d.drifted for d in drifts) / len(drifts) if drifts else 0.0


def score_drift(profile: Mapping[str, Any], scores: np.ndarray) -> float:
    """PSI of the current scores/predictions on the test window's score bins.

    The model's output summarises all inputs as the model weighs them: a moved score distribution matters even
    when each feature moved only a little.
    """
    ref = profile["scores"]["test"]
    return psi(ref["edges"], ref["fractions"], finite_values(scores))
