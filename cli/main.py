"""`mlops`: the command line of the gated model factory.

    mlops run USE_CASE ...        train, gate, register, promote (cli/run.py)
    mlops score | monitor | serve-model | status | rollback      the registry's consumers (cli/models.py)
    mlops deploy | serve | notify-data | server status|stop      server mode (cli/servers.py)
    mlops approve USE_CASE --run RUN --reason ...     answer a run that waits for a person (cli/approve.py)
    mlops tune USE_CASE --trials N | --timeout S      an Optuna study, the winner gated (cli/tune.py)
    mlops challenge USE_CASE --version N | --retire   set or retire the challenger (cli/challenge.py)
    mlops compare USE_CASE [--since DATE]            champion vs challenger on live pairs (cli/compare.py)

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
# XGBoost's OpenMP threads sleep while they wait instead of spinning: beside servers and other jobs on a small
# machine, spinning made training 2-3x slower (bench/overhead.py). Read when libgomp loads, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from cli import approve, challenge, compact, compare, models, run, servers, tune  # noqa: E402

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
challenge.register_commands(app)
compare.register_commands(app)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
