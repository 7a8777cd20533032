"""Bad input end to end: `mlops run fraud` on a registry that has a champion.

Every case must exit 2, say what is wrong (the check, column or option, and the value), and leave the store
exactly as it was: the same registered models, versions, descriptions, tags and aliases, the same logged
models and runs; the only record a rejected run may add is its own MLflow run, FAILED (an option out of its
bounds is refused before any run starts: none). The input files are the simulator's transactions (what a
normal run trains on) with one defect each.

Every case runs in this process through the real CLI parser (`cli.main:app`); the CLI has two ways to exit 2,
and each also runs as a `mlops` process of its own, for the exit status a scheduler sees: an option refused
by its bounds (before the flow), and input the flow rejects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_FRAUD_RUN
from ports import end_group
from stores import copy_home, new_logged_models, new_runs, snapshot

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fraud-detector"

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


def mlops_process(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`mlops run fraud ARGS` as its own process (its own process group, ended whatever happens)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update(
        MLOPS_HOME=str(home), PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT), COLUMNS="200"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", "fraud", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        end_group(process.pid)
    return subprocess.CompletedProcess(process.args, process.returncode, output)


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    """What the small simulated run trains on (SMALL_FRAUD_RUN's size and seed): 38k rows, 70 days."""
    from usecases.fraud.simulator import simulate_transactions

    return simulate_transactions(n_customers=300, n_terminals=600, n_days=70, seed=42)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, registry_template) -> Path:
    """A SQLite registry whose champion is v1 (a copy of the session's template); no case may change it."""
    return copy_home(registry_template(*SMALL_FRAUD_RUN), tmp_path_factory.mktemp("bad-input") / "mlops")


@pytest.fixture
def mlops(registry, monkeypatch, capsys):
    """`mlops run fraud ARGS` in this process on `registry`: (exit code, what it printed)."""
    import mlflow

    from cli.main import app

    monkeypatch.setenv("MLOPS_HOME", str(registry))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = app(["run", "fraud", *args], standalone_mode=False) or 0
        finally:
            mlflow.set_tracking_uri(None)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


# --- the defects: each writes a file (or gives options) and names what the run must say --------------------


def _parquet(frame: pd.DataFrame, folder: Path, name: str = "transactions.parquet") -> list[str]:
    path = folder / name
    frame.to_parquet(path)
    return ["--data", str(path)]


def _csv(frame: pd.DataFrame, folder: Path, name: str = "transactions.csv") -> list[str]:
    path = folder / name
    frame.to_csv(path, index=False)
    return ["--data", str(path)]


def _with(frame: pd.DataFrame, rows, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.index[rows], column] = value
    return frame


def too_few_rows(frame, folder):
    return _parquet(frame.head(900), folder)


def fraud_rate_too_high(frame, folder):
    rows = np.random.default_rng(0).choice(len(frame), size=len(frame) * 3 // 10, replace=False)
    return _parquet(_with(frame, rows, "TX_FRAUD", 1), folder)


def fraud_rate_too_low(frame, folder):
    frame = frame.assign(TX_FRAUD=0)
    return _parquet(_with(frame, [0], "TX_FRAUD", 1), folder)  # 1 in 38k: below 0.05 %


def unparseable_timestamps(frame, folder):
    frame = frame.assign(TX_DATETIME=frame["TX_DATETIME"].astype(str))
    return _csv(_with(frame, slice(100, 105), "TX_DATETIME", "31/02/2018 25:61"), folder)


def infinite_amount(frame, folder):
    # passes the raw suite (a float, not null, >= 0) but makes the customer's average amounts NaN
    return _parquet(_with(frame, [100], "TX_AMOUNT", np.inf), folder)


def no_frauds_in_the_test_window(frame, folder):
    last_week = frame["TX_DATETIME"] > frame["TX_DATETIME"].max() - pd.Timedelta(days=7)
    frame = frame.copy()
    frame.loc[last_week, "TX_FRAUD"] = 0
    return _parquet(frame, folder)


def json_file(frame, folder):
    path = folder / "transactions.json"
    frame.head(10).to_json(path)
    return ["--data", str(path)]


def missing_file(frame, folder):
    return ["--data", str(folder / "nowhere.parquet")]


def header_only(frame, folder):
    return _csv(frame.head(0), folder)


def not_parquet(frame, folder):
    path = folder / "broken.parquet"
    path.write_bytes(b"not,a\x00parquet")
    return ["--data", str(path)]


def missing_column(frame, folder):
    return _csv(frame.drop(columns=["TX_AMOUNT"]), folder)


def label_out_of_set(frame, folder):
    # beside the newest week's missing labels (NaN in a CSV: float64), which are accepted: only the 2s fail
    last_week = frame["TX_DATETIME"] > frame["TX_DATETIME"].max() - pd.Timedelta(days=7)
    frame = frame.assign(TX_FRAUD=frame["TX_FRAUD"].astype("float64").mask(last_week))
    return _csv(_with(frame, slice(0, 3), "TX_FRAUD", 2), folder)


def no_label_known(frame, folder):
    return _csv(frame.assign(TX_FRAUD=np.nan), folder)


def negative_amount(frame, folder):
    return _csv(_with(frame, slice(0, 3), "TX_AMOUNT", -10.0), folder)


def missing_amount(frame, folder):
    return _csv(_with(frame, slice(0, 3), "TX_AMOUNT", np.nan), folder)


def duplicate_ids(frame, folder):
    frame = frame.copy()
    frame.loc[frame.index[1], "TRANSACTION_ID"] = frame.loc[frame.index[0], "TRANSACTION_ID"]
    return _csv(frame, folder)


def options(*args: str) -> Callable:
    return lambda frame, folder: list(args)


CASES = {
    "too few rows": (too_few_rows, ["fraud_raw", "row_count", "900"]),
    "fraud rate above 20 %": (fraud_rate_too_high, ["fraud_raw", "TX_FRAUD", "fraud rate within"]),
    "fraud rate below 0.05 %": (fraud_rate_too_low, ["fraud_raw", "TX_FRAUD", "fraud rate within"]),
    "unparseable timestamps": (unparseable_timestamps, ["fraud_raw", "TX_DATETIME", "unparseable"]),
    "feature suite: infinite amount": (infinite_amount, ["fraud_features", "CUSTOMER_ID_AVG_AMOUNT"]),
    "test window without frauds": (
        no_frauds_in_the_test_window,
        ["test window", "0 positive 'TX_FRAUD' rows"],
    ),
    "unsupported extension": (json_file, ["transactions.json", "unsupported file type '.json'"]),
    "missing file": (missing_file, ["nowhere.parquet", "no such file"]),
    "empty file": (header_only, ["transactions.csv", "no rows"]),
    "unreadable file": (not_parquet, ["broken.parquet", "cannot be read"]),
    "missing column": (missing_column, ["fraud_raw", "TX_AMOUNT"]),
    "label out of set": (
        label_out_of_set,
        ["fraud_raw failed 1 of", "expect_column_values_to_be_in_set(TX_FRAUD) failed", "e.g. [2.0]"],
    ),
    "no label known": (
        no_label_known,
        ["fraud_raw failed 2 of", "not_be_null(TX_FRAUD)", "fewer than 50% of TX_FRAUD labels known"],
    ),
    "negative amount": (negative_amount, ["fraud_raw", "TX_AMOUNT"]),
    "missing amount": (missing_amount, ["fraud_raw", "TX_AMOUNT"]),
    "duplicate ids": (duplicate_ids, ["fraud_raw", "TRANSACTION_ID"]),
    "option below its bound": (options("--days", "10"), ["--days 10", "greater than or equal to 60"]),
    "option above its bound": (
        options("--min-roc-auc", "1.5"),
        ["--min-roc-auc 1.5", "less than or equal to 1"],
    ),
    "option off its pattern": (options("--init", "latest"), ["--init 'latest'", "should match pattern"]),
}


# The cases refused before the flow starts (pydantic bounds on the options): no MLflow run.
BEFORE_THE_FLOW = {"option below its bound", "option above its bound", "option off its pattern"}


def check_rejection(case: str, code: int, output: str, before: dict, after: dict) -> None:
    said = " ".join(output.split())  # rich wraps long lines
    assert code == 2, said[-3000:]
    assert "input rejected" in said and "the champion is unchanged" in said, said[-3000:]
    for text in CASES[case][1]:
        assert text in said, f"{text!r} not in: {said[-3000:]}"
    assert before["registry"][MODEL]["aliases"] == {"champion": "1"}
    assert after["registry"] == before["registry"]
    assert new_logged_models(before, after) == {}
    added = new_runs(before, after)  # and every earlier run as it was
    expected = [] if case in BEFORE_THE_FLOW else ["FAILED"]
    assert [run["status"] for run in added.values()] == expected, added


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_says_why_and_leaves_the_registry_as_it_was(
    case, registry, mlops, transactions, tmp_path
):
    args = CASES[case][0](transactions, tmp_path)
    uri = f"sqlite:///{registry / 'mlflow.db'}"
    before = snapshot(uri)
    code, output = mlops(*args)
    check_rejection(case, code, output, before, snapshot(uri))


@pytest.mark.parametrize("case", ["option below its bound", "missing column"])  # one per way to exit 2
def test_a_mlops_process_exits_2_on_bad_input(case, registry, transactions, tmp_path):
    args = CASES[case][0](transactions, tmp_path)
    uri = f"sqlite:///{registry / 'mlflow.db'}"
    before = snapshot(uri)
    result = mlops_process(registry, *args)
    check_rejection(case, result.returncode, result.stdout, before, snapshot(uri))
