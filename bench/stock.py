"""Benchmark: the gated stock pipeline, both targets, on the S&P 500 bars shipped in `arch` (or `--data`).

Prints, per target, wall time, peak memory and time per stage of `mlops run stock`, the exit code and the
decision, the walk-forward selection, and the test metrics of the candidate next to every baseline on the
same test window (MAE, RMSE; for `return` also directional accuracy and the implied next close's MAE). The
figures also go to bench/results/stock.json (`--out`).

A Prefect server is started once for the benchmark, so the figures exclude the ~10 s a temporary server
takes to start (reported separately); every run gets a fresh MLflow store.

    uv run python bench/stock.py [--data PATH] [--target volatility|return] [--out PATH] [--smoke]
                                 [-- extra mlops options]

`--smoke`: the volatility target on a shorter window (750 training days, 250 test days) without walk-forward
selection, the JSON to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the project: bench/serving.py is no `serving`

from _harness import prefect_server, run_pipeline  # noqa: E402
from _results import SMOKE_STOCK_OPTIONS, add_arguments, document, output_path, table, write  # noqa: E402

BASELINES = {"volatility": ("naive_5d", "naive_22d", "har"), "return": ("zero", "majority")}
METRICS = {
    "volatility": ("mae", "rmse"),
    "return": ("mae", "rmse", "directional_accuracy", "next_close_mae"),
}
# What the docs' tables show per target: (metric, column name, format)
SHOWN = {
    "volatility": (("mae", "test MAE", ".5f"), ("rmse", "test RMSE", ".5f")),
    "return": (("mae", "test MAE", ".6f"), ("directional_accuracy", "directional accuracy", ".3f")),
}
LABELS = {
    "naive_5d": "`naive_5d`: trailing 5-day realised volatility",
    "naive_22d": "`naive_22d`: trailing 22-day realised volatility",
    "har": "`har`: HAR-RV in logs, fitted on the training window",
    "zero": "`zero`: zero return",
    "majority": "`majority`: the training window's majority direction",
}


def report(target: str, result: dict) -> dict:
    m = result["metrics"]
    print(f"== target {target}: exit {result['exit_code']}, {result['decision']}")
    print(f"   {result['summary'][:400]}")
    print(
        f"wall time {result['seconds']:.1f} s after imports ({result['seconds_with_imports']:.1f} s with), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    print("per stage, s: " + ", ".join(f"{k} {v:.2f}" for k, v in result["stages"].items()))
    selected = {k: v for k, v in result["params"].items() if k.startswith("selected.")}
    if selected:
        print(f"walk-forward selection: {selected} (cv_mae {m.get('cv_mae', float('nan')):.5f})")
    baselines = BASELINES[target]
    print(f"{'test metric':24}{'xgboost':>12}" + "".join(f"{b:>12}" for b in baselines))
    for metric in METRICS[target]:
        row = [m.get(f"test_{metric}", float("nan"))] + [
            m.get(f"{b}_test_{metric}", float("nan")) for b in baselines
        ]
        digits = 2 if metric == "next_close_mae" else (4 if metric == "directional_accuracy" else 6)
        print(f"{metric:24}" + "".join(f"{v:12.{digits}f}" for v in row))
    notes = [f"exit {result['exit_code']} ({result['decision']}): {result['summary'][:300]}"]
    if target == "volatility":
        best_naive = min(m["naive_5d_test_mae"], m["naive_22d_test_mae"])
        vs_naive, vs_har = m["test_mae"] / best_naive - 1, m["test_mae"] / m["har_test_mae"] - 1
        print(f"MAE vs best naive: {vs_naive:+.1%}; vs HAR: {vs_har:+.1%}")
        notes.insert(
            0, f"test MAE against the best naive baseline: {vs_naive:+.1%}; against HAR: {vs_har:+.1%}"
        )
    else:
        vs_zero = m["test_mae"] / m["zero_test_mae"] - 1
        print(f"MAE vs zero return: {vs_zero:+.1%}")
        notes.insert(0, f"test MAE against a zero-return forecast: {vs_zero:+.1%}")
    print()
    chosen = ", ".join(f"{k.removeprefix('selected.')} {v}" for k, v in selected.items())
    name = "XGBoost" + (", log target, boosted from HAR's forecast" if target == "volatility" else "")
    rows = [
        [
            f"{name} (selected: {chosen})" if chosen else name,
            *(m.get(f"test_{k}") for k, _, _ in SHOWN[target]),
        ]
    ]
    for b in BASELINES[target]:
        rows.append([LABELS[b], *(m.get(f"{b}_test_{k}") for k, _, _ in SHOWN[target])])
    return table(
        f"`--target {target}`",
        [f"`--target {target}`", *({"name": n, "format": f} for _, n, f in SHOWN[target])],
        rows,
        method=(
            f"`mlops run stock --target {target}`: wall time {result['seconds']:.1f} s after imports, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
        ),
        notes=notes,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Stock pipeline benchmark, both targets.")
    parser.add_argument("--data", default=None, help="CSV/Parquet bars; default: arch's S&P 500")
    parser.add_argument("--target", choices=("volatility", "return"), action="append")
    parser.add_argument("extra", nargs="*", help="further `mlops run stock` options, after --")
    add_arguments(parser, "stock")
    args = parser.parse_args(argv)
    out = output_path(args, "stock")
    targets = args.target or (["volatility"] if args.smoke else ["volatility", "return"])
    extra = list(args.extra)
    if args.smoke:
        extra += SMOKE_STOCK_OPTIONS

    tables = {}
    with prefect_server() as (env, boot):
        print(f"data: {args.data or 'arch.data.sp500 (embedded)'}")
        print(f"Prefect server start (excluded below; a temporary server costs the same): {boot:.1f} s\n")
        for target in targets:
            options = ["--target", target, *(["--data", args.data] if args.data else []), *extra]
            tables[target] = report(target, run_pipeline("stock", options, env))
    for t in tables.values():
        t["method"] += f"; on {args.data or 'the S&P 500 bars shipped in arch'}" + (
            f" with `{' '.join(extra)}`" if extra else ", last 750 trading days as test, seed 42"
        )
    command = "uv run python bench/stock.py" + (" --smoke" if args.smoke else "")
    doc = document("stock", command, tables, smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
