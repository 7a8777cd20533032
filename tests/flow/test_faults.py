"""`mlops run fraud` killed with SIGKILL at each stage, on a SQLite and on a PostgreSQL registry.

Each test starts from a registry whose champion is v1 (one normal run, shared per backend: the SQLite store
is copied, the PostgreSQL database cloned from a template), runs a candidate that would be registered and
promoted as v2, and kills it at one point (tests/flow/fault_launcher.py: no hook in the production code).
Then the registry must hold no champion that skipped its gates, no version without its gate verdicts, the
alias history must still tell one story, and the champion lock must be free; and the same command rerun — what
a scheduler's retry or a person does — must finish the job: v2 registered once, champion, exit 0.

The outcome per kill point and backend is written to `<pytest basetemp>/faults.md` (the README's
"Reliability" table).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SMALL_FRAUD_RUN, needs
from stores import (
    client_for,
    create_database,
    database_name,
    drop_database,
    history_breaks,
    invariant_violations,
    postgres_available,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("fault_launcher.py")
MODEL = "fraud-detector"
# Registered and promoted over v1 when it runs to the end: another depth (so not a rerun of v1), and margins
# that let it take over even where it scores a little worse than v1 on some slice.
CANDIDATE = [
    *SMALL_FRAUD_RUN,
    *("--max-depth", "4", "--champion-margin", "1.0", "--slice-margin", "1.0", "--forgetting-margin", "1.0"),
]
# What the registry holds right after the kill: (versions, champion).
LEFT_BEHIND = {
    "validate": (["1"], "1"),
    "train": (["1"], "1"),
    "register": (["1"], "1"),
    "register->promote": (["1", "2"], "1"),
    "promote": (["1", "2"], "1"),
    "promote->report": (["1", "2"], "2"),
}

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


@dataclass
class Store:
    backend: str
    uri: str  # tracking and registry URI, also where the champion lock lives
    env: dict = field(default_factory=dict)
    cwd: Path = ROOT


def mlops(store: Store, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`mlops run fraud ARGS` as its own process (through the fault launcher when `kill_at` is given)."""
    from prefect.settings import PREFECT_API_URL

    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    env = {
        **inherited,
        **store.env,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "cli.main"]
    if kill_at is not None:
        command = [sys.executable, str(LAUNCHER), kill_at, "--"]
    process = subprocess.Popen(
        [*command, "run", "fraud", *args],
        cwd=store.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: whatever it started is ended with it below
    )
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        with_stragglers = _end_group(process.pid)
    result = subprocess.CompletedProcess(process.args, process.returncode, output)
    result.stragglers = with_stragglers
    return result


def _end_group(pgid: int) -> bool:
    """Kill what is left of the process group; True if anything was."""
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


# --- one baseline registry per backend, champion v1 ---------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_baseline(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("sqlite-baseline") / "mlops"
    first = mlops(Store("sqlite", "", {"MLOPS_HOME": str(home)}), *SMALL_FRAUD_RUN)
    assert first.returncode == 0, first.stdout[-3000:]
    return home


@pytest.fixture(scope="module")
def postgres_baseline(tmp_path_factory):
    if not postgres_available():
        needs("PostgreSQL", "nothing answers at 127.0.0.1:5432")
    folder = tmp_path_factory.mktemp("postgres-baseline")  # artifacts of a database store go to ./mlruns
    uri = create_database()
    try:
        env = {"MLFLOW_TRACKING_URI": uri, "MLOPS_HOME": str(folder / "mlops")}
        first = mlops(Store("postgres", uri, env, cwd=folder), *SMALL_FRAUD_RUN)
        assert first.returncode == 0, first.stdout[-3000:]
        yield uri, folder
    finally:
        drop_database(uri)


@pytest.fixture
def store(request, tmp_path) -> Store:
    """A registry of this test's own, holding what the baseline run left: champion v1."""
    if request.param == "sqlite":
        base = request.getfixturevalue("sqlite_baseline")
        home = tmp_path / "mlops"
        shutil.copytree(base, home)  # its experiment's artifacts stay in the baseline's folder: shared
        yield Store("sqlite", f"sqlite:///{home / 'mlflow.db'}", {"MLOPS_HOME": str(home)})
        return
    base_uri, folder = request.getfixturevalue("postgres_baseline")
    uri = create_database(template=database_name(base_uri))
    try:
        yield Store("postgres", uri, {"MLFLOW_TRACKING_URI": uri, "MLOPS_HOME": str(tmp_path)}, cwd=folder)
    finally:
        drop_database(uri)


# --- the outcome table ------------------------------------------------------------------------------------

OUTCOMES: dict[tuple[str, str], tuple[str, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def outcome_table(tmp_path_factory):
    yield
    if not OUTCOMES:
        return
    rows = ["| kill point | backend | left behind | rerun |", "|---|---|---|---|"]
    rows += [f"| {p} | {b} | {found} | {rerun} |" for (p, b), (found, rerun) in OUTCOMES.items()]
    (tmp_path_factory.getbasetemp() / "faults.md").write_text("\n".join(rows) + "\n")


def describe(state: dict, uri: str) -> str:
    from mlflow.entities import ViewType

    model = state[MODEL]
    versions = ", ".join(f"v{v}" for v in model["versions"])
    found = [f"versions {versions}; champion v{model['aliases'].get('champion')}"]
    breaks = history_breaks(state, MODEL)
    if breaks:
        found.append("alias history: " + "; ".join(breaks))
    client = client_for(uri)
    experiment = client.get_experiment_by_name("fraud")
    logged = client.search_logged_models([experiment.experiment_id])
    if len(logged) > len(model["versions"]):
        found.append(f"{len(logged) - len(model['versions'])} logged model without a version")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", ViewType.ALL)
    if running:
        found.append(f"{len(running)} MLflow run left RUNNING")
        states = [_flow_run_state(r.data.tags.get("prefect.flow_run_id")) for r in running]
        found.append(f"its Prefect flow run {', '.join(states)}")
    return "; ".join(found)


def _flow_run_state(flow_run_id: str | None) -> str:
    from prefect.client.orchestration import get_client

    if not flow_run_id:
        return "unknown"
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.name


# --- the test ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("point", list(LEFT_BEHIND))
def test_a_run_killed_at_any_point_leaves_a_consistent_registry_and_a_rerun_finishes(
    point, store, monkeypatch
):
    from champion.lock import champion_lock

    before = snapshot(store.uri)
    assert before[MODEL]["aliases"] == {"champion": "1"} and list(before[MODEL]["versions"]) == ["1"]

    killed = mlops(store, *CANDIDATE, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    assert f"fault: SIGKILL at {point}" in killed.stdout, killed.stdout[-3000:]

    after = snapshot(store.uri)
    versions, champion = LEFT_BEHIND[point]
    assert list(after[MODEL]["versions"]) == versions, after
    assert after[MODEL]["aliases"] == {"champion": champion}, after
    assert invariant_violations(after) == []
    found = describe(after, store.uri)
    if killed.stragglers:
        found += "; a process it started outlived it (ended by the test)"

    # the dead run's champion lock is free: the file lock and the advisory lock went with the process
    monkeypatch.setenv("MLOPS_REGISTRY_LOCK_URI", store.uri)
    with champion_lock(MODEL, timeout=10, holder="the fault test"):
        pass

    # the same command again finishes what the killed one started
    rerun = mlops(store, *CANDIDATE)
    OUTCOMES[(point, store.backend)] = (found, f"exit {rerun.returncode}")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    final = snapshot(store.uri)
    assert list(final[MODEL]["versions"]) == ["1", "2"], final
    assert final[MODEL]["aliases"] == {"champion": "2"}
    assert invariant_violations(final) == []
    assert history_breaks(final, MODEL) == []
    if point == "promote":  # the rerun took back the dead run's record of a move that never happened
        assert "move to champion never completed" in " ".join(rerun.stdout.split()), rerun.stdout[-3000:]
    assert final[MODEL]["versions"]["2"]["promotion"].startswith("promoted")
    OUTCOMES[(point, store.backend)] = (found, "exit 0: v2 champion, history consistent")


# --- the MLflow server stops while a run trains -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"{what}: the process exited ({process.returncode})"
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(0.5)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _server_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    return {**env, **extra}


class MlflowServer:
    """`mlflow server` on a SQLite store and a local artifact folder, in its own process group."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                *("--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"),
                *("--artifacts-destination", str(self.folder / "artifacts")),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
            ],
            env=_server_env(),
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "server.log").open("a"),
            start_new_session=True,
        )
        _wait_for(lambda: _answers(f"{self.url}/health"), 180, "mlflow server", self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _end_group(self.process.pid)
            self.process.wait(30)


@pytest.fixture
def mlflow_server(tmp_path):
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    server = MlflowServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_mlflow_server_stopping_mid_run_fails_the_run_cleanly(mlflow_server, tmp_path):
    """The server is killed (SIGKILL, its whole process group) when the run starts training: the run fails
    within its retries with a message naming the server, and once the server is back nothing is half-written:
    no new version, the champion unchanged."""
    store = Store(
        "mlflow server",
        mlflow_server.url,
        {
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "MLOPS_HOME": str(tmp_path / "mlops"),
            # the champion lock beside a SQLite file of its own: it needs no server
            "MLOPS_REGISTRY_LOCK_URI": f"sqlite:///{tmp_path / 'lock' / 'registry.db'}",
        },
        cwd=tmp_path,
    )
    first = mlops(store, *SMALL_FRAUD_RUN)  # MLflow's own retries on: a dropped keep-alive is not the test
    assert first.returncode == 0, first.stdout[-3000:]
    before = snapshot(store.uri)
    assert before[MODEL]["aliases"] == {"champion": "1"}

    store.env["MLOPS_FAULT_KILL_PID"] = str(-mlflow_server.process.pid)  # its process group
    # no retries against a dead server: the run fails within its stages' own retries, not minutes later
    store.env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    failed = mlops(store, *CANDIDATE, kill_at="train")
    said = " ".join(failed.stdout.split())  # rich wraps long lines
    assert f"fault: SIGKILL to pid -{mlflow_server.process.pid} at train" in said, said[-3000:]
    assert mlflow_server.process.wait(30) == -signal.SIGKILL
    assert failed.returncode == 1, said[-3000:]
    assert "run failed: " in said, said[-3000:]
    message = said[said.index("run failed: ") :][:200]  # the CLI's last word: what failed, and where
    assert f"127.0.0.1:{mlflow_server.port}" in message, said[-3000:]

    mlflow_server.start()  # the same store and port
    after = snapshot(store.uri)
    assert after == before
    found = describe(after, store.uri)
    OUTCOMES[("MLflow server killed at train", "MLflow server (SQLite)")] = (
        f"run exit 1: `{message}...`; after the restart: {found}",
        "nothing to finish: registry unchanged",
    )


# --- a crashed holder of the Prefect concurrency slot -----------------------------------------------------

HOLDER = """
import sys, threading
from pathlib import Path
from champion.lock import champion_lock
with champion_lock(sys.argv[1], timeout=float(sys.argv[2]), holder="the crash test") as description:
    Path(sys.argv[3]).write_text(description)
    if sys.argv[4] == "hold":
        threading.Event().wait()  # holds the slot until the test kills this process
"""


@pytest.fixture
def prefect_api(tmp_path):
    """`prefect server start` (not Prefect's temporary server: that one runs no repossessor service, which
    frees the slots of expired leases) on a SQLite database of its own."""
    port = _free_port()
    home = tmp_path / "prefect-home"
    log = (tmp_path / "prefect.log").open("a")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            *("server", "start", "--host", "127.0.0.1", "--port", str(port)),
        ],
        env=_server_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false"),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_for(lambda: _answers(f"{url}/health"), 180, "prefect server", process)
        yield url
    finally:
        _end_group(process.pid)
        process.wait(30)


def active_slots(url: str, limit: str) -> int:
    import httpx

    response = httpx.get(f"{url}/v2/concurrency_limits/{limit}", timeout=30)
    response.raise_for_status()
    return response.json()["active_slots"]


def test_a_crashed_holder_of_the_prefect_slot_blocks_the_next_run_only_for_its_lease(prefect_api, tmp_path):
    from champion.lock import LEASE_SECONDS

    model, limit = "crash-locked-model", "mlops-champion-crash-locked-model"
    env = {
        **_server_env(),
        "PREFECT_API_URL": prefect_api,
        "MLOPS_REGISTRY_LOCK_URI": "http://mlflow.invalid:5000",  # an HTTP registry: the Prefect lock
        "PYTHONPATH": str(ROOT),
    }
    held, second = tmp_path / "held", tmp_path / "second"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, model, "60", str(held), "hold"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        _wait_for(held.exists, 120, "the first holder", holder)
        assert "Prefect global concurrency limit" in held.read_text()
        assert active_slots(prefect_api, limit) == 1
    finally:
        _end_group(holder.pid)  # SIGKILL: no context manager exit, no release call
    assert holder.wait(30) == -signal.SIGKILL
    # the server cannot see a process die: the slot stays taken until the lease expires
    assert active_slots(prefect_api, limit) == 1

    # the next holder gets it once the lease (LEASE_SECONDS) has expired and the repossessor (every 15 s) ran;
    # with Prefect's default 300 s lease it would time out here
    bound = LEASE_SECONDS + 15 + 75
    waiting = subprocess.run(
        [sys.executable, "-c", HOLDER, model, str(bound), str(second), "release"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=bound + 120,
    )
    assert waiting.returncode == 0, waiting.stdout[-2000:] + waiting.stderr[-3000:]
    assert "Prefect global concurrency limit" in second.read_text()
    assert active_slots(prefect_api, limit) == 0  # and it released it
