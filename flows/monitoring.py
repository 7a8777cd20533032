"""Monitoring: watch a promoted version on new data, and call for retraining on evidence.

    load the version (@champion unless pinned) → its reference profile (recorded at training, or rebuilt)
    → the new data's window (scoring suite, the same feature path as scoring) → assess (drift, score drift,
    estimated and realised primary metric, verdict) → record (MLflow run in `<use case>-monitoring`, HTML
    report, Prefect table artifact) → alert (`mlops.model.degraded` unless healthy)

One flow per discovered use case (`<use case>-monitoring`, its typed parameters `MonitorParams`), deployed
with the use case's `MONITORING_SCHEDULE`; the training deployment retrains on the alert (debounced), and the
retrained candidate still passes every gate before it can become champion.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.runtime import deployment

from champion import store
from champion.loading import training_params
from flows.form import flows_as_attributes, form_flow
from tasks.ingest import confine_to_data_roots
from tasks.monitoring.reference import reference_profile
from tasks.monitoring.stages import alert, assess, monitoring_window, record_assessment, thresholds_for
from tasks.monitoring.verdict import Assessment
from tasks.score import load_model
from usecases import SPEC_MODULES, default_registered_model, spec_module
from usecases.params import MonitorParams


@dataclass(frozen=True)
class MonitoringOutcome:
    use_case: str
    registered_model: str
    version: str
    profile: str  # "recorded" | "rebuilt"
    assessment: Assessment
    mlflow_run_id: str
    alerted: bool
    since: str

    @property
    def status(self) -> str:
        return self.assessment.verdict.status


@flow(name="monitoring", validate_parameters=False, log_prints=True)
def monitoring(use_case: str, params: MonitorParams) -> MonitoringOutcome:
    if not params.data:
        raise ValueError("no data to monitor: set `data` (a Parquet or CSV file of new records)")
    store.configure()
    name = params.registered_model or default_registered_model(use_case)
    model = load_model(name, params.version, None if params.version else params.alias)
    module = spec_module(use_case)
    trained_with = training_params(
        module, model.name, model.version, model.run_id
    )  # as the version's run recorded them
    spec = module.build_spec(trained_with)  # so its features are built on the path it was trained on
    profile, origin = reference_profile(model, spec, trained_with)
    window = monitoring_window(spec, params.data, params.since)
    assessment = assess(profile, window, model, spec, thresholds_for(spec, params))
    run_id = record_assessment(assessment, profile, window, model, spec, origin)
    alerted = alert(assessment, model, spec, window, run_id)
    return MonitoringOutcome(
        use_case, name, model.version, origin, assessment, run_id, alerted, str(window.since.date())
    )


def monitoring_flow(use_case: str):
    """A `<use case>-monitoring` flow whose parameters are the fields of `MonitorParams` (its form)."""

    def run(params: MonitorParams) -> MonitoringOutcome:
        if params.data and deployment.id:  # started through a deployment: the data roots apply
            confine_to_data_roots(params.data)
        return monitoring(use_case, params)

    doc = f"Watch the {use_case} champion on new data: drift, estimated and realised performance."
    return form_flow(run, MonitorParams, f"{use_case}-monitoring", doc)


MONITORING_FLOWS = {name: monitoring_flow(name) for name in SPEC_MODULES}
__getattr__ = flows_as_attributes(MONITORING_FLOWS, __name__)  # `<use case>_monitoring`
