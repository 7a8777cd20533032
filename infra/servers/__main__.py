"""MLflow and Prefect servers on Postgres, and Redis: one definition for `make up`/`make down`, docker-compose
and CI.

    python -m infra.servers up        # Redis, MLflow + Prefect on loopback against the local Postgres, then
                                      # `mlops serve` (deploys, then runs scheduled/UI/event runs)
    python -m infra.servers status    # what runs, where, healthy or not
    python -m infra.servers env       # the client variables: eval "$(python -m infra.servers env)"
    python -m infra.servers down      # stop them (--purge: drop the databases, artifacts, Redis's data too)
    python -m infra.servers exec mlflow|prefect   # container entry point (docker-compose.yml)
    python -m infra.servers mlflow-setup          # create/update the runner's MLflow user (compose, once)

The settings (environment variables, `.env`, generated secrets) are described in infra/servers/settings.py;
the files under `.mlops/servers/` in infra/servers/stack.py. Nothing here prints or logs a secret;
`client.env` (mode 0600) holds what a shell needs, to be read with `source`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from infra.servers import redis_server
from infra.servers.mlflow_users import ensure_runner_resources, factory_resources, wait_for_runner_user
from infra.servers.settings import QUIET, RUNNER_SECRETS, ServerError, Settings, read_env_file
from infra.servers.stack import down, exec_server, status, up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.servers", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start Redis, MLflow, Prefect and `mlops serve`; idempotent")
    start.add_argument("--no-serve", action="store_true", help="start only the servers")
    start.add_argument(
        "--dask", action="store_true", help="also a Dask scheduler and workers (make up DASK=1)"
    )
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each to answer")
    stop = commands.add_parser("down", help="stop what `up` started")
    stop.add_argument(
        "--purge",
        action="store_true",
        help="also drop the databases, artifacts, credentials and Redis's data",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
            client_env = settings.with_secrets(generate=False).client_env()
            for key, value in {**client_env, redis_server.URL_ENV: redis_server.url(settings)}.items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "mlflow-setup":
            mlflow_setup(settings, args.timeout)
        elif args.command == "exec":
            exec_server(settings, args.server)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def mlflow_setup(settings: Settings, timeout: float) -> None:
    """Compose's one-shot service: the runner's MLflow user and its access, once MLflow answers."""
    settings = settings.with_secrets(generate=False, names=RUNNER_SECRETS)
    done = wait_for_runner_user(settings, timeout)
    print(f"MLflow user {settings.mlflow_runner_username}: {done} (not an admin)")
    for change in ensure_runner_resources(settings, factory_resources()):
        print(f"MLflow: {change} for {settings.mlflow_runner_username}")


def print_banner(settings: Settings, serve: bool) -> None:
    """Where the UIs are and where their credentials are kept; never the credentials themselves."""
    env_file = settings.state_dir / "client.env"
    stored = read_env_file(settings.credentials_file)
    redis = redis_server.redacted(redis_server.url(settings))

    def where(name: str) -> str:
        return _relative(settings.credentials_file) if name in stored else f"{name} (.env or environment)"

    print(
        f"\nMLflow UI   {settings.mlflow_url}   "
        f"(user {settings.mlflow_admin_username}, password MLFLOW_AUTH_ADMIN_PASSWORD in "
        f"{where('MLFLOW_AUTH_ADMIN_PASSWORD')})\n"
        f"Prefect UI  {settings.prefect_url}   (it asks for the auth string: "
        f"PREFECT_SERVER_API_AUTH_STRING in {where('PREFECT_SERVER_API_AUTH_STRING')})\n"
        f"Redis       {redis}   (the model server's feature state)\n\n"
        "Point the `mlops` CLI, notebooks and MLflow clients at them (PREFECT_API_URL,\n"
        "PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD, MLOPS_REDIS_URL):\n"
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


if __name__ == "__main__":
    sys.exit(main())
