"""`mlops approve USE_CASE --run RUN [--reject] --reason TEXT`: answer a training run that waits for a person.

A true trade-off (a large gain on the newest window, a loss beyond tolerance on earlier ones) pauses its flow
run on the Prefect server until someone approves or rejects it (tasks/approval.py). This sends that answer,
as the Resume form in the Prefect UI does; the run then records it on the version and its MLflow run, and
promotes (approve) or refuses (reject).

Exit codes: 0 the answer was sent; 2 bad input (unknown use case, an empty reason, no Prefect server, a run
that is unknown, not paused, paused for something else, of another use case, or whose pause has expired);
1 anything else.
"""

from __future__ import annotations

import json
import uuid

import typer
from rich.console import Console

from champion import store
from cli.run import require_use_case
from cli.servers import reflow, require_prefect_server
from usecases.vocabulary import APPROVAL_FLOW_RUN_TAG, FLOW_RUN_TAG

# Imports inside functions: each command loads only what it uses, so `mlops --help` and the light commands
# start fast, and Prefect is imported only after `use_prefect_server()` has chosen its API.

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
console = Console(soft_wrap=True)


class Refused(Exception):
    """The answer cannot go to this run; the message says why (exit 2)."""


def approve(
    use_case: str = typer.Argument(..., help="Use case, e.g. fraud."),
    run: str = typer.Option(
        ...,
        "--run",
        metavar="RUN",
        help="The paused run: its Prefect flow run id (the run's page in the Prefect UI), or its MLflow run "
        "id (the `prefect.flow_run_id` tag leads to the flow run).",
    ),
    reject: bool = typer.Option(False, "--reject", help="Refuse the candidate (default: approve it)."),
    reason: str = typer.Option(
        ..., "--reason", help="Why; recorded on the model version and its MLflow run."
    ),
) -> None:
    """Approve (or --reject) a candidate whose training run waits for a person: a true trade-off between the
    newest window and earlier ones. Sends the answer the run's Resume form in the Prefect UI takes; approve
    promotes, reject refuses; both are recorded on the version and the run.

    Exit 0 sent; 2 unknown use case, empty reason, no Prefect server, or a run that is unknown, not paused,
    not waiting for an approval, of another use case, or past its deadline; 1 anything else.
    """
    require_use_case(use_case)
    if not reason.strip():
        console.print("[bold red]input rejected[/]: --reason is empty; say why, it is recorded")
        raise typer.Exit(EXIT_BAD_INPUT)
    require_prefect_server()  # exits 2 when there is none, or it refuses this client
    store.configure()
    answer = {
        "approve": not reject,
        "reason": reason.strip(),
        "decided_by": f"mlops approve ({store.user()})",
    }
    try:
        flow_run_id = _flow_run_id(run)
        waiting = _version_waiting(flow_run_id, use_case)
        _send(flow_run_id, answer)
    except Refused as exc:
        console.print(f"[bold red]not sent[/]: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        console.print(f"[bold red]approve failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    verb = "rejected" if reject else "approved"
    console.print(
        f"[bold green]sent[/]: {verb} {waiting} (flow run {flow_run_id}), reason: {answer['reason']!r}, "
        f"by {answer['decided_by']}; the run resumes within seconds and records it"
    )


def _flow_run_id(run: str) -> str:
    """RUN as a Prefect flow run id: itself when the server knows it, else the one its MLflow run names."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        as_uuid = uuid.UUID(run.strip())
    except ValueError:
        as_uuid = None
    if as_uuid is not None:
        with get_client(sync_client=True) as client:
            try:
                return str(client.read_flow_run(as_uuid).id)
            except ObjectNotFound:
                pass  # perhaps an MLflow run id (32 hex digits read as a UUID too)
    try:
        tags = MlflowClient().get_run(run.strip()).data.tags
    except MlflowException:
        raise Refused(
            f"unknown run {run!r}: neither a Prefect flow run nor an MLflow run has this id"
        ) from None
    named = tags.get(APPROVAL_FLOW_RUN_TAG) or tags.get(FLOW_RUN_TAG)
    if not named:
        raise Refused(
            f"MLflow run {run} names no Prefect flow run (no tag {FLOW_RUN_TAG}): nothing waits on it"
        )
    return named


def _version_waiting(flow_run_id: str, use_case: str) -> str:
    """The version the flow run asks about (`NAME vN`), refused when it belongs to another use case."""
    from mlflow import MlflowClient

    found = MlflowClient().search_model_versions(f"tags.`{APPROVAL_FLOW_RUN_TAG}` = '{flow_run_id}'")
    for version in found:
        other = version.tags.get("use_case")
        if other and other != use_case:
            raise Refused(
                f"flow run {flow_run_id} asks about {version.name} v{version.version}, a {other} model, "
                f"not {use_case}: `mlops approve {other} --run {flow_run_id} ...`"
            )
    return ", ".join(f"{v.name} v{v.version}" for v in found) or "the candidate"


def _send(flow_run_id: str, answer: dict) -> None:
    """Resume the paused flow run with `answer`, after checking it waits for exactly this input."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(uuid.UUID(flow_run_id))
        state = flow_run.state
        if state is None or not state.is_paused():
            what = state.name if state is not None else "without a state"
            raise Refused(f"flow run {flow_run_id} ({flow_run.name}) is {what}, not paused: nothing waits")
        keyset = state.state_details.run_input_keyset
        fields = _form_fields(client, flow_run.id, keyset)
        if fields is None or not set(answer) <= fields:
            raise Refused(
                f"flow run {flow_run_id} ({flow_run.name}) is paused, but not for an approval "
                f"(it waits for {sorted(fields) if fields else 'no input'}): resume it in the Prefect UI"
            )
        result = client.resume_flow_run(flow_run.id, run_input=answer)
    if result.status == SetStateStatus.ACCEPT:
        return
    if result.state is not None and result.state.is_failed():
        raise Refused(
            f"flow run {flow_run_id} waited past its deadline: the candidate was refused (timed out)"
        )
    reason = getattr(result.details, "reason", None) or result.status.value
    raise Refused(f"the Prefect server did not resume flow run {flow_run_id}: {reason}")


def _form_fields(client, flow_run_id: uuid.UUID, keyset: dict | None) -> set[str] | None:
    """The fields of the input a paused run waits for (the schema it saved); None when it waits for none."""
    from prefect.exceptions import PrefectHTTPStatusError

    if not keyset or "schema" not in keyset:
        return None
    try:
        schema = json.loads(client.read_flow_run_input(flow_run_id, keyset["schema"]))
    except PrefectHTTPStatusError:
        return None
    if isinstance(schema, str):  # stored JSON-encoded once more by some clients
        schema = json.loads(schema)
    return set(schema.get("properties", {}))


def register_commands(app: typer.Typer) -> None:
    """Add `mlops approve` to the `mlops` app."""
    app.command("approve", help=reflow(approve.__doc__))(approve)
