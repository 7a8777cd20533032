"""Stages: the monitoring flow's steps (`flows/monitoring.py` runs them in order), wiring the statistics to
the data, MLflow and Prefect.

    monitoring_window (the new data as features, the rows to monitor) → assess (drift, estimated and
    realised metrics, verdict) → record_assessment (MLflow run, HTML report, Prefect table) → alert
    (`mlops.model.degraded` unless healthy)

`thresholds_for` resolves the thresholds `assess` uses from the spec and the run's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from prefect import runtime
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event

from champion import store
from tasks.ingest import DataReadError, read_table
from tasks.monitoring.drift import drifted_share, feature_drift, score_drift
from tasks.monitoring.estimate import estimate_performance
from tasks.monitoring.numeric import fmt, jsonable
from tasks.monitoring.report import render_report
from tasks.monitoring.verdict import Assessment, verdict
from tasks.score import check_frame, parse_times
from tasks.stage import mlflow_stage, stage
from usecases.spec import MonitorThresholds
from usecases.vocabulary import MODEL_DEGRADED, model_resource

if TYPE_CHECKING:
    from champion.loading import ScoringModel
    from usecases.params import MonitorParams
    from usecases.spec import UseCaseSpec


@dataclass(frozen=True)
class Window:
    """The new data as features: `table` holds every row (history included, for the features and the test
    filter), `monitored` the rows from `since` on, which are scored and compared."""

    table: pd.DataFrame
    monitored: pd.DataFrame
    since: pd.Timestamp
    source: str


def thresholds_for(spec: UseCaseSpec, params: MonitorParams) -> MonitorThresholds:
    """The spec's thresholds, the primary metric's absolute gate as the floor, and the run's overrides."""
    base = spec.monitoring or MonitorThresholds()
    floors = [g.threshold for g in spec.gates.absolute if g.metric == spec.metrics.primary]
    if base.absolute_minimum is None and floors:
        base = replace(base, absolute_minimum=floors[0])
    overrides = {
        k: getattr(params, k)
        for k in ("psi", "drift_share", "metric_margin", "min_rows")
        if getattr(params, k, None) is not None
    }
    return replace(base, **overrides)


@stage
def monitoring_window(spec: UseCaseSpec, path: str, since: str | None) -> Window:
    """Read and check the new data, build its features on the scoring path, and cut the monitored rows."""
    log = store.run_logger()
    raw = parse_times(read_table(path), spec.time_column)
    raw_suite, feature_suite = spec.scoring_suites
    view = spec.raw_check_view(raw) if spec.raw_check_view else raw
    check_frame(view, raw_suite, "monitoring input, raw", log)
    table = spec.build_features(raw)
    check_frame(table, feature_suite, "monitoring input, features", log)
    times = table[spec.time_column]
    # By default, rows before the feature history's span lack the past their features look back over.
    start = pd.Timestamp(since) if since else times.min() + (spec.feature_history or pd.Timedelta(0))
    monitored = table.loc[times >= start]
    if monitored.empty:
        raise DataReadError(
            f"{path}: no rows on or after {start.date()} to monitor (the data ends {times.max().date()}); "
            "pass --since, or give more history before the window"
        )
    log.info("monitoring %d rows from %s (%d rows in the input)", len(monitored), start.date(), len(raw))
    return Window(table, monitored, start, str(path))


@stage
def assess(
    profile: Mapping[str, Any],
    window: Window,
    model: ScoringModel,
    spec: UseCaseSpec,
    thresholds: MonitorThresholds,
) -> Assessment:
    """Drift, score drift, the metric estimated from scores and realised on labelled rows, and the verdict.

    Metrics are estimated and realised on the population the version's test metrics came from (the use
    case's test filter applied, e.g. fraud leaves out cards already known to be compromised)."""
    monitored = window.monitored
    scores = np.asarray(model.predict(monitored), dtype="float64")
    drifts = feature_drift(profile, monitored, thresholds)
    share = drifted_share(drifts)
    score_psi = score_drift(profile, scores)
    population = spec.test_filter(monitored, window.table) if spec.test_filter else monitored
    population_scores = scores[monitored.index.get_indexer(population.index)]
    estimated = estimate_performance(profile, population_scores)
    labelled = population[spec.target].notna().to_numpy()
    realised = None
    if labelled.sum() >= 1:
        realised = _realised(spec, profile, population[labelled], population_scores[labelled])
    history = _history(spec, profile, population, population_scores, labelled)
    result = verdict(profile, drifts, share, score_psi, estimated, realised, thresholds)
    return Assessment(
        result,
        drifts,
        share,
        score_psi,
        estimated,
        realised,
        len(monitored),
        int(labelled.sum()),
        history,
        scores,
    )


def _realised(
    spec: UseCaseSpec, profile: Mapping[str, Any], frame: pd.DataFrame, scores: np.ndarray
) -> dict[str, float]:
    context = dict(profile.get("metric_context") or {})
    if spec.problem == "binary":
        frame = frame.assign(**{spec.target: frame[spec.target].astype("int64")})
        if frame[spec.target].nunique() < 2:
            return {}  # one class only: ranking metrics are undefined
    try:
        metrics = spec.metrics.compute(frame, scores, context)
    except Exception:  # e.g. a metric needing columns or rows this window lacks
        return {}
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def _history(
    spec: UseCaseSpec,
    profile: Mapping[str, Any],
    population: pd.DataFrame,
    scores: np.ndarray,
    labelled: np.ndarray,
) -> list[dict]:
    """Estimated vs realised primary metric per period (days for short windows, weeks for longer ones)."""
    primary = profile["primary"]
    times = pd.to_datetime(population[spec.time_column])
    span = (times.max() - times.min()).days if len(times) else 0
    freq = "D" if span <= 35 else "W"
    periods = times.dt.to_period(freq).to_numpy()
    out = []
    for period in pd.unique(periods):
        mask = periods == period
        estimated = estimate_performance(profile, scores[mask]).get(primary)
        realised = None
        if labelled[mask].any():
            realised = _realised(spec, profile, population[mask & labelled], scores[mask & labelled]).get(
                primary
            )
        out.append(
            {"period": str(period), "estimated": estimated, "realised": realised, "rows": int(mask.sum())}
        )
    return out


@mlflow_stage
def record_assessment(
    assessment: Assessment,
    profile: Mapping[str, Any],
    window: Window,
    model: ScoringModel,
    spec: UseCaseSpec,
    origin: str,
) -> str:
    """One MLflow run in `<use case>-monitoring` (metrics, the HTML report, the assessment as JSON) and a
    Prefect table artifact with the verdict; returns the MLflow run id."""
    client = MlflowClient()
    experiment = store.experiment_id(f"{spec.name}-monitoring")
    v = assessment.verdict
    run = client.create_run(
        experiment,
        run_name=f"{model.name}-v{model.version}-{window.since.date()}",
        tags={
            "use_case": spec.name,
            "registered_model": model.name,
            "model_version": str(model.version),
            "verdict": v.status,
            "profile": origin,
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            "mlflow.note.content": f"{v.status}: " + "; ".join(v.reasons[:3]),
        },
    )
    run_id = run.info.run_id
    params = [
        Param("data", window.source[:6000]),
        Param("since", str(window.since.date())),
        Param("model", f"{model.name}/{model.version}"),
    ]
    client.log_batch(run_id, metrics=_run_metrics(assessment, profile["primary"]), params=params)
    title = f"{model.name} v{model.version}: {v.status} ({window.since.date()} ..)"
    report = render_report(profile, assessment, window.monitored, title)
    client.log_text(run_id, report, "monitoring_report.html")
    client.log_dict(run_id, _assessment_record(assessment, model, window, origin), "assessment.json")
    client.set_terminated(run_id, "FINISHED")
    create_table_artifact(
        key=f"monitoring-{spec.name}",
        table=_summary_rows(assessment, model, profile["primary"], run_id),
        description=f"{model.name} v{model.version}: {v.status}",
    )
    return run_id


def _run_metrics(assessment: Assessment, primary: str) -> list[Metric]:
    """Per-feature PSI and test statistic, drift share, score PSI, row counts, estimated and realised
    metrics, and the primary metric per period as steps of `<estimated|realised>_<primary>_by_period`."""
    now = int(time.time() * 1000)
    values = {f"drift.{d.feature}": d.psi for d in assessment.drifts}
    values.update({f"drift_test.{d.feature}": d.statistic for d in assessment.drifts})
    values.update(
        drift_share=assessment.drift_share,
        score_drift=assessment.score_psi,
        rows=assessment.rows,
        labelled_rows=assessment.labelled_rows,
    )
    values.update({f"estimated_{k}": val for k, val in assessment.estimated.items() if k != "rows"})
    values.update({f"realised_{k}": val for k, val in (assessment.realised or {}).items()})
    metrics = [
        Metric(k, float(val), now, 0) for k, val in values.items() if val is not None and np.isfinite(val)
    ]
    for i, point in enumerate(assessment.history):
        for kind in ("estimated", "realised"):
            if point[kind] is not None and np.isfinite(point[kind]):
                metrics.append(Metric(f"{kind}_{primary}_by_period", float(point[kind]), now, i))
    return metrics


def _summary_rows(assessment: Assessment, model: ScoringModel, primary: str, run_id: str) -> list[dict]:
    v = assessment.verdict
    return [
        {"what": "verdict", "value": v.status},
        {"what": "model", "value": f"{model.name} v{model.version}"},
        {"what": "rows (labelled)", "value": f"{assessment.rows:,} ({assessment.labelled_rows:,})"},
        {"what": f"test {primary}", "value": fmt(v.test_value)},
        {"what": f"estimated {primary}", "value": fmt(v.estimated_value)},
        {"what": f"realised {primary}", "value": fmt(v.realised_value)},
        {"what": "drifted features", "value": ", ".join(assessment.drifted) or "none"},
        {"what": "score PSI", "value": fmt(assessment.score_psi, 3)},
        *({"what": "reason", "value": r} for r in v.reasons),
        {"what": "MLflow run", "value": run_id},
    ]


def _assessment_record(assessment: Assessment, model: ScoringModel, window: Window, origin: str) -> dict:
    return jsonable(
        {
            "registered_model": model.name,
            "version": str(model.version),
            "data": window.source,
            "since": str(window.since.date()),
            "profile": origin,
            "verdict": assessment.verdict.to_dict(),
            "drift_share": assessment.drift_share,
            "score_psi": assessment.score_psi,
            "estimated": assessment.estimated,
            "realised": assessment.realised,
            "rows": assessment.rows,
            "labelled_rows": assessment.labelled_rows,
            "features": [d.to_dict() for d in assessment.drifts],
            "history": assessment.history,
        }
    )


@stage
def alert(
    assessment: Assessment, model: ScoringModel, spec: UseCaseSpec, window: Window, run_id: str
) -> bool:
    """`mlops.model.degraded` when the verdict is not healthy: the training deployment's trigger retrains on
    it (debounced), so retraining starts on evidence and the retrained candidate still meets every gate."""
    if assessment.verdict.status == "healthy":
        return False
    v = assessment.verdict
    emit_event(
        event=MODEL_DEGRADED,
        resource={
            "prefect.resource.id": model_resource(model.name),
            "mlops.use-case": spec.name,
        },
        payload={
            "use_case": spec.name,
            "registered_model": model.name,
            "version": str(model.version),
            "verdict": v.status,
            "reasons": v.reasons[:10],
            "drifted_features": assessment.drifted,
            "estimated": v.estimated_value,
            "realised": v.realised_value,
            "primary": v.primary,
            "data": window.source,
            "mlflow_run_id": run_id,
        },
    )
    return True
