"""The servers' settings: read from the environment (and a `.env` file), the secrets, and what each process
is started with.

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
    MLOPS_REDIS_PORT/MAXMEMORY       6390 / 256mb: `make up`'s Redis, the model server's feature state
    MLOPS_REDIS_URL                  an external Redis instead (`make up` starts none): redis_server.py
    MLOPS_PAIRS_URL                  the model server's champion/challenger pairs: database <prefix>_pairs on
                                     MLOPS_POSTGRES (tasks/challenger/pairs.py), created by `up`

Natively, unset secrets (the MLflow admin and runner passwords, the Flask secret key and the Prefect API auth
string) are generated once and kept in `.mlops/servers/credentials.env` (mode 0600), so the servers keep
accepting the same credentials. Nothing here prints or logs them.
"""

from __future__ import annotations

import os
import secrets
import shlex
import string
import sys
from base64 import b64encode
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AUTH_TEMPLATE = PROJECT_ROOT / "infra" / "mlflow" / "basic_auth.ini.template"

# Telemetry off in every process started here (and in `python -m infra.servers` itself).
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "GX_ANALYTICS_ENABLED": "false",
}
# MLflow's GenAI job runner (a runner and seven consumer processes, for judges and prompt optimisation): no
# part of this project uses it, so MLflow servers started here go without it.
NO_MLFLOW_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
PLACEHOLDER = "change-me"  # what .env.example holds where a secret goes
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
    _write_private(path, text)
    path.chmod(0o600)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file created with mode 0600 (it holds secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


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
    mlflow_auth_cache_seconds: int  # how long a checked credential is trusted (basic_auth.ini)
    mlflow_job_execution: str  # MLflow's GenAI job runner: off (NO_MLFLOW_JOBS) unless the operator asks
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
    redis_url: str | None  # MLOPS_REDIS_URL: an external Redis; unset, `up` starts one on redis_port
    redis_port: int
    redis_maxmemory: str
    pairs_url: str  # MLOPS_PAIRS_URL: where model servers record champion/challenger pairs (and labels)

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
            mlflow_auth_cache_seconds=int(get("MLOPS_MLFLOW_AUTH_CACHE_SECONDS", "60")),
            mlflow_job_execution=get(
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", NO_MLFLOW_JOBS["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
            ),
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
            data_roots=get("MLOPS_DATA_ROOTS"),  # tasks.ingest.DATA_ROOTS_ENV; not imported: pandas
            redis_url=get("MLOPS_REDIS_URL"),
            # 6390: beside, not on, the 6379 of a system Redis (Debian's package starts one there).
            redis_port=int(get("MLOPS_REDIS_PORT", "6390")),
            redis_maxmemory=get("MLOPS_REDIS_MAXMEMORY", "256mb"),
            pairs_url=get("MLOPS_PAIRS_URL", f"postgresql://{postgres}/{prefix}_pairs"),
        )

    # -- addresses ---------------------------------------------------------------------------------------
    @property
    def mlflow_url(self) -> str:
        return f"http://{client_host(self.mlflow_host)}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{client_host(self.prefect_host)}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    def databases(self) -> list[str]:
        return [
            self.mlflow_backend_store_uri,
            self.mlflow_auth_database_uri,
            self.prefect_database_url,
            self.pairs_url,
        ]

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
        return replace(self, **{SECRETS[k]: v for k, v in values.items()})

    def client_env(self) -> dict[str, str]:
        """What a person's shell (`mlops` commands, notebooks, MLflow clients) needs: MLflow as the admin."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string or "",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.mlflow_admin_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_admin_password or "",
            # `mlops serve-model` records pairs there; `mlops compare` and the challenger flows read them
            "MLOPS_PAIRS_URL": self.pairs_url,
        }

    def runner_env(self) -> dict[str, str]:
        """What the runner (`mlops serve` and its flow runs) gets: MLflow as the non-admin runner user."""
        env = {
            **self.client_env(),
            "MLFLOW_TRACKING_USERNAME": self.mlflow_runner_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_runner_password or "",
        }
        if self.data_roots:
            env["MLOPS_DATA_ROOTS"] = self.data_roots
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
            "MLFLOW_AUTH_CACHE_TTL_SECONDS": str(self.mlflow_auth_cache_seconds),
        }
        text = string.Template(AUTH_TEMPLATE.read_text()).substitute(
            {k: v.replace("%", "%%") for k, v in values.items()}
        )
        path = self.state_dir / "basic_auth.ini"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, text)
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
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": self.mlflow_job_execution,
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
