"""`mlops tune USE_CASE (--trials N | --timeout S) [--study NAME] [--executor local|dask]`: an Optuna study
over the use case's declared search space, its trials as Prefect task runs and MLflow child runs, and the
winner trained through every gate when it beats the spec's defaults on the same folds (`flows/tuning.py`).

Options are the fields of `usecases.params.TuneParams`, the model behind the `<use case>-tuning` deployments'
form. A line per trial says its value, whether and why it was pruned, its seconds and the budget used.

Exit codes: 0 the winner was promoted; 3 completed without promotion (the winner did not beat the defaults,
a gate refused it, or --no-train-winner); 2 bad input (an unknown use case, no budget, a bad search space, a
study tuned on other data or windows, data that cannot be read or split); 1 anything else.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from pydantic import ValidationError

from cli.run import (
    EXIT_NOT_PROMOTED,
    EXIT_PROMOTED,
    console,
    guarded,
    options_from,
    reject_options,
    require_use_case,
)
from cli.run import print_summary as training_summary
from cli.servers import use_prefect_server
from usecases import SPEC_MODULES
from usecases.params import TuneParams

# Imports inside functions: Prefect is imported only after `use_prefect_server()` has chosen its API, and
# Optuna, MLflow and the stages only when a study runs (`mlops --help` stays fast).


def tune_command(use_case: str, **options: Any) -> None:
    """Tune a use case's model: an Optuna study whose winner goes through every gate."""
    require_use_case(use_case)
    try:
        params = TuneParams(**options)
    except ValidationError as exc:
        raise typer.Exit(reject_options(exc)) from None
    raise typer.Exit(run_tuning(use_case, params))


def run_tuning(use_case: str, params: TuneParams) -> int:
    """Run the use case's tuning flow; print the study's result and the winner's decision; the exit code."""
    use_prefect_server()  # before Prefect is imported: it reads its settings once
    from flows.form import to_form
    from flows.tuning import TUNING_FLOWS

    outcome, code = guarded(lambda: TUNING_FLOWS[use_case](**to_form(params)), "tuned", "tuning")
    if code is not None:
        return code
    print_summary(outcome)
    return EXIT_PROMOTED if outcome.promoted else EXIT_NOT_PROMOTED


def print_summary(outcome) -> None:
    states = [r.state for r in outcome.trials]
    console.print(
        f"study {outcome.study} ({outcome.storage}): {len(states)} trials this run "
        f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, {states.count('FAIL')} "
        f"failed), {outcome.study_trials} in the study",
        soft_wrap=True,
    )
    if outcome.best_trial is not None:
        console.print(f"best: trial #{outcome.best_trial} {outcome.metric} {outcome.best_value:.6g}")
        console.print("  " + ", ".join(f"{k}={_short(v)}" for k, v in outcome.best_params.items()))
    console.print(f"spec defaults on the same folds: {outcome.metric} {outcome.defaults_value:.6g}")
    colour = "green" if outcome.promoted else "yellow"
    console.print(f"[bold {colour}]{outcome.message}[/]", soft_wrap=True)
    if outcome.training is not None:
        training_summary(outcome.training)
    console.print(f"MLflow: tuning run {outcome.run_id} (one child run per trial)")


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def register_commands(app: typer.Typer) -> None:
    """Add `mlops tune` to the `mlops` app."""
    argument = inspect.Parameter(
        "use_case",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=str,
        default=typer.Argument(..., help=f"The use case: {', '.join(SPEC_MODULES)}."),
    )
    tune_command.__signature__ = inspect.Signature([argument, *options_from(TuneParams)])
    app.command("tune")(tune_command)
