"""Report: record the run's decision where people look — the MLflow run and the Prefect UI.

The gate report (every gate's value, threshold and verdict) is logged as `gate_report.json` on the MLflow
run and as a markdown artifact `decision-<use case>` in Prefect, together with what happened in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from prefect import runtime
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from champion import store
from champion.promotion import Promotion
from tasks.gate import GateVerdict
from tasks.register import Registration
from tasks.stage import mlflow_stage
from usecases.vocabulary import MODEL_PROMOTED, MODEL_REJECTED, model_resource


@dataclass(frozen=True)
class Decision:
    status: str  # "promoted" | "registered" | "rejected"
    summary: str


def decide(verdict: GateVerdict, registration: Registration | None, promotion: Promotion | None) -> Decision:
    refused = "; ".join(r.detail for r in verdict.refusals)
    if promotion is not None:
        previous = (
            f"previous champion v{promotion.previous}" if promotion.previous else "no previous champion"
        )
        moved = "already champion" if not promotion.moved else previous
        dedupe = " (identical earlier registration reused)" if registration.deduplicated else ""
        return Decision("promoted", f"{promotion.name} v{promotion.version} is champion{dedupe}; {moved}")
    if registration is not None:
        dedupe = " (identical earlier registration reused)" if registration.deduplicated else ""
        reason = f"champion gate refused: {refused}" if refused else "promotion not requested"
        return Decision(
            "registered",
            f"registered {registration.name} v{registration.version}{dedupe}, not promoted: {reason}",
        )
    reason = f"gates refused: {refused}" if refused else "dry run: registration skipped"
    return Decision("rejected", f"not registered: {reason}")


@mlflow_stage
def report(
    use_case: str,
    registered_model: str,
    verdict: GateVerdict,
    registration: Registration | None,
    promotion: Promotion | None,
    metrics: dict[str, float],
    run_id: str,
) -> Decision:
    decision = decide(verdict, registration, promotion)
    client = MlflowClient()
    client.log_dict(
        run_id,
        {
            "status": decision.status,
            "summary": decision.summary,
            "registered_model": registered_model,
            "version": registration.version if registration else None,
            "gates": verdict.as_records(),
        },
        "gate_report.json",
    )
    client.set_tag(run_id, "decision", decision.status)
    client.set_tag(run_id, "decision.summary", decision.summary[:5000])
    client.set_tag(run_id, "mlflow.note.content", _run_description(decision))  # the run's Description
    if registration is not None:
        client.set_tag(run_id, "registered_version", registration.version)
    headline = {"promoted": "Promoted", "registered": "Registered, not promoted", "rejected": "Rejected"}
    metric_rows = "\n".join(f"| {k} | {_number(k, v)} |" for k, v in metrics.items())
    create_markdown_artifact(
        key=f"decision-{use_case}",
        description=f"{registered_model}: {decision.status}",
        markdown=(
            f"# {headline[decision.status]}: {registered_model}\n\n{decision.summary}\n\n"
            f"## Gates\n\n{verdict.to_markdown()}\n\n## Test metrics\n\n| metric | value |\n|---|---|\n"
            f"{metric_rows}\n\nMLflow run: {_run_link(run_id)}\n"
        ),
    )
    event, change = _registry_change(decision, verdict, registration, promotion)
    _emit_decision_event(
        use_case,
        registered_model,
        event,
        {
            **change,
            "registered_model": registered_model,
            "use_case": use_case,
            "status": decision.status,
            "summary": decision.summary,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "gates": verdict.as_records(),
            "mlflow_run_id": run_id,
        },
    )
    return decision


def _run_description(decision: Decision) -> str:
    """The decision in a sentence and the Prefect run it belongs to (linked where a Prefect UI is known)."""
    run = runtime.flow_run
    where = ""
    if run.id:
        name, url = f"{run.flow_name}/{run.name}", run.ui_url
        where = (
            f"\n\nPrefect flow run: [{name}]({url})" if url else f"\n\nPrefect flow run: {name} ({run.id})"
        )
    return f"**{decision.status}**: {decision.summary}{where}"


COUNTS = {"tn", "fp", "fn", "tp"}


def _number(name: str, value: float) -> str:
    """Confusion counts as integers, everything else to four significant digits, NaN as a dash."""
    if value != value:
        return "-"
    return f"{int(value):,}" if name in COUNTS else f"{value:.4g}"


def _run_link(run_id: str) -> str:
    """A link to the run where a tracking server's URL is known; the id otherwise (a local SQLite store)."""
    uri = store.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return f"`{run_id}`"
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id})"


def _registry_change(
    decision: Decision, verdict: GateVerdict, registration: Registration | None, promotion: Promotion | None
) -> tuple[str, dict]:
    """The decision's event and what it says of the registry: the alias move, or the refused gates."""
    if decision.status == "promoted":
        return MODEL_PROMOTED, {
            "version": promotion.version,
            "previous_version": promotion.previous,
            "moved": promotion.moved,
        }
    return MODEL_REJECTED, {
        "version": registration.version if registration else None,
        "refused": [r.name for r in verdict.refusals],
    }


def _emit_decision_event(use_case: str, registered_model: str, event: str, payload: dict) -> None:
    """`mlops.model.promoted` or `mlops.model.rejected`, so consumers (model servers, notifications,
    downstream deployments) can trigger on the registry changing without polling it."""
    emit_event(
        event=event,
        resource={"prefect.resource.id": model_resource(registered_model), "use-case": use_case},
        payload=payload,
    )
