"""Benchmark: the gated fraud pipeline on the full handbook file, side by side with a hand-written script.

Prints, for each configuration, wall time, peak memory and time per stage of `mlops run fraud`, the same
figures for `bench/handwritten.py` (same features, training and MLflow logging, no gates or orchestration)
run in the same session, their ratio, and test average precision next to the handbook's published XGBoost
result on its 1-week protocol (0.639).

A Prefect server is started once for the benchmark, so the pipeline's figures exclude the ~10 s a temporary
server takes to start (reported separately); every run gets a fresh MLflow store.

    uv run python bench/pipeline.py [--data PATH] [--repeat 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ROOT, prefect_server, run_json, run_pipeline  # noqa: E402

HANDBOOK = ROOT.parent / "shared/data/fraud-handbook/transactions.parquet"
HANDBOOK_XGBOOST_AP = 0.639  # the handbook's table: XGBoost (defaults), 1-week protocol

CONFIGS = {
    "defaults (train 21 d, test = last 7 d)": [],
    "handbook 1-week protocol (test 2018-08-08..14, 7-day windows)": [
        "--end",
        "2018-08-14",
        "--train-days",
        "7",
        "--validation-days",
        "7",
        "--test-days",
        "7",
    ],
}


def row(label: str, pipeline: float, hand: float | None, fmt: str = ".1f", ratio: bool = True) -> str:
    text = f"{label:34}{pipeline:12{fmt}}"
    if hand is not None:
        text += f"{hand:14{fmt}}" + (f"{pipeline / hand:8.2f}" if ratio else "")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description="Fraud pipeline benchmark on the full handbook file.")
    parser.add_argument("--data", default=str(HANDBOOK))
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"benchmark data not found: {args.data}")

    with prefect_server() as (env, boot):
        print(f"data: {args.data}")
        print(f"Prefect server start (excluded below; a temporary server costs the same): {boot:.1f} s\n")
        for label, options in CONFIGS.items():
            hand = run_json([sys.executable, "bench/handwritten.py", args.data, *options], env)
            pipe = run_pipeline("fraud", ["--data", args.data, *options], env)
            m = pipe["metrics"]
            print(f"== {label}")
            print(f"{'':34}{'pipeline':>12}{'hand-written':>14}{'ratio':>8}")
            print(row("wall time, s (after imports)", pipe["seconds"], hand["seconds"]))
            print(
                row("wall time, s (with imports)", pipe["seconds_with_imports"], hand["seconds_with_imports"])
            )
            print(row("peak RSS, MB", pipe["peak_rss_mb"], hand["peak_rss_mb"], ".0f"))
            print(
                row(
                    "test average precision",
                    m["test_average_precision"],
                    hand["test_average_precision"],
                    ".3f",
                    ratio=False,
                )
                + f"   (handbook XGBoost {HANDBOOK_XGBOOST_AP})"
            )
            print(
                row(
                    "baseline (LR) average precision",
                    m["baseline_test_average_precision"],
                    hand["baseline_test_average_precision"],
                    ".3f",
                    ratio=False,
                )
            )
            print(row("test ROC AUC", m["test_roc_auc"], hand["test_roc_auc"], ".3f", ratio=False))
            print(row("card precision@100", m["test_card_precision_at_100"], None, ".3f"))
            print(f"exit code {pipe['exit_code']} ({pipe['decision']}); time per stage (s):")
            for stage, seconds in sorted(pipe["stages"].items(), key=lambda kv: -kv[1]):
                print(f"  {stage:30}{seconds:8.2f}")
            print()


if __name__ == "__main__":
    main()
