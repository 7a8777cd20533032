"""`mlops status` and `mlops rollback`, and what the pipeline leaves behind when promotion fails.

Rollback and status tests register small models directly with the tags the pipeline writes; the last test
runs the real pipeline (from the session's trained v1, `champion_home`) through a failed promotion, its
recovery, a rollback and an identical rerun.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from conftest import SMALL_FRAUD_RUN
from conftest import registry_client as client_for
from mlflow import MlflowClient
from typer.testing import CliRunner

from champion.promotion import _now, move_champion, read_history
from cli.main import app

NAME = "toy-lifecycle"
SMALL = SMALL_FRAUD_RUN
runner = CliRunner()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

# Per-gate tags, as versions registered before the one-line `gates` tag carry them (still read).
PASSED = {
    "gate.absolute.average_precision": "passed: average_precision 0.61 >= 0.30",
    "gate.baseline.average_precision.baseline": "passed: average_precision 0.61 > 0.55",
    "gate.champion": "passed: no current champion",
    "lineage.fingerprint": "abc",
    "use_case": "fraud",
    "test_average_precision": "0.610000",
}


def mlops(*args: str):
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def register(home: Path, tags: dict, seed: int = 0) -> str:
    client = client_for(home)
    frame = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(frame, label=frame.a > 9), 2 + seed)
    experiment = client.get_experiment_by_name("toy") or client.get_experiment(
        client.create_experiment("toy", artifact_location=(home / "artifacts").as_uri())
    )
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        info = mlflow.xgboost.log_model(
            booster, name="model", input_example=frame.head(2), model_format="ubj"
        )
    try:
        client.get_registered_model(NAME)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(NAME)
    return str(
        client.create_model_version(
            NAME, info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags=tags
        ).version
    )


def promote_by_hand(client: MlflowClient, version: str) -> None:
    """What the pipeline's promote step records."""
    try:
        previous = str(client.get_model_version_by_alias(NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        previous = None
    move_champion(
        client,
        NAME,
        version,
        expected=previous,
        tags={"promoted_at": _now(), "promoted_by_run": "test", "previous_champion": previous or ""},
        event={"action": "promoted", "run_id": "test"},
    )


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_rollback_goes_to_the_previous_champion_and_records_why(mlops_home):
    v1, v2, v3 = (register(mlops_home, PASSED, seed) for seed in range(3))
    client = client_for(mlops_home)
    for version in (v1, v2, v3):
        promote_by_hand(client, version)

    result = mlops("rollback", "fraud", "--model", NAME, "--reason", "alert storm")
    assert result.exit_code == 0, result.output
    assert champion(client) == v2
    tags = client.get_model_version(NAME, v2).tags
    assert tags["rollback.reason"] == "alert storm" and tags["rollback.from"] == v3 and tags["rolled_back_at"]
    assert client.get_model_version(NAME, v3).tags["demoted_at"]

    # again: one further back, along the previous_champion tags
    assert mlops("rollback", "fraud", "--model", NAME).exit_code == 0
    assert champion(client) == v1
    # v1 has no previous champion: say so, change nothing
    result = mlops("rollback", "fraud", "--model", NAME)
    assert result.exit_code == 2 and "no previous champion" in result.output
    assert champion(client) == v1
    # forward again, explicitly
    assert mlops("rollback", "fraud", "--model", NAME, "--to", v3, "--reason", "fixed").exit_code == 0
    assert champion(client) == v3
    assert "demoted_at" not in client.get_model_version(NAME, v3).tags

    history = read_history(client, NAME)
    assert [(e["action"], e["previous"], e["version"]) for e in history] == [
        ("promoted", "", v1),
        ("promoted", v1, v2),
        ("promoted", v2, v3),
        ("rollback", v3, v2),
        ("rollback", v2, v1),
        ("rollback", v1, v3),
    ]
    assert history[3]["reason"] == "alert storm"


@pytest.mark.parametrize(
    "tags, message",
    [
        (
            {**PASSED, "gate.absolute.average_precision": "refused: average_precision 0.1 not >= 0.3"},
            "refused",
        ),
        ({**PASSED, "gate.baseline.average_precision.baseline": "refused: 0.5 not > 0.6"}, "baseline"),
        (
            {
                "gates": "refused 1/3: baseline.average_precision.baseline",
                "lineage.fingerprint": "abc",
                "use_case": "fraud",
            },
            "refused by gate baseline.average_precision.baseline",
        ),
        ({"use_case": "fraud"}, "not registered by the gated pipeline"),
    ],
)
def test_rollback_refuses_versions_that_never_passed_their_gates(mlops_home, tags, message):
    good = register(mlops_home, PASSED)
    client = client_for(mlops_home)
    promote_by_hand(client, good)
    bad = register(mlops_home, tags, seed=1)
    result = mlops("rollback", "fraud", "--model", NAME, "--to", bad)
    assert result.exit_code == 2, result.output
    assert "rollback refused" in result.output and message in result.output.replace("\n", " ")
    assert champion(client) == good and len(read_history(client, NAME)) == 1


def test_rollback_without_champion_or_to_unknown_version_exits_2(mlops_home):
    register(mlops_home, PASSED)
    result = mlops("rollback", "fraud", "--model", NAME)
    assert result.exit_code == 2 and "nothing to roll back" in result.output
    promote_by_hand(client_for(mlops_home), "1")
    result = mlops("rollback", "fraud", "--model", NAME, "--to", "42")
    assert result.exit_code == 2 and "no version 42" in result.output


def test_status_shows_champion_gates_history_and_previous_champions(mlops_home):
    v1, v2 = register(mlops_home, PASSED), register(mlops_home, PASSED, 1)
    client = client_for(mlops_home)
    promote_by_hand(client, v1)
    promote_by_hand(client, v2)
    assert mlops("rollback", "fraud", "--model", NAME, "--reason", "drift").exit_code == 0

    result = mlops("status", "--model", NAME, "--json")
    assert result.exit_code == 0, result.output
    (status,) = json.loads(result.output)
    assert status["champion"]["version"] == v1 and status["champion"]["how"] == "rollback"
    assert status["champion"]["rollback"]["rollback.reason"] == "drift"
    assert status["champion"]["gates"]["absolute.average_precision"].startswith("passed")
    assert [e["action"] for e in status["history"]] == ["rollback", "promoted", "promoted"]
    assert [p["version"] for p in status["previous_champions"]] == [v2]
    assert status["previous_champions"][0]["demoted_at"]

    table = mlops("status", "--model", NAME)
    assert table.exit_code == 0 and f"champion v{v1}" in table.output and "drift" in table.output


@pytest.mark.usefixtures("prefect_server")
def test_failed_promotion_leaves_no_half_state_then_recovers_and_respects_rollback(
    champion_home, monkeypatch
):
    """The real pipeline, from what `mlops run fraud SMALL` left (v1 champion): promotion fails after
    registration → alias unchanged, version says so, exit 1; an identical rerun reuses that version and
    promotes it; after a rollback an identical rerun does not quietly promote the rolled-back version again;
    `status` lists it as refused."""
    model, mlops_home = "fraud-detector", champion_home
    client = client_for(mlops_home)
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"

    def broken_alias(self, *args, **kwargs):
        raise RuntimeError("registry went away")

    candidate = [*SMALL, "--max-depth", "4", "--champion-margin", "1.0"]
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", broken_alias)
        failed = mlops("run", "fraud", *candidate)
    assert failed.exit_code == 1, failed.output
    assert "registry went away" in failed.output
    client = client_for(mlops_home)
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    v2 = client.get_model_version(model, "2")
    assert v2.tags["promotion"].startswith("failed") and "registry went away" in v2.tags["promotion"]
    assert "promoted_at" not in v2.tags and "previous_champion" not in v2.tags
    assert [e["version"] for e in read_history(client, model)] == ["1"]
    runs = client.search_runs(
        [client.get_experiment_by_name("fraud").experiment_id], order_by=["attributes.start_time DESC"]
    )
    assert runs[0].info.status == "FAILED"

    recovered = mlops("run", "fraud", *candidate)
    assert recovered.exit_code == 0, recovered.output
    assert "identical earlier registration reused" in recovered.output
    client = client_for(mlops_home)
    assert str(client.get_model_version_by_alias(model, "champion").version) == "2"
    assert client.get_model_version(model, "2").tags["previous_champion"] == "1"

    assert mlops("rollback", "fraud", "--reason", "complaints").exit_code == 0
    again = mlops("run", "fraud", *candidate)
    assert again.exit_code == 3, again.output
    assert "rolled back" in again.output
    client = client_for(mlops_home)
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    assert len(client.search_model_versions(f"name = '{model}'")) == 2

    (status,) = json.loads(mlops("status", "fraud", "--json").output)
    assert status["champion"]["version"] == "1" and status["champion"]["how"] == "rollback"
    assert status["refused"][0]["decision"] == "registered" and status["refused"][0]["version"] == "2"
    assert [e["action"] for e in status["history"]] == ["rollback", "promoted", "promoted"]
