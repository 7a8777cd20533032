"""Shared fixtures, light enough for the unit tests: nothing here imports Prefect or MLflow at import time.

Tests are grouped by kind, one folder each (the marker follows the folder):
- tests/unit    no servers, no flows: pure functions, stages called directly, SQLite MLflow at most (seconds);
- tests/flow    flows through the CLI or in-process, with temporary stores (a Prefect test server, SQLite);
- tests/server  MLflow and Prefect servers on the local PostgreSQL;
- tests/bench   each benchmark's smoke mode (bench/*.py --smoke: tiny simulated data, results to a temp dir).
`make test-fast` runs tests/unit; `make test` runs everything.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# As `mlops` does (cli/main.py): OpenMP threads sleep rather than spin beside the servers the tests run.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DO_NOT_TRACK", "true")
# Tests keep Prefect's per-process temporary server (or the session's test harness); the background server
# that CLI users get (infra/prefect_local.py) has tests of its own that opt in.
os.environ.setdefault("MLOPS_PREFECT_SERVER", "ephemeral")
# A loaded 2-core machine can take longer than Prefect's default to start a temporary server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Prefect's console log handler keeps the stream it was created with; pytest swaps and closes sys.stderr per
# test, so point the handler at the process's real stderr (still captured by pytest at the fd level).
os.environ.setdefault("COLUMNS", "160")  # rich tables in captured output: wide enough not to wrap
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_STREAM", "ext://sys.__stderr__")

# A small simulated fraud run with the absolute gates off: on a sample this small they may refuse, and the
# tests using it are about promotion and the registry, not about gates.
SMALL_FRAUD_RUN = [
    *("--customers", "300", "--terminals", "600", "--days", "70"),
    *("--min-roc-auc", "0", "--min-average-precision", "0"),
]

HANDBOOK = Path(__file__).resolve().parents[1].parent / "shared/data/fraud-handbook/transactions.parquet"
KINDS = ("unit", "flow", "server", "bench")


# `make test` runs on two pytest-xdist workers (`-n 2 --no-loadscope-reorder`, the scheduler below; see
# docs/tests.md). Each file is one work unit, so its module fixtures stay together, except these three: they
# start servers and processes of their own and keep more than a core busy each, so two of them side by side
# only share the same two cores (measured: no gain). They form one unit, run one after the other by one
# worker, while the other worker takes the files that mostly run in the pytest process, longest first.
BESIDE_EACH_OTHER_NEVER = ("server/test_server_mode.py", "bench/test_smoke.py", "flow/test_faults.py")
# Seconds of a serial run here (bench/results/suite_time.json), for the order of the other files only.
LONGEST_FIRST = {
    "flow/test_pipeline.py": 130,
    "flow/test_concurrent_promotion.py": 110,
    "flow/test_scoring.py": 105,
    "flow/test_browser.py": 105,
    "flow/test_dask.py": 90,
    "flow/test_wheel.py": 90,
    "flow/test_tuning.py": 85,
    "flow/test_monitoring.py": 75,
    "flow/test_lifecycle.py": 65,
    "flow/test_bad_input.py": 55,
    "flow/test_realtime.py": 45,
    "flow/test_stock_pipeline.py": 45,
    "flow/test_prefect_local.py": 40,
    "flow/test_serving.py": 40,
    "flow/test_compact.py": 35,
    "unit/test_compare.py": 35,
    "flow/test_continual_pipeline.py": 35,
    "unit/test_layout.py": 35,
}


HEAVY_UNIT = "servers-and-processes"


def work_unit(path: str) -> str:
    """A test's unit of work for the xdist workers, from its node id: its file under tests/, or HEAVY_UNIT."""
    file = path.split("::", 1)[0].removeprefix("tests/")
    return HEAVY_UNIT if file in BESIDE_EACH_OTHER_NEVER else file


def pytest_xdist_make_scheduler(config, log):
    """The workers' scheduler: xdist's load-scope one, with `work_unit` as the scope (all tests of a unit go
    to one worker, in order; a unit at a time)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in KINDS:
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item) -> tuple[bool, int]:  # the order the units are handed out in (`--no-loadscope-reorder`)
        unit = work_unit(item.nodeid)  # as the scheduler reads it
        return unit != HEAVY_UNIT, -LONGEST_FIRST.get(unit, 0)

    items.sort(key=rank)  # stable: a file's tests keep their order


def registry_client(home: Path):
    """A client on the SQLite tracking and registry store that `mlops` keeps under MLOPS_HOME=home."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    return MlflowClient()


def needs(what: str, why: str) -> None:
    """A test's missing prerequisite: under CI a failure (nothing may be skipped silently), else a skip."""
    message = f"{what} is not available: {why}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must provide it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def launcher(prefect_server, tmp_path_factory):
    """One process that has imported the CLI and forks a child per `mlops` run (tests/flow/fault_launcher.py):
    real processes, SIGKILL-able, without ~13 s of imports each. Children get their store from the request."""
    from flow.fault_launcher import Launcher
    from prefect.settings import PREFECT_API_URL

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "MLOPS_HOME", "MLOPS_REGISTRY_", "MLOPS_DASK_", "PREFECT_API"))
    }
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), COLUMNS="200")
    started = Launcher(env, tmp_path_factory.getbasetemp() / "launcher.log")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def mlops_home(tmp_path, monkeypatch):
    """A project-local MLflow store (SQLite + artifacts) of this test's own."""
    import mlflow

    home = tmp_path / "mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory, prefect_server):
    """`template(*ARGS)`: an MLOPS_HOME holding what `mlops run fraud ARGS` leaves (in this process, once per
    session and ARGS); copy it with `stores.copy_home`, never write to it."""
    import mlflow

    from cli.main import app

    made: dict[tuple[str, ...], Path | str] = {}

    def template(*args: str) -> Path:
        if args not in made:
            home = tmp_path_factory.mktemp("registry-template") / "mlops"
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLOPS_HOME", str(home))
                patch.delenv("MLFLOW_TRACKING_URI", raising=False)
                try:
                    code = app(["run", "fraud", *args], standalone_mode=False) or 0
                finally:
                    mlflow.set_tracking_uri(None)
            made[args] = home if code == 0 else f"`mlops run fraud {' '.join(args)}` exited {code}"
        if isinstance(made[args], str):  # failed once: every test that needs it fails, without retraining
            pytest.fail(made[args])
        return made[args]

    return template


@pytest.fixture
def champion_home(registry_template, tmp_path, monkeypatch):
    """Like `mlops_home`, holding what one small fraud run (SMALL_FRAUD_RUN) left: fraud-detector v1,
    champion. A copy of the session's template (trained once), self-contained."""
    import mlflow
    from stores import copy_home

    home = copy_home(registry_template(*SMALL_FRAUD_RUN), tmp_path / "mlops")
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def handbook_path():
    if not HANDBOOK.exists():
        needs("the Fraud Detection Handbook data", f"not found at {HANDBOOK}")
    return HANDBOOK


@dataclass
class Result:
    exit_code: int
    output: str


@pytest.fixture
def mlops_run(capsys):
    """Run `mlops run fraud ARGS` in-process (the real CLI parser) and capture what it prints."""
    from cli.main import app

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = app(["run", "fraud", *args], standalone_mode=False)
        return Result(code or 0, capsys.readouterr().out)

    return run
