"""`make up DASK=1`: a Dask scheduler and process workers beside the servers, natively (compose: the `dask`
profile). Runs with `--executor dask` (or the Prefect form's `executor`) then use them through
MLOPS_DASK_ADDRESS, which `make up` writes into client.env and runner.env and gives `mlops serve`.

MLOPS_DASK_PORT (default 8786), MLOPS_DASK_WORKERS (2), MLOPS_DASK_THREADS (1), MLOPS_DASK_MEMORY_LIMIT
("auto"): the same names the compose file and `tasks/dask/cluster.py` read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from infra.servers.processes import Managed, port_open, wait_until
from infra.servers.settings import ServerError

# Managed names: each is in its process's command line (`python -m distributed.cli.<name>`).
SCHEDULER, WORKER = "dask_scheduler", "dask_worker"
PROCESSES = (WORKER, SCHEDULER)  # stop order: workers first


def address(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return f"tcp://127.0.0.1:{int(env.get('MLOPS_DASK_PORT') or 8786)}"


def scheduler_command(env: Mapping[str, str] | None = None) -> list[str]:
    port = address(env).rsplit(":", 1)[1]
    # The dashboard on a free port of loopback: it needs bokeh, which is not a dependency.
    return [sys.executable, "-m", f"distributed.cli.{SCHEDULER}", "--host", "127.0.0.1", "--port", port]


def worker_command(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return [
        sys.executable,
        "-m",
        f"distributed.cli.{WORKER}",
        address(env),
        "--nworkers",
        str(int(env.get("MLOPS_DASK_WORKERS") or 2)),
        "--nthreads",
        str(int(env.get("MLOPS_DASK_THREADS") or 1)),
        "--memory-limit",
        env.get("MLOPS_DASK_MEMORY_LIMIT") or "auto",
        "--host",
        "127.0.0.1",
    ]


def workers_connected(scheduler: str, timeout: float = 5.0) -> int:
    """How many workers the scheduler at `scheduler` has (0 when it does not answer)."""
    try:
        from distributed import Client  # why: Dask only for `up --dask`

        with Client(scheduler, timeout=f"{timeout}s", set_as_default=False) as client:
            return len(client.scheduler_info()["workers"])
    except Exception:
        return 0


def up(state_dir: Path, timeout: float) -> dict[str, str]:
    """Start the scheduler, then the workers, unless running; wait for the workers; return the client env."""
    scheduler, worker = Managed(SCHEDULER, state_dir), Managed(WORKER, state_dir)
    where = address()
    port = int(where.rsplit(":", 1)[1])
    if scheduler.pid() is None:
        if port_open("127.0.0.1", port):
            raise ServerError(f"dask: port {port} is taken by another program; set MLOPS_DASK_PORT")
        print(f"  dask scheduler: started (pid {scheduler.start(scheduler_command(), {})}), {where}")
    else:
        print(f"  dask scheduler: already running (pid {scheduler.pid()}), {where}")
    wait_until(lambda: port_open("127.0.0.1", port), timeout, "Dask scheduler", scheduler)
    if worker.pid() is None:
        from tasks.dask.cluster import worker_environment  # why: Dask's settings, only for `up --dask`

        pid = worker.start(worker_command(), worker_environment())
        print(f"  dask workers: started (pid {pid}), log {worker.log_file}")
    else:
        print(f"  dask workers: already running (pid {worker.pid()})")
    expected = int(os.environ.get("MLOPS_DASK_WORKERS") or 2)
    wait_until(lambda: workers_connected(where) >= expected, timeout, "Dask workers", worker, interval=2.0)
    return {"MLOPS_DASK_ADDRESS": where}
