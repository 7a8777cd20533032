"""What the pipeline benchmarks share: one Prefect server for the whole benchmark, and `mlops run` executed
in a fresh process with a fresh MLflow store, reporting wall time, peak RSS, time per stage and the run."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs `mlops run <use case> ...` in-process against the benchmark's Prefect server, then prints one JSON
# line: wall time, peak RSS, each task's duration (read back from the Prefect API), the run's metrics,
# params and decision.
RUNNER = r"""
import json, resource, sys, time
started = time.perf_counter()
from cli.main import app
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
import mlflow
from champion import store
imported = time.perf_counter()
use_case = sys.argv[1]
code = app(["run", use_case, *sys.argv[2:]], standalone_mode=False) or 0
finished = time.perf_counter()
mlflow.set_tracking_uri(store.tracking_uri())
run = mlflow.search_runs(experiment_names=[use_case], max_results=1, output_format="list")[0]
stages, intervals = {}, []
with get_client(sync_client=True) as client:
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]})):
        name = t.name.rsplit("-", 1)[0]
        seconds = (t.end_time - t.start_time).total_seconds() if t.end_time and t.start_time else 0.0
        stages[name] = stages.get(name, 0.0) + seconds
        if t.end_time and t.start_time:
            intervals.append([name, t.start_time.timestamp(), t.end_time.timestamp()])
print("BENCH " + json.dumps({
    "exit_code": code, "seconds": finished - imported, "seconds_with_imports": finished - started,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "metrics": run.data.metrics, "params": run.data.params, "stages": stages, "intervals": intervals,
    "decision": run.data.tags.get("decision"), "summary": run.data.tags.get("decision.summary", ""),
}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prefect_server():
    """A Prefect server in a temporary home for the benchmark; yields (environment for runs, boot seconds).

    With MLOPS_BENCH_PREFECT_API_URL set (the smoke tests: one server for every benchmark), that server is
    used instead and the boot time is 0."""
    shared = os.environ.get("MLOPS_BENCH_PREFECT_API_URL")
    if shared:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PREFECT_API_URL": shared, "PREFECT_LOGGING_LEVEL": "WARNING"}
            env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLOPS_BENCH_TMP=tmp)
            env.pop("MLFLOW_TRACKING_URI", None)
            yield env, 0.0
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "prefect"
        port = free_port()
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/api"
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError("Prefect server did not start in 120 s")
            boot = time.perf_counter() - started
            env.update({"PREFECT_API_URL": url, "PREFECT_LOGGING_LEVEL": "WARNING", "MLOPS_BENCH_TMP": tmp})
            env.pop("MLFLOW_TRACKING_URI", None)
            yield env, boot
        finally:
            server.terminate()
            server.wait(timeout=30)


def run_json(command: list[str], env: dict, marker: str = "") -> dict:
    """Run a command and parse its JSON line (the one after `marker`, if given)."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith(marker) and line[len(marker) :].lstrip().startswith("{"):
            return json.loads(line[len(marker) :])
    raise RuntimeError(
        f"{command[:4]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def run_pipeline(use_case: str, options: list[str], env: dict) -> dict:
    """`mlops run USE_CASE OPTIONS` in a fresh process with a fresh MLflow store."""
    fresh = {**env, "MLOPS_HOME": tempfile.mkdtemp(dir=env["MLOPS_BENCH_TMP"])}
    return run_json([sys.executable, "-c", RUNNER, use_case, *options], fresh, marker="BENCH ")
