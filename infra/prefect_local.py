"""A local Prefect server that outlives the command, so only the first command pays for starting one.

Without `PREFECT_API_URL`, Prefect starts a temporary server inside every process (~10 s, gone with it, and
with it the runs' history). Instead, the first `mlops` command that needs Prefect starts one server in the
background, under the project's home folder next to MLflow's store, and every later command reuses it:

    <MLOPS_HOME>/prefect/        PREFECT_HOME of the server (its SQLite database)
    <MLOPS_HOME>/prefect/prefect.pid, prefect.log, server.json (its URL), start.lock

Where a Prefect API is already chosen, nothing starts: `PREFECT_API_URL` set, or `make up`'s server running
(its client settings in `.mlops/servers/client.env`, whose `PREFECT_API_AUTH_STRING` is exported with the URL:
that server answers nothing else without it) — so this never competes with `make up` for a port. The
port is `MLOPS_LOCAL_PREFECT_PORT` (default 4210, beside `make up`'s 4200); when another program holds it, a
free port is taken and recorded. Two commands starting at once start one server (a file lock); a stale pid
file is cleared. `MLOPS_PREFECT_SERVER=ephemeral` keeps Prefect's own per-process temporary server (tests,
CI); `mlops server status|stop` and `make down` manage the background one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from champion.store import mlops_home
from infra.servers.processes import Managed, http_ok, port_open, wait_until
from infra.servers.settings import QUIET, Settings, read_env_file

MODE_ENV = "MLOPS_PREFECT_SERVER"  # background (default) | ephemeral
PORT_ENV = "MLOPS_LOCAL_PREFECT_PORT"
DEFAULT_PORT = 4210
START_TIMEOUT = 120.0


class LocalServerError(RuntimeError):
    """The background Prefect server could not be started."""


@dataclass(frozen=True)
class LocalServer:
    url: str  # the API URL, http://127.0.0.1:<port>/api
    pid: int | None
    started: bool  # this call started it

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


def state_dir() -> Path:
    return mlops_home() / "prefect"


def _process() -> Managed:
    return Managed("prefect", state_dir())


def _recorded_url() -> str | None:
    try:
        return json.loads((state_dir() / "server.json").read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None


def running() -> LocalServer | None:
    """The background server when it runs and answers."""
    pid = _process().pid()
    url = _recorded_url()
    if pid is None or url is None or not http_ok(f"{url}/health", timeout=5):
        return None
    return LocalServer(url, pid, started=False)


def make_up_client() -> tuple[str, str | None] | None:
    """`make up`'s Prefect API URL and auth string when its server is running, from its `client.env`."""
    settings = Settings.from_env()
    if Managed("prefect", settings.state_dir).pid() is None:
        return None
    client_env = read_env_file(settings.state_dir / "client.env")
    url = client_env.get("PREFECT_API_URL") or settings.prefect_api_url
    if not http_ok(f"{url}/health", timeout=5):
        return None
    return url, client_env.get("PREFECT_API_AUTH_STRING") or None


def make_up_api() -> str | None:
    """`make up`'s Prefect API when its server is running (then commands use it, never a second server)."""
    found = make_up_client()
    return found[0] if found else None


def _free_port(preferred: int) -> int:
    if not port_open("127.0.0.1", preferred):
        return preferred
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _prefect_command(port: int) -> list[str]:
    executable = Path(sys.executable).with_name("prefect")
    prefix = [str(executable)] if executable.exists() else [sys.executable, "-m", "prefect"]
    return [*prefix, "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def start(announce=None) -> LocalServer:
    """The background server: the running one, else one started now (one at a time, under a file lock)."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "start.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second command waits here, then finds the first one's server
        found = running()
        if found is not None:
            return found
        process = _process()
        process.stop(timeout=10)  # a recorded process that does not answer: replace it
        port = _free_port(int(os.environ.get(PORT_ENV, DEFAULT_PORT)))
        url = f"http://127.0.0.1:{port}/api"
        if announce:
            announce(f"starting a local Prefect server at {url.removesuffix('/api')} (kept for later runs)")
        env = {
            **QUIET,
            "PREFECT_HOME": str(folder),
            "PREFECT_SERVER_UI_API_URL": url,
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        }
        pid = process.start(_prefect_command(port), env)
        (folder / "server.json").write_text(json.dumps({"url": url, "pid": pid, "since": time.time()}))
        try:
            wait_until(lambda: http_ok(f"{url}/health", timeout=5), START_TIMEOUT, "local Prefect", process)
        except Exception as exc:
            process.stop(timeout=10)
            raise LocalServerError(str(exc)) from exc
        return LocalServer(url, pid, started=True)


def stop() -> bool:
    """Stop the background server; False when none ran."""
    stopped = _process().stop()
    (state_dir() / "server.json").unlink(missing_ok=True)
    return stopped


def ensure_api(announce=None) -> str | None:
    """Point this process's Prefect client at a server that outlives it, before Prefect is imported.

    Returns the API URL, or None where Prefect's per-process temporary server is wanted
    (`MLOPS_PREFECT_SERVER=ephemeral`).
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if os.environ.get(MODE_ENV, "background") == "ephemeral":
        return None
    reused = make_up_client()
    if reused is not None:
        url, auth_string = reused
        if auth_string:  # `make up`'s server refuses clients without it
            os.environ["PREFECT_API_AUTH_STRING"] = auth_string
    else:
        url = start(announce).url
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_UI_URL", url.removesuffix("/api"))
    return url
