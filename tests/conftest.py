"""Shared fixtures: a real Prefect test server for the session and a fresh SQLite MLflow store per test."""

import os
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
# Prefect's console log handler keeps the stream it was created with; pytest swaps and closes sys.stderr per
# test, so point the handler at the process's real stderr (still captured by pytest at the fd level).
os.environ.setdefault("COLUMNS", "160")  # rich tables in captured output: wide enough not to wrap
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_STREAM", "ext://sys.__stderr__")

import mlflow  # noqa: E402
import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

# A small simulated fraud run with the absolute gates off: on a sample this small they may refuse, and the
# tests using it are about promotion and the registry, not about gates.
SMALL_FRAUD_RUN = [
    *("--customers", "300", "--terminals", "600", "--days", "70"),
    *("--min-roc-auc", "0", "--min-average-precision", "0"),
]

HANDBOOK = Path(__file__).resolve().parents[1].parent / "shared/data/fraud-handbook/transactions.parquet"


def registry_client(home: Path) -> MlflowClient:
    """A client on the SQLite tracking and registry store that `mlops` keeps under MLOPS_HOME=home."""
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    return MlflowClient()


@pytest.fixture(scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlops_home(tmp_path, monkeypatch):
    """A project-local MLflow store (SQLite + artifacts) of this test's own."""
    home = tmp_path / "mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def handbook_path():
    if not HANDBOOK.exists():
        pytest.skip(f"reference data not found at {HANDBOOK}")
    return HANDBOOK
