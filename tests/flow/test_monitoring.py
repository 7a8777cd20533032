"""`mlops monitor` end to end on the fraud simulator: a champion trained before a date, then watched on the
days after it, unchanged and with drift injected; unlabelled data; a version without a recorded profile; bad
input. Real Prefect test server, real SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import registry_client

from cli.main import app
from usecases.fraud.simulator import Drift, simulate_transactions

pytestmark = pytest.mark.usefixtures("prefect_server")

SIM = dict(n_customers=1000, n_terminals=2000, n_days=100, seed=7)
TRAIN_END, SINCE = "2018-06-28", "2018-06-29"  # day 88 of 100: twelve days watched
TRAIN = ["--end", TRAIN_END, "--min-roc-auc", "0", "--min-average-precision", "0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data files and a champion trained up to TRAIN_END, in a store of this module's own."""
    tmp = tmp_path_factory.mktemp("monitoring")
    paths = {
        "clean": simulate_transactions(**SIM),
        "amount": simulate_transactions(**SIM, drift=Drift(start=SINCE, amount_factor=1.8)),
        "testing": simulate_transactions(**SIM, drift=Drift(start=SINCE, card_testing_cards_per_day=40)),
    }
    for name, frame in list(paths.items()):
        paths[name] = tmp / f"{name}.parquet"
        frame.to_parquet(paths[name])
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = app(["run", "fraud", "--data", str(paths["clean"]), *TRAIN], standalone_mode=False)
        assert code in (0, None), "the champion to monitor was not promoted"
    return {"home": home, "tmp": tmp, **paths}


def _monitoring_runs(home: Path) -> dict:
    """Every run of the monitoring experiment, by id."""
    from mlflow.entities import ViewType

    client = registry_client(home)
    experiment = client.get_experiment_by_name("fraud-monitoring")
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=10_000)
    return {run.info.run_id: run for run in runs}


@pytest.fixture
def monitor(world, monkeypatch, capsys):
    """`mlops monitor fraud ARGS` in this process: (exit code, output, the monitoring run this call recorded,
    or None if it recorded none): never an earlier call's run."""
    monkeypatch.setenv("MLOPS_HOME", str(world["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*args: str):
        before = set(_monitoring_runs(world["home"]))
        capsys.readouterr()
        code = app(["monitor", "fraud", *args], standalone_mode=False)
        out = capsys.readouterr().out
        new = [r for run_id, r in _monitoring_runs(world["home"]).items() if run_id not in before]
        assert len(new) <= 1, f"one call recorded {len(new)} monitoring runs"
        return code or 0, out, (new[0] if new else None)

    yield run
    mlflow.set_tracking_uri(None)


def test_unchanged_data_is_healthy_and_recorded(world, monitor):
    # On this small world a window's average precision swings by a third between weeks (a few dozen fraud
    # cards after the known-compromised filter): the margin is widened so the test is about drift.
    code, out, run = monitor("--data", str(world["clean"]), "--since", SINCE, "--metric-margin", "0.6")
    assert code == 0, out
    assert "healthy" in out

    client = registry_client(world["home"])
    assert run.data.tags["verdict"] == "healthy"
    assert run.data.tags["registered_model"] == "fraud-detector" and run.data.tags["model_version"] == "1"
    assert run.data.tags["profile"] == "recorded"
    metrics = run.data.metrics
    assert metrics["drift_share"] == 0.0
    assert metrics["rows"] > 10_000 and 0 < metrics["labelled_rows"] <= metrics["rows"]
    assert {
        "drift.TX_AMOUNT",
        "score_drift",
        "estimated_average_precision",
        "realised_average_precision",
    } <= set(metrics)
    # the estimate before labels is close to what the labels then showed
    assert abs(metrics["estimated_average_precision"] - metrics["realised_average_precision"]) < 0.1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"monitoring_report.html", "assessment.json"} <= artifacts
    report = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/monitoring_report.html")
    assert "TX_AMOUNT" in report and "<img" in report


def test_shifted_amounts_are_named_as_drift_and_alert(world, monitor):
    code, out, run = monitor("--data", str(world["amount"]), "--since", SINCE)
    assert code == 4, out
    assert "drift" in out and "sent mlops.model.degraded" in out
    assert run.data.tags["verdict"] == "drift"
    assessment = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/assessment.json"))
    drifted = [f["feature"] for f in assessment["features"] if f["drifted"]]
    assert "TX_AMOUNT" in drifted
    assert drifted[0].startswith(("TX_AMOUNT", "CUSTOMER_ID_AVG_AMOUNT"))  # the amount features lead
    assert run.data.metrics["drift.TX_AMOUNT"] > 0.2


def test_thresholds_are_overridable_per_run(world, monitor):
    """The drifted amounts with a PSI bar of 50 and a drift share of 1 for this run: every feature is judged
    against PSI 50 (none passes it), and the share rule (with the defaults: 27 % of the features >= 20 %)
    cannot fire; the run still alerts, on what the overrides leave: the KS test and the score's PSI."""
    code, out, run = monitor(
        "--data", str(world["amount"]), "--since", SINCE, "--psi", "50", "--drift-share", "1"
    )
    assert code == 4, out
    assert run is not None, "the call recorded no monitoring run"
    assert run.data.tags["verdict"] == "drift"
    assessment = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/assessment.json"))
    reasons = [f["reason"] for f in assessment["features"]]
    assert all("<= 50" in r and "> 50" not in r for r in reasons), reasons  # the run's own PSI bar
    verdict = assessment["verdict"]["reasons"]
    assert not any("features drifted" in r and "% >= " in r for r in verdict), verdict  # no share rule
    assert any(r.startswith("score PSI") and "> 0.2" in r for r in verdict), verdict


def test_unlabelled_newest_rows_and_no_label_column(world, monitor):
    frame = pd.read_parquet(world["clean"])
    recent = frame["TX_DATETIME"] >= pd.Timestamp(SINCE) + pd.Timedelta(days=5)
    frame["TX_FRAUD"] = frame["TX_FRAUD"].astype("float64").where(~recent.to_numpy(), np.nan)
    partly = world["tmp"] / "partly.parquet"
    frame.to_parquet(partly)
    code, out, run = monitor("--data", str(partly), "--since", SINCE, "--metric-margin", "0.6")
    assert code == 0, out
    assert 0 < run.data.metrics["labelled_rows"] < run.data.metrics["rows"]

    none = world["tmp"] / "none.parquet"
    frame.drop(columns=["TX_FRAUD", "TX_FRAUD_SCENARIO"]).to_parquet(none)
    code, out, run = monitor("--data", str(none), "--since", SINCE)
    # without any label the terminal-risk features are all 0: they drift, and with them the estimated average
    # precision of the served model falls (its calibration: its own scores on held-out cards) past the margin
    assert code == 4, out
    assert run.data.tags["verdict"] == "degraded"
    assessment = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/assessment.json"))
    drifted = {f["feature"] for f in assessment["features"] if f["drifted"]}
    assert {"TERMINAL_ID_RISK_7DAY_WINDOW", "TERMINAL_ID_RISK_30DAY_WINDOW"} <= drifted, drifted
    assert run.data.metrics["labelled_rows"] == 0
    assert "realised_average_precision" not in run.data.metrics
    assert "estimated_average_precision" in run.data.metrics


def test_score_accepts_unlabelled_rows(world, monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_HOME", str(world["home"]))
    frame = pd.read_parquet(world["clean"])
    frame["TX_FRAUD"] = np.nan
    unlabelled = tmp_path / "unlabelled.parquet"
    frame.to_parquet(unlabelled)
    out = tmp_path / "scores.parquet"
    code = app(["score", "fraud", "-i", str(unlabelled), "-o", str(out)], standalone_mode=False)
    assert (code or 0) == 0
    scores = pd.read_parquet(out)
    assert len(scores) == len(frame) and scores["fraud_score"].between(0, 1).all()


def test_a_version_without_a_profile_gets_one_rebuilt(world, monitor):
    client = registry_client(world["home"])
    version = client.get_model_version("fraud-detector", "1")
    run = client.get_run(version.run_id)
    profile = Path(run.info.artifact_uri.removeprefix("file://")) / "monitoring" / "profile.json"
    saved = profile.read_text()
    profile.unlink()  # as for a version registered before profiles existed
    try:
        code, out, run = monitor("--data", str(world["clean"]), "--since", SINCE, "--metric-margin", "0.6")
        assert code == 0, out
        assert "profile rebuilt" in out
        assert run.data.tags["profile"] == "rebuilt"
    finally:
        profile.write_text(saved)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/new.parquet"], "no such file"),
        (["--data", "{clean}", "--since", "2031-01-01"], "no rows on or after 2031-01-01"),
        ([], "--data is required"),
        (["--data", "{clean}", "--version", "99"], "has no version 99"),
    ],
)
def test_bad_input_is_exit_2_with_a_clear_message(world, monitor, args, message):
    args = [a.format(clean=world["clean"]) for a in args]
    code, out, run = monitor(*args)
    assert code == 2, out
    assert message in " ".join(out.split())
    assert run is None  # refused before anything was recorded
