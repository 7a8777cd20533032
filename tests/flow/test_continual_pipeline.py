"""Continual learning through the `mlops` CLI: fine-tuning from the champion records its lineage and is gated
on earlier windows and slices; a parent with other features is bad input (exit 2)."""

import json
from pathlib import Path

import mlflow
import pytest
from conftest import SMALL_FRAUD_RUN
from conftest import registry_client as client

from cli.main import app

MODEL = "fraud-detector"

pytestmark = pytest.mark.usefixtures("prefect_server")


def mlops(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = app(["run", *args], standalone_mode=False)
    return code or 0, capsys.readouterr().out


def gate_report(run_id: str) -> dict:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gate_report.json")
    return json.loads(Path(path).read_text())


def test_fine_tuning_from_the_champion_records_lineage_and_gates_on_earlier_windows_and_slices(
    capsys, mlops_home
):
    # the champion's data ends a week earlier: its test window is one the new run has not trained on
    code, out = mlops(capsys, "fraud", *SMALL_FRAUD_RUN, "--end", "2018-06-02")
    assert code == 0, out
    code, out = mlops(capsys, "fraud", *SMALL_FRAUD_RUN, "--init", "champion", "--update-rounds", "20")
    assert code in (0, 3), out
    c = client(mlops_home)
    run = c.search_runs(c.get_experiment_by_name("fraud").experiment_id, order_by=["start_time DESC"])[0]
    names = {g["name"]: g for g in gate_report(run.info.run_id)["gates"]}
    # both models left the same cards out: the earlier windows are scored on them, not skipped
    assert "skipped" not in names["forgetting.average_precision"]["detail"]
    assert "earlier pooled" in names["forgetting.average_precision"]["detail"]
    assert "held-out keys" in names["champion"]["detail"]
    assert {"slice.amount", "slice.night", "slice.weekend", "slice.customer", "slice.terminal_risk"} <= set(
        names
    )
    metrics = run.data.metrics
    assert "earlier_window.1.average_precision" in metrics and "earlier_pooled.average_precision" in metrics
    assert "newest.champion_average_precision" in metrics
    assert "slice.night.night.average_precision" in metrics and "slice.night.night.rows" in metrics
    assert "slice.night.night.champion.average_precision" in metrics
    assert "plots/slices.png" in {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert "forgetting.average_precision" in out and "slice.amount" in out

    version = c.search_model_versions(f"name = '{MODEL}' and run_id = '{run.info.run_id}'")[0]
    assert version.tags["lineage.parent"] == f"models:/{MODEL}/1"
    assert version.tags["lineage.update"] == "continue"
    first = c.get_model_version(MODEL, "1")
    assert "lineage.parent" not in first.tags and "| started from | scratch |" in first.description
    # the parent's training window, then this one's
    assert version.tags["lineage.trained_on"].startswith(first.tags["lineage.trained_on"] + ";")
    assert f"| started from | `models:/{MODEL}/1`, boosting continued: " in version.description


def test_refresh_from_a_pinned_version_keeps_its_tree_count(capsys, champion_home):
    code, out = mlops(
        capsys,
        "fraud",
        *SMALL_FRAUD_RUN,
        "--init",
        f"models:/{MODEL}/1",
        "--update",
        "refresh",
        "--seed",
        "7",
    )
    assert code in (0, 3), out
    c = client(champion_home)
    refreshed = mlflow.xgboost.load_model(f"models:/{MODEL}/2")
    parent = mlflow.xgboost.load_model(f"models:/{MODEL}/1")
    assert refreshed.num_boosted_rounds() == parent.num_boosted_rounds()
    assert c.get_model_version(MODEL, "2").tags["lineage.update"] == "refresh"


def test_a_parent_with_other_features_is_bad_input(capsys, champion_home):
    code, out = mlops(capsys, "stock", "--init", f"models:/{MODEL}/1", "--dry-run")
    assert code == 2, out
    assert "other features" in out and "input rejected" in out
    code, out = mlops(capsys, "fraud", *SMALL_FRAUD_RUN, "--init", f"models:/{MODEL}/7", "--dry-run")
    assert code == 2 and "no version 7" in out, out
