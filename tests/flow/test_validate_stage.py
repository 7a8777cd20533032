"""The validation stage inside a real Prefect flow (the test harness) against a real SQLite MLflow store: what
it records on failure and on success."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from fraud_frames import _label_two, _missing_amount, _negative_amounts, make_features, make_raw

from data_checks.fraud import feature_suite, raw_suite
from tasks.validate import DataValidationError, ValidationReport, validate

# ------------------------------------------------------------------------- the stage: Prefect and MLflow


@pytest.fixture
def mlflow_run(tmp_path):
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(
        "validate-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    run = client.create_run(experiment)
    yield run.info.run_id
    mlflow.set_tracking_uri(previous)


def _validation_flow():
    from prefect import flow

    @flow(name="validation-test")
    def check(frame: pd.DataFrame, run_id: str | None, features: bool = False):
        return validate(frame, feature_suite if features else raw_suite, run_id=run_id)

    return check


def _markdown_artifacts(flow_run_id, key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )


def test_validate_stage_on_failure_raises_and_keeps_both_artifacts(prefect_server, mlflow_run):
    import mlflow

    frame = _label_two(_negative_amounts(make_raw()))
    state = _validation_flow()(frame, mlflow_run, return_state=True)

    assert state.is_failed()
    with pytest.raises(DataValidationError) as raised:
        state.result()
    assert "expect_column_values_to_be_between(TX_AMOUNT) failed" in str(raised.value)
    assert "expect_column_values_to_be_in_set(TX_FRAUD) failed" in str(raised.value)

    client = mlflow.MlflowClient()
    listed = [a.path for a in client.list_artifacts(mlflow_run, "validation")]
    assert listed == ["validation/fraud_raw.json"]
    run = client.get_run(mlflow_run)
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/validation/fraud_raw.json")
    assert logged == raised.value.report.result
    assert logged["success"] is False and logged["suite_name"] == "fraud_raw"

    artifacts = _markdown_artifacts(state.state_details.flow_run_id, "validation-fraud-raw")
    assert len(artifacts) == 1
    assert artifacts[0].type == "markdown"
    assert "`fraud_raw` FAILED" in artifacts[0].data
    assert "expect_column_values_to_be_between(TX_AMOUNT)" in artifacts[0].data
    assert "FAILED (2 failures)" in artifacts[0].description


def test_validate_stage_passes_and_returns_report(prefect_server, mlflow_run):
    import mlflow

    state = _validation_flow()(make_features(), mlflow_run, features=True, return_state=True)

    assert state.is_completed()
    report = state.result()
    assert isinstance(report, ValidationReport) and report.success
    paths = [a.path for a in mlflow.MlflowClient().list_artifacts(mlflow_run, "validation")]
    assert paths == ["validation/fraud_features.json"]
    artifacts = _markdown_artifacts(state.state_details.flow_run_id, "validation-fraud-features")
    assert len(artifacts) == 1 and "`fraud_features` passed" in artifacts[0].data


def test_validate_stage_without_run_id_skips_mlflow(prefect_server):
    state = _validation_flow()(_missing_amount(make_raw()), None, return_state=True)
    with pytest.raises(DataValidationError, match=r"expect_column_values_to_not_be_null\(TX_AMOUNT\)"):
        state.result()
    assert len(_markdown_artifacts(state.state_details.flow_run_id, "validation-fraud-raw")) == 1
