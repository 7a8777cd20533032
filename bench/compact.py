"""Benchmark: compact models for fraud (the Fraud Detection Handbook's file) and stock (arch's S&P 500 bars).

For each use case: `mlops run` trains the teacher, `mlops compact` builds, gates, registers and promotes the
compact model (both through the CLI, in this process, on a fresh MLflow store and a temporary Prefect server),
then the teacher and every candidate the compaction built are compiled with TL2cgen and timed:

    model, trees, nodes, UBJ KB, compiled KB, primary metric on the teacher's test window and its ratio to
    the teacher's, single-row p50 / p99 in process (XGBoost inplace_predict on one thread vs the compiled
    predictor), batch rows/s (both on two threads)

    uv run python bench/compact.py [--fraud-data PATH] [--use-case fraud|stock ...] [--home MLOPS_HOME]
                                   [--out PATH] [--smoke]

The figures also go to bench/results/compact.json (`--out`); a run of one use case keeps the other's table.
`--smoke`: fraud only, on a tiny simulated file (or the champion already in --home), one small candidate of
each kind, fewer latency calls and a smaller batch, the JSON to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`

from _results import (  # noqa: E402
    HANDBOOK,
    SMOKE_FRAUD_OPTIONS,
    add_arguments,
    carried_over,
    document,
    output_path,
    smoke_fraud_data,
    write,
)
from _results import table as results_table  # noqa: E402

SIZES = {"batch_rows": 200_000, "latency_calls": 2000}
# --smoke: one candidate of each kind, small, and every quality gate open (the point is the code path)
SMOKE_COMPACT = [
    "--students",
    "2x20",
    "--cuts",
    "0.5",
    "--prune-depths",
    "2",
    "--min-ratio",
    "0",
    "--no-compile",
]


def batch_rows_per_second(predict, matrix: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        predict(matrix)
        best = min(best, time.perf_counter() - started)
    return len(matrix) / best


def timed(label, booster, measured, features, test, scratch: Path) -> dict:
    """One model's row: XGBoost and the compiled library, one row at a time and in batches."""
    from tasks.compaction.compile import CompiledModel, compile_booster
    from tasks.compaction.measure import booster_row_predictor, single_row_latency

    x = test[list(features)].to_numpy(np.float32)
    rows = x[:200]
    batch = np.tile(x, (max(1, SIZES["batch_rows"] // len(x)), 1))
    compiled = compile_booster(booster, {"features": list(features)}, scratch / label, check=x, threads=2)
    calls = SIZES["latency_calls"]
    lib_p50, lib_p99 = single_row_latency(CompiledModel(compiled).margin, rows, calls)
    xgb_p50, xgb_p99 = single_row_latency(booster_row_predictor(booster), rows, calls)
    two = booster.copy()
    two.set_param({"nthread": 2})
    return {
        "model": label,
        "trees": measured.trees,
        "nodes": measured.nodes,
        "ubj_kb": measured.size_kb,
        "lib_kb": compiled.meta["size_kb"],
        "primary": measured.primary,
        "ratio": measured.ratio,
        "xgb_p50": xgb_p50,
        "xgb_p99": xgb_p99,
        "lib_p50": lib_p50,
        "lib_p99": lib_p99,
        "xgb_rows_s": batch_rows_per_second(two.inplace_predict, batch),
        "lib_rows_s": batch_rows_per_second(CompiledModel(compiled, threads=2).margin, batch),
        "compile_s": compiled.meta["compile_seconds"],
    }


def table(rows: list[dict], primary: str, chosen: str | None) -> str:
    header = (
        f"| model | trees | nodes | UBJ KB | compiled KB | {primary} | ratio | XGBoost p50 / p99 us | "
        "compiled p50 / p99 us | XGBoost rows/s | compiled rows/s |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        name = f"**{r['model']}** (chosen)" if r["model"] == chosen else r["model"]
        lines.append(
            f"| {name} | {r['trees']} | {r['nodes']:,} | {r['ubj_kb']:.1f} | {r['lib_kb']:.1f} | "
            f"{r['primary']:#.4g} | {r['ratio']:.3f} | {r['xgb_p50']:.0f} / {r['xgb_p99']:.0f} | "
            f"{r['lib_p50']:.0f} / {r['lib_p99']:.0f} | {r['xgb_rows_s'] / 1e6:.2f} M | "
            f"{r['lib_rows_s'] / 1e6:.2f} M |"
        )
    return "\n".join(lines)


def has_champion(use_case: str) -> bool:
    from mlflow import MlflowClient

    from champion import store
    from champion.promotion import current_champion
    from usecases import default_registered_model

    store.configure()
    return current_champion(MlflowClient(), default_registered_model(use_case)) is not None


def train_teacher(use_case: str, train_args: list[str]) -> bool:
    """The teacher: the store's champion, or one `mlops run` trains now; False if that run failed."""
    from cli.main import app

    if has_champion(use_case):
        print(f"== {use_case}: the store's champion is the teacher (not retrained)")
        return True
    print(f"== {use_case}: mlops run {use_case} {' '.join(train_args)}")
    started = time.perf_counter()
    code = app(["run", use_case, *train_args], standalone_mode=False) or 0
    print(f"   exit {code} in {time.perf_counter() - started:.0f} s")
    return code == 0


def compact(use_case: str, compact_args: list[str]) -> tuple[object, int, float]:
    """`mlops compact USE_CASE` through the CLI: its compaction's outcome, exit code and seconds."""
    import flows.compaction
    from cli.main import app

    outcomes = []
    original = flows.compaction.compaction

    def keep(*args, **kwargs):  # the CLI's own compaction, its outcome kept for the detailed table
        outcomes.append(original(*args, **kwargs))
        return outcomes[-1]

    flows.compaction.compaction = keep
    try:
        started = time.perf_counter()
        code = app(["compact", use_case, *compact_args], standalone_mode=False) or 0
    finally:
        flows.compaction.compaction = original
    seconds = time.perf_counter() - started
    print(f"== {use_case}: mlops compact {use_case}: exit {code} in {seconds:.0f} s")
    return outcomes[0], code, seconds


def measure(use_case: str, outcome, scratch: Path) -> list[dict]:
    """The teacher's row and every candidate's, on the teacher's test window."""
    from champion.loading import training_params
    from tasks.compaction.teacher import rebuild_windows
    from usecases import spec_module

    teacher = outcome.teacher_model
    module = spec_module(use_case)
    params = training_params(module, teacher.name, teacher.version, teacher.run_id)
    test = rebuild_windows.fn(module.build_spec(params), params, teacher).test
    rows = [timed("teacher", teacher.booster, outcome.teacher_measured, teacher.features, test, scratch)]
    for candidate, (measured, _) in zip(outcome.candidates, outcome.judged, strict=True):
        rows.append(timed(candidate.label, candidate.booster, measured, candidate.features, test, scratch))
    return rows


def comparison(rows: list[dict], chosen: str, primary: str) -> str:
    """The chosen candidate against the teacher, in one line."""
    t = rows[0]
    c = next(r for r in rows if r["model"] == chosen)
    return (
        f"{chosen} vs teacher: {primary} x{c['ratio']:.3f}, UBJ size x"
        f"{c['ubj_kb'] / t['ubj_kb']:.2f}, single-row p50 compiled x{c['lib_p50'] / t['xgb_p50']:.2f} "
        f"of the teacher's XGBoost ({c['lib_p50']:.0f} vs {t['xgb_p50']:.0f} us), XGBoost x"
        f"{c['xgb_p50'] / t['xgb_p50']:.2f}; compile {c['compile_s']:.1f} s (teacher "
        f"{t['compile_s']:.1f} s)"
    )


def results(use_case: str, outcome, rows: list[dict], chosen: str | None, notes: list[str]) -> dict:
    """The use case's table for bench/results/compact.json."""
    return results_table(
        f"{use_case}: teacher and compact candidates",
        [
            "model",
            "trees",
            "nodes",
            {"name": "UBJ KB", "format": ".1f"},
            {"name": "compiled KB", "format": ".1f"},
            {"name": outcome.primary_metric, "format": ".4g"},
            {"name": "ratio", "format": ".3f"},
            {"name": "XGBoost p50 / p99 us", "format": "{:.0f} / {:.0f}"},
            {"name": "compiled p50 / p99 us", "format": "{:.0f} / {:.0f}"},
            {"name": "XGBoost rows/s", "format": "{:.2f} M", "scale": 1e-6},
            {"name": "compiled rows/s", "format": "{:.2f} M", "scale": 1e-6},
        ],
        [
            [
                f"**{r['model']}** (chosen)" if r["model"] == chosen else r["model"],
                r["trees"],
                r["nodes"],
                r["ubj_kb"],
                r["lib_kb"],
                r["primary"],
                r["ratio"],
                [r["xgb_p50"], r["xgb_p99"]],
                [r["lib_p50"], r["lib_p99"]],
                r["xgb_rows_s"],
                r["lib_rows_s"],
            ]
            for r in rows
        ],
        units="latency in microseconds, one row at a time; batch throughput in millions of rows per second",
        method=(
            f"teacher {outcome.teacher} ({outcome.primary_metric} {rows[0]['primary']:.4g} on its test "
            "window); "
            "latency is one row at a time in process, XGBoost `inplace_predict` on one thread vs the TL2cgen-"
            f"compiled predictor, {SIZES['latency_calls']} calls; batch throughput on two threads over "
            f"{SIZES['batch_rows']:,} rows"
        ),
        notes=notes,
    )


def run(use_case: str, train_args: list[str], scratch: Path, compact_args: list[str] = ()) -> dict | None:
    """Train (or reuse) the teacher, compact it, time every model; the use case's table, None if training
    failed."""
    from cli.compact import print_outcome

    if not train_teacher(use_case, train_args):
        return None
    outcome, code, compact_seconds = compact(use_case, compact_args)
    rows = measure(use_case, outcome, scratch)
    chosen = outcome.judged[outcome.chosen][0].label if outcome.chosen is not None else None
    print()
    print_outcome(outcome)
    print()
    print(table(rows, outcome.primary_metric, chosen))
    notes = [
        f"`mlops compact {use_case}`: exit {code} in {compact_seconds:.0f} s; compiling the teacher took "
        f"{rows[0]['compile_s']:.1f} s"
    ]
    if chosen is not None:
        line = comparison(rows, chosen, outcome.primary_metric)
        print("\n" + line)
        notes.append(line)
    print()
    return results(use_case, outcome, rows, chosen, notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Compact models: teacher vs candidates, fraud and stock.")
    parser.add_argument("--fraud-data", default=None, help="fraud transactions (default: the handbook file)")
    parser.add_argument("--use-case", action="append", choices=("fraud", "stock"), help="default: both")
    parser.add_argument(
        "--home",
        help="an MLflow store (MLOPS_HOME) whose champions are the teachers; "
        "use cases without one are trained there (default: a fresh temporary store)",
    )
    add_arguments(parser, "compact")
    args = parser.parse_args(argv)
    out = output_path(args, "compact")
    os.environ.setdefault("MLOPS_PREFECT_SERVER", "ephemeral")
    os.environ.setdefault("COLUMNS", "160")
    use_cases = args.use_case or (["fraud"] if args.smoke else ["fraud", "stock"])
    SIZES.update({"batch_rows": 20_000, "latency_calls": 200} if args.smoke else {})
    tables = {} if args.smoke else carried_over(out)
    with tempfile.TemporaryDirectory(prefix="bench-compact-") as tmp:
        os.environ["MLOPS_HOME"] = str(Path(args.home).resolve() if args.home else Path(tmp) / "mlops")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for use_case in use_cases:
            train: list[str] = []
            if use_case == "fraud" and args.smoke:
                data = args.fraud_data or smoke_fraud_data(Path(tempfile.gettempdir()) / "mlops-bench-smoke")
                train = ["--data", str(data), *SMOKE_FRAUD_OPTIONS]
            elif use_case == "fraud":
                train = ["--data", args.fraud_data or str(HANDBOOK)]
            result = run(use_case, train, Path(tmp) / f"lib-{use_case}", SMOKE_COMPACT if args.smoke else [])
            if result is not None:
                tables[use_case] = result
    command = "uv run python bench/compact.py" + (" --smoke" if args.smoke else "")
    doc = document("compact", command, tables, smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
