"""Compaction: a compact stand-in for a registered model, for small devices and fast single-row serving.

    load the teacher version (@champion unless pinned) → rebuild its windows from its recorded data
    → candidates (distilled students, cut and depth-pruned teachers) → measure on the teacher's test window
    → gate → the smallest that passes → compile it (TL2cgen) → [champion lock of `<name>-compact`: register
    → promote, only while the teacher is champion] → report

One MLflow run per flow run (experiment `<use case>-compaction`) records the teacher, the gates, every
candidate's measurements and verdict (`compact_report.json`) and, for the chosen one, its monitoring profile.
Nothing is registered unless a candidate passes every gate; `<name>-compact@champion` moves only as a
compare-and-set under its own champion lock, like the teacher's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from mlflow import MlflowClient
from prefect import flow

from champion.loading import training_params
from champion.lock import champion_lock
from champion.promotion import Promotion, current_champion, mark_not_promoted, promote
from tasks import tracking
from tasks.compact import (
    CompactDecision,
    CompactGates,
    CompactPlan,
    Measured,
    Teacher,
    build_candidates,
    compact_name,
    compile_compact,
    gate_candidates,
    load_teacher,
    measure,
    model_card,
    rebuild_windows,
    report_compaction,
    scratch_dir,
    start_run,
    teacher_gate,
    version_tags,
    with_compiled,
)
from tasks.evaluate import Evaluation
from tasks.gate import GateVerdict
from tasks.profile import record_profile
from tasks.register import Registration, log_candidate, register
from usecases import SPEC_MODULES, default_registered_model, spec_module


@dataclass(frozen=True)
class CompactionOutcome:
    use_case: str
    teacher: str  # "<name>/<version>"
    registered_model: str
    run_id: str
    primary_metric: str
    teacher_measured: Measured
    judged: list  # [(Measured, GateVerdict)] per candidate
    chosen: int | None
    compiled: dict | None  # the compiled library's platform.json
    verdict: GateVerdict | None  # the chosen candidate's gates and the teacher gate
    registration: Registration | None
    promotion: Promotion | None
    decision: CompactDecision
    teacher_model: Teacher | None = None  # the boosters, for benchmarks and notebooks
    candidates: tuple = ()

    @property
    def promoted(self) -> bool:
        return self.promotion is not None


@flow(name="compaction", validate_parameters=False, log_prints=True)
def compaction(
    use_case: str,
    version: str | None = None,
    alias: str | None = None,
    registered_model: str | None = None,
    gates: CompactGates | None = None,
    plan: CompactPlan | None = None,
    dry_run: bool = False,
) -> CompactionOutcome:
    gates, plan = gates or CompactGates(), plan or CompactPlan()
    tracking.configure()
    teacher = load_teacher(registered_model or default_registered_model(use_case), version, alias)
    module = spec_module(use_case)
    params = training_params(module, teacher.run_id)  # the teacher's own: same data, features, windows
    spec = module.build_spec(params)
    name = compact_name(teacher.name)
    run_id = start_run(use_case, teacher, name, gates, plan)
    status, scratch = "FAILED", scratch_dir()
    try:
        splits = rebuild_windows(spec, params, teacher)
        candidates = build_candidates(teacher, splits, spec.schema, plan)
        teacher_m, measured = measure(teacher, candidates, splits, spec.metrics, plan.latency_calls)
        judged, chosen = gate_candidates(gates, spec.gates, spec.metrics, teacher_m, measured)

        compiled = verdict = registration = promotion = None
        if chosen is not None:
            candidate, (m, verdict) = candidates[chosen], judged[chosen]
            if plan.compile:
                compiled = compile_compact(candidate, splits, scratch / "compiled", plan.latency_calls)
            record_profile(spec, splits, Evaluation(m.scored, {}), run_id)  # what monitoring compares with
            if not dry_run:
                logged = log_candidate(candidate, splits.test.head(5), run_id)
                with_compiled(logged, compiled)
                card = model_card(teacher, spec, splits, teacher_m, judged, chosen, compiled, name)
                verdict, registration, promotion = _register_and_promote(
                    name, teacher, logged, candidate, m, verdict, compiled, card, run_id
                )
            judged[chosen] = (m, verdict)

        decision = report_compaction(
            use_case, name, teacher, teacher_m, judged, chosen, verdict, registration, promotion, compiled,
            spec.metrics.primary, dry_run, run_id,
        )  # fmt: skip
        status = "FINISHED"
        return CompactionOutcome(
            use_case=use_case,
            teacher=f"{teacher.name}/{teacher.version}",
            registered_model=name,
            run_id=run_id,
            primary_metric=spec.metrics.primary,
            teacher_measured=teacher_m,
            judged=judged,
            chosen=chosen,
            compiled=compiled.meta if compiled else None,
            verdict=verdict,
            registration=registration,
            promotion=promotion,
            decision=decision,
            teacher_model=teacher,
            candidates=tuple(candidates),
        )
    finally:
        MlflowClient().set_terminated(run_id, status)
        shutil.rmtree(scratch, ignore_errors=True)


def _register_and_promote(name, teacher, logged, candidate, m, verdict, compiled, card, run_id):
    """Register the chosen candidate and move `<name>@champion` to it, under the compact model's champion
    lock. It stands in for its teacher, so it may become champion only while the teacher is."""
    with champion_lock(name, holder=f"compaction run {run_id}"):
        client = MlflowClient()
        verdict = GateVerdict(
            (*verdict.results, teacher_gate(teacher, current_champion(client, teacher.name)))
        )
        registration = register(
            logged,
            name,
            f"Compact stand-in for {teacher.name}, same input and output: distilled from, cut or pruned out "
            "of its champion and gated on the champion's test window; each version's card says which.",
            card,
            version_tags(teacher, run_id, m, verdict, compiled, candidate),
            run_id,
        )
        champion = current_champion(client, name)
        if not verdict.promotable:
            if champion != registration.version:
                reason = "; ".join(r.detail for r in verdict.refusals)
                mark_not_promoted(name, registration.version, "refused", reason)
            return verdict, registration, None
        try:
            return verdict, registration, promote(name, registration.version, champion, run_id)
        except Exception as exc:
            mark_not_promoted(name, registration.version, "failed", f"{type(exc).__name__}: {exc}")
            raise


def compaction_flow(use_case: str):
    """A `<use case>-compaction` flow: the deployment's form (gates and plan with their defaults)."""

    def run(
        version: str | None = None,
        alias: str = "champion",
        gates: CompactGates = CompactGates(),  # noqa: B008 - frozen dataclasses
        plan: CompactPlan = CompactPlan(),  # noqa: B008
        dry_run: bool = False,
    ) -> CompactionOutcome:
        return compaction(use_case, version, None if version else alias, None, gates, plan, dry_run)

    run.__doc__ = (
        f"Distil, prune and compile the {use_case} champion (or `version`) into `<name>-compact`; register "
        "and promote it when it keeps the teacher's quality."
    )
    return flow(run, name=f"{use_case}-compaction")


COMPACTION_FLOWS = {name: compaction_flow(name) for name in SPEC_MODULES}
globals().update({f"{name}_compaction": f for name, f in COMPACTION_FLOWS.items()})
