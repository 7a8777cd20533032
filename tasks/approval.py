"""Approval: a person decides a trade-off the gates cannot, and the decision is recorded where people look.

    approval = ask_for_approval(registered_model, version, table_markdown, run_id, timeout)

Inside a flow run whose Prefect server others can reach (`make up`, docker compose, or the local background
server `mlops run` starts by default), the run pauses: `pause_flow_run(wait_for_input=ApprovalInput)`, in
this process, which stays blocked until an answer or the timeout. The run's page in the Prefect UI then has a
**Resume** button; its form shows the trade-off table and takes *Approve* (a switch), a *Reason* (required)
and *Decided by*. `mlops approve USE_CASE --run RUN [--reject] --reason ...` sends the same answer from a
shell. No answer within `timeout`: refused (`timed out`); Prefect fails a pause that expires, so the run is
set back to Running and goes on to finish with its decision. As it pauses it emits
`mlops.model.approval-waiting` (resource `mlflow.registered-model.<name>`; payload: the version, the MLflow
and flow run ids, the deadline, the `mlops approve` command and `todo`, what to do in a sentence), which
`mlops deploy --webhook URL` turns into a message to the people who decide (`infra/notifications.py`).

Unattended, where no one can answer a pause, it refuses at once and says why: Prefect's temporary
in-process server (no `PREFECT_API_URL`), `MLOPS_PREFECT_SERVER=ephemeral` (tests, CI, benchmarks), or a call
outside a flow run. It never waits there.

Every outcome goes on the version and on the MLflow run as tags (`usecases/vocabulary.py`): `approval`
(pending while it waits, then approved | rejected | timed out | unattended), `approval.by`, `approval.reason`,
`approval.at`, and `approval.flow_run_id` (what `mlops approve --run` resumes); the table is the run's
artifact `approval.md`.

The caller must not hold the champion lock while asking: a pause may last the whole timeout (24 h by
default) and every other run of the registered model would wait on the lock. Release it, ask, then take it
again to promote; the champion may have moved meanwhile, which the promotion's compare-and-set refuses.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from dataclasses import dataclass

import pydantic
from mlflow import MlflowClient
from mlflow.entities import RunTag
from prefect import runtime
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL
from prefect.states import Running

from champion.store import run_logger
from usecases.vocabulary import (
    APPROVAL_APPROVED,
    APPROVAL_AT_TAG,
    APPROVAL_BY_TAG,
    APPROVAL_FLOW_RUN_TAG,
    APPROVAL_PENDING,
    APPROVAL_REASON_TAG,
    APPROVAL_REJECTED,
    APPROVAL_TAG,
    APPROVAL_TIMED_OUT,
    APPROVAL_UNATTENDED,
    APPROVAL_WAITING,
    model_resource,
)

# infra/prefect_local.MODE_ENV, a layer above: `ephemeral` means no server that anyone else reaches
SERVER_MODE_ENV = "MLOPS_PREFECT_SERVER"
# `Approval.by` when no one typed a name
UI_FORM, TIMEOUT, UNATTENDED = "Prefect UI form", "timeout", "unattended"
POLL_SECONDS = 5  # how soon a paused run sees its answer (one small API read per poll)
MAX_TAG = 5000  # MLflow's limit on a tag value


class ApprovalInput(RunInput):
    """A paused run's Resume form: its schema is what the Prefect UI renders and the server validates."""

    approve: bool = pydantic.Field(
        default=False,
        title="Approve",
        description="On: promote this candidate despite its loss on earlier windows. Off: refuse it.",
    )
    reason: str = pydantic.Field(
        min_length=1, title="Reason", description="Why: recorded on the model version and its MLflow run."
    )
    decided_by: str = pydantic.Field(
        default=UI_FORM, title="Decided by", description="Your name or team, recorded with the decision."
    )


@dataclass(frozen=True)
class Approval:
    approved: bool
    by: str  # who or what decided: "Prefect UI form", "mlops approve (<user>)", "timeout", "unattended"
    reason: str

    @property
    def outcome(self) -> str:
        """The `approval` tag: approved | rejected | timed out | unattended."""
        if self.approved:
            return APPROVAL_APPROVED
        return {TIMEOUT: APPROVAL_TIMED_OUT, UNATTENDED: APPROVAL_UNATTENDED}.get(self.by, APPROVAL_REJECTED)


def ask_for_approval(
    registered_model: str, version: str, table_markdown: str, run_id: str, timeout: datetime.timedelta
) -> Approval:
    """Pause the flow run until a person approves or rejects `registered_model` v`version` (the Prefect UI's
    Resume form, or `mlops approve`), for at most `timeout`; refuse at once where no one can answer.

    `table_markdown` is the trade-off as a markdown table: shown in the form, logged as `approval.md` on the
    MLflow run `run_id`. The outcome is recorded on the version and the run (tags `approval*`) and returned.
    Call it without holding the champion lock.
    """
    seconds = math.ceil(timeout.total_seconds())
    if seconds <= 0:
        raise ValueError(f"the approval timeout must be positive, got {timeout}")
    MlflowClient().log_text(run_id, table_markdown, "approval.md")
    why = unattended_reason()
    if why is not None:
        approval = Approval(
            False,
            UNATTENDED,
            f"refused without asking: {why}, so no one can answer a pause here; run it with a Prefect server "
            "(`make up`, or the local background server `mlops run` starts by default) to decide it in the "
            "Prefect UI or with `mlops approve`",
        )
        _record(registered_model, version, run_id, approval)
        return approval
    flow_run_id = str(FlowRunContext.get().flow_run.id)
    _tag(
        registered_model,
        version,
        run_id,
        {APPROVAL_TAG: APPROVAL_PENDING, APPROVAL_FLOW_RUN_TAG: flow_run_id},
    )
    approval = _wait(registered_model, version, table_markdown, run_id, flow_run_id, seconds)
    _record(registered_model, version, run_id, approval)
    return approval


def unattended_reason() -> str | None:
    """Why no one can answer a pause in this process; None where a Prefect server others reach resumes it."""
    if os.environ.get(SERVER_MODE_ENV) == "ephemeral":
        return f"{SERVER_MODE_ENV}=ephemeral (a temporary Prefect server per process: tests, CI)"
    if not PREFECT_API_URL.value():
        return "Prefect runs on a temporary server inside this process (no PREFECT_API_URL)"
    if FlowRunContext.get() is None:
        return "not inside a Prefect flow run, so there is no run to pause"
    return None


def pause_key(registered_model: str, version: str) -> str:
    """The pause's key (letters, digits and dashes, as Prefect's input keys need): one question per version
    and flow run, so a retried run that registers the same version reuses the answer it already has."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", f"approval-{registered_model}-v{version}")


def _wait(
    registered_model: str, version: str, table: str, run_id: str, flow_run_id: str, seconds: int
) -> Approval:
    deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    use_case = MlflowClient().get_run(run_id).data.tags.get("use_case") or "USE_CASE"
    command = f'mlops approve {use_case} --run {flow_run_id} --reason "..."'
    run_logger().info(
        "waiting until %s for a person to approve or reject %s v%s: Resume in this flow run's menu in the "
        "Prefect UI, or `%s` (with --reject to refuse)",
        *(f"{deadline:%Y-%m-%d %H:%M} UTC", registered_model, version, command),
    )
    _announce(registered_model, version, run_id, use_case, command, deadline)
    description = _description(registered_model, version, table, command, deadline)
    try:
        answer = pause_flow_run(
            wait_for_input=ApprovalInput.with_initial_data(description=description),
            timeout=seconds,
            poll_interval=max(1, min(POLL_SECONDS, seconds // 3)),
            key=pause_key(registered_model, version),
            _sync=True,  # a sync call, also should the caller be an async flow
        )
    except FlowPauseTimeout:
        _run_on(flow_run_id, "no answer to the approval request: refused")
        return Approval(False, TIMEOUT, f"no answer within {datetime.timedelta(seconds=seconds)}: refused")
    except pydantic.ValidationError:  # this pause fired in an earlier attempt of the run, and got no answer
        return Approval(
            False, TIMEOUT, "an earlier attempt of this flow run asked and got no answer: refused"
        )
    by = answer.decided_by.strip()
    if by in ("", TIMEOUT, UNATTENDED):  # no name, or one that would make the outcome tag say otherwise
        by = UI_FORM
    return Approval(answer.approve, by, answer.reason.strip())


def _announce(
    registered_model: str, version: str, run_id: str, use_case: str, command: str, deadline: datetime.datetime
) -> None:
    """`mlops.model.approval-waiting`: the people who decide hear of the pause (`mlops deploy --webhook`
    sends it on), with what to do in the payload's `todo`."""
    url = runtime.flow_run.ui_url
    where = f"Resume flow run {runtime.flow_run.name} in the Prefect UI" + (f" ({url})" if url else "")
    todo = (
        f"Approve or refuse {registered_model} v{version}: it gains on the newest window but loses beyond "
        f"tolerance on earlier windows. {where}, or run `{command}` (with --reject to refuse); a reason is "
        f"required. Without an answer by {deadline:%Y-%m-%d %H:%M} UTC it is refused."
    )
    emit_event(
        event=APPROVAL_WAITING,
        resource={"prefect.resource.id": model_resource(registered_model), "mlops.use-case": use_case},
        payload={
            "registered_model": registered_model,
            "use_case": use_case,
            "version": version,
            "mlflow_run_id": run_id,
            "flow_run_id": str(runtime.flow_run.id),
            "ui_url": url,
            "deadline": deadline.isoformat(timespec="seconds"),
            "command": command,
            "todo": todo,
        },
    )


def _description(
    registered_model: str, version: str, table: str, command: str, deadline: datetime.datetime
) -> str:
    """The markdown above the Resume form: what is asked, the table, the deadline, the shell command."""
    return "\n\n".join(
        [
            f"### Approve or refuse {registered_model} v{version}",
            "The candidate gains on the newest window but loses beyond tolerance on earlier windows: the "
            "gates cannot decide this trade-off, a person does.",
            table.strip(),
            "Switch **Approve** on to promote it, leave it off to refuse it; a reason is required. Without "
            f"an answer by {deadline:%Y-%m-%d %H:%M} UTC it is refused.",
            f"From a shell: `{command}` (with `--reject` to refuse).",
        ]
    )


def _run_on(flow_run_id: str, message: str) -> None:
    """After an expired pause: the run goes on to record its refusal and finish, so set it Running again
    (Prefect fails an expired pause, and a failed run could not complete). A cancellation stays."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is not None and (state.is_paused() or state.is_failed()):
            client.set_flow_run_state(flow_run_id, Running(message=message), force=True)


def _record(registered_model: str, version: str, run_id: str, approval: Approval) -> None:
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    tags = {
        APPROVAL_TAG: approval.outcome,
        APPROVAL_BY_TAG: approval.by,
        APPROVAL_REASON_TAG: approval.reason,
        APPROVAL_AT_TAG: at,
    }
    _tag(registered_model, version, run_id, tags)
    run_logger().info(
        "approval of %s v%s: %s by %s: %s",
        *(registered_model, version, approval.outcome, approval.by, approval.reason),
    )


def _tag(registered_model: str, version: str, run_id: str, tags: dict[str, str]) -> None:
    """The same tags on the version and on its run (MLflow's client retries its requests)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value[:MAX_TAG])
    client.log_batch(run_id, tags=[RunTag(key, value[:MAX_TAG]) for key, value in tags.items()])
