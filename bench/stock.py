"""Benchmark: the gated stock pipeline, both targets, on the S&P 500 bars shipped in `arch` (or `--data`).

Prints, per target, wall time, peak memory and time per stage of `mlops run stock`, the exit code and the
decision, the walk-forward selection, and the test metrics of the candidate next to every baseline on the
same test window (MAE, RMSE; for `return` also directional accuracy and the implied next close's MAE).

A Prefect server is started once for the benchmark, so the figures exclude the ~10 s a temporary server
takes to start (reported separately); every run gets a fresh MLflow store.

    uv run python bench/stock.py [--data PATH] [--target volatility|return] [-- extra mlops options]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import prefect_server, run_pipeline  # noqa: E402

BASELINES = {"volatility": ("naive_5d", "naive_22d", "har"), "return": ("zero", "majority")}
METRICS = {
    "volatility": ("mae", "rmse"),
    "return": ("mae", "rmse", "directional_accuracy", "next_close_mae"),
}


def report(target: str, result: dict) -> None:
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
    if target == "volatility":
        best_naive = min(m["naive_5d_test_mae"], m["naive_22d_test_mae"])
        vs_har = m["test_mae"] / m["har_test_mae"] - 1
        print(f"MAE vs best naive: {m['test_mae'] / best_naive - 1:+.1%}; vs HAR: {vs_har:+.1%}")
    else:
        print(f"MAE vs zero return: {m['test_mae'] / m['zero_test_mae'] - 1:+.1%}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description="Stock pipeline benchmark, both targets.")
    parser.add_argument("--data", default=None, help="CSV/Parquet bars; default: arch's S&P 500")
    parser.add_argument("--target", choices=("volatility", "return"), action="append")
    parser.add_argument("extra", nargs="*", help="further `mlops run stock` options, after --")
    args = parser.parse_args()
    targets = args.target or ["volatility", "return"]

    with prefect_server() as (env, boot):
        print(f"data: {args.data or 'arch.data.sp500 (embedded)'}")
        print(f"Prefect server start (excluded below; a temporary server costs the same): {boot:.1f} s\n")
        for target in targets:
            options = ["--target", target, *(["--data", args.data] if args.data else []), *args.extra]
            report(target, run_pipeline("stock", options, env))


if __name__ == "__main__":
    main()
