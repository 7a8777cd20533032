"""Gate: decide from test metrics whether a candidate may be registered and promoted.

Three kinds of gate, all declared in the use case's spec and all recorded with value, threshold and verdict:
- absolute: a test metric must clear a fixed bound (also: the disparity between a slice's groups, when asked);
- baseline: the candidate must beat simple baselines on the same test window, by a relative margin;
- champion: the candidate must not be worse than the current champion re-scored on the same test window, nor
  on the test windows of earlier champions (forgetting, GEM's backward transfer), nor on any well-supported
  group of a slice.
Absolute and baseline gates decide registration; the champion gates additionally decide promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from tasks.stage import stage
from usecases.spec import GateSpec

if TYPE_CHECKING:
    from tasks.compare import Comparison, Window
    from tasks.evaluate import ChampionScore, Evaluation
    from tasks.slices import SliceReport
    from usecases.spec import Metrics


@dataclass(frozen=True)
class GateResult:
    name: str
    kind: str  # "absolute" | "baseline" | "champion" (champion, forgetting and slice gates)
    metric: str
    value: float
    threshold: float
    passed: bool
    detail: str
    # Refused as it stands, but a trade-off a person may approve (forgetting for adapting).
    needs_approval: bool = False


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
    def awaiting_approval(self) -> bool:
        """Registrable, and only refused by trade-offs a person may approve."""
        refusals = self.refusals
        return self.registrable and bool(refusals) and all(r.needs_approval for r in refusals)

    def decided(self, approved: bool, by: str, reason: str) -> GateVerdict:
        """The verdict after a person (or the timeout) decided the trade-offs: passed when approved."""
        word = "approved" if approved else "rejected"
        return GateVerdict(
            tuple(
                replace(
                    r, passed=approved, needs_approval=False, detail=f"{r.detail}; {word} by {by}: {reason}"
                )
                if r.needs_approval
                else r
                for r in self.results
            )
        )

    @property
    def refusals(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def as_records(self) -> list[dict]:
        """JSON-safe records (a missing threshold is null, not NaN)."""
        return [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(r).items()}
            for r in self.results
        ]

    def to_markdown(self) -> str:
        """A table to read at a glance: the value and threshold in columns, the detail only where a gate
        refused or was skipped (a passed gate's detail repeats its columns)."""

        def number(v: float) -> str:
            return "-" if v != v else f"{v:.4g}"

        rows = ["| gate | metric | value | threshold | verdict |", "|---|---|---:|---:|---|"]
        for r in self.results:
            verdict = "passed" if r.passed else f"**refused**: {r.detail}"
            if r.passed and r.value != r.value:  # skipped (no champion yet, too few rows in a slice)
                verdict = f"passed: {r.detail}"
            rows.append(f"| {r.name} | {r.metric} | {number(r.value)} | {number(r.threshold)} | {verdict} |")
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
    champion: ChampionScore | None,
    primary: str,
    greater_is_better: bool,
) -> GateVerdict:
    """Pure decision from already-computed test metrics (candidate, baselines, champion; None: no champion).

    A champion that exists but could not be re-scored (`champion.error`) refuses promotion: replacing a model
    we cannot compare against is a decision for a person (`mlops rollback`/a manual alias move), not a gate.
    """
    return GateVerdict(
        (
            *absolute_gates(spec, metrics),
            *baseline_gates(spec, metrics, baseline_metrics),
            champion_gate(spec, metrics, champion, primary, greater_is_better),
        )
    )


def absolute_gates(spec: GateSpec, metrics: Mapping[str, float]) -> list[GateResult]:
    """Each test metric of `spec.absolute` against its fixed bound (inclusive)."""
    results = []
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
    return results


def baseline_gates(
    spec: GateSpec, metrics: Mapping[str, float], baseline_metrics: Mapping[str, Mapping[str, float]]
) -> list[GateResult]:
    """The candidate against each baseline named in `spec.baseline`: better by the margin (strict)."""
    results = []
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
    return results


def champion_gate(
    spec: GateSpec,
    metrics: Mapping[str, float],
    champion: ChampionScore | None,
    primary: str,
    greater_is_better: bool,
    newest: Window | None = None,
) -> GateResult:
    """The candidate's primary metric at most `spec.champion_margin` worse than the champion's on the same
    rows: the newest window's rows neither trained on (`newest`, from `tasks/compare.py`) when given, else the
    test window. Passed when there is no champion, refused when it could not be re-scored."""
    value = float(metrics[primary]) if newest is None else newest.candidate
    if champion is not None and champion.error is not None:
        detail = f"champion v{champion.version} could not be re-scored: {champion.error}"
        return GateResult("champion", "champion", primary, value, float("nan"), False, detail)
    if champion is None or champion.metrics is None:
        return GateResult("champion", "champion", primary, value, float("nan"), True, "no current champion")
    reference = float(champion.metrics[primary]) if newest is None else newest.champion
    where = "the same test window" if newest is None else f"{newest.label}, {newest.support}, {newest.basis}"
    threshold = _margin_threshold(reference, spec.champion_margin, greater_is_better, better=False)
    ok = _beats(value, threshold, greater_is_better, inclusive=True)
    op = ">=" if greater_is_better else "<="
    return GateResult(
        name="champion",
        kind="champion",
        metric=primary,
        value=value,
        threshold=threshold,
        passed=ok,
        detail=(
            f"{primary} {value:.4g} {'' if ok else 'not '}{op} {threshold:.4g} "
            f"(champion v{champion.version} {reference:.4g} on {where}, margin {spec.champion_margin:.0%})"
        ),
    )


def _change(w: Window, greater_is_better: bool) -> float:
    """(candidate - champion) relative to the champion, sign-adjusted: positive is better."""
    sign = 1.0 if greater_is_better else -1.0
    return sign * (w.candidate - w.champion) / max(abs(w.champion), 1e-12)


def forgetting_gate(
    spec: GateSpec, comparison: Comparison, primary: str, greater_is_better: bool
) -> GateResult:
    """Forgetting or adapting: on the earlier windows (pooled) the candidate may be at most
    `forgetting_margin` worse than the champion (relative). Worse than that, it is a trade-off a person
    decides (`needs_approval`) when it gains more than `adapt_margin` on the newest window, and refused when
    it does not: forgetting without adapting."""
    name = f"forgetting.{primary}"
    earlier, newest = comparison.pooled, comparison.newest
    if earlier is None:
        why = comparison.skipped or "no earlier window with rows neither model trained on"
        return GateResult(name, "champion", primary, float("nan"), float("nan"), True, f"skipped: {why}")
    loss, tolerance = _change(earlier, greater_is_better), -spec.forgetting_margin
    gain = _change(newest, greater_is_better) if newest is not None else float("nan")
    said = (
        f"{earlier.label} ({earlier.support}): candidate {earlier.candidate:.4g} vs champion "
        f"{earlier.champion:.4g}, {loss:+.1%} (tolerance {tolerance:.0%})"
    )
    gained = (
        f"; newest window {gain:+.1%}" if newest is not None else "; no newest window to weigh it against"
    )
    if loss >= tolerance:
        return GateResult(name, "champion", primary, loss, tolerance, True, f"kept: {said}{gained}")
    if gain > spec.adapt_margin:
        detail = f"trade-off, a person decides: {said}{gained} (> {spec.adapt_margin:.0%} adapting)"
        return GateResult(name, "champion", primary, loss, tolerance, False, detail, needs_approval=True)
    detail = f"forgot without adapting: {said}{gained} (not > {spec.adapt_margin:.0%})"
    return GateResult(name, "champion", primary, loss, tolerance, False, detail)


def slice_gates(
    spec: GateSpec, report: SliceReport, primary: str, greater_is_better: bool
) -> list[GateResult]:
    """Per slice: no group with enough support worse than the champion's same group by more than the margin
    (relative); then the disparity between groups, gated only when `slice_min_ratio` > 0."""
    results = []
    for name, groups in report.groups.items():
        worst = None
        for group, entry in groups.items():
            mine, theirs = entry["candidate"].get(primary), (entry.get("champion") or {}).get(primary)
            if theirs is None or not _supported(spec, entry["support"]) or mine is None:
                continue
            threshold = _margin_threshold(theirs, spec.slice_margin, greater_is_better, better=False)
            ok = _beats(mine, threshold, greater_is_better, inclusive=True)
            gap = (mine - theirs) * (1 if greater_is_better else -1) / max(abs(theirs), 1e-12)
            if worst is None or (not ok, -gap) > (not worst[3], -worst[4]):
                worst = (group, mine, threshold, ok, gap, theirs, entry["support"])
        if worst is None:
            why = "no current champion" if report.champion_version is None else "no group with enough support"
            results.append(
                GateResult(
                    f"slice.{name}", "champion", primary, float("nan"), float("nan"), True, f"skipped: {why}"
                )
            )
            continue
        group, mine, threshold, ok, gap, theirs, support = worst
        results.append(
            GateResult(
                name=f"slice.{name}",
                kind="champion",
                metric=primary,
                value=mine,
                threshold=threshold,
                passed=ok,
                detail=(
                    f"worst group {name}={group} ({_support_text(support)}): {primary} {mine:.4g} "
                    f"{'' if ok else 'not '}{'>=' if greater_is_better else '<='} {threshold:.4g} "
                    f"(champion v{report.champion_version} {theirs:.4g} on the same rows, {gap:+.1%}, "
                    f"margin {spec.slice_margin:.0%})"
                ),
            )
        )
    # Gated: the first metric of each slice, recall (equal opportunity) for classifiers; the selection rate
    # beside it is reported only, as it rightly differs where the fraud rate does.
    ratios = [
        (s, m, d)
        for s, per in report.disparity.items()
        for m, d in list(per.items())[:1]
        if not math.isnan(d["ratio"])
    ]
    if ratios:
        s, m, d = min(ratios, key=lambda x: x[2]["ratio"])
        gated = spec.slice_min_ratio > 0
        ok = not gated or d["ratio"] >= spec.slice_min_ratio
        text = (
            f"lowest min/max ratio: {m} across {s} {d['ratio']:.3f} ({d['min_group']} {d['min']:.4g} vs "
            f"{d['max_group']} {d['max']:.4g})"
        )
        results.append(
            GateResult(
                name="disparity",
                kind="absolute",
                metric=m,
                value=d["ratio"],
                threshold=spec.slice_min_ratio if gated else float("nan"),
                passed=ok,
                detail=text
                + (
                    f", {'' if ok else 'not '}>= {spec.slice_min_ratio:.3g}"
                    if gated
                    else "; reported, not gated"
                ),
            )
        )
    return results


def _supported(spec: GateSpec, support: Mapping[str, int]) -> bool:
    positives = support.get("positives")
    return support["rows"] >= spec.slice_min_rows and (
        positives is None or positives >= spec.slice_min_positives
    )


def _support_text(support: Mapping[str, int]) -> str:
    text = f"{support['rows']} rows"
    return text + (f", {support['positives']} positives" if support.get("positives") is not None else "")


@stage
def gate(
    spec: GateSpec,
    metrics: Metrics,
    evaluation: Evaluation,
    champion: ChampionScore,
    comparison: Comparison | None = None,
    slices: SliceReport | None = None,
) -> GateVerdict:
    """Absolute and baseline gates on the candidate's test metrics; the champion gate on the newest window's
    unseen rows (`comparison`; the test window without one); the forgetting gate; the slice gates."""
    primary, greater = metrics.primary, metrics.greater_is_better
    newest = comparison.newest if comparison is not None else None
    results = [
        *absolute_gates(spec, evaluation.candidate.metrics),
        *baseline_gates(spec, evaluation.candidate.metrics, evaluation.baseline_metrics),
        champion_gate(spec, evaluation.candidate.metrics, champion, primary, greater, newest),
    ]
    if comparison is not None:
        results.append(forgetting_gate(spec, comparison, primary, greater))
    if slices is not None:
        gated = slice_gates(spec, slices, primary, greater)
        if comparison is not None and comparison.champion_saw_test:  # in-sample: no fair comparison by group
            why = f"skipped: {comparison.champion_saw_test}"
            gated = [replace(r, passed=True, detail=why) if r.name.startswith("slice.") else r for r in gated]
        results.extend(gated)
    return GateVerdict(tuple(results))
