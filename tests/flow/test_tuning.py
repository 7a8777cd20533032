"""`mlops tune` end to end on a Prefect test server and a SQLite store: trials as task runs and MLflow child
runs, the winner through the gates, a study continued after SIGKILL and shared by two processes, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import registry_client

from cli.main import app
from tasks.tuning.study import DEFAULTS_ATTR, open_storage

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    from usecases.fraud.simulator import simulate_transactions

    path = tmp_path_factory.mktemp("tune") / "transactions.parquet"
    simulate_transactions(n_customers=300, n_terminals=600, n_days=70, seed=42).to_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """Smaller still, for studies whose winner is not trained (its fraud rate is above the raw suite's)."""
    from usecases.fraud.simulator import simulate_transactions

    path = tmp_path_factory.mktemp("tune") / "tiny.parquet"
    simulate_transactions(n_customers=150, n_terminals=300, n_days=63, seed=7).to_parquet(path)
    return str(path)


def mlops(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = app(list(args), standalone_mode=False)
    return code or 0, capsys.readouterr().out


def study_of(home: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{home / 'optuna.db'}"))


def task_run_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return sorted(r.name for r in runs)


def flow_run_logs(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the log worker sends in batches: the run's last lines may still be queued
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [log.message for log in logs]


def test_a_small_study_end_to_end_and_its_winner_gated(prefect_server, mlops_home, small_data, capsys):
    code, out = mlops(capsys, "tune", "fraud", "--data", small_data, "--trials", "2", "--study", "e2e")
    assert code == 3, out
    client = registry_client(mlops_home)
    parent = client.search_runs(
        [client.get_experiment_by_name("fraud").experiment_id], "tags.`tuning.study` = 'e2e'"
    )
    tuning_run = next(r for r in parent if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in parent if r.data.tags.get("mlflow.parentRunId") == tuning_run.info.run_id]
    assert len(children) == 2
    assert {c.data.tags["tuning.state"] for c in children} <= {"complete", "pruned"}
    assert all("duration_seconds" in c.data.metrics and "eta" in c.data.params for c in children)
    assert "plots/optimization_history.png" in {
        a.path for a in client.list_artifacts(tuning_run.info.run_id, "plots")
    }
    flow_run = tuning_run.data.tags["prefect.flow_run_id"]
    assert {"trial-1", "trial-2", "spec-defaults"} <= set(task_run_names(flow_run))
    progress = [line for line in flow_run_logs(flow_run) if line.startswith("trial ")]
    assert len(progress) == 2 and all("budget" in line and " s; " in line for line in progress)
    assert any("trial 2/2" in line and "budget 100% used" in line for line in progress)
    study = study_of(mlops_home, "e2e")
    # on this data (seed 42) two trials do not beat the spec's defaults: said, and nothing trained
    assert study.best_value <= study.user_attrs[DEFAULTS_ATTR], (study.best_value, study.user_attrs)
    assert "does not beat the spec defaults" in out and not client.search_registered_models()

    # The same study continued, its defaults' bar set at 0: the winner now beats it and goes through every
    # gate (promoted, or refused with the reason), its run and card naming the study and trial.
    study.set_user_attr(DEFAULTS_ATTR, 0.0)
    code, out = mlops(capsys, "tune", "fraud", "--data", small_data, "--trials", "1", "--study", "e2e")
    assert code == 0, out  # the first version of fraud-detector: every gate passed, promoted
    best = study_of(mlops_home, "e2e").best_trial.number
    assert len(study_of(mlops_home, "e2e").trials) == 3
    trained = client.search_runs(
        [client.get_experiment_by_name("fraud").experiment_id],
        f"params.`param.params_from` = 'study:e2e#{best}'",
    )
    assert len(trained) == 1 and trained[0].data.tags["tuning.trial"] == str(best)
    assert trained[0].data.tags["decision"] == "promoted" and "winner promoted" in out, out
    version = client.get_model_version_by_alias("fraud-detector", "champion")
    assert f"model parameters from study `e2e`, trial {best}" in version.description


def test_bad_input_exits_2_naming_what_is_wrong(prefect_server, mlops_home, tiny_data, capsys, monkeypatch):
    code, out = mlops(capsys, "tune", "fraud", "--data", tiny_data)
    assert code == 2 and "give a budget" in out
    code, out = mlops(capsys, "tune", "frod", "--trials", "1")
    assert code == 2 and "unknown use case 'frod'" in out
    code, out = mlops(capsys, "tune", "fraud", "--trials", "0")
    assert code == 2 and "--trials 0" in out
    code, out = mlops(capsys, "run", "fraud", "--data", tiny_data, "--params-from", "study:missing")
    assert code == 2 and "unknown study 'missing'" in out
    code, out = mlops(capsys, "run", "fraud", "--params-from", "missing")
    assert code == 2 and "--params-from 'missing'" in out

    from usecases.fraud import spec as fraud
    from usecases.search_space import TuningSpec, int_range

    monkeypatch.setattr(fraud, "TUNING", TuningSpec((int_range("train_weeks", 1, 6, target="run"),)))
    code, out = mlops(capsys, "tune", "fraud", "--data", tiny_data, "--trials", "1")
    assert code == 2 and "'train_weeks': not a field" in out
    monkeypatch.setattr(fraud, "TUNING", TuningSpec((int_range("train_days", 0, 30, target="run"),)))
    code, out = mlops(capsys, "tune", "fraud", "--data", tiny_data, "--trials", "1")
    assert code == 2 and "train_days" in out and "not valid run parameters" in out
    assert not (mlops_home / "optuna.db").exists() or not study_names_in(mlops_home)


def study_names_in(home: Path) -> list[str]:
    storage = open_storage(f"sqlite:///{home / 'optuna.db'}")
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def test_two_processes_share_a_study_and_it_resumes_after_sigkill(
    prefect_server, mlops_home, tiny_data, capsys, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("MLOPS_STUDY_GRACE", "3")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "MLOPS_HOME": str(mlops_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["tune", "fraud", "--data", tiny_data, "--trials", "50", "--study", "shared", "--parallel", "1"]
    other = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args, "--no-train-winner"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (mlops_home / "optuna.db").exists() or "shared" not in study_names_in(mlops_home):
            assert other.poll() is None and time.monotonic() < deadline, "the other process did not start"
            time.sleep(1)
        # This process adds its trials to the study the other is running.
        code, out = mlops(capsys, *args[:5], "2", "--study", "shared", "--no-train-winner")
        assert code == 3, out
        runs = {t.user_attrs.get("tuning_run") for t in study_of(mlops_home, "shared").trials}
        assert len(runs) == 2, runs  # trials of both processes' runs
        while not any(t.state.name == "RUNNING" for t in study_of(mlops_home, "shared").trials):
            assert other.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        os.killpg(other.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the storage
        other.wait(30)
    finally:
        if other.poll() is None:
            os.killpg(other.pid, signal.SIGKILL)
    killed = [t for t in study_of(mlops_home, "shared").trials if t.state.name == "RUNNING"]
    assert killed
    before = len(study_of(mlops_home, "shared").trials)
    time.sleep(4)  # past the grace period without a heartbeat
    code, out = mlops(capsys, *args[:5], "1", "--study", "shared", "--no-train-winner")
    assert code == 3, out
    trials = study_of(mlops_home, "shared").trials
    assert len(trials) == before + 1
    assert trials[killed[0].number].state.name == "FAIL"  # the dead trial failed ...
    assert trials[-1].system_attrs.get("failed_trial") == killed[0].number  # ... and its params tried again
    assert trials[-1].params == killed[0].params


def test_stock_tunes_on_its_walk_forward_folds(prefect_server, mlops_home, tmp_path, capsys):
    from arch.data import sp500

    bars = sp500.load().reset_index().tail(1900)  # the split's windows, and 3 folds in what is left
    path = tmp_path / "sp500.parquet"
    bars.to_parquet(path)
    code, out = mlops(
        capsys, "tune", "stock", "--data", str(path), "--trials", "2", "--study", "st", "--no-train-winner"
    )
    assert code == 3, out
    study = study_of(mlops_home, "st")
    folds = study.user_attrs["folds"]
    assert len(folds) >= 2 and study.user_attrs["metric"] == "mae"
    assert study.direction.name == "MINIMIZE" and len(study.trials) == 2
    for fold in folds:  # the horizon (5 trading days) between every fit part and its block
        assert fold["fit"][1] < fold["block"][0]
    assert all("half_life" in t.params for t in study.trials)


def test_each_use_case_gets_a_tuning_deployment_with_study_and_budget_in_its_form():
    from prefect.utilities.callables import parameter_schema

    from infra.deployments import all_plans

    plans = [p for p in all_plans() if p.kind == "tuning"]
    assert {p.use_case for p in plans} == {"fraud", "stock"}
    for plan in plans:
        assert plan.flow.name == f"{plan.use_case}-tuning" and plan.timing.cron == "0 4 1 * *"
        assert plan.parameters == {"trials": 50} and plan.entrypoint.endswith(f"{plan.use_case}_tuning")
        form = parameter_schema(plan.flow).model_dump()["properties"]
        assert {"study", "trials", "timeout", "executor", "data"} <= set(form)
        assert form["trials"]["minimum"] == 1
