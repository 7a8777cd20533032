"""The stack as a whole, in the order its parts need: `up` (databases, Redis, then both servers, then the
runner's MLflow user, optionally Dask, then the client files and `mlops serve`), `down`, `status`, the
containers' entry point (`exec_server`) and `discard_stack` for throwaway stacks.

Native layout, under `MLOPS_SERVERS_DIR` (default `.mlops/servers/`): `<name>.pid` and `<name>.log` for
`mlflow`, `prefect`, `redis` and `serve`; `mlflow-artifacts/` (the artifact store the MLflow server serves);
`redis/` (Redis's append-only files);
`basic_auth.ini` (rendered); `client.env` (a person's shell: MLflow as the admin), `runner.env` (the runner:
MLflow as the runner user) and `credentials.env`, all mode 0600.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from infra.servers import dask_cluster, redis_server
from infra.servers.health import deployments_registered, mlflow_healthy, prefect_healthy, redis_problem
from infra.servers.mlflow_users import ensure_runner_resources, factory_resources, wait_for_runner_user
from infra.servers.postgres import drop_databases, ensure_databases
from infra.servers.processes import Managed, port_open, wait_until
from infra.servers.settings import (
    INHERITED_SECRETS,
    MLFLOW_SECRETS,
    PREFECT_SECRETS,
    PROJECT_ROOT,
    ServerError,
    Settings,
    client_host,
    write_env_file,
)

# What `down` stops, in this order: the runner before what it uses (dask: `up --dask`).
STOP_ORDER = ("serve", *dask_cluster.PROCESSES, redis_server.NAME, "prefect", "mlflow")


def up(settings: Settings, serve: bool = True, timeout: float = 180.0, dask: bool = False) -> Settings:
    """Start what is not running yet and wait until it answers. Safe to repeat. Redis first (it starts in a
    moment, and a missing redis-server fails before anything else starts); its URL, like Dask's address
    (`dask`: a scheduler and workers too, infra/servers/dask_cluster.py), goes to the runner and client.env.
    """
    settings = _prepare(settings)
    extra = redis_server.up(settings, timeout)
    mlflow, prefect = _start_servers(settings)
    wait_until(lambda: mlflow_healthy(settings), timeout, "MLflow server", mlflow)
    wait_until(lambda: prefect_healthy(settings), timeout, "Prefect server", prefect)
    done = wait_for_runner_user(settings, timeout)
    print(f"  mlflow: runner user {settings.mlflow_runner_username} {done} (not an admin)")
    for change in ensure_runner_resources(settings, factory_resources()):
        print(f"  mlflow: {change} for {settings.mlflow_runner_username}")
    if dask:
        extra.update(dask_cluster.up(settings.state_dir, timeout))
    write_env_file(settings.state_dir / "client.env", {**settings.client_env(), **extra}, export=True)
    write_env_file(settings.state_dir / "runner.env", {**settings.runner_env(), **extra}, export=True)
    if serve:
        _start_runner(settings, extra, timeout)
    return settings


def _prepare(settings: Settings) -> Settings:
    """The secrets (kept private), the state folder, the databases and the artifact store."""
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
    return settings


def _start_servers(settings: Settings) -> tuple[Managed, Managed]:
    """Start MLflow and Prefect unless running, both before waiting on either: their database migrations
    overlap."""
    mlflow, prefect = Managed("mlflow", settings.state_dir), Managed("prefect", settings.state_dir)
    auth_config = settings.render_auth_config()
    for process, command, env, host, port in (
        (
            mlflow,
            settings.mlflow_command(),
            settings.mlflow_env(auth_config),
            settings.mlflow_host,
            settings.mlflow_port,
        ),
        (
            prefect,
            settings.prefect_command(),
            settings.prefect_env(),
            settings.prefect_host,
            settings.prefect_port,
        ),
    ):
        if process.pid() is not None:
            print(f"  {process.name}: already running (pid {process.pid()})")
            continue
        if port_open(client_host(host), port):
            raise ServerError(
                f"{process.name}: port {port} is taken by another program; choose another one "
                "(MLOPS_MLFLOW_PORT / MLOPS_PREFECT_PORT) or stop it"
            )
        pid = process.start(command, env)
        print(f"  {process.name}: started (pid {pid}), log {process.log_file}")
    return mlflow, prefect


def _start_runner(settings: Settings, extra: Mapping[str, str], timeout: float) -> None:
    """`mlops serve` unless running, then wait until it has registered the deployments."""
    runner = Managed("serve", settings.state_dir)
    if runner.pid() is None:
        pid = runner.start(settings.serve_command(), {**settings.serve_env(), **extra})
        print(f"  serve: started `mlops serve` (pid {pid}), log {runner.log_file}")
    else:
        print(f"  serve: already running (pid {runner.pid()})")
    wait_until(lambda: deployments_registered(settings), timeout, "deployments", runner, interval=2.0)


def down(settings: Settings, purge: bool = False) -> None:
    """Stop what `up` started; `purge`: drop the databases, client files, credentials, artifacts and Redis's
    data too."""
    for name in STOP_ORDER:
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
            shutil.rmtree(artifacts)
            print(f"  artifacts: removed {artifacts}")
        if redis_server.purge(settings.state_dir):
            print(f"  redis: removed {redis_server.data_dir(settings.state_dir)}")


def status(settings: Settings) -> int:
    """Print what runs and whether it answers; 1 when a running server does not answer. An external Redis
    (MLOPS_REDIS_URL) is checked too, though not started here."""
    external = redis_server.external_url(settings)
    redis_url = redis_server.url(settings)
    checks = {
        "mlflow": (settings.mlflow_url, lambda: mlflow_healthy(settings)),
        "prefect": (settings.prefect_url, lambda: prefect_healthy(settings)),
        "redis": (redis_server.redacted(redis_url), lambda: redis_problem(redis_url) is None),
        "serve": ("mlops serve", lambda: True),
    }
    problems = 0
    for name, (where, healthy) in checks.items():
        process = Managed(name, settings.state_dir)
        pid = process.pid()
        watched = pid is not None or (name == redis_server.NAME and external is not None)
        state = "stopped" if not watched else ("healthy" if healthy() else "NOT ANSWERING")
        problems += state == "NOT ANSWERING"
        detail = f"  (pid {pid}, log {process.log_file})" if pid else ("  (external)" if watched else "")
        print(f"  {name:8} {state:14} {where}{detail}")
    return 1 if problems else 0


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
    for name in ("serve", redis_server.NAME, "prefect", "mlflow"):
        Managed(name, settings.state_dir).stop(timeout=10)
    drop_databases(settings.databases())


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
