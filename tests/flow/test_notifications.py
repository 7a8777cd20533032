"""Notifications: the automations `mlops deploy --webhook` sets up post Slack-compatible JSON to a real HTTP
receiver on loopback when registry events reach a real Prefect server (the session's test harness: Prefect's
temporary server runs the triggers and actions services that fire them). A redeploy replaces, never
duplicates; a bad URL is refused before anything is written; every message template renders.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid

import pytest
from typer.testing import CliRunner
from webhook import receiving

from infra import notifications
from usecases.vocabulary import APPROVAL_WAITING, MODEL_PROMOTED, model_resource

pytestmark = pytest.mark.usefixtures("prefect_server")

TABLE = "| window | candidate | champion |\n|---|---:|---:|\n| newest | 0.91 | 0.24 |"
TOKEN = "T000/B000/not-to-be-printed"  # a Slack webhook URL's path is its credential


@pytest.fixture
def receiver():
    with receiving(TOKEN) as found:
        notifications.remove_notifications()  # another test's automations would post elsewhere
        try:
            yield found
        finally:
            notifications.remove_notifications()  # later tests' events must not post to a closed port


def _mlops_names() -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(
            a.name for a in client.read_automations() if a.name.startswith(notifications.NAME_PREFIX)
        )


def test_a_redeploy_replaces_the_automations_and_the_url_stays_secret(receiver):
    from prefect.client.orchestration import get_client

    first = notifications.configure_notifications("http://127.0.0.1:9/old")
    assert (first.created, first.updated, first.removed) == (len(notifications.MESSAGES), 0, 0)
    again = notifications.configure_notifications(receiver.url)
    assert (again.created, again.updated, again.removed) == (0, len(notifications.MESSAGES), 0)
    assert again.block_id == first.block_id
    names = _mlops_names()
    assert names == sorted(f"mlops: {m.event}" for m in notifications.MESSAGES) == list(again.automations)
    assert len(names) == len(set(names)) == 6
    assert TOKEN not in again.where and again.where == receiver.url.split("/services")[0]
    said = notifications.current_notifications()
    assert said.startswith("6 automation(s)") and again.where in said and TOKEN not in said
    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name(notifications.BLOCK_NAME, "custom-webhook", False)
    assert TOKEN not in json.dumps(shown.model_dump(mode="json")), "the URL must stay a secret value"


def test_events_reach_the_webhook_as_slack_json(receiver, mlops_home, monkeypatch):
    """A promotion (an event as tasks/report.py sends it) and a real run pausing for approval (its event sent
    by tasks/approval.py) each reach the receiver as {"text": ...} naming the model and the version."""
    from mlflow import MlflowClient
    from prefect import flow
    from prefect.events import emit_event

    from champion import store
    from tasks.approval import ask_for_approval

    notifications.configure_notifications(receiver.url)
    sent = time.monotonic()
    emit_event(
        event=MODEL_PROMOTED,
        resource={"prefect.resource.id": model_resource("notify-fraud"), "mlops.use-case": "fraud"},
        payload={"registered_model": "notify-fraud", "version": "7", "previous_version": "6"},
    )

    store.configure()
    client = MlflowClient()
    run = client.create_run(store.experiment_id("notify-approval"), tags={"use_case": "fraud"})
    client.create_registered_model("notify-approval")
    version = client.create_model_version(
        "notify-approval", f"{run.info.artifact_uri}/model", run_id=run.info.run_id, await_creation_for=0
    ).version
    monkeypatch.delenv("MLOPS_PREFECT_SERVER", raising=False)  # a server others reach: the run pauses

    @flow(name="notify-approval")
    def asks():
        return ask_for_approval(
            "notify-approval", version, TABLE, run.info.run_id, datetime.timedelta(seconds=2)
        )

    asked = time.monotonic()
    assert asks().outcome == "timed out"  # it did pause (no one answered)

    at, promoted = receiver.wait_for("notify-fraud v7 is the champion")
    assert set(promoted) == {"text"} and "previous champion: v6" in promoted["text"], promoted
    assert MODEL_PROMOTED in promoted["text"]
    waited_at, waiting = receiver.wait_for(f"notify-approval v{version} waits for your approval")
    assert "mlops approve fraud --run" in waiting["text"] and APPROVAL_WAITING in waiting["text"], waiting
    print(f"webhook delay: promoted {at - sent:.1f} s after emit; approval-waiting {waited_at - asked:.1f} s")


def test_deploy_checks_the_webhook_before_anything_and_dry_run_says_what_it_would_do(monkeypatch):
    import typer

    from cli.servers import register_commands

    app = typer.Typer()
    register_commands(app)
    runner = CliRunner()
    bad = runner.invoke(app, ["deploy", "--webhook", "hooks.slack.com/x"])
    assert bad.exit_code == 2 and "http:// or https://" in bad.output, bad.output
    unknown = runner.invoke(app, ["deploy", "--dry-run", "--use-case", "fraud", "--use-case", "frod"])
    said = " ".join(unknown.output.replace("│", " ").split())
    assert unknown.exit_code == 2 and "unknown use case 'frod'; known: fraud, stock" in said, unknown.output
    monkeypatch.setenv(notifications.WEBHOOK_ENV, f"https://hooks.example.com/services/{TOKEN}")
    dry = runner.invoke(app, ["deploy", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "6 automation(s)" in dry.output and "https://hooks.example.com" in dry.output
    assert TOKEN not in dry.output
    monkeypatch.delenv(notifications.WEBHOOK_ENV)
    assert "left as they are" in runner.invoke(app, ["deploy", "--dry-run"]).output


def test_every_message_renders_from_its_event():
    """Prefect's own renderer on each kind's event: model, version and payload in, no template errors."""
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.server.utilities.user_templates import render_user_template_sync

    payload = {"version": "3", "previous_version": "2", "reason": "worse on 900 labelled pairs", "by": "ops"}
    payload |= {"verdict": "degraded", "reasons": ["AP fell"], "todo": "Resume it", "mlflow_run_id": "r1"}
    for message in notifications.MESSAGES:
        event = ReceivedEvent(
            id=uuid.uuid4(),
            occurred=datetime.datetime.now(datetime.UTC),
            event=message.event,
            resource={"prefect.resource.id": model_resource("fraud-detector")},
            payload=payload,
        )
        automation = notifications.automations("00000000-0000-0000-0000-000000000000")
        action = next(a for a in automation if a.name == message.automation_name).actions[0]
        subject = render_user_template_sync(action.subject, {"event": event})
        body = render_user_template_sync(action.body, {"event": event})
        assert "fraud-detector" in subject and "v3" in subject, (message.event, subject)
        assert "mlflow.registered-model" not in subject and "{" not in subject + body, (subject, body)
        assert message.event in body and "MLflow run r1" in body, body
        # with an empty payload nothing breaks: blanks where values are missing
        event = event.model_copy(update={"payload": {}})
        assert "fraud-detector" in render_user_template_sync(action.subject, {"event": event})
