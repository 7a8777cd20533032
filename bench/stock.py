"""Benchmark: the gated stock pipeline, both targets, on the S&P 500 bars shipped in `arch` (or `--data`).

Prints, per target, wall time, peak memory and time per stage of `mlops run stock`, the exit code and the
decision, the walk-forward selection, and the test metrics of the candidate next to every baseline on the
same test window (MAE, RMSE; for `return` also directional accuracy and the implied next close's MAE).

A Prefect server is started once for the benchmark, so the figures exclude the ~10 s a temporary server
takes to start (reported separately); every run gets a fresh MLflow store.

    uv run python bench/stock.py [--data PATH] [--target volatility|return] [-- extra mlops options]
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs the flow in-process against the benchmark's Prefect server, then prints one JSON line: wall time,
# peak RSS, each task's duration (read back from the Prefect API), the run's metrics and its decision.
RUNNER = r"""
import json, resource, sys, time
started = time.perf_counter()
from flows.cli import app
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
import mlflow
from tasks import _tracking
imported = time.perf_counter()
code = app(["run", "stock", *sys.argv[1:]], standalone_mode=False) or 0
finished = time.perf_counter()
mlflow.set_tracking_uri(_tracking.tracking_uri())
run = mlflow.search_runs(experiment_names=["stock"], max_results=1, output_format="list")[0]
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
    "metrics": run.data.metrics, "stages": stages,
    "decision": run.data.tags.get("decision"), "summary": run.data.tags.get("decision.summary", ""),
    "selected": {k: v for k, v in run.data.params.items() if k.startswith("selected.")},
    "windows": {k: v for k, v in run.data.params.items() if k.startswith("split.")},
}))
"""

BASELINES = {"volatility": ("naive_5d", "naive_22d", "har"), "return": ("zero", "majority")}
METRICS = {
    "volatility": ("mae", "rmse"),
    "return": ("mae", "rmse", "directional_accuracy", "next_close_mae"),
}


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
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return server, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("Prefect server did not start in 120 s")


def run_pipeline(options: list[str], env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *options], env=env, capture_output=True, text=True, cwd=ROOT
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[len("BENCH ") :])
    raise RuntimeError(
        f"mlops run stock failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def report(target: str, result: dict) -> None:
    m = result["metrics"]
    print(f"== target {target}: exit {result['exit_code']}, {result['decision']}")
    print(f"   {result['summary'][:400]}")
    print(
        f"wall time {result['seconds']:.1f} s after imports ({result['seconds_with_imports']:.1f} s with), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    print("per stage, s: " + ", ".join(f"{k} {v:.2f}" for k, v in result["stages"].items()))
    if result["selected"]:
        print(f"walk-forward selection: {result['selected']} (cv_mae {m.get('cv_mae', float('nan')):.5f})")
    baselines = BASELINES[target]
    print(f"{'test metric':24}{'xgboost':>12}" + "".join(f"{b:>12}" for b in baselines))
    for metric in METRICS[target]:
        row = [m.get(f"test_{metric}", float("nan"))] + [
            m.get(f"{b}_test_{metric}", float("nan")) for b in baselines
        ]
        digits = 2 if metric == "next_close_mae" else (4 if metric == "directional_accuracy" else 6)
        print(f"{metric:24}" + "".join(f"{v:12.{digits}f}" for v in row))
    if target == "volatility":
        best_naive = min(m["naive_5d_test_mae"], m["naive_22d_test_mae"])
        vs_har = m["test_mae"] / m["har_test_mae"] - 1
        print(f"MAE vs best naive: {m['test_mae'] / best_naive - 1:+.1%}; vs HAR: {vs_har:+.1%}")
    else:
        print(f"MAE vs zero return: {m['test_mae'] / m['zero_test_mae'] - 1:+.1%}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description="Stock pipeline benchmark, both targets.")
    parser.add_argument("--data", default=None, help="CSV/Parquet bars; default: arch's S&P 500")
    parser.add_argument("--target", choices=("volatility", "return"), action="append")
    parser.add_argument("extra", nargs="*", help="further `mlops run stock` options, after --")
    args = parser.parse_args()
    targets = args.target or ["volatility", "return"]

    with tempfile.TemporaryDirectory() as tmp:
        server, url, boot = start_prefect(Path(tmp) / "prefect")
        try:
            print(f"data: {args.data or 'arch.data.sp500 (embedded)'}")
            print(f"Prefect server start (excluded below; a temporary server costs the same): {boot:.1f} s\n")
            for target in targets:
                env = {
                    **os.environ,
                    "PREFECT_API_URL": url,
                    "PREFECT_HOME": str(Path(tmp) / "prefect"),
                    "MLOPS_HOME": tempfile.mkdtemp(dir=tmp),
                    "PREFECT_LOGGING_LEVEL": "WARNING",
                }
                env.pop("MLFLOW_TRACKING_URI", None)
                options = ["--target", target, *(["--data", args.data] if args.data else []), *args.extra]
                report(target, run_pipeline(options, env))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
