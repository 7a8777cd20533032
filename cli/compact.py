"""`mlops compact USE_CASE`: a compact stand-in for the use case's champion (or a pinned version).

Exit codes: 0 `<name>-compact@champion` is the chosen candidate; 3 completed without promoting (no candidate
passed its gates: nothing registered; or the teacher is not champion; or a dry run); 2 bad input (unknown use
case, model or version; the teacher's data no longer yields its windows); 1 anything else.
"""

from __future__ import annotations

from dataclasses import replace

import typer
from rich.console import Console
from rich.table import Table

from cli.run import require_use_case
from cli.servers import use_prefect_server
from usecases.spec import CompactGates, CompactPlan

# Imports inside functions: each command loads only what it uses, so `mlops --help` and the light commands
# start fast, and Prefect is imported only after `use_prefect_server()` has chosen its API.

EXIT_PROMOTED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_PROMOTED = 0, 1, 2, 3
console = Console(stderr=False)


def _numbers(text: str | None, kind, what: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        console.print(f"[bold red]input rejected[/]: {what} {text!r} is not a comma-separated list")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _students(text: str | None) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(
            tuple(int(n) for n in part.lower().split("x")) for part in text.split(",") if part.strip()
        )
    except ValueError:
        console.print(f"[bold red]input rejected[/]: --students {text!r}: expected DEPTHxTREES[,DEPTHxTREES]")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def compact(
    use_case: str = typer.Argument(..., help="Use case, e.g. fraud."),
    version: str | None = typer.Option(None, "--version", help="Teacher: this registry version."),
    alias: str | None = typer.Option(None, "--alias", help="Teacher: the version this alias points to."),
    model: str | None = typer.Option(
        None, "--model", help="Teacher's registered model (default: the use case's)."
    ),
    min_ratio: float | None = typer.Option(
        None,
        "--min-ratio",
        help="Gate: share of the teacher's primary metric to keep (default 0.98).",
        min=0.0,
    ),
    max_size_ratio: float | None = typer.Option(
        None, "--max-size-ratio", help="Gate: size at most this share of the teacher's (default 1).", min=0.0
    ),
    max_latency_ratio: float | None = typer.Option(
        None,
        "--max-latency-ratio",
        help="Gate: single-row p50 at most this share (default: reported only).",
        min=0.0,
    ),  # fmt: skip
    students: str | None = typer.Option(
        None, "--students", help="Distilled students, DEPTHxMAX_TREES,... (default 2x100,3x100,4x100)."
    ),
    cuts: str | None = typer.Option(
        None, "--cuts", help="Teacher cut to these shares of its trees (default 0.1,0.25,0.5)."
    ),
    prune_depths: str | None = typer.Option(
        None, "--prune-depths", help="Teacher pruned to these depths (default 2,3,4)."
    ),
    compile_: bool = typer.Option(
        True, "--compile/--no-compile", help="Compile the chosen model with TL2cgen for this platform."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build, measure and gate; register nothing."),
) -> None:
    """Distil, prune and compile the champion into `<name>-compact`; register and promote it if it passes."""
    require_use_case(use_case)
    if version is not None and alias is not None:
        console.print("[bold red]input rejected[/]: give --version or --alias, not both")
        raise typer.Exit(EXIT_BAD_INPUT)
    overrides = {
        "students": _students(students),
        "cuts": _numbers(cuts, float, "--cuts"),
        "prune_depths": _numbers(prune_depths, int, "--prune-depths"),
    }
    use_prefect_server()  # before Prefect is imported: it reads its settings once
    from champion.loading import ModelNotFoundError
    from flows.compaction import compaction
    from tasks.compaction.teacher import TeacherDataChanged
    from tasks.ingest import DataReadError
    from tasks.split import SplitError

    limits = {
        "min_ratio": min_ratio,
        "max_size_ratio": max_size_ratio,
        "max_latency_ratio": max_latency_ratio,
    }
    gates = replace(CompactGates(), **{k: v for k, v in limits.items() if v is not None})
    plan = replace(CompactPlan(), compile=compile_, **{k: v for k, v in overrides.items() if v is not None})
    try:
        outcome = compaction(use_case, version, alias, model, gates, plan, dry_run)
    except (ModelNotFoundError, TeacherDataChanged, DataReadError, SplitError) as exc:
        console.print(f"[bold red]input rejected[/]: {exc}", soft_wrap=True)
        console.print("Nothing was registered; the compact champion is unchanged.")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        console.print_exception(max_frames=12)
        console.print(f"[bold red]compaction failed[/]: {type(exc).__name__}: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    print_outcome(outcome)
    raise typer.Exit(EXIT_PROMOTED if outcome.promoted else EXIT_NOT_PROMOTED)


def print_outcome(outcome) -> None:
    primary, t = outcome.primary_metric, outcome.teacher_measured
    table = Table(title=f"{outcome.teacher} and its compact candidates, on its test window")
    for column in ("model", "trees", "nodes", "KB", primary, "ratio", "p50 us", "p99 us", "verdict"):
        table.add_column(column, justify="left" if column in ("model", "verdict") else "right")

    def row(m, verdict) -> list[str]:
        numbers = (m.trees, m.nodes, f"{m.size_kb:.1f}", f"{m.primary:#.4g}", f"{m.ratio:.3f}")
        return [m.label, *map(str, numbers), f"{m.p50_us:.0f}", f"{m.p99_us:.0f}", verdict]

    table.add_row(*row(t, t.detail))
    for i, (m, verdict) in enumerate(outcome.judged):
        if i == outcome.chosen:
            state = "[bold green]chosen[/]"
        elif verdict.registrable:
            state = "[green]passed[/]"
        else:
            state = "[red]refused[/]: " + "; ".join(
                r.detail for r in verdict.refusals if r.kind != "champion"
            )
        table.add_row(*row(m, state))
    console.print(table)
    if outcome.compiled:
        c = outcome.compiled
        console.print(
            f"compiled (TL2cgen {c['tl2cgen']}, quantize={c['quantize']}) for {c['machine']} {c['system']}: "
            f"{c['size_kb']} KB, single-row p50 {c['p50_us']:.0f} us / p99 {c['p99_us']:.0f} us "
            f"(teacher: {t.p50_us:.0f} us with XGBoost)"
        )
    colour = {"promoted": "green", "registered": "yellow", "refused": "red", "dry-run": "yellow"}
    status = outcome.decision.status
    console.print(f"[bold {colour[status]}]{status}[/]: {outcome.decision.summary}", soft_wrap=True)
    if outcome.registration is not None:
        console.print(f"model: models:/{outcome.registered_model}/{outcome.registration.version}; "
                      f"consumers load models:/{outcome.registered_model}@champion")  # fmt: skip
    console.print(f"MLflow run {outcome.run_id} (compact_report.json)")


def register_commands(app: typer.Typer) -> None:
    """Add `mlops compact` to the `mlops` app."""
    app.command("compact")(compact)
