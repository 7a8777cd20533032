"""Two `mlops run` processes at once on one registry: exactly one champion and a consistent alias history.

The compare-and-promote step is serialised by a lock that lives with the registry (a file lock beside the
SQLite database; an advisory lock in PostgreSQL), so the second run waits, re-reads the champion and compares
against it. These are real OS processes, as two schedulers or two people would start them (forked from the
session's launcher, which imported the CLI once: tests/flow/fault_launcher.py), each in a process group of its
own that the test ends.
"""

import time
from pathlib import Path

import mlflow
import pytest
from conftest import SMALL_FRAUD_RUN, needs
from mlflow import MlflowClient
from ports import end_group
from stores import copy_home, postgres_available, postgres_database

from champion.promotion import read_history

ROOT = Path(__file__).resolve().parents[2]
SMALL = SMALL_FRAUD_RUN
MODEL = "fraud-detector"

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


def run_together(launcher, env: dict, *arg_lists: list[str], cwd: Path, folder: Path) -> list:
    """Start one `mlops run fraud` process per argument list at the same time; wait for all."""
    outputs = [folder / f"run-{i}.log" for i in range(len(arg_lists))]
    # the children get only the store we say: this process's MLFLOW_TRACKING_URI is not theirs
    pids = [
        launcher.start(
            ["run", "fraud", *SMALL, *args],
            output,
            env=env,
            unset=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLOPS_REGISTRY_LOCK_URI"),
            cwd=cwd,
        )
        for args, output in zip(arg_lists, outputs, strict=True)
    ]
    results = [launcher.wait(pid, output, timeout=800) for pid, output in zip(pids, outputs, strict=True)]
    assert not any(r.stragglers for r in results), "a process a run started outlived it"
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


def test_two_identical_runs_at_once_register_one_version(launcher, tmp_path):
    home = tmp_path / "mlops"
    a, b = run_together(launcher, {"MLOPS_HOME": str(home)}, [], [], cwd=ROOT, folder=tmp_path)
    assert a.returncode == 0, a.stdout[-3000:]
    assert b.returncode == 0, b.stdout[-3000:]
    assert "identical earlier registration reused" in a.stdout + b.stdout
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    state = assert_consistent(MlflowClient(), expected_versions=1)
    assert state["champion"] == "1" and len(state["history"]) == 1
    mlflow.set_tracking_uri(None)


def test_two_different_runs_at_once_end_with_one_champion_and_a_chained_history(launcher, tmp_path):
    home = tmp_path / "mlops"
    # same data, two parameter sets: both pass the registration gates; with the lock the second compares
    # against the first's version (margin 1.0: whichever comes second promotes too, so the alias moves twice
    # whatever the order the lock gave them)
    a, b = run_together(
        launcher,
        {"MLOPS_HOME": str(home)},
        ["--champion-margin", "1.0"],
        ["--max-depth", "4", "--champion-margin", "1.0"],
        cwd=ROOT,
        folder=tmp_path,
    )
    assert a.returncode == 0, a.stdout[-3000:]
    assert b.returncode == 0, b.stdout[-3000:]
    assert "champion lock on fraud-detector acquired" in a.stdout + b.stdout
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    state = assert_consistent(MlflowClient(), expected_versions=2)
    assert [e["previous"] for e in state["history"]] == ["", state["history"][0]["version"]]
    mlflow.set_tracking_uri(None)


@pytest.fixture
def postgres_uri():
    """A PostgreSQL database of this test's own, dropped after it."""
    if not postgres_available():
        needs("PostgreSQL", "nothing answers at 127.0.0.1:5432")
    with postgres_database() as uri:
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


def test_two_runs_at_once_on_a_postgres_registry(launcher, tmp_path, postgres_uri):
    mlflow.set_tracking_uri(postgres_uri)
    MlflowClient().search_experiments()  # create the schema once, before two processes race to migrate it
    a, b = run_together(
        launcher,
        {"MLFLOW_TRACKING_URI": postgres_uri, "MLOPS_HOME": str(tmp_path / "mlops")},
        ["--champion-margin", "1.0"],
        ["--max-depth", "4", "--champion-margin", "1.0"],
        cwd=tmp_path,  # artifacts of a database store without an artifact root go to ./mlruns
        folder=tmp_path,
    )
    assert a.returncode == 0, a.stdout[-3000:]
    assert b.returncode == 0, b.stdout[-3000:]
    assert "postgres advisory lock" in a.stdout + b.stdout
    mlflow.set_tracking_uri(postgres_uri)
    assert_consistent(MlflowClient(), expected_versions=2)


HOLD_LOCK = """
import os, time
from champion.lock import champion_lock
with champion_lock("fraud-detector", timeout=120, holder="test"):
    with open(os.environ["CRITICAL_LOG"], "a") as log:
        log.write(f"start {os.getpid()} {time.time()}\\n")
    time.sleep(0.8)
    with open(os.environ["CRITICAL_LOG"], "a") as log:
        log.write(f"end {os.getpid()} {time.time()}\\n")
"""


@pytest.fixture(params=["sqlite", "postgres"])
def lock_uri(request, tmp_path):
    """Where the lock lives: beside a SQLite file, or in a PostgreSQL database of this test's own (an advisory
    lock is per database: never the shared `postgres` one)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
        return
    if not postgres_available():
        needs("PostgreSQL", "nothing answers at 127.0.0.1:5432")
    with postgres_database() as uri:
        yield uri


def test_the_lock_serialises_processes(launcher, tmp_path, lock_uri):
    """Three processes (forked by the launcher) take the champion lock at once: their critical sections never
    overlap."""
    log = tmp_path / "critical.log"
    env = {"MLOPS_REGISTRY_LOCK_URI": lock_uri, "CRITICAL_LOG": str(log)}
    outputs = [tmp_path / f"holder-{i}.log" for i in range(3)]
    pids = [launcher.start([], output, env=env, python=HOLD_LOCK) for output in outputs]
    done = [launcher.wait(pid, output, timeout=120) for pid, output in zip(pids, outputs, strict=True)]
    assert [d.returncode for d in done] == [0, 0, 0], [d.stdout[-2000:] for d in done]
    assert [d.stragglers for d in done] == [False, False, False]
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
    """One `mlops run fraud` process (forked by the launcher) whose output is read as it comes."""

    def __init__(self, launcher, folder: Path, env: dict, *args: str):
        self.launcher, self.log = launcher, folder / f"run-{time.monotonic_ns()}.log"
        self.pid = launcher.start(
            ["run", "fraud", *SMALL, *args],
            self.log,
            env=env,
            unset=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLOPS_REGISTRY_LOCK_URI"),
        )
        self.finished = None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def running(self) -> bool:
        return self.pid not in self.launcher.exited

    def wait_for_line(self, text: str, timeout: float) -> str:
        """The first output line containing `text`; fails if the process ends or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.output.splitlines() if text in line), None)
            if found is not None:
                return found
            assert self.running, f"exited before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{self.output}"
            time.sleep(0.2)

    def finish(self, timeout: float) -> int:
        self.finished = self.launcher.wait(self.pid, self.log, timeout)
        assert not self.finished.stragglers, "a process the run started outlived it"
        return self.finished.returncode

    def kill(self) -> None:
        if self.finished is None:
            end_group(self.pid)


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


def test_a_run_waits_for_the_champion_lock_then_completes(lock_home, launcher, tmp_path):
    """The test holds the champion lock (the file lock beside the SQLite registry): a real run trains, says it
    waits for the lock, registers nothing while it waits, and finishes once the lock is released."""
    from champion.lock import champion_lock

    run = None
    try:
        with champion_lock(MODEL, timeout=10, holder="the lock test") as description:
            assert description.startswith("file lock ") and str(lock_home) in description
            run = Run(launcher, tmp_path, {"MLOPS_HOME": str(lock_home)})
            run.wait_for_line("waiting for the champion lock", timeout=600)
            said = " ".join(run.output.split())  # rich may wrap a long line
            assert "held by pid" in said and "the lock test" in said, said[-3000:]  # it names the holder
            assert run.running, run.output
            assert "champion lock on fraud-detector acquired" not in run.output
            assert registry(lock_home) == {}, "nothing may be registered while the lock is held"
        assert run.finish(600) == 0, run.output[-3000:]
    finally:
        if run is not None:
            run.kill()
    acquired = next(x for x in run.output.splitlines() if "champion lock on fraud-detector acquired" in x)
    assert run.output.index("waiting for the champion lock") < run.output.index(acquired)
    assert registry(lock_home) == {MODEL: (["1"], {"champion": "1"})}


def test_a_lock_held_past_the_timeout_fails_the_run_and_registers_nothing(
    lock_home, launcher, registry_template, tmp_path
):
    from champion.lock import champion_lock

    copy_home(registry_template(*SMALL), lock_home)  # what one run of SMALL left: v1, champion
    before = registry(lock_home)
    assert before == {MODEL: (["1"], {"champion": "1"})}

    run = None
    try:
        with champion_lock(MODEL, timeout=10, holder="the lock test"):
            # different parameters: without the lock this run would register (and maybe promote) a version
            env = {"MLOPS_HOME": str(lock_home), "MLOPS_REGISTRY_LOCK_TIMEOUT": "3"}
            run = Run(launcher, tmp_path, env, "--max-depth", "4")
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
