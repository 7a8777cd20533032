"""Benchmark: the gated fraud pipeline on the full handbook file, side by side with a hand-written script.

Prints, for each configuration, wall time, peak memory and time per stage of `mlops run fraud`, the same
figures for `bench/handwritten.py` (same features, training and MLflow logging, no gates or orchestration)
run in the same session, their ratio, and test average precision next to the handbook's published XGBoost
result on its 1-week protocol (0.639).

A Prefect server is started once for the benchmark, so the pipeline's figures exclude the ~10 s a temporary
server takes to start (reported separately); every run gets a fresh MLflow store.

    uv run python bench/pipeline.py [--data PATH] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANDBOOK = ROOT.parent / "shared/data/fraud-handbook/transactions.parquet"
HANDBOOK_XGBOOST_AP = 0.639  # the handbook's table: XGBoost (defaults), 1-week protocol

CONFIGS = {
    "defaults (train 21 d, test = last 7 d)": [],
    "handbook 1-week protocol (test 2018-08-08..14, 7-day windows)": [
        "--end",
        "2018-08-14",
        "--train-days",
        "7",
        "--validation-days",
        "7",
        "--test-days",
        "7",
    ],
}

# The pipeline's stage runner: runs the flow in-process against the benchmark's Prefect server and prints
# wall time, peak RSS and each task's duration (read back from the Prefect API) as JSON.
RUNNER = r"""
import json, resource, sys, time
started = time.perf_counter()
from flows.cli import app
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
import mlflow
from tasks import _tracking
imported = time.perf_counter()
code = app(["run", "fraud", *sys.argv[1:]], standalone_mode=False) or 0
finished = time.perf_counter()
mlflow.set_tracking_uri(_tracking.tracking_uri())
run = mlflow.search_runs(experiment_names=["fraud"], max_results=1, output_format="list")[0]
stages = {}
with get_client(sync_client=True) as client:
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]})):
        name = t.name.rsplit("-", 1)[0]
        seconds = (t.end_time - t.start_time).total_seconds() if t.end_time and t.start_time else 0.0
        stages[name] = stages.get(name, 0.0) + seconds
print("BENCH " + json.dumps({
    "exit_code": code, "seconds": finished - imported, "seconds_with_imports": finished - started,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "test_average_precision": run.data.metrics["test_average_precision"],
    "baseline_test_average_precision": run.data.metrics["baseline_test_average_precision"],
    "test_roc_auc": run.data.metrics["test_roc_auc"],
    "test_card_precision_at_100": run.data.metrics["test_card_precision_at_100"],
    "stages": stages,
}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect(home: Path) -> tuple[subprocess.Popen, str, float]:
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
    import urllib.request

    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return server, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("Prefect server did not start in 120 s")


def run_json(command: list[str], env: dict, marker: str = "") -> dict:
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith(marker) and line[len(marker) :].lstrip().startswith("{"):
            return json.loads(line[len(marker) :])
    raise RuntimeError(
        f"{command[:3]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Fraud pipeline benchmark on the full handbook file.")
    parser.add_argument("--data", default=str(HANDBOOK))
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"benchmark data not found: {args.data}")

    with tempfile.TemporaryDirectory() as tmp:
        server, url, boot = start_prefect(Path(tmp) / "prefect")
        try:
            print(f"data: {args.data}")
            print(f"Prefect server start (excluded below; a temporary server costs the same): {boot:.1f} s\n")
            for label, options in CONFIGS.items():
                env = {
                    **os.environ,
                    "PREFECT_API_URL": url,
                    "PREFECT_HOME": str(Path(tmp) / "prefect"),
                    "MLOPS_HOME": tempfile.mkdtemp(dir=tmp),
                    "PREFECT_LOGGING_LEVEL": "WARNING",
                }
                env.pop("MLFLOW_TRACKING_URI", None)
                hand = run_json([sys.executable, "bench/handwritten.py", args.data, *options], env)
                pipe = run_json(
                    [sys.executable, "-c", RUNNER, "--data", args.data, *options], env, marker="BENCH "
                )
                print(f"== {label}")
                print(f"{'':34}{'pipeline':>12}{'hand-written':>14}{'ratio':>8}")
                print(
                    f"{'wall time, s (after imports)':34}{pipe['seconds']:12.1f}{hand['seconds']:14.1f}"
                    f"{pipe['seconds'] / hand['seconds']:8.2f}"
                )
                print(
                    f"{'wall time, s (with imports)':34}{pipe['seconds_with_imports']:12.1f}"
                    f"{hand['seconds_with_imports']:14.1f}"
                    f"{pipe['seconds_with_imports'] / hand['seconds_with_imports']:8.2f}"
                )
                print(
                    f"{'peak RSS, MB':34}{pipe['peak_rss_mb']:12.0f}{hand['peak_rss_mb']:14.0f}"
                    f"{pipe['peak_rss_mb'] / hand['peak_rss_mb']:8.2f}"
                )
                print(
                    f"{'test average precision':34}{pipe['test_average_precision']:12.3f}"
                    f"{hand['test_average_precision']:14.3f}   (handbook XGBoost {HANDBOOK_XGBOOST_AP})"
                )
                print(
                    f"{'baseline (LR) average precision':34}{pipe['baseline_test_average_precision']:12.3f}"
                    f"{hand['baseline_test_average_precision']:14.3f}"
                )
                print(f"{'test ROC AUC':34}{pipe['test_roc_auc']:12.3f}{hand['test_roc_auc']:14.3f}")
                print(f"{'card precision@100':34}{pipe['test_card_precision_at_100']:12.3f}")
                print(f"exit code {pipe['exit_code']}; time per stage (s):")
                for stage, seconds in sorted(pipe["stages"].items(), key=lambda kv: -kv[1]):
                    print(f"  {stage:30}{seconds:8.2f}")
                print()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
