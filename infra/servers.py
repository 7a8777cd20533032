"""MLflow and Prefect servers on Postgres: one definition for `make up`/`make down`, docker-compose and CI.

    python -m infra.servers up        # MLflow + Prefect on loopback against the local Postgres, then
                                      # `mlops serve` (deploys, then runs scheduled/UI/event runs)
    python -m infra.servers status    # what runs, where, healthy or not
    python -m infra.servers env       # the client variables: eval "$(python -m infra.servers env)"
    python -m infra.servers down      # stop them (add --purge to drop the databases and artifacts too)
    python -m infra.servers exec mlflow|prefect   # container entry point (docker-compose.yml)

Everything is configured by environment variables, the same names docker-compose.yml passes to its
containers (`.env.example` lists them); a `.env` file in the project root (`MLOPS_ENV_FILE`; empty: none) is
read for names not already set:

    MLOPS_MLFLOW_HOST/PORT/WORKERS   127.0.0.1 / 5000 / 2      MLOPS_PREFECT_HOST/PORT   127.0.0.1 / 4200
    MLOPS_POSTGRES                   postgres@127.0.0.1:5432   MLOPS_DB_PREFIX           mlops
    MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_DATABASE_URI, PREFECT_SERVER_DATABASE_CONNECTION_URL: default to
        databases <prefix>_mlflow, <prefix>_mlflow_auth, <prefix>_prefect on MLOPS_POSTGRES
    MLFLOW_ARTIFACTS_DESTINATION     <servers dir>/mlflow-artifacts
    MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_DEFAULT_PERMISSION,
    MLFLOW_SERVER_ALLOWED_HOSTS, PREFECT_SERVER_UI_API_URL: MLflow's and Prefect's own settings

Natively, unset secrets (the MLflow admin password and the Flask secret key) are generated once and kept in
`.mlops/servers/credentials.env` (mode 0600), so the servers keep accepting the same credentials.

Native layout, under `MLOPS_SERVERS_DIR` (default `.mlops/servers/`): `<name>.pid` and `<name>.log` for
`mlflow`, `prefect` and `serve`; `mlflow-artifacts/` (the artifact store the MLflow server serves);
`basic_auth.ini` (rendered); `client.env` (the variables to export).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AUTH_TEMPLATE = Path(__file__).resolve().parent / "mlflow" / "basic_auth.ini.template"

QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "GX_ANALYTICS_ENABLED": "false",
}
PLACEHOLDER = "change-me"  # what .env.example holds where a secret goes


class ServerError(RuntimeError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (optionally `export KEY=VALUE`, quoted values, # comments), as docker compose reads."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def write_env_file(path: Path, values: Mapping[str, str], export: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = "export " if export else ""
    text = "".join(f"{prefix}{k}={shlex.quote(v)}\n" for k, v in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


@dataclass(frozen=True)
class Settings:
    """Where the servers listen, which databases they use, and the credentials clients need."""

    state_dir: Path
    mlflow_host: str
    mlflow_port: int
    mlflow_workers: int
    mlflow_backend_store_uri: str
    mlflow_auth_database_uri: str
    mlflow_auth_default_permission: str
    mlflow_artifacts_destination: str
    mlflow_allowed_hosts: str | None
    mlflow_admin_username: str
    mlflow_admin_password: str | None
    mlflow_secret_key: str | None
    prefect_host: str
    prefect_port: int
    prefect_database_url: str
    prefect_ui_api_url: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        env_file = env.get("MLOPS_ENV_FILE", str(PROJECT_ROOT / ".env"))
        if env_file:
            env = {**read_env_file(Path(env_file)), **env}
        state_dir = Path(env.get("MLOPS_SERVERS_DIR") or PROJECT_ROOT / ".mlops" / "servers").resolve()
        postgres = env.get("MLOPS_POSTGRES") or "postgres@127.0.0.1:5432"
        prefix = env.get("MLOPS_DB_PREFIX") or "mlops"

        def get(name: str, default: str | None = None) -> str | None:
            return env.get(name) or default

        return cls(
            state_dir=state_dir,
            mlflow_host=get("MLOPS_MLFLOW_HOST", "127.0.0.1"),
            mlflow_port=int(get("MLOPS_MLFLOW_PORT", "5000")),
            mlflow_workers=int(get("MLOPS_MLFLOW_WORKERS", "2")),
            mlflow_backend_store_uri=get(
                "MLFLOW_BACKEND_STORE_URI", f"postgresql+psycopg2://{postgres}/{prefix}_mlflow"
            ),
            mlflow_auth_database_uri=get(
                "MLFLOW_AUTH_DATABASE_URI", f"postgresql+psycopg2://{postgres}/{prefix}_mlflow_auth"
            ),
            mlflow_auth_default_permission=get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
            mlflow_artifacts_destination=get(
                "MLFLOW_ARTIFACTS_DESTINATION", str(state_dir / "mlflow-artifacts")
            ),
            mlflow_allowed_hosts=get("MLFLOW_SERVER_ALLOWED_HOSTS"),
            mlflow_admin_username=get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
            mlflow_admin_password=get("MLFLOW_AUTH_ADMIN_PASSWORD"),
            mlflow_secret_key=get("MLFLOW_FLASK_SERVER_SECRET_KEY"),
            prefect_host=get("MLOPS_PREFECT_HOST", "127.0.0.1"),
            prefect_port=int(get("MLOPS_PREFECT_PORT", "4200")),
            prefect_database_url=get(
                "PREFECT_SERVER_DATABASE_CONNECTION_URL", f"postgresql+asyncpg://{postgres}/{prefix}_prefect"
            ),
            prefect_ui_api_url=get("PREFECT_SERVER_UI_API_URL"),
        )

    # -- addresses ---------------------------------------------------------------------------------------
    @staticmethod
    def _client_host(host: str) -> str:
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    @property
    def mlflow_url(self) -> str:
        return f"http://{self._client_host(self.mlflow_host)}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{self._client_host(self.prefect_host)}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    def databases(self) -> list[str]:
        return [self.mlflow_backend_store_uri, self.mlflow_auth_database_uri, self.prefect_database_url]

    # -- secrets -----------------------------------------------------------------------------------------
    @property
    def credentials_file(self) -> Path:
        return self.state_dir / "credentials.env"

    def with_secrets(self, generate: bool) -> Settings:
        """Fill unset secrets from `credentials.env`, generating (and keeping) them there when allowed."""
        stored = read_env_file(self.credentials_file)
        values = {
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_admin_password
            or stored.get("MLFLOW_AUTH_ADMIN_PASSWORD"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.mlflow_secret_key
            or stored.get("MLFLOW_FLASK_SERVER_SECRET_KEY"),
        }
        placeholders = [k for k, v in values.items() if v == PLACEHOLDER]
        if placeholders:
            raise ServerError(f"replace the {PLACEHOLDER!r} placeholder of {', '.join(placeholders)} in .env")
        missing = [k for k, v in values.items() if not v]
        if missing and not generate:
            raise ServerError(f"set {', '.join(missing)} (see .env.example)")
        if missing:
            values.update({k: secrets.token_urlsafe(24) for k in missing})
            write_env_file(self.credentials_file, {**stored, **values})
        return _replace(
            self,
            mlflow_admin_password=values["MLFLOW_AUTH_ADMIN_PASSWORD"],
            mlflow_secret_key=values["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        )

    def client_env(self) -> dict[str, str]:
        """What `mlops` commands, flow runs and notebooks need to use these servers."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.mlflow_admin_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_admin_password or "",
        }

    # -- commands ----------------------------------------------------------------------------------------
    def render_auth_config(self) -> Path:
        """Write MLflow's basic-auth config from the template ("%" escaped for configparser)."""
        values = {
            "MLFLOW_AUTH_DATABASE_URI": self.mlflow_auth_database_uri,
            "MLFLOW_AUTH_DEFAULT_PERMISSION": self.mlflow_auth_default_permission,
        }
        text = string.Template(AUTH_TEMPLATE.read_text()).substitute(
            {k: v.replace("%", "%%") for k, v in values.items()}
        )
        path = self.state_dir / "basic_auth.ini"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return path

    def mlflow_command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            self.mlflow_backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.mlflow_artifacts_destination,
            "--host",
            self.mlflow_host,
            "--port",
            str(self.mlflow_port),
            "--workers",
            str(self.mlflow_workers),
        ]

    def mlflow_env(self, auth_config: Path) -> dict[str, str]:
        env = {
            **QUIET,
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_AUTH_ADMIN_USERNAME": self.mlflow_admin_username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_admin_password or "",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.mlflow_secret_key or "",
        }
        if self.mlflow_allowed_hosts:
            env["MLFLOW_SERVER_ALLOWED_HOSTS"] = self.mlflow_allowed_hosts
        return env

    def prefect_command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            self.prefect_host,
            "--port",
            str(self.prefect_port),
        ]

    def prefect_env(self) -> dict[str, str]:
        return {
            **QUIET,
            "PREFECT_HOME": str(self.state_dir / "prefect-home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.prefect_database_url,
            "PREFECT_SERVER_UI_API_URL": self.prefect_ui_api_url or self.prefect_api_url,
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        }

    def serve_command(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "serve"]

    def serve_env(self) -> dict[str, str]:
        return {**QUIET, **self.client_env(), "PREFECT_HOME": str(self.state_dir / "serve-prefect-home")}


def _replace(settings: Settings, **changes) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


# -- databases ---------------------------------------------------------------------------------------------
def _connect_maintenance(url: str):
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = psycopg2.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        dbname="postgres",
        connect_timeout=10,
    )
    connection.autocommit = True
    return connection, parsed.database


def ensure_databases(urls: Iterable[str]) -> list[str]:
    """Create each URL's database when it does not exist; return the ones created."""
    from psycopg2 import sql

    created = []
    for url in urls:
        connection, name = _connect_maintenance(url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
        finally:
            connection.close()
    return created


def drop_databases(urls: Iterable[str]) -> list[str]:
    """Drop each URL's database (closing other sessions on it first); return the ones dropped."""
    from psycopg2 import sql

    dropped = []
    for url in urls:
        connection, name = _connect_maintenance(url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is not None:
                    cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                    dropped.append(name)
        finally:
            connection.close()
    return dropped


# -- processes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Managed:
    """A server process `up` starts in its own session, tracked by a pid file and logging to a file."""

    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def marker(self) -> str:
        """What the command line of this process contains (so a pid reused by another program is not ours)."""
        return {"serve": "cli.main"}.get(self.name, self.name)

    def pid(self) -> int | None:
        """The recorded pid while that process still runs (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _alive(pid) and self.marker in _cmdline(pid) and _pgid(pid) == pid:
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, command: list[str], env: Mapping[str, str]) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: `stop` ends it and its workers together
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL what is left after `timeout`. False when nothing ran."""
        pid = self.pid()
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.3)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _alive(pgid) or _any_in_group(pgid)


def _any_in_group(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0) -> bool:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    check, timeout: float, what: str, process: Managed | None = None, interval: float = 1.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.pid() is None:
            raise ServerError(
                f"{what}: the process exited; last lines of {process.log_file}:\n{process.tail()}"
            )
        time.sleep(interval)
    log = f"; last lines of {process.log_file}:\n{process.tail()}" if process else ""
    raise ServerError(f"{what}: not ready after {timeout:.0f} s{log}")


# -- the commands ------------------------------------------------------------------------------------------
def mlflow_healthy(settings: Settings) -> bool:
    return http_ok(f"{settings.mlflow_url}/health")


def prefect_healthy(settings: Settings) -> bool:
    return http_ok(f"{settings.prefect_api_url}/health")


def deployments_registered(settings: Settings) -> bool:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time chatter of the flows' libraries
        from infra.deployments import all_plans

    return all(
        http_ok(f"{settings.prefect_api_url}/deployments/name/{plan.full_name}") for plan in all_plans()
    )


def up(settings: Settings, serve: bool = True, timeout: float = 180.0) -> Settings:
    """Start what is not running yet and wait until it answers. Safe to repeat."""
    settings = settings.with_secrets(generate=True)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        created = ensure_databases(settings.databases())
    except Exception as exc:  # psycopg2.OperationalError and friends: say which server and why
        where = settings.mlflow_backend_store_uri.split("@")[-1].rsplit("/", 1)[0]
        raise ServerError(
            f"cannot prepare the databases on PostgreSQL at {where}: {str(exc).strip()} "
            "(MLOPS_POSTGRES=user[:password]@host:port chooses the server)."
        ) from exc
    if created:
        print(f"  postgres: created databases {', '.join(created)}")
    Path(settings.mlflow_artifacts_destination).mkdir(parents=True, exist_ok=True)
    mlflow, prefect, runner = (Managed(n, settings.state_dir) for n in ("mlflow", "prefect", "serve"))
    auth_config = settings.render_auth_config()
    # Start both servers before waiting on either: their database migrations overlap.
    for process, command, env, port, host in (
        (
            mlflow,
            settings.mlflow_command(),
            settings.mlflow_env(auth_config),
            settings.mlflow_port,
            settings.mlflow_host,
        ),
        (
            prefect,
            settings.prefect_command(),
            settings.prefect_env(),
            settings.prefect_port,
            settings.prefect_host,
        ),
    ):
        if process.pid() is None:
            if port_open(Settings._client_host(host), port):
                raise ServerError(
                    f"{process.name}: port {port} is taken by another program; choose another one "
                    "(MLOPS_MLFLOW_PORT / MLOPS_PREFECT_PORT) or stop it"
                )
            pid = process.start(command, env)
            print(f"  {process.name}: started (pid {pid}), log {process.log_file}")
        else:
            print(f"  {process.name}: already running (pid {process.pid()})")
    wait_until(lambda: mlflow_healthy(settings), timeout, "MLflow server", mlflow)
    wait_until(lambda: prefect_healthy(settings), timeout, "Prefect server", prefect)
    write_env_file(settings.state_dir / "client.env", settings.client_env(), export=True)
    if serve:
        if runner.pid() is None:
            pid = runner.start(settings.serve_command(), settings.serve_env())
            print(f"  serve: started `mlops serve` (pid {pid}), log {runner.log_file}")
        else:
            print(f"  serve: already running (pid {runner.pid()})")
        wait_until(lambda: deployments_registered(settings), timeout, "deployments", runner, interval=2.0)
    return settings


def down(settings: Settings, purge: bool = False) -> None:
    for name in ("serve", "prefect", "mlflow"):
        began = time.monotonic()
        stopped = Managed(name, settings.state_dir).stop()
        print(f"  {name}: {f'stopped ({time.monotonic() - began:.0f} s)' if stopped else 'not running'}")
    if purge:
        dropped = drop_databases(settings.databases())
        print(f"  postgres: dropped {', '.join(dropped) if dropped else 'nothing'}")
        for path in ("basic_auth.ini", "client.env", "credentials.env"):
            (settings.state_dir / path).unlink(missing_ok=True)
        artifacts = Path(settings.mlflow_artifacts_destination)
        if artifacts.is_dir() and artifacts.is_relative_to(settings.state_dir):
            import shutil

            shutil.rmtree(artifacts)
            print(f"  artifacts: removed {artifacts}")


def status(settings: Settings) -> int:
    checks = {
        "mlflow": (settings.mlflow_url, lambda: mlflow_healthy(settings)),
        "prefect": (settings.prefect_url, lambda: prefect_healthy(settings)),
        "serve": ("mlops serve", lambda: True),
    }
    problems = 0
    for name, (where, healthy) in checks.items():
        process = Managed(name, settings.state_dir)
        pid = process.pid()
        state = "stopped" if pid is None else ("healthy" if healthy() else "NOT ANSWERING")
        problems += state == "NOT ANSWERING"
        print(f"  {name:8} {state:14} {where}" + (f"  (pid {pid}, log {process.log_file})" if pid else ""))
    return 1 if problems else 0


def print_banner(settings: Settings, serve: bool) -> None:
    env_file = settings.state_dir / "client.env"
    password = (
        settings.credentials_file if settings.credentials_file.exists() else "MLFLOW_AUTH_ADMIN_PASSWORD"
    )
    print(
        f"\nMLflow UI   {settings.mlflow_url}   "
        f"(user {settings.mlflow_admin_username}, password in {password})\n"
        f"Prefect UI  {settings.prefect_url}\n\n"
        "Point the `mlops` CLI, notebooks and MLflow clients at them:\n"
        f"  export PREFECT_API_URL={settings.prefect_api_url}\n"
        f"  export MLFLOW_TRACKING_URI={settings.mlflow_url}\n"
        f"  export MLFLOW_TRACKING_USERNAME={settings.mlflow_admin_username}\n"
        f"  export MLFLOW_TRACKING_PASSWORD=...   # all four at once: source {_relative(env_file)}\n"
    )
    if serve:
        print(
            'Deployments are registered and `mlops serve` runs them (scheduled, UI "Custom run", and on '
            "`mlops notify-data`).\nStop everything with `make down`."
        )
    else:
        print(
            "Next: `mlops deploy` to register the deployments, `mlops serve` to run them. Stop: `make down`."
        )


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def exec_server(settings: Settings, which: str) -> None:
    """Container entry point: make sure the databases exist, render config, then become the server."""
    settings = settings.with_secrets(generate=False) if which == "mlflow" else settings
    for attempt in range(30):  # Postgres may still be starting even after its health check turned green
        try:
            ensure_databases(
                [settings.mlflow_backend_store_uri, settings.mlflow_auth_database_uri]
                if which == "mlflow"
                else [settings.prefect_database_url]
            )
            break
        except Exception as exc:
            if attempt == 29:
                raise
            print(f"waiting for postgres: {exc}", file=sys.stderr)
            time.sleep(2)
    if which == "mlflow":
        Path(settings.mlflow_artifacts_destination).mkdir(parents=True, exist_ok=True)
        command, env = settings.mlflow_command(), settings.mlflow_env(settings.render_auth_config())
    else:
        command, env = settings.prefect_command(), settings.prefect_env()
    sys.stdout.flush()
    os.execvpe(command[0], command, {**os.environ, **env})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.servers", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start MLflow, Prefect and `mlops serve`; idempotent")
    start.add_argument("--no-serve", action="store_true", help="start only the two servers")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each to answer")
    stop = commands.add_parser("down", help="stop what `up` started")
    stop.add_argument(
        "--purge", action="store_true", help="also drop the databases, artifacts and credentials"
    )
    commands.add_parser("status", help="show what runs and whether it answers")
    commands.add_parser("env", help="print the client variables as export lines")
    run = commands.add_parser("exec", help="container entry point: run one server in the foreground")
    run.add_argument("server", choices=["mlflow", "prefect"])
    args = parser.parse_args(argv)

    os.environ.update({k: os.environ.get(k, v) for k, v in QUIET.items()})
    settings = Settings.from_env()
    try:
        if args.command == "up":
            print(f"Starting servers (state in {_relative(settings.state_dir)}):")
            settings = up(settings, serve=not args.no_serve, timeout=args.timeout)
            print_banner(settings, serve=not args.no_serve)
        elif args.command == "down":
            down(settings, purge=args.purge)
        elif args.command == "status":
            return status(settings)
        elif args.command == "env":
            for key, value in settings.with_secrets(generate=False).client_env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "exec":
            exec_server(settings, args.server)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
