"""`mlops run USE_CASE`: the use case's gated training pipeline end to end, with a summary.

One command per discovered use case, its options generated from the use case's typed `Params` (descriptions
and bounds show in `--help`), the same model that drives the Prefect form and the deployments.

Exit codes: 0 promoted; 3 completed without promotion (a gate refused, or registration was switched off);
2 the input could not be read or failed its data checks, or an option is out of its bounds, or
`--params-from` names no complete trial of a study (nothing trained or registered); 1 anything else.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cli.servers import use_prefect_server
from usecases import SPEC_MODULES, spec_module, unknown_use_case

# Imports inside functions: each command loads only what it uses, so `mlops --help` and the light commands
# start fast, and Prefect is imported only after `use_prefect_server()` has chosen its API.

EXIT_PROMOTED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_PROMOTED = 0, 1, 2, 3

console = Console(stderr=False)


run_app = typer.Typer(help="Run a use case's gated training pipeline end to end.", no_args_is_help=True)


def options_from(params_model) -> list[inspect.Parameter]:
    """One `--option` per field of a use case's Params, with its description as help and bounds shown."""
    parameters = []
    for name, field in params_model.model_fields.items():
        bounds = [
            f"{op} {getattr(m, attr)}"
            for m in field.metadata
            for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if getattr(m, attr, None) is not None
        ]
        help_text = field.description or ""
        if bounds:
            help_text += f" [{', '.join(bounds)}]"
        annotation = field.annotation
        if annotation in (str | None, int | None, float | None):
            annotation = next(a for a in annotation.__args__ if a is not type(None))
        flag = f"--{name.replace('_', '-')}"
        if annotation is bool:
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        option = typer.Option(field.default, flag, help=help_text)
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        )
    return parameters


def _make_run_command(use_case: str):
    module = spec_module(use_case)

    def command(**options: Any) -> None:
        try:
            params = module.Params(**options)
        except ValidationError as exc:  # an option out of its bounds: bad input, like bad data
            raise typer.Exit(reject_options(exc)) from None
        raise typer.Exit(run_use_case(use_case, params))

    command.__signature__ = inspect.Signature(options_from(module.Params))
    command.__doc__ = (module.__doc__ or "").strip().split("\n\n")[0]
    return command


NOTHING_TRAINED = "Nothing was trained or registered; the champion is unchanged."


def require_use_case(use_case: str, nothing: str | None = None) -> None:
    """Exit 2 naming the known use cases when `use_case` is none of them (then what was not done, `nothing`,
    where the command says it): every command's first check."""
    if problem := unknown_use_case(use_case):
        console.print(f"[bold red]input rejected[/]: {problem}", soft_wrap=True)
        if nothing:
            console.print(nothing)
        raise typer.Exit(EXIT_BAD_INPUT)


def reject_options(exc, nothing: str = NOTHING_TRAINED) -> int:
    """Say which options are out of bounds (each as its `--flag`, the value given and the rule), then what
    was not done (`nothing`); exit 2."""
    for error in exc.errors():
        given = repr(error.get("input"))
        if error["loc"]:
            given = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-") + " " + given
        console.print(f"[bold red]input rejected[/]: {given}: {error['msg']}", soft_wrap=True)
    console.print(nothing)
    return EXIT_BAD_INPUT


for _name in SPEC_MODULES:
    run_app.command(_name)(_make_run_command(_name))


def run_use_case(use_case: str, params) -> int:
    """Run the use case's training flow and map its outcome to an exit code, printing a summary."""
    use_prefect_server()  # before Prefect is imported: it reads its settings once
    from flows.form import to_form
    from flows.training import TRAINING_FLOWS

    outcome, code = guarded(lambda: TRAINING_FLOWS[use_case](**to_form(params)), "trained", "run")
    if code is not None:
        return code
    print_summary(outcome)
    return EXIT_PROMOTED if outcome.promoted else EXIT_NOT_PROMOTED


def guarded(call, nothing: str, what: str) -> tuple[object, int | None]:
    """`call()` (a flow) and None; or, when it raised, None and the exit code, having said why: bad input
    (exit 2: nothing `nothing` or registered) or a failure (exit 1, with its traceback)."""
    from champion.loading import ModelNotFoundError
    from tasks.dask.cluster import ExecutorError
    from tasks.ingest import DataReadError
    from tasks.lineage import ParentMismatchError
    from tasks.split import SplitError
    from tasks.tuning import TuningError
    from tasks.validate import DataValidationError
    from usecases.search_space import SearchSpaceError

    try:
        return call(), None
    except (
        DataReadError,
        DataValidationError,
        SplitError,
        ValidationError,
        ParentMismatchError,
        ModelNotFoundError,
        ExecutorError,
        TuningError,  # an unknown study or trial (--params-from), a study tuned on other folds
        SearchSpaceError,
    ) as exc:
        console.print(f"[bold red]input rejected[/]: {exc}", soft_wrap=True)
        console.print(f"Nothing was {nothing} or registered; the champion is unchanged.")
        return None, EXIT_BAD_INPUT
    except Exception as exc:
        console.print_exception(max_frames=12)  # an unexpected failure: its traceback is the report
        console.print(f"[bold red]{what} failed[/]: {type(exc).__name__}: {exc}", soft_wrap=True)
        return None, EXIT_FAILED


def print_summary(outcome) -> None:
    primary = outcome.primary_metric
    table = Table(
        title=f"{outcome.use_case}: test metrics ({outcome.windows['test'][0]} .. "
        f"{outcome.windows['test'][1]})"
    )
    table.add_column("metric")
    table.add_column("candidate", justify="right")
    for name in outcome.baseline_metrics:
        table.add_column(name, justify="right")
    if outcome.champion_before.metrics:
        table.add_column(f"champion v{outcome.champion_before.version}", justify="right")
    for metric, value in outcome.metrics.items():
        if metric in {"tn", "fp", "fn", "tp", "threshold"}:
            continue
        row = [metric + (" *" if metric == primary else ""), f"{value:.4g}"]
        row += [f"{m.get(metric, float('nan')):.4g}" for m in outcome.baseline_metrics.values()]
        if outcome.champion_before.metrics:
            row.append(f"{outcome.champion_before.metrics.get(metric, float('nan')):.4g}")
        table.add_row(*row)
    console.print(table)

    gates = Table(title="gates")
    for column in ("gate", "value", "threshold", "verdict"):
        gates.add_column(column, justify="right" if column in ("value", "threshold") else "left")
    for r in outcome.verdict.results:
        # The detail says by how much and against what; shown where it adds to the numbers.
        verdict = "[green]passed[/]" if r.passed else f"[red]refused[/]: {r.detail}"
        threshold = "-" if r.threshold != r.threshold else f"{r.threshold:.4g}"  # NaN: nothing to compare
        if r.passed and (r.kind == "champion" or r.name == "disparity"):  # what it compared, or skipped
            verdict += f" ({r.detail})"
        gates.add_row(r.name, f"{r.value:.4g}", threshold, verdict)
    console.print(gates)

    colour = {"promoted": "green", "registered": "yellow", "rejected": "red"}[outcome.decision.status]
    console.print(f"[bold {colour}]{outcome.decision.status}[/]: {outcome.decision.summary}", soft_wrap=True)
    if outcome.registration is not None:
        alias = "champion" if outcome.promoted else "(no alias)"
        console.print(
            f"model: models:/{outcome.registered_model}/{outcome.registration.version} {alias}; "
            f"consumers load models:/{outcome.registered_model}@champion"
        )
    console.print(f"MLflow: {outcome.tracking_uri}  run {outcome.run_id}")
    if outcome.tracking_uri.startswith("sqlite:///"):
        console.print(f"  open the UI: uv run mlflow ui --backend-store-uri {outcome.tracking_uri}")


def register_commands(app: typer.Typer) -> None:
    """Add `mlops run` to the `mlops` app."""
    app.add_typer(run_app, name="run")
