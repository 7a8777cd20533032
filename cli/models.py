"""`mlops score`, `mlops monitor`, `mlops serve-model`, `mlops status`, `mlops rollback`: the registry's
consumers.

Exit codes: 0 done (monitor: healthy); 4 monitor: drift or degraded; 2 bad input (unreadable or invalid
input file, unknown use case, model or version, a refused rollback; nothing written, nothing moved); 1
anything else.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from champion import store
from cli.run import options_from, require_use_case
from cli.servers import reflow, use_prefect_server
from usecases import default_registered_model
from usecases.params import MonitorParams

# Imports inside functions: each command loads only what it uses, so `mlops --help` and the light commands
# start fast, and Prefect is imported only after `use_prefect_server()` has chosen its API.

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ATTENTION = 0, 1, 2, 4
console = Console(stderr=False)

_MODEL_HELP = "Registered model (default: the use case's own)."


def model_name(use_case: str, model: str | None) -> str:
    """--model, else the one registered model whose versions carry `use_case`, else the spec's default."""
    if model:
        return model
    from champion.lifecycle import registered_models

    store.configure()
    names = registered_models(use_case)
    if len(names) > 1:
        console.print(
            f"[bold red]{use_case} has several registered models[/] ({', '.join(names)}): pass --model"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    if names:
        return names[0]
    return default_registered_model(use_case)


def score(
    use_case: str = typer.Argument(..., help="Use case, e.g. fraud."),
    input: str = typer.Option(..., "--input", "-i", help="Records to score: .parquet or .csv."),
    output: str = typer.Option(..., "--output", "-o", help="Where to write scores: .parquet or .csv."),
    version: str | None = typer.Option(None, "--version", help="Score with this registry version."),
    alias: str | None = typer.Option(None, "--alias", help="Score with the version this alias points to."),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    chunk_rows: int = typer.Option(
        1_000_000, "--chunk-rows", help="Rows read at a time (time-ordered input); 0: all at once.", min=0
    ),
    executor: str | None = typer.Option(
        None,
        "--executor",
        help="local, or dask: partitions scored on a Dask cluster (MLOPS_DASK_ADDRESS, else a LocalCluster). "
        "Default: MLOPS_EXECUTOR, else local.",
    ),
    explain: int = typer.Option(
        0,
        "--explain",
        metavar="K",
        help="Add each row's K strongest reason codes (reason_i, reason_i_feature, reason_i_contribution, "
        "from XGBoost's contributions); 0: none. Local executor only.",
        min=0,
    ),
) -> None:
    """Score a file with the champion (or --version/--alias): id columns, score, model_version [, reasons]."""
    require_use_case(use_case)
    if version is not None and alias is not None:
        console.print("[bold red]input rejected[/]: give --version or --alias, not both")
        raise typer.Exit(EXIT_BAD_INPUT)
    from champion.loading import ModelNotFoundError

    use_prefect_server()
    from flows.scoring import batch_scoring
    from tasks.dask.cluster import ExecutorError
    from tasks.explain import ExplainUnsupported
    from tasks.ingest import DataReadError
    from tasks.score import InputOrderError
    from tasks.validate import DataValidationError

    try:
        result = batch_scoring(
            use_case,
            str(input),
            str(output),
            version=version,
            alias=alias,
            registered_model=model_name(use_case, model),
            chunk_rows=chunk_rows or None,
            show_progress=sys.stderr.isatty(),
            executor=executor,
            explain=explain,
        )
    except (
        DataReadError,
        DataValidationError,
        InputOrderError,
        ModelNotFoundError,
        ExecutorError,
        ExplainUnsupported,
    ) as exc:
        console.print(f"[bold red]input rejected[/]: {exc}")
        console.print(f"Nothing was written to {output}.")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        console.print(f"[bold red]scoring failed[/]: {type(exc).__name__}: {exc}")
        console.print(f"Nothing was written to {output}.")
        raise typer.Exit(EXIT_FAILED) from None
    s = result.seconds
    console.print(
        f"[bold green]scored[/] {result.rows_out:,} of {result.rows_in:,} rows with "
        f"{result.registered_model} v{result.model_version} → {result.output}"
    )
    console.print(
        f"{s['total']:.1f} s, {result.rows_per_second:,.0f} rows/s end to end; model step "
        f"{result.model_rows_per_second:,.0f} rows/s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in s.items() if k != "total")
        + f"; {result.chunks} chunk(s))"
    )


def serve_model(
    use_case: str = typer.Argument(..., help="Use case, e.g. fraud."),
    port: int = typer.Option(8080, "--port", "-p", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 for all)."),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    alias: str = typer.Option("champion", "--alias", help="Alias to serve and follow."),
    poll_seconds: float = typer.Option(
        10.0, "--poll-seconds", help="How often to ask the registry where the alias points.", min=0.1
    ),
    token_file: str | None = typer.Option(
        None,
        "--token-file",
        metavar="PATH",
        help="File holding a token (first line): /predict and /invocations then answer 401 without "
        "`Authorization: Bearer <token>`; /health and /ping stay open. Without it, the environment variable "
        "MLOPS_SERVE_TOKEN, when set, is the token.",
        show_default=False,
    ),
    compact: bool = typer.Option(
        False,
        "--compact",
        help="Serve the compact champion (`<registered model>-compact`, from `mlops compact`) instead.",
    ),
    state: str | None = typer.Option(
        None,
        "--state",
        metavar="URL",
        help="Where POST /transactions keeps per-key state: redis://HOST:PORT/DB. Default: MLOPS_REDIS_URL "
        "(`make up` sets it), else this process's memory (lost on exit).",
        show_default=False,
    ),
    lateness: float = typer.Option(
        3600,
        "--lateness",
        help="Seconds an event may arrive behind the newest one; later ones get 422.",
        min=0,
    ),
    history: str | None = typer.Option(
        None,
        "--history",
        metavar="PATH|none",
        help="Raw events (.parquet/.csv) that fill the state on start. Default: the served version's own "
        "training data, when the state is empty; `none`: start empty.",
        show_default=False,
    ),
    shadow: bool = typer.Option(
        True,
        "--shadow/--no-shadow",
        help="Score every request with the challenger too (`mlops challenge`), off the request path, and "
        "record both scores: to MLOPS_PAIRS_URL (PostgreSQL; `make up` sets it), else MLOPS_HOME/pairs.",
    ),
    shadow_timeout: float = typer.Option(
        2.0,
        "--shadow-timeout",
        help="Seconds a request may wait for the challenger; later ones are recorded without its score.",
        min=0.01,
    ),
) -> None:
    """Serve the champion over HTTP (POST /predict on features, POST /transactions on raw events), following
    the alias without restarts."""
    # Before XGBoost loads OpenMP: idle prediction threads sleep instead of spinning, so they do not steal
    # the CPU the event loop needs between requests (p99 of one-row requests: ~20 ms -> ~2 ms on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    require_use_case(use_case)
    from datetime import timedelta

    from serving.app import Options, RealTime, serve
    from serving.auth import TOKEN_ENV, TokenError, load_token
    from serving.online.store import REDIS_URL_ENV
    from serving.shadow import ShadowSettings
    from tasks.challenger.pairs import PAIRS_URL_ENV
    from tasks.challenger.postgres import redacted

    try:
        token = load_token(token_file)
    except TokenError as exc:
        console.print(f"[bold red]{exc}[/]")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    os.environ.pop(TOKEN_ENV, None)  # not handed on to anything this process starts
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = model_name(use_case, model)
    if compact and not name.endswith("-compact"):
        name = f"{name}-compact"  # the compact model's registry name (tasks/compaction/)
    source = f"the token in {token_file}" if token_file else TOKEN_ENV
    console.print(
        f"serving {name}@{alias} on http://{host}:{port} (POST /predict, /transactions, /labels; "
        f"GET /health); checking the alias every {poll_seconds:g} s; predictions "
        + (f"require {source} as a bearer token" if token else "are open to anyone who reaches the port")
    )
    state = state or os.environ.get(REDIS_URL_ENV) or None
    if state and not state.startswith(("redis://", "rediss://", "unix://")):
        console.print(f"[bold red]--state must be a redis://, rediss:// or unix:// URL[/], got {state!r}")
        raise typer.Exit(EXIT_BAD_INPUT)
    realtime = RealTime(use_case, state, timedelta(seconds=lateness), history)
    pairs_url = os.environ.get(PAIRS_URL_ENV)
    if shadow and pairs_url and not pairs_url.startswith(("postgresql://", "postgresql+", "postgres://")):
        console.print(
            f"[bold red]{PAIRS_URL_ENV} must be a postgresql:// URL[/], got {redacted(pairs_url)!r}"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = ShadowSettings(timeout=shadow_timeout) if shadow else None
    serve(name, host, port, Options(alias, poll_seconds, token, realtime, settings))


def status(
    use_case: str | None = typer.Argument(None, help="Use case (default: every registered model)."),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    refused: int = typer.Option(5, "--refused", help="How many refused candidates to list.", min=0),
) -> None:
    """Champion version, when and why it was promoted, the challenger in shadow, earlier champions, the latest
    refused candidates."""
    from champion.lifecycle import model_status, registered_models

    store.configure()
    if use_case is not None:
        require_use_case(use_case)
    names = [model] if model else registered_models(use_case)
    if not names:
        console.print("no registered models" + (f" for {use_case}" if use_case else ""))
        raise typer.Exit(EXIT_OK)
    try:
        statuses = [model_status(n, refused=refused) for n in names]
    except Exception as exc:
        console.print(f"[bold red]status failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT if "RESOURCE_DOES_NOT_EXIST" in str(exc) else EXIT_FAILED) from None
    if as_json:
        typer.echo(json.dumps(statuses, indent=2))
        return
    for s in statuses:
        _print_status(s)


def _print_status(s: dict) -> None:
    name, champion = s["registered_model"], s["champion"]
    console.rule(f"[bold]{name}[/] ({s['versions']} versions)")
    if champion is None:
        console.print("[yellow]no champion[/]: consumers of models:/" + name + "@champion get nothing yet")
    else:
        metrics = ", ".join(f"{k} {v}" for k, v in champion["metrics"].items())
        console.print(
            f"[bold green]champion v{champion['version']}[/] since {champion['since']} ({champion['how']})"
            + (
                f" (previous champion v{champion['previous_champion']})"
                if champion["previous_champion"]
                else ""
            )
        )
        if champion["rollback"] and champion["how"] == "rollback":
            rb = champion["rollback"]
            console.print(
                f"  rolled back from v{rb.get('rollback.from')} by {rb.get('rollback.by')}: "
                f"{rb.get('rollback.reason')}"
            )
        if champion["promoted_by_run"]:
            console.print(f"  promoted by run {champion['promoted_by_run']} at {champion['promoted_at']}")
        if metrics:
            console.print(f"  test metrics: {metrics}")
        gates = Table(title=f"gates of v{champion['version']}", show_header=True)
        gates.add_column("gate")
        gates.add_column("verdict")
        for gate, verdict in champion["gates"].items():
            colour = "green" if verdict.startswith("passed") else "red"
            gates.add_row(gate, f"[{colour}]{verdict}[/]")
        console.print(gates)
    _print_challenger(name, s.get("challenger"))
    if s["history"]:
        history = Table(title="champion moves (latest first)")
        for column in ("#", "at", "action", "version", "from", "by / run", "reason"):
            history.add_column(column)
        for e in s["history"]:
            history.add_row(
                str(e["seq"]),
                e.get("at", ""),
                e.get("action", ""),
                f"v{e.get('version')}",
                f"v{e['previous']}" if e.get("previous") else "-",
                e.get("by") or e.get("run_id", ""),
                e.get("reason", ""),
            )
        console.print(history)
    if s["previous_champions"]:
        previous = Table(title="previous champions")
        for column in ("version", "promoted at", "demoted at", "test metrics"):
            previous.add_column(column)
        for p in s["previous_champions"]:
            previous.add_row(
                f"v{p['version']}",
                p["promoted_at"] or "",
                (p["demoted_at"] or "") + (f" ({p['demoted_reason']})" if p["demoted_reason"] else ""),
                ", ".join(f"{k} {v}" for k, v in p["metrics"].items()),
            )
        console.print(previous)
    if s["refused"]:
        refused = Table(title="latest candidates not promoted")
        for column in ("started", "decision", "version", "why", "run"):
            refused.add_column(column)
        for r in s["refused"]:
            refused.add_row(
                r["started"] or "", r["decision"] or "", r["version"] or "-", r["summary"], r["run_id"]
            )
        console.print(refused)


def _print_challenger(name: str, challenger: dict | None) -> None:
    if challenger is None:
        console.print(f"no challenger: nothing scored in shadow (`mlops challenge` sets one on {name})")
        return
    console.print(  # no markup: a reason is free text (gate details, a person's words)
        f"challenger v{challenger['version']} since {challenger['since'] or '?'}"
        + (f" by {challenger['by']}" if challenger["by"] else "")
        + (f": {challenger['reason']}" if challenger["reason"] else ""),
        style="bold cyan",
        markup=False,
        soft_wrap=True,
    )


def rollback(
    use_case: str = typer.Argument(..., help="Use case, e.g. fraud."),
    to: str | None = typer.Option(None, "--to", help="Version to make champion (default: the previous one)."),
    reason: str = typer.Option("manual rollback", "--reason", help="Why; recorded on the versions."),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
) -> None:
    """Move champion back (default: the previous one), recording why; refuses ungated versions."""
    from champion.lifecycle import RollbackRefused
    from champion.lifecycle import rollback as do_rollback

    require_use_case(use_case)
    store.configure()
    name = model_name(use_case, model)
    try:
        done = do_rollback(name, to=to, reason=reason)
    except RollbackRefused as exc:
        console.print(f"[bold red]rollback refused[/]: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        console.print(f"[bold red]rollback failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    console.print(
        f"[bold green]rolled back[/] {done.name}@champion: v{done.previous} → v{done.version} ({done.reason})"
    )


def monitor(use_case: str, **options) -> None:
    """Watch the champion (or --version) on new data: drift, estimated and realised performance, a verdict.

    Exit 0 healthy, 4 drift or degraded (an `mlops.model.degraded` event was sent), 2 unreadable or
    invalid input, 1 anything else. The report is an MLflow run in experiment `<use case>-monitoring`.
    """
    require_use_case(use_case)
    try:
        params = MonitorParams(**options)
    except ValidationError as exc:
        console.print(f"[bold red]input rejected[/]: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not params.data:
        console.print(
            "[bold red]input rejected[/]: --data is required (a Parquet or CSV file of new records)"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    use_prefect_server()
    from champion.loading import ModelNotFoundError
    from flows.monitoring import monitoring
    from tasks.ingest import DataReadError
    from tasks.monitoring.reference import ProfileUnavailable
    from tasks.validate import DataValidationError

    try:
        outcome = monitoring(use_case, params)
    except (DataReadError, DataValidationError, ModelNotFoundError, ProfileUnavailable) as exc:
        console.print(f"[bold red]input rejected[/]: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        console.print_exception(max_frames=12)
        console.print(f"[bold red]monitoring failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    _print_monitoring(outcome)
    raise typer.Exit(EXIT_OK if outcome.status == "healthy" else EXIT_ATTENTION)


def _print_monitoring(outcome) -> None:
    a, v = outcome.assessment, outcome.assessment.verdict
    colour = {"healthy": "green", "drift": "yellow", "degraded": "red"}[v.status]
    table = Table(
        title=f"{outcome.registered_model} v{outcome.version} from {outcome.since}: {a.rows:,} rows"
    )
    for column in ("feature", "PSI", "test", "statistic", "drifted"):
        table.add_column(column, justify="right" if column in ("PSI", "statistic") else "left")
    for d in a.drifts:  # worst first
        mark = "[red]yes[/]" if d.drifted else "no"
        table.add_row(d.feature, f"{d.psi:.3f}", d.test, f"{d.statistic:.3f}", mark)
    console.print(table)
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    console.print(
        f"{v.primary}: test {fmt(v.test_value)}, estimated {fmt(v.estimated_value)}, realised "
        f"{fmt(v.realised_value)} ({a.labelled_rows:,} labelled rows); drifted features "
        f"{a.drift_share:.0%}; score PSI {fmt(a.score_psi)}; profile {outcome.profile}"
    )
    console.print(f"[bold {colour}]{v.status}[/]" + "".join(f"\n  - {r}" for r in v.reasons), soft_wrap=True)
    if outcome.alerted:
        console.print("sent mlops.model.degraded: the training deployment retrains on it (debounced)")
    console.print(f"report: MLflow run {outcome.mlflow_run_id} (monitoring_report.html)")


def _monitor_command():
    def command(use_case: str, **options) -> None:
        monitor(use_case, **options)

    argument = inspect.Parameter(
        "use_case",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(..., help="Use case, e.g. fraud."),
        annotation=str,
    )
    command.__signature__ = inspect.Signature([argument, *options_from(MonitorParams)])
    command.__doc__ = reflow(monitor.__doc__)
    return command


def register_commands(app: typer.Typer) -> None:
    """Add the consumer and lifecycle commands to the `mlops` app."""
    app.command("score")(score)
    app.command("monitor")(_monitor_command())
    app.command("serve-model")(serve_model)
    app.command("status")(status)
    app.command("rollback")(rollback)
