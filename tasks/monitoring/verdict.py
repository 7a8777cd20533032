"""Verdict: the monitor's answer, combining drift and performance into one status with its reasons.

"degraded" when the estimated or realised primary metric falls too far below the version's test value,
"drift" when only the inputs or scores moved, otherwise "healthy". `Assessment` carries the verdict with the
evidence behind it, for the records, the report and the alert.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tasks.monitoring.drift import FeatureDrift, worst_first
from tasks.monitoring.numeric import finite_or_none, fmt, jsonable
from usecases.spec import MonitorThresholds


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
        return jsonable(asdict(self))


@dataclass(frozen=True)
class Assessment:
    """One window assessed: the verdict and its evidence (drift, estimated and realised metrics, history of
    the primary metric per period as {"period", "estimated", "realised", "rows"}, the window's scores)."""

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


def verdict(
    profile: Mapping[str, Any],
    drifts: Sequence[FeatureDrift],
    drift_share: float,
    score_psi: float | None,
    estimated: Mapping[str, float],
    realised: Mapping[str, float] | None,
    thresholds: MonitorThresholds,
) -> Verdict:
    """Combine drift and performance into one status a person (or an alert) acts on.

    "degraded": the estimated or realised primary metric is worse than the version's test value by more than
    `metric_margin` (relative, direction-aware), or worse than `absolute_minimum` -- the model should be
    retrained or rolled back. "drift": the inputs or scores moved beyond thresholds but performance is not
    shown worse -- look, and consider retraining. "healthy" otherwise. Estimates on fewer than `min_rows` rows
    are not used (said in the reasons).
    """
    primary = profile["primary"]
    test_value = profile["test_metrics"].get(primary)
    estimated_value = finite_or_none(estimated.get(primary))
    realised_value = finite_or_none((realised or {}).get(primary))
    checks, notes = _performance_checks(primary, estimated, estimated_value, realised_value, thresholds)
    degraded = [
        reason
        for source, value in checks
        if value is not None
        for reason in _worse_reasons(source, value, profile, thresholds)
    ]
    drift_reasons, drift_notes = _drift_reasons(drifts, drift_share, score_psi, thresholds)
    notes += drift_notes
    if degraded:
        status = "degraded"
    elif drift_reasons:
        status = "drift"
        seen = [f"{src} {fmt(val)}" for src, val in checks if val is not None]
        notes.insert(
            0,
            f"{primary} not shown worse than the version's test value {fmt(test_value)} ({', '.join(seen)})"
            if seen
            else f"{primary} unknown: neither a trusted estimate nor a realised value",
        )
    else:
        status = "healthy"
    return Verdict(
        status=status,
        reasons=degraded + drift_reasons + notes,
        primary=primary,
        test_value=finite_or_none(test_value),
        estimated_value=estimated_value,
        realised_value=realised_value,
    )


def _performance_checks(
    primary: str,
    estimated: Mapping[str, float],
    estimated_value: float | None,
    realised_value: float | None,
    thresholds: MonitorThresholds,
) -> tuple[list[tuple[str, float | None]], list[str]]:
    """The (source, value) pairs of the primary metric to judge, and notes on what could not be used."""
    rows = estimated.get("rows")
    estimate_trusted = rows is None or rows >= thresholds.min_rows
    checks: list[tuple[str, float | None]] = [("realised", realised_value)]
    notes: list[str] = []
    if estimate_trusted:
        checks.append(("estimated", estimated_value))
    else:
        notes.append(
            f"only {int(rows)} rows scored (< {thresholds.min_rows}): estimated metrics not trusted, not used"
        )
    if estimated_value is None and estimate_trusted and realised_value is None:
        notes.append(f"{primary} cannot be estimated without labels and no realised value was given")
    return checks, notes


def _worse_reasons(
    source: str, value: float, profile: Mapping[str, Any], thresholds: MonitorThresholds
) -> list[str]:
    """Why `value` of the primary metric means degraded: past the margin from the test value, or the floor."""
    primary, greater = profile["primary"], bool(profile["greater_is_better"])
    test_value = profile["test_metrics"].get(primary)
    reasons = []
    if test_value is not None and math.isfinite(test_value):
        worse = _relative_worsening(value, test_value, greater)
        if worse > thresholds.metric_margin:
            reasons.append(
                f"{source} {primary} {value:.4g} is {worse:.1%} worse than the version's test value "
                f"{test_value:.4g} (margin {thresholds.metric_margin:.0%})"
            )
    floor = thresholds.absolute_minimum
    if floor is not None and (value < floor if greater else value > floor):
        bound = "minimum" if greater else "maximum"
        reasons.append(f"{source} {primary} {value:.4g} is past the absolute {bound} {floor:.4g}")
    return reasons


def _drift_reasons(
    drifts: Sequence[FeatureDrift], drift_share: float, score_psi: float | None, thresholds: MonitorThresholds
) -> tuple[list[str], list[str]]:
    """Reasons for a "drift" status (many features moved, one moved far, or the scores moved), and notes."""
    reasons: list[str] = []
    notes: list[str] = []
    moved = [d for d in worst_first(drifts) if d.drifted]
    named = ", ".join(f"{d.feature} (PSI {d.psi:.3f}, {d.test} {fmt(d.statistic, 3)})" for d in moved[:10])
    if len(moved) > 10:
        named += f", and {len(moved) - 10} more"
    share_text = f"{len(moved)}/{len(drifts)} features drifted ({drift_share:.0%}"
    strong = [d for d in moved if d.severity >= thresholds.feature_severity]
    if drifts and drift_share >= thresholds.drift_share:
        reasons.append(f"{share_text} >= {thresholds.drift_share:.0%}): {named}")
    elif strong:
        reasons.append(
            f"{share_text}), {len(strong)} of them past {thresholds.feature_severity:g}x a threshold: {named}"
        )
    elif moved:
        notes.append(f"{share_text} < {thresholds.drift_share:.0%}): {named}")
    if score_psi is not None and score_psi > thresholds.score_psi:
        reasons.append(f"score PSI {score_psi:.3f} > {thresholds.score_psi:g} vs the test window")
    elif score_psi is not None:
        notes.append(f"score PSI {score_psi:.3f} <= {thresholds.score_psi:g}")
    return reasons, notes


def _relative_worsening(value: float, reference: float, greater_is_better: bool) -> float:
    """How much worse `value` is than `reference`, relative to |reference| (positive = worse)."""
    worse = (reference - value) if greater_is_better else (value - reference)
    if reference == 0:
        return math.inf if worse > 0 else 0.0
    return worse / abs(reference)
