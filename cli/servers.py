"""`mlops deploy`, `mlops serve`, `mlops notify-data`, `mlops server`: the factory in server mode.

They talk to the Prefect server at `PREFECT_API_URL` (and flow runs to the MLflow server at
`MLFLOW_TRACKING_URI`); `make up` or `docker compose up` start both (`source .mlops/servers/client.env` sets
what they need, the Prefect API auth string `PREFECT_API_AUTH_STRING` included). Without
`PREFECT_API_URL`, they use `make up`'s server when it runs, else the local background server that `mlops run`
starts (`infra/prefect_local.py`; `mlops server status|stop`). The deployments are defined in
`infra/deployments.py`.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infra import notifications
from usecases import unknown_use_cases
from usecases.vocabulary import DATA_ARRIVED, MODEL_DEGRADED, MODEL_PROMOTED

# Imports inside functions: each command loads only what it uses, so `mlops --help` and the light commands
# start fast, and Prefect is imported only after `use_prefect_server()` has chosen its API.

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

USE_CASE_HELP = "Only this use case (repeatable). Default: every use case in usecases.SPEC_MODULES."


def register_commands(app: typer.Typer) -> None:
    """Add the server-mode commands to the `mlops` app."""
    for name, command in (("deploy", deploy), ("serve", serve), ("notify-data", notify_data)):
        app.command(name, help=reflow(command.__doc__))(command)
    server = typer.Typer(
        help="The local Prefect server that `mlops` commands start once and reuse.", no_args_is_help=True
    )
    server.command("status")(server_status)
    server.command("stop")(server_stop)
    app.add_typer(server, name="server")


def use_prefect_server() -> str | None:
    """Before a flow runs: the Prefect API to use, starting the local background server when none is chosen.

    None where Prefect's per-process temporary server is wanted (`MLOPS_PREFECT_SERVER=ephemeral`).
    """
    from infra.prefect_local import LocalServerError, ensure_api

    try:
        return ensure_api(announce=lambda line: err.print(f"[dim]{line}[/]"))
    except LocalServerError as exc:
        err.print(f"[bold red]could not start the local Prefect server[/]: {exc}")
        raise typer.Exit(1) from None


def server_status() -> None:
    """Where commands send their runs: PREFECT_API_URL, `make up`'s server, or the local background one."""
    from infra import prefect_local

    if os.environ.get("PREFECT_API_URL"):
        console.print(f"PREFECT_API_URL is set: {os.environ['PREFECT_API_URL']} (no local server is used)")
        return
    if os.environ.get(prefect_local.MODE_ENV) == "ephemeral":
        console.print(f"{prefect_local.MODE_ENV}=ephemeral: each command starts a temporary Prefect server")
        return
    up = prefect_local.make_up_api()
    if up:
        console.print(f"`make up`'s Prefect server: {up} (commands use it)")
    found = prefect_local.running()
    if found is None:
        console.print("local Prefect server: not running (the next `mlops run` starts it)")
        if not up:
            raise typer.Exit(3)
        return
    console.print(
        f"local Prefect server: running, pid {found.pid}, UI {found.ui}, API {found.url}; "
        f"state and log in {prefect_local.state_dir()}"
    )


def server_stop() -> None:
    """Stop the local background Prefect server (its runs' history stays for the next start)."""
    from infra import prefect_local

    stopped = prefect_local.stop()
    console.print("local Prefect server: " + ("stopped" if stopped else "not running"))


def reflow(doc: str | None) -> str:
    """Docstring paragraphs as single lines, so the terminal wraps them (not the source's line breaks)."""
    paragraphs = (doc or "").strip().split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


UseCases = Annotated[
    list[str] | None,
    typer.Option("--use-case", "-u", metavar="USE_CASE", help=USE_CASE_HELP, show_default=False),
]


def _check_use_cases(use_cases: list[str] | None) -> list[str] | None:
    if not use_cases:
        return None
    if problem := unknown_use_cases(use_cases):
        raise typer.BadParameter(problem)
    return use_cases


def require_prefect_server() -> str:
    """The Prefect API these commands act on; refuse Prefect's throwaway in-process server."""
    use_prefect_server()
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        err.print(
            "[bold red]PREFECT_API_URL is not set[/] and MLOPS_PREFECT_SERVER=ephemeral: start the servers "
            "(`make up`, or `docker compose up -d`) and export what they print, e.g. "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`."
        )
        raise typer.Exit(2)
    import httpx

    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        err.print(f"[bold red]Prefect server at {api} is not answering[/]: {exc}")
        raise typer.Exit(2) from None
    _check_prefect_auth(api)
    return api


def _check_prefect_auth(api: str) -> None:
    """Refuse early, and say why, when the server wants an auth string this process does not have."""
    import httpx
    from prefect.settings import PREFECT_API_AUTH_STRING

    auth = PREFECT_API_AUTH_STRING.value()
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        answer = httpx.get(f"{api.rstrip('/')}/admin/version", headers=headers, timeout=10)
    except httpx.HTTPError:
        return  # it answered /health a moment ago; let the command itself report what goes wrong
    if answer.status_code == 401:
        what = "a wrong" if auth else "no"
        err.print(
            f"[bold red]the Prefect server at {api} refused {what} auth string[/] (401): set "
            "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING, e.g. "
            "`source .mlops/servers/client.env` after `make up` (compose: the value in .env)."
        )
        raise typer.Exit(2)


def _ui_url(api: str) -> str:
    from prefect.settings import PREFECT_UI_URL

    return PREFECT_UI_URL.value() or api.rstrip("/").removesuffix("/api")


def _plans(use_cases: list[str] | None):
    from infra.deployments import all_plans

    return all_plans(use_cases)


def _trigger_note(trigger, plan) -> str:
    events = set(trigger.expect)
    if DATA_ARRIVED in events:
        return f"{DATA_ARRIVED} for {plan.use_case} (mlops notify-data {plan.use_case} PATH)"
    if MODEL_DEGRADED in events:
        hours = trigger.within.total_seconds() / 3600
        return f"{MODEL_DEGRADED} for {plan.registered_model} (mlops monitor), at most once per {hours:g} h"
    if MODEL_PROMOTED in events:
        return f"{MODEL_PROMOTED} for {trigger.match.root['prefect.resource.id'].rsplit('.', 1)[-1]}"
    return ", ".join(sorted(events))


def _describe(plans, work_pool: str | None) -> str:
    """Plain text (it also goes to log files): one block per deployment."""
    blocks = []
    for plan in plans:
        rows = {
            "schedule": plan.timing.note if plan.timing else "none (UI, API and events only)",
            "trigger": "; ".join(_trigger_note(t, plan) for t in plan.triggers) or "-",
            "concurrency": "one run at a time, others wait" if plan.concurrency else "-",
            "tags": ", ".join(plan.tags),
            "runs on": f"workers of work pool {work_pool}" if work_pool else "mlops serve",
        }
        blocks.append(plan.full_name + "".join(f"\n    {k:<12} {v}" for k, v in rows.items()))
    return "\n".join(blocks)


def deploy(
    use_case: UseCases = None,
    work_pool: Annotated[
        str | None,
        typer.Option(
            "--work-pool",
            "-p",
            metavar="NAME",
            help="Register for the workers of this Prefect process work pool (created when missing; start "
            "them with `prefect worker start --pool NAME` in this project's environment) instead of for "
            "`mlops serve`.",
        ),
    ] = None,
    paused: Annotated[
        bool,
        typer.Option("--paused", help="Register with schedules paused: runs come only from UI, API, events."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be registered; contact nothing.")
    ] = False,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook",
            metavar="URL",
            envvar=notifications.WEBHOOK_ENV,
            show_envvar=True,
            help="Send promotions, rollbacks, degraded verdicts, approvals waiting and challenger moves to "
            'this webhook as Slack-compatible JSON ({"text": ...}), through Prefect automations (one per '
            "event kind, replaced when repeated). Without it, notifications stay as they are.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register the deployments with the Prefect server at PREFECT_API_URL.

    One per training flow (`<use case>-training/<registered model>`), with its schedule, its typed parameter
    form, triggers on `mlops.data.arrived` (new data) and `mlops.model.degraded` (monitoring's alert,
    debounced by MLOPS_RETRAIN_DEBOUNCE_HOURS, default 24) and a limit of one run at a time; plus batch
    scoring and one monitoring deployment per use case (on its schedule, reading the file named by
    MLOPS_MONITOR_DATA_<USE CASE>). Safe to repeat: it updates them in place. Scheduled and UI-triggered
    runs then wait for `mlops serve` (or a worker of --work-pool) to execute them. With --webhook (or
    MLOPS_WEBHOOK_URL), also the notifications: Prefect automations that post registry events to it.
    """
    use_cases = _check_use_cases(use_case)
    webhook = _check_webhook(webhook)
    if dry_run:
        typer.echo(_describe(_plans(use_cases), work_pool))
        typer.echo(notifications.describe(webhook))
        return
    api = require_prefect_server()  # before the plans import Prefect: it reads its settings once
    plans = _plans(use_cases)
    if work_pool:
        _ensure_process_pool(work_pool)
    for plan in plans:
        deployment = plan.to_deployment(work_pool=work_pool, paused=paused or None)
        deployment.apply(work_pool_name=work_pool)
    typer.echo(_describe(plans, work_pool))
    ui = _ui_url(api)
    console.print(f"Registered {len(plans)} deployment(s) with {api}. See them at {ui}/deployments")
    _configure_notifications(webhook, ui)
    if work_pool:
        console.print(f"Run them: `prefect worker start --pool {work_pool}` (in this project's environment).")
        return
    from infra.servers.processes import Managed
    from infra.servers.settings import Settings

    runner = Managed("serve", Settings.from_env().state_dir).pid()
    if runner is not None:  # `make up` started one: it already picks these up
        console.print(f"`mlops serve` started by `make up` is running (pid {runner}): it executes them.")
    else:
        console.print(
            "Run them: `mlops serve` (keep it running: it executes scheduled and UI-triggered runs)."
        )


def _check_webhook(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        return notifications.check_webhook_url(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'--webhook' / {notifications.WEBHOOK_ENV}") from None


def _configure_notifications(webhook: str | None, ui: str) -> None:
    if webhook is None:
        console.print(f"Notifications left as they are: {notifications.current_notifications()}.")
        return
    done = notifications.configure_notifications(webhook)
    console.print(
        f"Notifications: {len(done.automations)} automation(s) {notifications.NAME_PREFIX}<event> post to "
        f"{done.where} ({done.created} created, {done.updated} replaced, {done.removed} removed). "
        f"See them at {ui}/automations"
    )


def _ensure_process_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            console.print(f"Created process work pool {name!r}.")
        except ObjectAlreadyExists:
            pool = client.read_work_pool(name)
            if pool.type != "process":
                err.print(f"[bold red]work pool {name!r} exists with type {pool.type!r}, not 'process'[/]")
                raise typer.Exit(2) from None


def serve(
    use_case: UseCases = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            metavar="N",
            help="At most N flow runs at once in this process (each deployment also runs one at a time).",
        ),
    ] = None,
    pause_on_shutdown: Annotated[
        bool,
        typer.Option(
            "--pause-on-exit/--keep-schedules",
            help="On exit, pause the deployments' schedules. Default: keep them; runs that fall due while "
            "nothing serves them start when `mlops serve` is back.",
        ),
    ] = False,
) -> None:
    """Execute the deployments' runs: scheduled, UI "Custom run", API and `mlops.data.arrived` triggered.

    Registers (updates) the deployments like `mlops deploy`, then polls the Prefect server at
    PREFECT_API_URL (with PREFECT_API_AUTH_STRING when it requires one) and runs each flow run in a
    subprocess of this one, until stopped with Ctrl-C or SIGTERM. Flow runs record to MLFLOW_TRACKING_URI
    (with MLFLOW_TRACKING_USERNAME/PASSWORD on a server with authentication: `make up` gives the runner its
    own non-admin user). A `data` parameter of these runs must name a file under MLOPS_DATA_ROOTS (default:
    <MLOPS_HOME>/data and the project's data/ folder); others are refused.
    """
    use_cases = _check_use_cases(use_case)
    api = require_prefect_server()
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking:
        err.print(
            "[yellow]MLFLOW_TRACKING_URI is not set[/]: runs will record to the local SQLite store under "
            "MLOPS_HOME, not to an MLflow server."
        )
    from prefect import serve as prefect_serve

    plans = _plans(use_cases)
    typer.echo(_describe(plans, None))
    console.print(
        f"Serving {len(plans)} deployment(s) from {api} (UI {_ui_url(api)}); MLflow: {tracking or 'local'}"
    )
    prefect_serve(
        *(plan.to_deployment() for plan in plans),
        pause_on_shutdown=pause_on_shutdown,
        limit=limit,
        print_starting_message=False,
    )


def notify_data(
    use_case: Annotated[
        str,
        typer.Argument(
            metavar="USE_CASE", help="The use case the data is for, e.g. fraud.", show_default=False
        ),
    ],
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="Parquet or CSV file to train on, as the process that runs the flows sees it; it must lie "
            "under the runner's data roots (MLOPS_DATA_ROOTS).",
            show_default=False,
        ),
    ],
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Require PATH to exist here (it is sent made absolute). Turn off for a path only the runner "
            "sees, e.g. inside its container.",
        ),
    ] = True,
) -> None:
    """Announce new training data: emit `mlops.data.arrived`, which starts the use case's training run.

    The event (resource `mlops.dataset.<USE_CASE>`, payload `{use_case, path}`) reaches the Prefect server at
    PREFECT_API_URL; the deployment's trigger starts `<USE_CASE>-training` with `params.data = PATH` and the
    other parameters at their defaults. Any Prefect client can send the same event.
    """
    _check_use_cases([use_case])
    if check:
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_file():
            err.print(f"[bold red]{path} is not a file[/] (--no-check sends a path only the runner sees)")
            raise typer.Exit(2)
        path = str(resolved)
    require_prefect_server()
    from infra.deployments import data_arrived_event

    event = asyncio.run(_emit(data_arrived_event(use_case, path)))
    console.print(
        f"Sent {event.event} for {use_case}: {path} (event {event.id}). "
        f"The {use_case}-training deployment starts a run on it."
    )


async def _emit(spec: dict):
    """Send one event through Prefect's events client and return it (delivered when the client closes)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(event=spec["event"], resource=spec["resource"], payload=spec["payload"])
    async with get_events_client() as client:
        await client.emit(event)
    return event
