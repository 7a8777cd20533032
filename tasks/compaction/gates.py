"""Gates and choice: what a compact candidate must keep of its teacher, and which candidate is chosen.

On the teacher's test window the primary metric must keep `CompactGates.min_ratio` of the teacher's
(direction-aware), the teacher's absolute gates still hold, the artifact may not grow and, when asked,
single-row latency may not either. The smallest candidate that passes is chosen (then the faster). At
registration one more gate: the teacher must still be champion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from champion.store import run_logger
from tasks.compaction.measure import Measured
from tasks.gate import GateResult, GateVerdict, evaluate_gates
from tasks.stage import stage
from usecases.spec import GateSpec

if TYPE_CHECKING:
    from tasks.compaction.teacher import Teacher
    from usecases.spec import AbsoluteGate, CompactGates, Metrics


@dataclass(frozen=True)
class Judgement:
    """The teacher's and every candidate's measurements, each candidate's verdict, and the one chosen."""

    teacher_measured: Measured
    judged: list[tuple[Measured, GateVerdict]]
    chosen: int | None  # index into `judged`; None when no candidate passed
    primary: str  # the primary metric's name

    @property
    def verdict(self) -> GateVerdict | None:
        """The chosen candidate's verdict."""
        return None if self.chosen is None else self.judged[self.chosen][1]

    def with_verdict(self, verdict: GateVerdict) -> Judgement:
        """The chosen candidate's verdict replaced (by one with the teacher gate, at registration)."""
        judged = list(self.judged)
        judged[self.chosen] = (judged[self.chosen][0], verdict)
        return replace(self, judged=judged)


def quality_threshold(teacher: float, min_ratio: float, greater_is_better: bool) -> float:
    """Higher-is-better: at least min_ratio x the teacher's; lower-is-better: at most teacher / min_ratio."""
    return teacher * min_ratio if greater_is_better else teacher / min_ratio


def judge(
    gates: CompactGates,
    absolute: Sequence[AbsoluteGate],
    primary: str,
    greater_is_better: bool,
    teacher: Measured,
    candidate: Measured,
) -> GateVerdict:
    """Pure: the compact gates and the teacher's absolute gates for one candidate."""
    value, reference = candidate.primary, teacher.primary
    threshold = quality_threshold(reference, gates.min_ratio, greater_is_better)
    ok = not math.isnan(value) and (value >= threshold if greater_is_better else value <= threshold)
    op = ">=" if greater_is_better else "<="
    results = [
        GateResult(
            f"compact.quality.{primary}",
            "compact",
            primary,
            value,
            threshold,
            ok,
            f"{primary} {value:#.4g} {'' if ok else 'not '}{op} {threshold:#.4g} "
            f"({candidate.ratio:.3f} x the teacher's {reference:#.4g}; min ratio {gates.min_ratio:g})",
        )
    ]
    absolute_only = evaluate_gates(
        GateSpec(absolute=tuple(absolute)), candidate.metrics, {}, None, primary, True
    )
    results += [r for r in absolute_only.results if r.kind == "absolute"]
    results.append(_size_gate(gates, teacher, candidate))
    if gates.max_latency_ratio is not None:
        results.append(_latency_gate(gates.max_latency_ratio, teacher, candidate))
    return GateVerdict(tuple(results))


def _size_gate(gates: CompactGates, teacher: Measured, candidate: Measured) -> GateResult:
    size_limit = teacher.size_kb * gates.max_size_ratio
    ok = candidate.size_kb <= size_limit
    return GateResult(
        "compact.size_kb",
        "compact",
        "size_kb",
        candidate.size_kb,
        size_limit,
        ok,
        f"{candidate.size_kb:.1f} KB {'' if ok else 'not '}<= {size_limit:.1f} KB "
        f"({candidate.size_kb / teacher.size_kb:.2f} x the teacher's {teacher.size_kb:.1f} KB)",
    )


def _latency_gate(max_ratio: float, teacher: Measured, candidate: Measured) -> GateResult:
    limit = teacher.p50_us * max_ratio
    ok = candidate.p50_us <= limit
    return GateResult(
        "compact.latency_p50_us",
        "compact",
        "latency_p50_us",
        candidate.p50_us,
        limit,
        ok,
        f"p50 {candidate.p50_us:.0f} us {'' if ok else 'not '}<= {limit:.0f} us "
        f"({candidate.p50_us / teacher.p50_us:.2f} x the teacher's {teacher.p50_us:.0f} us)",
    )


def pick(judged: Sequence[tuple[Measured, GateVerdict]]) -> int | None:
    """Index of the smallest candidate whose gates all passed (then the faster), or None."""
    passing = [i for i, (_, verdict) in enumerate(judged) if verdict.registrable]
    if not passing:
        return None
    return min(passing, key=lambda i: (judged[i][0].size_kb, judged[i][0].p50_us))


@stage
def gate_candidates(
    gates: CompactGates,
    teacher_gates: GateSpec,
    metrics_spec: Metrics,
    teacher: Measured,
    measured: Sequence[Measured],
) -> Judgement:
    """Every candidate judged, and the one chosen, if any passed."""
    primary, greater = metrics_spec.primary, metrics_spec.greater_is_better
    judged = [(m, judge(gates, teacher_gates.absolute, primary, greater, teacher, m)) for m in measured]
    log = run_logger()
    for m, verdict in judged:
        log.info(
            "%s: %s %.4g (%.3f x teacher), %.1f KB, p50 %.0f us: %s",
            m.label,
            primary,
            m.primary,
            m.ratio,
            m.size_kb,
            m.p50_us,
            "passed" if verdict.registrable else "; ".join(r.detail for r in verdict.refusals),
        )
    return Judgement(teacher, judged, pick(judged), primary)


def teacher_gate(teacher: Teacher, champion: str | None) -> GateResult:
    """A compact model may stand in for its teacher only while the teacher is the champion."""
    ok = champion == teacher.version
    return GateResult(
        "teacher.champion",
        "champion",
        "teacher",
        float(teacher.version),
        float(champion or "nan"),
        ok,
        f"teacher {teacher.name} v{teacher.version} "
        + ("is champion" if ok else f"is not champion ({teacher.name}@champion: {champion or 'none'})"),
    )
