"""Challenger flows: judge the challenger in shadow on live evidence, and act on the use case's rule.

    gather the evidence (the pairs both current versions scored, joined with the labels that arrived: the
    spec's metrics on the same rows, a paired bootstrap, McNemar) → the rule's verdict → the MLflow run in
    `<use case>-challenger` → promote or retire (compare-and-set; nothing moves when either alias moved) →
    the decision, the report and a Prefect markdown artifact

One flow per discovered use case (`<use case>-challenger`, its typed parameters `CompareParams`), deployed
daily; `mlops compare` runs the same `challenger` flow, so the command and the deployment decide alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.runtime import deployment
from prefect.states import Completed

from champion import store
from flows.form import flows_as_attributes, form_flow
from tasks.challenger.decision import Decision, Verdict, act, judge
from tasks.challenger.evidence import Evidence, gather_evidence
from tasks.challenger.records import close_record, open_record
from tasks.ingest import confine_to_data_roots
from usecases import SPEC_MODULES, default_registered_model
from usecases.params import CompareParams


@dataclass(frozen=True)
class ComparisonOutcome:
    use_case: str
    registered_model: str
    evidence: Evidence
    verdict: Verdict
    decision: Decision
    mlflow_run_id: str

    @property
    def outcome(self) -> str:
        return self.decision.outcome


@flow(name="challenger", validate_parameters=False, log_prints=True)
def challenger(use_case: str, params: CompareParams) -> ComparisonOutcome:
    store.configure()
    name = params.registered_model or default_registered_model(use_case)
    evidence = gather_evidence(use_case, name, params.since, params.labels)
    verdict = judge(evidence)
    run_id = open_record(evidence, verdict, params.labels, params.decide)
    decision = act(evidence, verdict, run_id, params.decide)
    close_record(run_id, evidence, decision)
    print(f"{name}: {decision.outcome}: {decision.reason}")
    return ComparisonOutcome(use_case, name, evidence, verdict, decision, run_id)


def challenger_flow(use_case: str):
    """A `<use case>-challenger` flow whose parameters are the fields of `CompareParams` (its form)."""

    def run(params: CompareParams):
        if params.labels and deployment.id:  # started through a deployment: the data roots apply
            confine_to_data_roots(params.labels)
        outcome = challenger(use_case, params)
        # The state's name is the badge on the run's page: Promoted / Retired / Waiting / Reported.
        d = outcome.decision
        return Completed(name=d.outcome.capitalize(), message=f"{d.outcome}: {d.reason}"[:2000], data=outcome)

    doc = f"Compare the {use_case} challenger with the champion on live pairs; promote or retire it by rule."
    return form_flow(run, CompareParams, f"{use_case}-challenger", doc)


CHALLENGER_FLOWS = {name: challenger_flow(name) for name in SPEC_MODULES}
__getattr__ = flows_as_attributes(CHALLENGER_FLOWS, __name__)  # `<use case>_challenger`
