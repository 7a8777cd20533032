"""Compaction: a compact stand-in for a registered model, for small devices and fast single-row serving.

    load the teacher version (@champion unless pinned) → rebuild its windows from its recorded data
    → candidates (distilled students, cut and depth-pruned teachers) → measure on the teacher's test window
    → gate → the smallest that passes → compile it (TL2cgen) → [champion lock of `<name>-compact`: register
    → promote, only while the teacher is champion] → report

One MLflow run per flow run (experiment `<use case>-compaction`) records the teacher, the gates, every
candidate's measurements and verdict (`compact_report.json`) and, for the chosen one, its monitoring profile.
Nothing is registered unless a candidate passes every gate; `<name>-compact@champion` moves only as a
compare-and-set under its own champion lock, like the teacher's. The stages are in `tasks/compaction/`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from mlflow import MlflowClient
from prefect import flow

from champion import store
from champion.loading import training_params
from champion.lock import champion_lock
from champion.promotion import Promotion, current_champion
from flows.form import flows_as_attributes
from tasks.compaction.candidates import CompactCandidate, build_candidates
from tasks.compaction.compile import Compiled, compile_compact, scratch_dir
from tasks.compaction.gates import Judgement, gate_candidates, teacher_gate
from tasks.compaction.measure import Measured, measure
from tasks.compaction.records import (
    CompactDecision,
    CompactionRun,
    model_card,
    model_description,
    report_compaction,
    start_run,
    version_tags,
    with_compiled,
)
from tasks.compaction.teacher import Teacher, load_teacher, rebuild_windows
from tasks.evaluate import Evaluation
from tasks.gate import GateVerdict
from tasks.monitoring.reference import record_profile
from tasks.promote import promote_or_refuse
from tasks.register import LoggedCandidate, Registration, log_candidate, register
from usecases import SPEC_MODULES, default_registered_model, spec_module
from usecases.spec import CompactGates, CompactPlan


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
    store.configure()
    teacher = load_teacher(registered_model or default_registered_model(use_case), version, alias)
    module = spec_module(use_case)
    # the teacher's own parameters: same data, features, windows
    params = training_params(module, teacher.name, teacher.version, teacher.run_id)
    spec = module.build_spec(params)
    run = start_run(use_case, teacher, gates, plan)
    status, scratch = "FAILED", scratch_dir()
    try:
        splits = rebuild_windows(spec, params, teacher)
        candidates = build_candidates(teacher, splits, spec.schema, plan)
        teacher_m, measured = measure(teacher, candidates, splits, spec.metrics, plan.latency_calls)
        judgement = gate_candidates(gates, spec.gates, spec.metrics, teacher_m, measured)

        compiled = registration = promotion = None
        if judgement.chosen is not None:
            candidate, (m, _) = candidates[judgement.chosen], judgement.judged[judgement.chosen]
            if plan.compile:
                compiled = compile_compact(candidate, splits, scratch / "compiled", plan.latency_calls)
            # what monitoring compares the compact model's inputs and scores with
            record_profile(spec, splits, Evaluation(m.scored, {}), run.run_id)
            if not dry_run:
                logged = log_candidate(candidate, splits.test.head(5), run.run_id)
                with_compiled(logged, compiled)
                card = model_card(run, splits, judgement, compiled)
                judgement, registration, promotion = _register_and_promote(
                    run, judgement, logged, candidate, compiled, card
                )

        decision = report_compaction(run, judgement, compiled, registration, promotion, dry_run)
        status = "FINISHED"
        return CompactionOutcome(
            use_case=use_case,
            teacher=f"{teacher.name}/{teacher.version}",
            registered_model=run.name,
            run_id=run.run_id,
            primary_metric=spec.metrics.primary,
            teacher_measured=judgement.teacher_measured,
            judged=judgement.judged,
            chosen=judgement.chosen,
            compiled=compiled.meta if compiled else None,
            verdict=judgement.verdict,
            registration=registration,
            promotion=promotion,
            decision=decision,
            teacher_model=teacher,
            candidates=tuple(candidates),
        )
    finally:
        MlflowClient().set_terminated(run.run_id, status)
        shutil.rmtree(scratch, ignore_errors=True)


def _register_and_promote(
    run: CompactionRun,
    judgement: Judgement,
    logged: LoggedCandidate,
    candidate: CompactCandidate,
    compiled: Compiled | None,
    card: str,
) -> tuple[Judgement, Registration, Promotion | None]:
    """Register the chosen candidate and move `<name>@champion` to it, under the compact model's champion
    lock. It stands in for its teacher, so it may become champion only while the teacher is: the teacher
    gate joins the chosen candidate's verdict."""
    with champion_lock(run.name, holder=f"compaction run {run.run_id}"):
        client = MlflowClient()
        teacher_is_champion = teacher_gate(run.teacher, current_champion(client, run.teacher.name))
        judgement = judgement.with_verdict(GateVerdict((*judgement.verdict.results, teacher_is_champion)))
        tags = version_tags(run, judgement, candidate, compiled)
        registration = register(logged, run.name, model_description(run.teacher), card, tags, run.run_id)
        champion = current_champion(client, run.name)
        promotion = promote_or_refuse(run.name, registration.version, judgement.verdict, champion, run.run_id)
        return judgement, registration, promotion


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
__getattr__ = flows_as_attributes(COMPACTION_FLOWS, __name__)  # `<use case>_compaction`
