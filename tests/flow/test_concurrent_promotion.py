"""Two `mlops run` processes at once on one registry: exactly one champion and a consistent alias history.

The compare-and-promote step is serialised by a lock that lives with the registry (a file lock beside the
SQLite database; an advisory lock in PostgreSQL), so the second run waits, re-reads the champion and compares
against it. These are real OS processes, as two schedulers or two people would start them.
"""

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from conftest import SMALL_FRAUD_RUN, needs
from mlflow import MlflowClient

from champion.promotion import read_history

ROOT = Path(__file__).resolve().parents[2]
SMALL = SMALL_FRAUD_RUN
MODEL = "fraud-detector"

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


def run_together(env: dict, *arg_lists: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start one `mlops run fraud` process per argument list at the same time; wait for all."""
    from prefect.settings import PREFECT_API_URL

    # mlflow.set_tracking_uri() in this process exports MLFLOW_TRACKING_URI: the children get only what we say
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    env = {**inherited, **env, "PREFECT_API_URL": PREFECT_API_URL.value()}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run", "fraud", *SMALL, *args],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in arg_lists
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=800)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


def assert_consistent(client: MlflowClient, expected_versions: int) -> dict:
    """One champion; every alias move recorded once, each starting where the previous one ended."""
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == expected_versions, [v.version for v in versions]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    history = read_history(client, MODEL)
    assert history, "the promotion is recorded"
    previous = ""
    for entry in history:
        assert entry["previous"] == previous, history
        previous = entry["version"]
    assert history[-1]["version"] == str(champion.version)
    # version tags tell the same story
    assert champion.tags["previous_champion"] == history[-1]["previous"]
    promoted = [v for v in versions if v.tags.get("promoted_at")]
    assert sorted(str(v.version) for v in promoted) == sorted({e["version"] for e in history})
    return {"champion": str(champion.version), "history": history}


def test_two_identical_runs_at_once_register_one_version(tmp_path):
    home = tmp_path / "mlops"
    a, b = run_together({"MLOPS_HOME": str(home)}, [], [], cwd=ROOT)
    assert a.returncode == 0, a.stdout[-3000:]
    assert b.returncode == 0, b.stdout[-3000:]
    assert "identical earlier registration reused" in a.stdout + b.stdout
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    state = assert_consistent(MlflowClient(), expected_versions=1)
    assert state["champion"] == "1" and len(state["history"]) == 1
    mlflow.set_tracking_uri(None)


def test_two_different_runs_at_once_end_with_one_champion_and_a_chained_history(tmp_path):
    home = tmp_path / "mlops"
    # same data, two parameter sets: both pass the registration gates; with the lock the second compares
    # against the first's version (margin 1.0: it may be worse and still promote, so the alias moves twice)
    a, b = run_together(
        {"MLOPS_HOME": str(home)},
        ["--champion-margin", "1.0"],
        ["--max-depth", "4", "--champion-margin", "1.0"],
        cwd=ROOT,
    )
    assert a.returncode == 0, a.stdout[-3000:]
    assert b.returncode == 0, b.stdout[-3000:]
    assert "champion lock on fraud-detector acquired" in a.stdout + b.stdout
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    state = assert_consistent(MlflowClient(), expected_versions=2)
    assert [e["previous"] for e in state["history"]] == ["", state["history"][0]["version"]]
    mlflow.set_tracking_uri(None)


def _postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.fixture
def postgres_uri():
    if not _postgres_available():
        needs("PostgreSQL", "nothing answers at 127.0.0.1:5432")
    import psycopg2

    name = f"mlops_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    uri = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"  # SQLAlchemy 2.1 defaults to psycopg 3
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_two_runs_at_once_on_a_postgres_registry(tmp_path, postgres_uri):
    mlflow.set_tracking_uri(postgres_uri)
    MlflowClient().search_experiments()  # create the schema once, before two processes race to migrate it
    a, b = run_together(
        {"MLFLOW_TRACKING_URI": postgres_uri, "MLOPS_HOME": str(tmp_path / "mlops")},
        ["--champion-margin", "1.0"],
        ["--max-depth", "4", "--champion-margin", "1.0"],
        cwd=tmp_path,  # artifacts of a database store without an artifact root go to ./mlruns
    )
    assert a.returncode == 0, a.stdout[-3000:]
    assert b.returncode == 0, b.stdout[-3000:]
    assert "postgres advisory lock" in a.stdout + b.stdout
    mlflow.set_tracking_uri(postgres_uri)
    assert_consistent(MlflowClient(), expected_versions=2)


HOLD_LOCK = """
import os, sys, time
from champion.lock import champion_lock
with champion_lock("fraud-detector", timeout=120, holder="test"):
    with open(sys.argv[1], "a") as log:
        log.write(f"start {os.getpid()} {time.time()}\\n")
    time.sleep(0.8)
    with open(sys.argv[1], "a") as log:
        log.write(f"end {os.getpid()} {time.time()}\\n")
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_lock_serialises_processes(tmp_path, backend):
    """Three processes take the champion lock at once: their critical sections never overlap."""
    if backend == "postgres":
        if not _postgres_available():
            needs("PostgreSQL", "nothing answers at 127.0.0.1:5432")
        uri = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "critical.log"
    env = {**os.environ, "MLOPS_REGISTRY_LOCK_URI": uri, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(log)], cwd=ROOT, env=env) for _ in range(3)
    ]
    assert [p.wait(120) for p in processes] == [0, 0, 0]
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 6
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert start[0] == "start" and end[0] == "end" and start[1] == end[1], events
    assert len({e[1] for e in events}) == 3


def test_with_an_mlflow_server_the_lock_is_a_prefect_concurrency_limit(monkeypatch):
    """For an HTTP tracking URI the lock is a one-slot Prefect global concurrency limit (shared API)."""
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from champion.lock import champion_lock

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.setenv("MLOPS_REGISTRY_LOCK_URI", "http://mlflow.example:5000")
    events, errors = [], []

    def hold(name: str) -> None:
        try:
            with champion_lock("prefect-locked-model", timeout=120) as description:
                events.append(("start", name, description))
                time.sleep(1.0)
                events.append(("end", name, description))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=hold, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert [e[0] for e in events] == ["start", "end", "start", "end"], events
    assert events[0][1] == events[1][1] and "mlops-champion-prefect-locked-model" in events[0][2]
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("mlops-champion-prefect-locked-model").limit == 1


class Run:
    """One `mlops run fraud` process whose output is read line by line as it comes."""

    def __init__(self, env: dict, *args: str):
        from prefect.settings import PREFECT_API_URL

        inherited = {
            k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        }
        env = {**inherited, **env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run", "fraud", *SMALL, *args],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> str:
        """The first output line containing `text`; fails if the process ends or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                assert self.reader.is_alive(), (
                    f"exited ({self.process.poll()}) before {text!r}:\n{self.output}"
                )
                assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{self.output}"
                self.changed.wait(1.0)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.reader.join(30)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def lock_home(tmp_path, monkeypatch):
    """A temporary MLOPS_HOME for this process (to hold the lock) and the runs it starts."""
    home = tmp_path / "mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLOPS_REGISTRY_LOCK_URI", raising=False)
    yield home
    mlflow.set_tracking_uri(None)


def registry(home: Path) -> dict:
    """Every registered model's versions and aliases in the SQLite registry under `home`."""
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    return {
        m.name: (
            sorted(str(v.version) for v in client.search_model_versions(f"name = '{m.name}'")),
            {alias: str(version) for alias, version in dict(m.aliases).items()},
        )
        for m in client.search_registered_models()
    }


def test_a_run_waits_for_the_champion_lock_then_completes(lock_home):
    """The test holds the champion lock (the file lock beside the SQLite registry): a real run trains, says it
    waits for the lock, registers nothing while it waits, and finishes once the lock is released."""
    from champion.lock import champion_lock

    run = None
    try:
        with champion_lock(MODEL, timeout=10, holder="the lock test") as description:
            assert description.startswith("file lock ") and str(lock_home) in description
            run = Run({"MLOPS_HOME": str(lock_home)})
            run.wait_for_line("waiting for the champion lock", timeout=600)
            said = " ".join(run.output.split())  # rich may wrap a long line
            assert "held by pid" in said and "the lock test" in said, said[-3000:]  # it names the holder
            assert run.process.poll() is None, run.output
            assert "champion lock on fraud-detector acquired" not in run.output
            assert registry(lock_home) == {}, "nothing may be registered while the lock is held"
        assert run.finish(600) == 0, run.output[-3000:]
    finally:
        if run is not None:
            run.kill()
    acquired = next(line for line in run.lines if "champion lock on fraud-detector acquired" in line)
    assert run.output.index("waiting for the champion lock") < run.output.index(acquired)
    assert registry(lock_home) == {MODEL: (["1"], {"champion": "1"})}


def test_a_lock_held_past_the_timeout_fails_the_run_and_registers_nothing(lock_home):
    from champion.lock import champion_lock

    first = Run({"MLOPS_HOME": str(lock_home)})
    assert first.finish(600) == 0, first.output[-3000:]
    before = registry(lock_home)
    assert before == {MODEL: (["1"], {"champion": "1"})}

    run = None
    try:
        with champion_lock(MODEL, timeout=10, holder="the lock test"):
            # different parameters: without the lock this run would register (and maybe promote) a version
            run = Run({"MLOPS_HOME": str(lock_home), "MLOPS_REGISTRY_LOCK_TIMEOUT": "3"}, "--max-depth", "4")
            code = run.finish(600)
    finally:
        if run is not None:
            run.kill()
    assert code == 1, run.output[-3000:]
    output = " ".join(run.output.split())  # rich wraps long lines
    assert "waiting for the champion lock" in output
    assert "run failed: RegistryLockTimeout: champion lock" in output, output[-3000:]
    assert "still held by pid" in output and "the lock test after 3 s" in output, output[-3000:]
    assert registry(lock_home) == before
