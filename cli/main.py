"""`mlops`: the command line of the gated model factory.

    mlops run USE_CASE ...        train, gate, register, promote (cli/run.py)
    mlops score | monitor | serve-model | status | rollback      the registry's consumers (cli/models.py)
    mlops deploy | serve | notify-data | server status|stop      server mode (cli/servers.py)
    mlops approve USE_CASE --run RUN --reason ...     answer a run that waits for a person (cli/approve.py)
    mlops tune USE_CASE --trials N | --timeout S      an Optuna study, the winner gated (cli/tune.py)

Exit codes are listed in each command's module and `--help`.
"""

from __future__ import annotations

import os
import sys

# No network here, and no surprise telemetry anywhere: set before Prefect/GX are imported.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
# Where a temporary Prefect server is used (MLOPS_PREFECT_SERVER=ephemeral), let a busy machine start it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import typer  # noqa: E402

from cli import approve, compact, models, run, servers, tune  # noqa: E402

app = typer.Typer(
    help="Gated model factory: validate data, train, evaluate, gate, register and promote models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
run.register_commands(app)
models.register_commands(app)
servers.register_commands(app)
compact.register_commands(app)
approve.register_commands(app)
tune.register_commands(app)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
