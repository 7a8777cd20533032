"""`mlops challenge USE_CASE --version N [--reason TEXT]`, `mlops challenge USE_CASE --retire --reason TEXT`:
set or retire the challenger, the version the model server scores in shadow beside the champion.

Exit codes: 0 done; 2 bad input or a refused move (unknown use case, model or version, a version that failed
its absolute or baseline gates or is the champion, neither or both of --version and --retire, an empty
reason, no challenger to retire; nothing moved); 1 anything else.
"""

from __future__ import annotations

import typer
from rich.console import Console

from champion import store
from cli.models import model_name
from cli.run import require_use_case

# Imports inside functions: each command loads only what it uses, so `mlops --help` and the light commands
# start fast.

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
console = Console(soft_wrap=True)


def challenge(
    use_case: str = typer.Argument(..., help="Use case, e.g. fraud."),
    version: str | None = typer.Option(
        None,
        "--version",
        metavar="N",
        help="Make this registered version the challenger (replacing the current one). It must have passed "
        "its absolute and baseline gates and must not be the champion.",
        show_default=False,
    ),
    retire: bool = typer.Option(False, "--retire", help="Retire the current challenger instead."),
    reason: str | None = typer.Option(
        None,
        "--reason",
        help="Why; recorded on the version and in the model's challenger history. Required with --retire.",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None,
        "--registered-model",
        "--model",
        help="Registered model (default: the use case's own).",
        show_default=False,
    ),
) -> None:
    """Set (--version N) or retire (--retire) the challenger: a version the model server scores in shadow on
    live traffic beside the champion, without answering with it, until `mlops compare` (or the
    `<use case>-challenger` flow) promotes it on the paired evidence or retires it.

    The move is made under the champion lock and recorded on the version (`challenger` tag) and in the
    registered model's `challenger.history.<n>` tags; the champion never moves here.

    Exit 0 done; 2 bad input or a refused move (nothing moved); 1 anything else.
    """
    require_use_case(use_case)
    reason = (reason or "").strip()
    if (version is None) == (not retire):
        console.print("[bold red]input rejected[/]: give --version N (set) or --retire (retire), one of them")
        raise typer.Exit(EXIT_BAD_INPUT)
    if retire and not reason:
        console.print("[bold red]input rejected[/]: --retire needs --reason; say why, it is recorded")
        raise typer.Exit(EXIT_BAD_INPUT)
    if version is not None and not version.strip().isdigit():
        console.print(f"[bold red]input rejected[/]: --version must be a version number, got {version!r}")
        raise typer.Exit(EXIT_BAD_INPUT)
    # lazy: MLflow only for a command that gets this far
    from champion.challenger import ChallengerRefused, retire_challenger, set_challenger

    store.configure()
    name = model_name(use_case, model)
    by = f"mlops challenge ({store.user()})"
    try:
        if retire:
            retired = retire_challenger(name, reason, by=by)
        else:
            move = set_challenger(name, version.strip(), reason or "set by hand", by=by)
    except ChallengerRefused as exc:
        console.print(f"[bold red]refused[/]: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc):
            console.print(f"[bold red]refused[/]: no registered model {name!r}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        console.print(f"[bold red]challenge failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    if retire:
        if retired is None:
            console.print(f"[bold red]refused[/]: {name} has no @challenger: nothing to retire")
            raise typer.Exit(EXIT_BAD_INPUT)
        console.print(f"[bold green]retired[/] {name}@challenger v{retired} ({reason})")
    elif move.previous == move.version:
        console.print(f"{name} v{move.version} already is the challenger: nothing moved")
    else:
        was = f"v{move.previous} retired, " if move.previous else ""
        console.print(f"[bold green]challenger[/] {name}@challenger: {was}v{move.version} in shadow now")


def register_commands(app: typer.Typer) -> None:
    """Add `mlops challenge` to the `mlops` app."""
    app.command("challenge")(challenge)
