"""`mlops compare USE_CASE [--since YYYY-MM-DD] [--labels PATH] [--no-decide] [--json] [--registered-model
NAME]`: the challenger in shadow against the champion, on the live pairs both scored and the labels that
arrived, and the decision the use case's rule takes on that evidence (`flows/challenger.py`, the flow the
`<use case>-challenger` deployments run).

Options are the fields of `usecases.params.CompareParams` (the deployments' form), and `--json`.

Exit codes: 0 the rule decided (promoted or retired; with --no-decide: reported, it would act); 3 not enough
evidence yet, or not conclusive, or the champion or challenger moved meanwhile (nothing moved); 2 bad input
(an unknown use case or model, no champion or no challenger, a champion whose training parameters cannot be
read, a bad date, a labels file that cannot be read or lacks the id and label columns; nothing compared,
nothing moved); 1 anything else.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cli.run import options_from, reject_options, require_use_case
from cli.servers import reflow, use_prefect_server
from usecases import SPEC_MODULES, default_registered_model
from usecases.params import CompareParams

# Imports inside functions: Prefect is imported only after `use_prefect_server()` has chosen its API, and
# MLflow, pandas and the stages only when a comparison runs (`mlops --help` stays fast).

EXIT_DECIDED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WAITING = 0, 1, 2, 3
console = Console(stderr=False)


NOTHING_COMPARED = "Nothing was compared; no alias moved."


def _reject(message: str) -> typer.Exit:
    console.print(f"[bold red]input rejected[/]: {message}", soft_wrap=True)
    console.print(NOTHING_COMPARED)
    return typer.Exit(EXIT_BAD_INPUT)


def compare(use_case: str, as_json: bool = False, **options: Any) -> None:
    """Compare the challenger with the champion on live labelled pairs, and promote or retire it by the use
    case's rule.

    Exit 0 decided (promoted or retired; with --no-decide: the rule would act), 3 waiting (too few labelled
    pairs or positives, not conclusive yet, or an alias moved meanwhile; nothing moved), 2 bad input (unknown
    use case or model, no champion or challenger, a champion whose training parameters cannot be read, a bad
    --since or --labels), 1 anything else. The report is an MLflow run in experiment `<use case>-challenger`
    (comparison_report.html, comparison.json).
    """
    require_use_case(use_case, nothing=NOTHING_COMPARED)
    try:
        params = CompareParams(**options)
    except ValidationError as exc:
        raise typer.Exit(reject_options(exc, NOTHING_COMPARED)) from None
    use_prefect_server()
    from champion.loading import ModelNotFoundError
    from tasks.challenger.evidence import ComparisonInputError
    from tasks.ingest import DataReadError

    try:
        _check_inputs(use_case, params)
        from flows.challenger import challenger

        outcome = challenger(use_case, params)
    except (ComparisonInputError, DataReadError, ModelNotFoundError) as exc:
        raise _reject(str(exc)) from None
    except Exception as exc:
        console.print_exception(max_frames=12)
        console.print(f"[bold red]comparison failed[/]: {type(exc).__name__}: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        from tasks.challenger.records import comparison_record

        typer.echo(json.dumps(comparison_record(outcome.evidence, outcome.decision, outcome.mlflow_run_id)))
    else:
        print_comparison(outcome)
    raise typer.Exit(EXIT_WAITING if outcome.verdict.action == "wait" else EXIT_DECIDED)


def _check_inputs(use_case: str, params: CompareParams) -> None:
    """What can be refused before a flow run starts: no champion or challenger, no labels file."""
    from mlflow import MlflowClient

    from champion import store
    from tasks.challenger.evidence import current_pair
    from tasks.ingest import DataReadError

    store.configure()
    current_pair(MlflowClient(), params.registered_model or default_registered_model(use_case))
    if params.labels and not Path(params.labels).is_file():
        raise DataReadError(f"--labels {params.labels}: no such file")


def print_comparison(outcome) -> None:
    from tasks.challenger.records import comparison_rows

    e, d = outcome.evidence, outcome.decision
    window = f", events {e.window[0]} .. {e.window[1]}" if e.window else ""
    table = Table(title=f"{e.registered_model}: challenger v{e.challenger} vs champion v{e.champion}{window}")
    for column in ("", f"champion v{e.champion}", f"challenger v{e.challenger}", "challenger - champion"):
        table.add_column(column, justify="left" if not column else "right")
    for row in comparison_rows(e):
        table.add_row(*row)
    console.print(table)
    if e.daily:
        names = list(e.daily[0]["champion"])
        days = Table(title="per day")
        for column in ("day", "rows", *(f"{m} {r}" for m in names for r in ("champion", "challenger"))):
            days.add_column(column, justify="right")
        for day in e.daily:
            values = (f"{day[r][m]:.4g}" for m in names for r in ("champion", "challenger"))
            days.add_row(day["day"], f"{day['rows']:,}", *values)
        console.print(days)
    counts = ", ".join(f"{k} {v:,}" for k, v in e.counts.items())
    console.print(f"pairs: {counts}")
    colour = {"promoted": "green", "retired": "red", "waiting": "yellow", "reported": "cyan"}[d.outcome]
    console.print(f"[bold {colour}]{d.outcome}[/]: {d.reason}", soft_wrap=True)
    console.print(f"report: MLflow run {outcome.mlflow_run_id} (comparison_report.html)")


def _compare_command():
    def command(use_case: str, as_json: bool = False, **options) -> None:
        compare(use_case, as_json, **options)

    argument = inspect.Parameter(
        "use_case",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(..., help=f"The use case: {', '.join(SPEC_MODULES)}."),
        annotation=str,
    )
    as_json = inspect.Parameter(
        "as_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--json", help="Print the comparison as JSON instead of tables."),
        annotation=bool,
    )
    command.__signature__ = inspect.Signature([argument, *options_from(CompareParams), as_json])
    command.__doc__ = reflow(compare.__doc__)
    return command


def register_commands(app: typer.Typer) -> None:
    """Add `mlops compare` to the `mlops` app."""
    app.command("compare")(_compare_command())
