"""Serving benchmark: `mlops serve-model` next to `mlflow models serve`, same model version, same run.

    uv run python bench/serving.py [--home DIR] [--single 500] [--batches 100] [--batch-rows 1000]
                                   [--out PATH] [--smoke]

Uses (or trains, see bench/scoring.py) the fraud champion in --home, starts both servers on free ports,
warms them up, then alternates requests between them so both see the same machine load: one-row requests
(`dataframe_records`) and 1,000-row batches (`dataframe_split`), real handbook features. Prints p50 / p99
latency (client-side, keep-alive connection) and checks that both answer the same predictions. The figures
also go to bench/results/serving.json (`--out`), which the docs render.

`--smoke`: the smoke champion of bench/scoring.py (tiny simulated data), a few requests, 100-row batches, the
JSON to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`

from _results import (  # noqa: E402
    HANDBOOK,
    SMOKE_FRAUD_OPTIONS,
    add_arguments,
    document,
    output_path,
    smoke_fraud_data,
    table,
    write,
)
from scoring import MODEL, ensure_champion  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited: {process.stdout.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    import numpy as np

    ms = np.asarray(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean())


@dataclass(frozen=True)
class Load:
    """What each server is sent: one-row requests, batches of `batch_rows`, and the warm-up requests."""

    single: int
    batches: int
    batch_rows: int
    warmups: tuple[int, int]  # one-row, batch


def request_features(version: str, data: Path):
    """The champion's features on the last 45 days of `data` (at most 50,000 rows), as a frame and records."""
    import pandas as pd

    from champion.loading import load_scoring_model, spec_for

    model = load_scoring_model(MODEL, version=version)
    spec = spec_for("fraud", model)
    raw = pd.read_parquet(data)
    raw = raw[raw["TX_DATETIME"] >= raw["TX_DATETIME"].max() - pd.Timedelta(days=45)]
    features = spec.build_features(raw)[list(model.columns)].tail(50_000).reset_index(drop=True)
    return features, json.loads(features.to_json(orient="records"))


def servers_for(home: Path, version: str, poll_seconds: float) -> tuple[dict, dict]:
    """The two servers' environment, and per server: command, base URL, prediction path."""
    env = {**os.environ, "MLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    # both servers with OpenMP's idle threads sleeping (serve-model's default; mlflow's would spin and make
    # the two servers steal each other's CPU on a small machine)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # `mlflow models serve` execs `uvicorn` from PATH: the one next to this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ours_port, theirs_port = free_port(), free_port()
    servers = {
        "mlops serve-model": (
            [
                sys.executable, "-m", "cli.main", "serve-model", "fraud", "--port", str(ours_port),
                "--poll-seconds", str(poll_seconds),
            ],
            f"http://127.0.0.1:{ours_port}",
            "/predict",
        ),
        "mlflow models serve": (
            [
                sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/{version}",
                "--env-manager", "local", "-p", str(theirs_port), "-h", "127.0.0.1",
            ],
            f"http://127.0.0.1:{theirs_port}",
            "/invocations",
        ),
    }  # fmt: skip
    return env, servers


@contextlib.contextmanager
def running(servers: dict, env: dict):
    """Both servers started and up; yields a keep-alive client per server, stops them on the way out."""
    import httpx

    processes = {
        name: subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, (command, _, _) in servers.items()
    }
    clients: dict = {}
    try:
        for name, (_, url, _) in servers.items():
            wait_until_up(f"{url}/health" if name.startswith("mlops") else f"{url}/ping", processes[name])
        clients = {name: httpx.Client(base_url=url, timeout=60) for name, (_, url, _) in servers.items()}
        yield clients
    finally:
        for client in clients.values():
            client.close()
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def payloads(features, records: list, load: Load) -> tuple[list, list]:
    """Random one-row requests and random contiguous batches (seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    single = [{"dataframe_records": [records[int(i)]]} for i in rng.integers(0, len(records), load.single)]
    batches = []
    for _ in range(load.batches):
        start = int(rng.integers(0, len(records) - load.batch_rows))
        part = features.iloc[start : start + load.batch_rows]
        batches.append(
            {
                "dataframe_split": {
                    "columns": list(part.columns),
                    "data": json.loads(part.to_json(orient="values")),
                }
            }
        )
    return single, batches


def same_answers(clients: dict, servers: dict, requests: tuple) -> None:
    """Both servers predict the same for each of `requests`."""
    import numpy as np

    for payload in requests:
        answers = [
            np.asarray(clients[n].post(path, json=payload).json()["predictions"], dtype=float).ravel()
            for n, (_, _, path) in servers.items()
        ]
        np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-7)


def latencies(clients: dict, servers: dict, kinds: tuple) -> dict:
    """Per (request kind, server): (p50, p99, mean ms) and the number of requests; `kinds` holds (kind,
    payloads, warm-up requests)."""
    results = {}
    for kind, requests, warmup in kinds:
        bodies = [json.dumps(p).encode() for p in requests]
        for name, (_, _, path) in servers.items():
            for body in bodies[:warmup]:
                clients[name].post(path, content=body, headers={"content-type": "application/json"})
        timings = {name: [] for name in servers}
        for body in bodies:  # alternate, so both servers see the same load
            for name, (_, _, path) in servers.items():
                started = time.perf_counter()
                response = clients[name].post(
                    path, content=body, headers={"content-type": "application/json"}
                )
                timings[name].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text[:300]
        for name in servers:
            results[(kind, name)] = (percentiles(timings[name]), len(bodies))
    return results


def report(results: dict, version: str, batch_rows: int) -> None:
    print(f"\n{MODEL} v{version}, {os.cpu_count()} CPUs; client-side latency, keep-alive, sequential")
    print(f"  {'request':<14}{'server':<22}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'n':>6}{'rows/s':>12}")
    for (kind, name), ((p50, p99, mean), n) in results.items():
        rows = 1 if kind == "1 row" else batch_rows
        print(f"  {kind:<14}{name:<22}{p50:>9.2f}{p99:>9.2f}{mean:>9.2f}{n:>6}{rows / (mean / 1000):>12,.0f}")


def latency_table(results: dict, version: str, load: Load) -> dict:
    return table(
        "Serving latency",
        [
            "request",
            "server",
            {"name": "p50 ms", "format": ".1f"},
            {"name": "p99 ms", "format": ".1f"},
        ],
        [[kind, name, p50, p99] for (kind, name), ((p50, p99, _), _) in results.items()],
        units="milliseconds, client side",
        method=(
            f"`{MODEL}` v{version}, the same version in both servers, in the same run; sequential "
            f"keep-alive requests alternating between the servers ({load.single} one-row requests and "
            f"{load.batches} batches of {load.batch_rows:,} rows each, after {load.warmups[0]} / "
            f"{load.warmups[1]} warm-up requests); both with `OMP_WAIT_POLICY=PASSIVE`; {os.cpu_count()} CPUs"
        ),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / ".mlops" / "bench")
    parser.add_argument("--data", type=Path, default=None, help="default: the handbook file")
    parser.add_argument("--single", type=int, default=None, help="one-row requests per server (500)")
    parser.add_argument("--batches", type=int, default=None, help="batch requests per server (100)")
    parser.add_argument("--batch-rows", type=int, default=None, help="rows per batch request (1000)")
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="serve-model's registry polling")
    add_arguments(parser, "serving")
    args = parser.parse_args(argv)
    out = output_path(args, "serving")
    smoke = args.smoke
    load = Load(
        single=args.single or (20 if smoke else 500),
        batches=args.batches or (5 if smoke else 100),
        batch_rows=args.batch_rows or (100 if smoke else 1000),
        warmups=(2, 1) if smoke else (50, 10),
    )
    if smoke:
        data = args.data or smoke_fraud_data(Path(tempfile.gettempdir()) / "mlops-bench-smoke")
    else:
        data = args.data or HANDBOOK
    home = args.home.resolve()
    version = ensure_champion(home, data, SMOKE_FRAUD_OPTIONS if smoke else ())
    features, records = request_features(version, data)
    env, servers = servers_for(home, version, args.poll_seconds)
    with running(servers, env) as clients:
        single, batches = payloads(features, records, load)
        same_answers(clients, servers, (single[0], batches[0]))
        kinds = (("1 row", single, load.warmups[0]), (f"{load.batch_rows:,} rows", batches, load.warmups[1]))
        results = latencies(clients, servers, kinds)
    report(results, version, load.batch_rows)
    command = "uv run python bench/serving.py" + (" --smoke" if smoke else "")
    doc = document("serving", command, {"latency": latency_table(results, version, load)}, smoke=smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
