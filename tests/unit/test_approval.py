"""A trade-off sent to a person where no one can answer (tests, CI, Prefect's in-process server) is refused at
once, with the reason, and recorded; `mlops approve` refuses bad input before it talks to any server.

The pause itself, `mlops approve` and the timeout are tested against real servers in
tests/server/test_server_mode.py, the Prefect UI's form in tests/flow/test_browser.py.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest

TABLE = (
    "| window | candidate | champion |\n|---|---:|---:|\n| newest | 0.91 | 0.24 |\n| earlier | 0.70 | 0.78 |"
)
A_DAY = datetime.timedelta(hours=24)


@pytest.fixture
def version(mlops_home):
    """A registered version of `approval-unit` and its MLflow run, in this test's SQLite store."""
    from mlflow import MlflowClient

    from champion import store

    store.configure()
    client = MlflowClient()
    run = client.create_run(store.experiment_id("approval-unit"), tags={"use_case": "fraud"})
    client.create_registered_model("approval-unit")
    created = client.create_model_version(
        "approval-unit", f"{run.info.artifact_uri}/model", run_id=run.info.run_id, await_creation_for=0
    )
    return client, created.version, run.info.run_id


def test_unattended_refuses_at_once_says_why_and_records_it(version, monkeypatch, tmp_path):
    from tasks.approval import ask_for_approval

    client, number, run_id = version
    monkeypatch.setenv("MLOPS_PREFECT_SERVER", "ephemeral")  # what tests and CI run with
    began = time.monotonic()
    approval = ask_for_approval("approval-unit", number, TABLE, run_id, A_DAY)
    took = time.monotonic() - began
    assert took < 30, f"waited {took:.0f} s instead of refusing at once"
    assert (approval.approved, approval.by, approval.outcome) == (False, "unattended", "unattended")
    assert "MLOPS_PREFECT_SERVER=ephemeral" in approval.reason and "mlops approve" in approval.reason
    on_version = client.get_model_version("approval-unit", number).tags
    on_run = client.get_run(run_id).data.tags
    for tags in (on_version, on_run):
        assert tags["approval"] == "unattended", tags
        assert (tags["approval.by"], tags["approval.reason"]) == ("unattended", approval.reason)
        assert datetime.datetime.fromisoformat(tags["approval.at"]).tzinfo is not None
        assert "approval.flow_run_id" not in tags  # nothing paused, nothing to resume
    assert Path(client.download_artifacts(run_id, "approval.md", str(tmp_path))).read_text() == TABLE


def test_why_no_one_can_answer(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.approval import unattended_reason

    monkeypatch.setenv("MLOPS_PREFECT_SERVER", "ephemeral")
    assert "MLOPS_PREFECT_SERVER=ephemeral" in unattended_reason()
    monkeypatch.delenv("MLOPS_PREFECT_SERVER")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert "no PREFECT_API_URL" in unattended_reason()
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert "not inside a Prefect flow run" in unattended_reason()  # a server, but no run to pause


def test_outcomes_keys_and_bounds():
    from infra.prefect_local import MODE_ENV
    from tasks.approval import SERVER_MODE_ENV, Approval, ask_for_approval, pause_key

    assert [
        Approval(True, "Prefect UI form", "r").outcome,
        Approval(False, "mlops approve (ada)", "r").outcome,
        Approval(False, "timeout", "r").outcome,
        Approval(False, "unattended", "r").outcome,
    ] == ["approved", "rejected", "timed out", "unattended"]
    assert pause_key("fraud_detector.eu", "12") == "approval-fraud-detector-eu-v12"  # Prefect: [A-Za-z0-9-]
    with pytest.raises(ValueError, match="must be positive"):
        ask_for_approval("m", "1", TABLE, "run", datetime.timedelta(0))
    assert SERVER_MODE_ENV == MODE_ENV  # the variable infra/prefect_local.py (a layer above) reads


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nowhere", "--run", "x", "--reason", "r"], "unknown use case 'nowhere'"),
        (["fraud", "--run", "x", "--reason", "  "], "--reason is empty"),
        (["fraud", "--run", "x"], "Missing option '--reason'"),
    ],
)
def test_mlops_approve_refuses_bad_input(args, says):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["approve", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_mlops_approve_needs_a_prefect_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("MLOPS_PREFECT_SERVER", "ephemeral")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):  # also after a test harness in this session
        result = CliRunner().invoke(
            app, ["approve", "fraud", "--run", "x", "--reason", "r"], env={"COLUMNS": "200"}
        )
    assert result.exit_code == 2, result.output
    assert "PREFECT_API_URL is not set" in result.output
