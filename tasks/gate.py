"""Gate: decide from test metrics whether a candidate may be registered and promoted.

Three kinds of gate, all declared in the use case's spec and all recorded with value, threshold and verdict:
- absolute: a test metric must clear a fixed bound;
- baseline: the candidate must beat simple baselines on the same test window, by a relative margin;
- champion: the candidate must not be worse than the current champion re-scored on the same test window.
Absolute and baseline gates decide registration; the champion gate additionally decides promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from tasks.stage import stage

if TYPE_CHECKING:
    from tasks.evaluate import ChampionScore, Evaluation
    from usecases.spec import Metrics


@dataclass(frozen=True)
class AbsoluteGate:
    metric: str
    threshold: float
    greater_is_better: bool = True


@dataclass(frozen=True)
class BaselineGate:
    """The candidate's `metric` must beat each named baseline's by `relative_margin` (0.05 = 5 % better)."""

    metric: str
    baselines: tuple[str, ...]
    greater_is_better: bool = True
    relative_margin: float = 0.0


@dataclass(frozen=True)
class GateSpec:
    absolute: tuple[AbsoluteGate, ...] = ()
    baseline: tuple[BaselineGate, ...] = ()
    # Champion gate on the primary metric: the candidate may be at most this much worse (relative).
    champion_margin: float = 0.0


@dataclass(frozen=True)
class GateResult:
    name: str
    kind: str  # "absolute" | "baseline" | "champion"
    metric: str
    value: float
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateVerdict:
    results: tuple[GateResult, ...] = field(default_factory=tuple)

    @property
    def registrable(self) -> bool:
        return all(r.passed for r in self.results if r.kind != "champion")

    @property
    def promotable(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def refusals(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def as_records(self) -> list[dict]:
        """JSON-safe records (a missing threshold is null, not NaN)."""
        return [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(r).items()}
            for r in self.results
        ]

    def as_tags(self) -> dict[str, str]:
        """One tag per gate, e.g. `gate.baseline.average_precision.baseline = passed: ...`."""
        return {f"gate.{r.name}": f"{'passed' if r.passed else 'refused'}: {r.detail}" for r in self.results}

    def to_markdown(self) -> str:
        rows = ["| gate | metric | value | threshold | verdict |", "|---|---|---|---|---|"]
        for r in self.results:
            rows.append(
                f"| {r.name} | {r.metric} | {r.value:.4g} | {r.threshold:.4g} | "
                f"{'passed' if r.passed else '**refused**'} |"
            )
        return "\n".join(rows)


def _beats(value: float, threshold: float, greater_is_better: bool, inclusive: bool) -> bool:
    if math.isnan(value):
        return False
    if greater_is_better:
        return value >= threshold if inclusive else value > threshold
    return value <= threshold if inclusive else value < threshold


def _margin_threshold(reference: float, margin: float, greater_is_better: bool, better: bool) -> float:
    """The value the candidate must reach: `margin` better (or, for the champion, at most worse) than
    `reference`, relative to its magnitude."""
    sign = 1.0 if greater_is_better == better else -1.0
    return reference + sign * margin * abs(reference)


def evaluate_gates(
    spec: GateSpec,
    metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, Mapping[str, float]],
    champion_metrics: Mapping[str, float] | None,
    primary: str,
    greater_is_better: bool,
    champion_version: str | None = None,
    champion_error: str | None = None,
) -> GateVerdict:
    """Pure decision from already-computed test metrics (candidate, baselines, champion).

    A champion that exists but could not be re-scored (`champion_error`) refuses promotion: replacing a model
    we cannot compare against is a decision for a person (`mlops rollback`/a manual alias move), not a gate.
    """
    results: list[GateResult] = []
    for g in spec.absolute:
        value = float(metrics[g.metric])
        ok = _beats(value, g.threshold, g.greater_is_better, inclusive=True)
        op = ">=" if g.greater_is_better else "<="
        results.append(
            GateResult(
                name=f"absolute.{g.metric}",
                kind="absolute",
                metric=g.metric,
                value=value,
                threshold=g.threshold,
                passed=ok,
                detail=f"{g.metric} {value:.4g} {'' if ok else 'not '}{op} {g.threshold:.4g}",
            )
        )
    for g in spec.baseline:
        value = float(metrics[g.metric])
        for name in g.baselines:
            reference = float(baseline_metrics[name][g.metric])
            threshold = _margin_threshold(reference, g.relative_margin, g.greater_is_better, better=True)
            ok = _beats(value, threshold, g.greater_is_better, inclusive=False)
            op = ">" if g.greater_is_better else "<"
            results.append(
                GateResult(
                    name=f"baseline.{g.metric}.{name}",
                    kind="baseline",
                    metric=g.metric,
                    value=value,
                    threshold=threshold,
                    passed=ok,
                    detail=(
                        f"{g.metric} {value:.4g} {'' if ok else 'not '}{op} {threshold:.4g} "
                        f"({name} {reference:.4g}, margin {g.relative_margin:.0%})"
                    ),
                )
            )
    if champion_error is not None:
        results.append(
            GateResult(
                name="champion",
                kind="champion",
                metric=primary,
                value=float(metrics[primary]),
                threshold=float("nan"),
                passed=False,
                detail=f"champion v{champion_version} could not be re-scored: {champion_error}",
            )
        )
    elif champion_metrics is None:
        results.append(
            GateResult(
                name="champion",
                kind="champion",
                metric=primary,
                value=float(metrics[primary]),
                threshold=float("nan"),
                passed=True,
                detail="no current champion",
            )
        )
    else:
        reference = float(champion_metrics[primary])
        value = float(metrics[primary])
        threshold = _margin_threshold(reference, spec.champion_margin, greater_is_better, better=False)
        ok = _beats(value, threshold, greater_is_better, inclusive=True)
        op = ">=" if greater_is_better else "<="
        results.append(
            GateResult(
                name="champion",
                kind="champion",
                metric=primary,
                value=value,
                threshold=threshold,
                passed=ok,
                detail=(
                    f"{primary} {value:.4g} {'' if ok else 'not '}{op} {threshold:.4g} "
                    f"(champion v{champion_version} {reference:.4g} on the same test window, "
                    f"margin {spec.champion_margin:.0%})"
                ),
            )
        )
    return GateVerdict(tuple(results))


@stage
def gate(spec: GateSpec, metrics: Metrics, evaluation: Evaluation, champion: ChampionScore) -> GateVerdict:
    """The pure decision (`evaluate_gates`) on this run's evaluation and the re-scored champion."""
    return evaluate_gates(
        spec,
        evaluation.candidate.metrics,
        evaluation.baseline_metrics,
        champion.metrics,
        metrics.primary,
        metrics.greater_is_better,
        champion.version,
        champion.error,
    )
