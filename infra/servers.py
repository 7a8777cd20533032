"""MLflow and Prefect servers on Postgres: one definition for `make up`/`make down`, docker-compose and CI.

    python -m infra.servers up        # MLflow + Prefect on loopback against the local Postgres, then
                                      # `mlops serve` (deploys, then runs scheduled/UI/event runs)
    python -m infra.servers status    # what runs, where, healthy or not
    python -m infra.servers env       # the client variables: eval "$(python -m infra.servers env)"
    python -m infra.servers down      # stop them (add --purge to drop the databases and artifacts too)
    python -m infra.servers exec mlflow|prefect   # container entry point (docker-compose.yml)
    python -m infra.servers mlflow-setup          # create/update the runner's MLflow user (compose, once)

Everything is configured by environment variables, the same names docker-compose.yml passes to its
containers (`.env.example` lists them); a `.env` file in the project root (`MLOPS_ENV_FILE`; empty: none) is
read for names not already set:

    MLOPS_MLFLOW_HOST/PORT/WORKERS   127.0.0.1 / 5000 / 2      MLOPS_PREFECT_HOST/PORT   127.0.0.1 / 4200
    MLOPS_POSTGRES                   postgres@127.0.0.1:5432   MLOPS_DB_PREFIX           mlops
    MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_DATABASE_URI, PREFECT_SERVER_DATABASE_CONNECTION_URL: default to
        databases <prefix>_mlflow, <prefix>_mlflow_auth, <prefix>_prefect on MLOPS_POSTGRES
    MLFLOW_ARTIFACTS_DESTINATION     <servers dir>/mlflow-artifacts
    MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_DEFAULT_PERMISSION,
    MLFLOW_SERVER_ALLOWED_HOSTS, PREFECT_SERVER_UI_API_URL, PREFECT_SERVER_API_AUTH_STRING: MLflow's and
        Prefect's own settings
    MLOPS_MLFLOW_RUNNER_USERNAME/PASSWORD  mlops-runner / generated: the non-admin MLflow user of the runner
    MLOPS_DATA_ROOTS                 folders that deployment-started runs may read `data` from (os.pathsep)

Natively, unset secrets (the MLflow admin and runner passwords, the Flask secret key and the Prefect API auth
string) are generated once and kept in `.mlops/servers/credentials.env` (mode 0600), so the servers keep
accepting the same credentials. Nothing here prints or logs them; `client.env` (mode 0600) holds what a shell
needs, to be read with `source`.

Native layout, under `MLOPS_SERVERS_DIR` (default `.mlops/servers/`): `<name>.pid` and `<name>.log` for
`mlflow`, `prefect` and `serve`; `mlflow-artifacts/` (the artifact store the MLflow server serves);
`basic_auth.ini` (rendered); `client.env` (a person's shell: MLflow as the admin), `runner.env` (the runner:
MLflow as the runner user) and `credentials.env`, all mode 0600.
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
import urllib.parse
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
DATA_ROOTS_ENV = "MLOPS_DATA_ROOTS"
# The secrets: environment name -> Settings field. Unset ones are generated natively (credentials.env).
SECRETS = {
    "MLFLOW_AUTH_ADMIN_PASSWORD": "mlflow_admin_password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow_secret_key",
    "MLOPS_MLFLOW_RUNNER_PASSWORD": "mlflow_runner_password",
    "PREFECT_SERVER_API_AUTH_STRING": "prefect_auth_string",
}
# Which secrets each server (or step) needs.
MLFLOW_SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
PREFECT_SECRETS = ("PREFECT_SERVER_API_AUTH_STRING",)
RUNNER_SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLOPS_MLFLOW_RUNNER_PASSWORD")
# Never passed on from `up`'s own environment to the processes it starts (each gets what it needs explicitly).
INHERITED_SECRETS = frozenset({*SECRETS, "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"})


class ServerError(RuntimeError):
    pass


class NotYet(ServerError):
    """A server answered, but not (yet) as it will once it finished starting."""


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
    mlflow_runner_username: str
    mlflow_runner_password: str | None
    prefect_host: str
    prefect_port: int
    prefect_database_url: str
    prefect_ui_api_url: str | None
    prefect_auth_string: str | None
    data_roots: str | None  # MLOPS_DATA_ROOTS for the runner, when set here

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
            mlflow_runner_username=get("MLOPS_MLFLOW_RUNNER_USERNAME", "mlops-runner"),
            mlflow_runner_password=get("MLOPS_MLFLOW_RUNNER_PASSWORD"),
            prefect_host=get("MLOPS_PREFECT_HOST", "127.0.0.1"),
            prefect_port=int(get("MLOPS_PREFECT_PORT", "4200")),
            prefect_database_url=get(
                "PREFECT_SERVER_DATABASE_CONNECTION_URL", f"postgresql+asyncpg://{postgres}/{prefix}_prefect"
            ),
            prefect_ui_api_url=get("PREFECT_SERVER_UI_API_URL"),
            prefect_auth_string=get("PREFECT_SERVER_API_AUTH_STRING"),
            data_roots=get(DATA_ROOTS_ENV),
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

    def with_secrets(self, generate: bool, names: Iterable[str] = tuple(SECRETS)) -> Settings:
        """Fill the unset secrets `names` from `credentials.env`, generating (and keeping) them there when
        allowed. Never prints them: errors name the variables, not their values."""
        stored = read_env_file(self.credentials_file)
        values = {name: getattr(self, SECRETS[name]) or stored.get(name) for name in names}
        placeholders = [k for k, v in values.items() if v == PLACEHOLDER]
        if placeholders:
            raise ServerError(f"replace the {PLACEHOLDER!r} placeholder of {', '.join(placeholders)} in .env")
        missing = [k for k, v in values.items() if not v]
        if missing and not generate:
            raise ServerError(f"set {', '.join(missing)} (see .env.example)")
        if missing:
            values.update({k: secrets.token_urlsafe(24) for k in missing})
            write_env_file(self.credentials_file, {**stored, **{k: values[k] for k in missing}})
        if self.mlflow_runner_username == self.mlflow_admin_username:
            raise ServerError("MLOPS_MLFLOW_RUNNER_USERNAME must differ from MLFLOW_AUTH_ADMIN_USERNAME")
        return _replace(self, **{SECRETS[k]: v for k, v in values.items()})

    def client_env(self) -> dict[str, str]:
        """What a person's shell (`mlops` commands, notebooks, MLflow clients) needs: MLflow as the admin."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string or "",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.mlflow_admin_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_admin_password or "",
        }

    def runner_env(self) -> dict[str, str]:
        """What the runner (`mlops serve` and its flow runs) gets: MLflow as the non-admin runner user."""
        env = {
            **self.client_env(),
            "MLFLOW_TRACKING_USERNAME": self.mlflow_runner_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_runner_password or "",
        }
        if self.data_roots:
            env[DATA_ROOTS_ENV] = self.data_roots
        return env

    def prefect_headers(self) -> dict[str, str]:
        """The header Prefect's clients send: HTTP basic with the auth string as the credentials."""
        if not self.prefect_auth_string:
            return {}
        return {"Authorization": "Basic " + b64encode(self.prefect_auth_string.encode()).decode()}

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
        env = {
            **QUIET,
            "PREFECT_HOME": str(self.state_dir / "prefect-home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.prefect_database_url,
            "PREFECT_SERVER_UI_API_URL": self.prefect_ui_api_url or self.prefect_api_url,
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        }
        if self.prefect_auth_string:  # every API call but GET /health and /ready needs it; the UI asks for it
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.prefect_auth_string
            env["PREFECT_API_AUTH_STRING"] = self.prefect_auth_string  # the server's own CLI client
        return env

    def serve_command(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "serve"]

    def serve_env(self) -> dict[str, str]:
        return {**QUIET, **self.runner_env(), "PREFECT_HOME": str(self.state_dir / "serve-prefect-home")}


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


def discard_stack(settings: Settings, env: Mapping[str, str]) -> None:
    """Tear down a throwaway `up` (tests, the screenshot script): `down --purge` as a user would run it,
    then whatever it could not stop, then its databases."""
    subprocess.run(
        [sys.executable, "-m", "infra.servers", "down", "--purge"],
        env=dict(env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=180,
    )
    for name in ("serve", "prefect", "mlflow"):
        Managed(name, settings.state_dir).stop(timeout=10)
    drop_databases(settings.databases())


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
        """Start `command` with this environment plus `env`, minus the secrets `env` does not give it (so
        the runner never inherits the MLflow admin password, nor a server the other server's secret)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if k not in INHERITED_SECRETS}
        with self.log_file.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env={**inherited, **env},
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


def _basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{username}:{password}".encode()).decode()}


def http_ok(
    url: str,
    auth: tuple[str, str] | None = None,
    timeout: float = 3.0,
    headers: Mapping[str, str] | None = None,
) -> bool:
    request = urllib.request.Request(url, headers={**(_basic(*auth) if auth else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def http_json(
    method: str, url: str, body: Mapping | None, headers: Mapping[str, str], timeout: float = 15.0
) -> tuple[int, dict]:
    """(status, decoded JSON body or {}) of one request; HTTP errors are returned, not raised."""
    import json

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"message": str(getattr(exc, "reason", exc))}
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"message": raw.decode(errors="replace")[:300]}


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

    headers = settings.prefect_headers()
    return all(
        http_ok(f"{settings.prefect_api_url}/deployments/name/{plan.full_name}", headers=headers)
        for plan in all_plans()
    )


def ensure_runner_user(settings: Settings) -> str:
    """Create the runner's MLflow user (not an admin) through MLflow's auth REST API, as the admin; when it
    exists, set its password to the configured one. Returns "created" or "updated".

    In MLflow's basic-auth app the creator of an experiment or registered model gets MANAGE on it, so this
    user can log runs to the experiments and set aliases on the models it creates, and reads the rest with
    MLFLOW_AUTH_DEFAULT_PERMISSION; it cannot manage users or change what others created.
    """
    admin = _basic(settings.mlflow_admin_username, settings.mlflow_admin_password or "")
    base = f"{settings.mlflow_url}/api/2.0/mlflow/users"
    user = {"username": settings.mlflow_runner_username, "password": settings.mlflow_runner_password}
    status, body = http_json("POST", f"{base}/create", user, admin)
    if status == 200:
        return "created"
    if body.get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise _user_error("creating", user["username"], status, body)
    status, body = http_json("PATCH", f"{base}/update-password", user, admin)
    if status != 200:
        raise _user_error("updating", user["username"], status, body)
    status, body = http_json("GET", f"{base}/get?username={user['username']}", None, admin)
    if status == 200 and body.get("user", {}).get("is_admin"):
        raise ServerError(f"MLflow user {user['username']} is an admin; the runner must not be one")
    return "updated"


def factory_resources() -> list[tuple[str, str, str]]:
    """(use case, registered model, its description) for every use case, from each spec's defaults."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time chatter of the use cases' libraries
        from usecases import SPEC_MODULES, spec_module

        found = []
        for use_case in SPEC_MODULES:
            module = spec_module(use_case)
            params = module.Params()
            found.append((use_case, module.registered_model(params), module.build_spec(params).description))
    return found


def ensure_runner_resources(settings: Settings, resources: Iterable[tuple[str, str, str]]) -> list[str]:
    """Make the runner user able to write what the deployments write, and nothing more; returns what changed.

    - Each use case's registered model is created as the runner user when missing, so it owns it (MANAGE).
      (MLflow answers a non-admin's question about a registered model that does not exist yet, such as "where
      does @champion point", with 403 rather than 404: the model must exist before the first run.)
    - A registered model or experiment of the factory that someone else created first (say, an `mlops run`
      from the admin's shell) gets an EDIT grant for the runner, so it can log runs, register versions and
      move aliases there.
    """
    admin = _basic(settings.mlflow_admin_username, settings.mlflow_admin_password or "")
    runner = _basic(settings.mlflow_runner_username, settings.mlflow_runner_password or "")
    api = f"{settings.mlflow_url}/api/2.0/mlflow"
    changed = []

    def grant_edit(resource_type: str, resource_id: str, label: str) -> None:
        query = urllib.parse.urlencode(
            {
                "username": settings.mlflow_runner_username,
                "resource_type": resource_type,
                "resource_id": resource_id,
            }
        )
        status, body = http_json(
            "GET", f"{settings.mlflow_url}/api/3.0/mlflow/users/permissions/get?{query}", None, admin
        )
        if status == 200 and body.get("permission") in ("EDIT", "MANAGE"):
            return
        grant = {
            "username": settings.mlflow_runner_username,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "permission": "EDIT",
        }
        status, body = http_json(
            "POST", f"{settings.mlflow_url}/api/3.0/mlflow/users/permissions/grant", grant, admin
        )
        if status != 200:
            raise ServerError(f"MLflow: granting the runner EDIT on {label} failed (HTTP {status}: {body})")
        changed.append(f"granted EDIT on {label}")

    for use_case, model, description in resources:
        quoted = urllib.parse.quote(model)
        status, _ = http_json("GET", f"{api}/registered-models/get?name={quoted}", None, admin)
        if status == 404:
            created = {"name": model, "description": description}
            status, body = http_json("POST", f"{api}/registered-models/create", created, runner)
            if status != 200:
                raise ServerError(f"MLflow: creating registered model {model} failed (HTTP {status}: {body})")
            changed.append(f"created registered model {model}")
        elif status == 200:
            grant_edit("registered_model", model, f"registered model {model}")
        else:
            raise ServerError(f"MLflow: reading registered model {model} failed (HTTP {status})")
        for experiment in (use_case, f"{use_case}-monitoring"):
            query = urllib.parse.urlencode({"experiment_name": experiment})
            status, body = http_json("GET", f"{api}/experiments/get-by-name?{query}", None, admin)
            if status == 200:
                experiment_id = body["experiment"]["experiment_id"]
                grant_edit("experiment", experiment_id, f"experiment {experiment}")
    return changed


def _user_error(doing: str, username: str, status: int, body: Mapping) -> ServerError:
    """The error (never the request: it holds the password); retried when the server is not ready yet."""
    message = str(body.get("message") or body.get("error_code") or body)[:300]
    error = NotYet if status in (0, 401, 502, 503, 504) else ServerError
    return error(f"MLflow: {doing} user {username} failed (HTTP {status or 'none'}: {message})")


def wait_for_runner_user(settings: Settings, timeout: float) -> str:
    """`ensure_runner_user` once MLflow answers (compose: a one-shot service after the server is healthy)."""
    wait_until(lambda: mlflow_healthy(settings), timeout, "MLflow server")
    deadline = time.monotonic() + 60
    while True:  # a fresh server's workers may still be setting up the admin user behind the health check
        try:
            return ensure_runner_user(settings)
        except NotYet:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def up(settings: Settings, serve: bool = True, timeout: float = 180.0, dask: bool = False) -> Settings:
    """Start what is not running yet and wait until it answers. Safe to repeat. `dask`: a Dask scheduler and
    workers too (infra/dask_servers.py), whose address the runner and client.env get."""
    settings = settings.with_secrets(generate=True)
    credentials_mode = (
        settings.credentials_file.stat().st_mode & 0o777 if settings.credentials_file.exists() else 0
    )
    if credentials_mode & 0o077:
        settings.credentials_file.chmod(0o600)
        print(f"  credentials: {settings.credentials_file} was readable by others; now mode 0600")
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
    done = wait_for_runner_user(settings, timeout)
    print(f"  mlflow: runner user {settings.mlflow_runner_username} {done} (not an admin)")
    for change in ensure_runner_resources(settings, factory_resources()):
        print(f"  mlflow: {change} for {settings.mlflow_runner_username}")
    extra = {}
    if dask:
        from infra import dask_servers

        extra = dask_servers.up(settings.state_dir, Managed, wait_until, port_open, timeout)
    write_env_file(settings.state_dir / "client.env", {**settings.client_env(), **extra}, export=True)
    write_env_file(settings.state_dir / "runner.env", {**settings.runner_env(), **extra}, export=True)
    if serve:
        if runner.pid() is None:
            pid = runner.start(settings.serve_command(), {**settings.serve_env(), **extra})
            print(f"  serve: started `mlops serve` (pid {pid}), log {runner.log_file}")
        else:
            print(f"  serve: already running (pid {runner.pid()})")
        wait_until(lambda: deployments_registered(settings), timeout, "deployments", runner, interval=2.0)
    return settings


def down(settings: Settings, purge: bool = False) -> None:
    for name in ("serve", "dask_worker", "dask_scheduler", "prefect", "mlflow"):  # dask: `up --dask`
        began = time.monotonic()
        stopped = Managed(name, settings.state_dir).stop()
        print(f"  {name}: {f'stopped ({time.monotonic() - began:.0f} s)' if stopped else 'not running'}")
    if purge:
        dropped = drop_databases(settings.databases())
        print(f"  postgres: dropped {', '.join(dropped) if dropped else 'nothing'}")
        for path in ("basic_auth.ini", "client.env", "runner.env", "credentials.env"):
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
    """Where the UIs are and where their credentials are kept; never the credentials themselves."""
    env_file = settings.state_dir / "client.env"
    stored = read_env_file(settings.credentials_file)

    def where(name: str) -> str:
        return _relative(settings.credentials_file) if name in stored else f"{name} (.env or environment)"

    print(
        f"\nMLflow UI   {settings.mlflow_url}   "
        f"(user {settings.mlflow_admin_username}, password MLFLOW_AUTH_ADMIN_PASSWORD in "
        f"{where('MLFLOW_AUTH_ADMIN_PASSWORD')})\n"
        f"Prefect UI  {settings.prefect_url}   (it asks for the auth string: "
        f"PREFECT_SERVER_API_AUTH_STRING in {where('PREFECT_SERVER_API_AUTH_STRING')})\n\n"
        "Point the `mlops` CLI, notebooks and MLflow clients at them (PREFECT_API_URL,\n"
        "PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD):\n"
        f"  source {_relative(env_file)}\n"
    )
    if serve:
        print(
            'Deployments are registered and `mlops serve` runs them (scheduled, UI "Custom run", and on '
            "`mlops notify-data`).\nStop everything with `make down`."
        )
    else:
        print(
            "Next: `mlops deploy` to register the deployments, then run them as the runner's MLflow user:\n"
            f"  (source {_relative(settings.state_dir / 'runner.env')} && mlops serve)\nStop: `make down`."
        )


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def exec_server(settings: Settings, which: str) -> None:
    """Container entry point: make sure the databases exist, render config, then become the server."""
    settings = settings.with_secrets(
        generate=False, names=MLFLOW_SECRETS if which == "mlflow" else PREFECT_SECRETS
    )
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
    inherited = {k: v for k, v in os.environ.items() if k not in INHERITED_SECRETS}
    os.execvpe(command[0], command, {**inherited, **env})


# -- data roots --------------------------------------------------------------------------------------------
class DataPathRefused(ValueError):
    """A run started through a deployment named a `data` file outside the data roots."""


def data_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """Folders whose files runs started through a deployment may read: MLOPS_DATA_ROOTS (separated by
    os.pathsep), by default `<MLOPS_HOME>/data` and the project's `data/` folder. Resolved."""
    env = os.environ if env is None else env
    raw = env.get(DATA_ROOTS_ENV, "")
    if raw.strip():
        roots = [Path(p.strip()).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    else:
        home = Path(env.get("MLOPS_HOME") or ".mlops").expanduser()
        roots = [home / "data", PROJECT_ROOT / "data"]
    return list(dict.fromkeys(root.resolve() for root in roots))


def confine_to_data_roots(path: str, roots: Iterable[Path] | None = None) -> Path:
    """`path` resolved (links followed, so a link inside a root to a file outside is refused) when it lies in
    one of the data roots; else DataPathRefused naming the path and the roots."""
    roots = list(data_roots() if roots is None else roots)
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        # A directory or a glob is one input of several files: each must lie there too (links followed).
        glob_chars = any(c in str(path) for c in "*?[")
        if glob_chars or resolved.is_dir():
            import glob

            members = glob.glob(str(resolved)) if glob_chars else [str(p) for p in resolved.iterdir()]
            for member in members:
                confine_to_data_roots(member, roots)
        return resolved
    shown = path if str(resolved) == path else f"{path} (resolved: {resolved})"
    raise DataPathRefused(
        f"refused data path {shown}: it is outside the data roots ({', '.join(map(str, roots))}). Runs "
        f"started through a deployment (UI, schedule, events) read only files under {DATA_ROOTS_ENV}; put "
        "the file there, or add its folder to MLOPS_DATA_ROOTS where the runner runs. Nothing was trained."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.servers", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start MLflow, Prefect and `mlops serve`; idempotent")
    start.add_argument("--no-serve", action="store_true", help="start only the two servers")
    start.add_argument(
        "--dask", action="store_true", help="also a Dask scheduler and workers (make up DASK=1)"
    )
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each to answer")
    stop = commands.add_parser("down", help="stop what `up` started")
    stop.add_argument(
        "--purge", action="store_true", help="also drop the databases, artifacts and credentials"
    )
    commands.add_parser("status", help="show what runs and whether it answers")
    commands.add_parser(
        "env", help="print the client variables, secrets included, as export lines (or: source client.env)"
    )
    setup = commands.add_parser(
        "mlflow-setup", help="create the runner's non-admin MLflow user as the admin (compose, once)"
    )
    setup.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for MLflow to answer")
    run = commands.add_parser("exec", help="container entry point: run one server in the foreground")
    run.add_argument("server", choices=["mlflow", "prefect"])
    args = parser.parse_args(argv)

    os.environ.update({k: os.environ.get(k, v) for k, v in QUIET.items()})
    settings = Settings.from_env()
    try:
        if args.command == "up":
            print(f"Starting servers (state in {_relative(settings.state_dir)}):")
            settings = up(settings, serve=not args.no_serve, timeout=args.timeout, dask=args.dask)
            print_banner(settings, serve=not args.no_serve)
        elif args.command == "down":
            down(settings, purge=args.purge)
        elif args.command == "status":
            return status(settings)
        elif args.command == "env":
            for key, value in settings.with_secrets(generate=False).client_env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "mlflow-setup":
            settings = settings.with_secrets(generate=False, names=RUNNER_SECRETS)
            done = wait_for_runner_user(settings, args.timeout)
            print(f"MLflow user {settings.mlflow_runner_username}: {done} (not an admin)")
            for change in ensure_runner_resources(settings, factory_resources()):
                print(f"MLflow: {change} for {settings.mlflow_runner_username}")
        elif args.command == "exec":
            exec_server(settings, args.server)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
