"""Benchmark: compact models for fraud (the Fraud Detection Handbook's file) and stock (arch's S&P 500 bars).

For each use case: `mlops run` trains the teacher, `mlops compact` builds, gates, registers and promotes the
compact model (both through the CLI, in this process, on a fresh MLflow store and a temporary Prefect server),
then the teacher and every candidate the compaction built are compiled with TL2cgen and timed:

    model, trees, nodes, UBJ KB, compiled KB, primary metric on the teacher's test window and its ratio to
    the teacher's, single-row p50 / p99 in process (XGBoost inplace_predict on one thread vs the compiled
    predictor), batch rows/s (both on two threads)

    uv run python bench/compact.py [--fraud-data PATH] [--use-case fraud|stock ...] [--home MLOPS_HOME]
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
HANDBOOK = ROOT.parent / "shared/data/fraud-handbook/transactions.parquet"
BATCH_ROWS = 200_000


def batch_rows_per_second(predict, matrix: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        predict(matrix)
        best = min(best, time.perf_counter() - started)
    return len(matrix) / best


def timed(label, booster, measured, features, test, scratch: Path) -> dict:
    """One model's row: XGBoost and the compiled library, one row at a time and in batches."""
    from tasks.compact import CompiledModel, booster_row_predictor, compile_booster, single_row_latency

    x = test[list(features)].to_numpy(np.float32)
    rows = x[:200]
    batch = np.tile(x, (max(1, BATCH_ROWS // len(x)), 1))
    compiled = compile_booster(booster, {"features": list(features)}, scratch / label, check=x, threads=2)
    lib_p50, lib_p99 = single_row_latency(CompiledModel(compiled).margin, rows, 2000)
    xgb_p50, xgb_p99 = single_row_latency(booster_row_predictor(booster), rows, 2000)
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

    from champion.promotion import current_champion
    from tasks import tracking
    from usecases import default_registered_model

    tracking.configure()
    return current_champion(MlflowClient(), default_registered_model(use_case)) is not None


def run(use_case: str, train_args: list[str], scratch: Path) -> None:
    import flows.compaction
    from champion.loading import training_params
    from cli.compact import print_outcome
    from cli.main import app
    from tasks.compact import rebuild_windows
    from usecases import spec_module

    if has_champion(use_case):
        print(f"== {use_case}: the store's champion is the teacher (not retrained)")
    else:
        print(f"== {use_case}: mlops run {use_case} {' '.join(train_args)}")
        started = time.perf_counter()
        code = app(["run", use_case, *train_args], standalone_mode=False) or 0
        print(f"   exit {code} in {time.perf_counter() - started:.0f} s")
        if code != 0:
            return
    outcomes = []
    original = flows.compaction.compaction

    def keep(*args, **kwargs):  # the CLI's own compaction, its outcome kept for the detailed table
        outcomes.append(original(*args, **kwargs))
        return outcomes[-1]

    flows.compaction.compaction = keep
    try:
        started = time.perf_counter()
        code = app(["compact", use_case], standalone_mode=False) or 0
    finally:
        flows.compaction.compaction = original
    print(f"== {use_case}: mlops compact {use_case}: exit {code} in {time.perf_counter() - started:.0f} s")
    outcome = outcomes[0]
    teacher = outcome.teacher_model
    module = spec_module(use_case)
    params = training_params(module, teacher.run_id)
    test = rebuild_windows.fn(module.build_spec(params), params, teacher).test
    rows = [timed("teacher", teacher.booster, outcome.teacher_measured, teacher.features, test, scratch)]
    for candidate, (measured, _) in zip(outcome.candidates, outcome.judged, strict=True):
        rows.append(timed(candidate.label, candidate.booster, measured, candidate.features, test, scratch))
    chosen = outcome.judged[outcome.chosen][0].label if outcome.chosen is not None else None
    print()
    print_outcome(outcome)
    print()
    print(table(rows, outcome.primary_metric, chosen))
    if chosen is not None:
        c = next(r for r in rows if r["model"] == chosen)
        t = rows[0]
        print(
            f"\n{chosen} vs teacher: {outcome.primary_metric} x{c['ratio']:.3f}, UBJ size x"
            f"{c['ubj_kb'] / t['ubj_kb']:.2f}, single-row p50 compiled x{c['lib_p50'] / t['xgb_p50']:.2f} "
            f"of the teacher's XGBoost ({c['lib_p50']:.0f} vs {t['xgb_p50']:.0f} us), XGBoost x"
            f"{c['xgb_p50'] / t['xgb_p50']:.2f}; compile {c['compile_s']:.1f} s (teacher "
            f"{t['compile_s']:.1f} s)"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description="Compact models: teacher vs candidates, fraud and stock.")
    parser.add_argument("--fraud-data", default=str(HANDBOOK), help="fraud transactions (handbook file)")
    parser.add_argument("--use-case", action="append", choices=("fraud", "stock"), help="default: both")
    parser.add_argument(
        "--home",
        help="an MLflow store (MLOPS_HOME) whose champions are the teachers; "
        "use cases without one are trained there (default: a fresh temporary store)",
    )
    args = parser.parse_args()
    os.environ.setdefault("MLOPS_PREFECT_SERVER", "ephemeral")
    os.environ.setdefault("COLUMNS", "160")
    with tempfile.TemporaryDirectory(prefix="bench-compact-") as tmp:
        os.environ["MLOPS_HOME"] = str(Path(args.home).resolve() if args.home else Path(tmp) / "mlops")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for use_case in args.use_case or ["fraud", "stock"]:
            train = ["--data", args.fraud_data] if use_case == "fraud" else []
            run(use_case, train, Path(tmp) / f"lib-{use_case}")


if __name__ == "__main__":
    main()
