"""Benchmark: the gated fraud pipeline on the full handbook file, side by side with a hand-written script.

Prints, for each configuration, wall time, peak memory and time per stage of `mlops run fraud`, the same
figures for `bench/handwritten.py` (same features, training and MLflow logging, no gates or orchestration)
run in the same session, their ratio, and test average precision next to the handbook's published XGBoost
result on its 1-week protocol (0.639). The figures also go to bench/results/pipeline.json (`--out`).

A Prefect server is started once for the benchmark, so the pipeline's figures exclude the ~10 s a temporary
server takes to start (reported separately); every run gets a fresh MLflow store.

    uv run python bench/pipeline.py [--data PATH] [--out PATH] [--smoke]

`--smoke`: a tiny simulated file, the defaults configuration only (absolute gates off), the JSON to a
temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the project: bench/serving.py is no `serving`

from _harness import prefect_server, run_json, run_pipeline  # noqa: E402
from _results import (  # noqa: E402
    HANDBOOK,
    SMOKE_FRAUD_OPTIONS,
    add_arguments,
    document,
    output_path,
    smoke_fraud_data,
    table,
    write,
)

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


def report(label: str, pipe: dict, hand: dict) -> None:
    """One configuration's figures, pipeline next to the hand-written script, and its time per stage."""
    m = pipe["metrics"]
    print(f"== {label}")
    print(f"{'':34}{'pipeline':>12}{'hand-written':>14}{'ratio':>8}")
    print(row("wall time, s (after imports)", pipe["seconds"], hand["seconds"]))
    print(row("wall time, s (with imports)", pipe["seconds_with_imports"], hand["seconds_with_imports"]))
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


def summary_rows(short: str, pipe: dict, hand: dict) -> list[list]:
    """One configuration's rows of the summary table."""
    m = pipe["metrics"]
    return [
        [f"wall time after imports, s ({short})", pipe["seconds"], hand["seconds"],
         pipe["seconds"] / hand["seconds"]],
        [f"wall time with imports, s ({short})", pipe["seconds_with_imports"],
         hand["seconds_with_imports"], pipe["seconds_with_imports"] / hand["seconds_with_imports"]],
        [f"peak RSS, GB ({short})", pipe["peak_rss_mb"] / 1024, hand["peak_rss_mb"] / 1024, None],
        [f"test average precision ({short})", m["test_average_precision"],
         hand["test_average_precision"], None],
        [f"logistic regression, test average precision ({short})",
         m["baseline_test_average_precision"], hand["baseline_test_average_precision"], None],
        [f"test ROC AUC ({short})", m["test_roc_auc"], hand["test_roc_auc"], None],
        [f"exit code ({short})", pipe["exit_code"], None, None],
    ]  # fmt: skip


def tables(data: str, boot: float, rows: list[list], first: tuple[str, dict]) -> dict:
    """The summary table, and the time per stage of `first` (a configuration's short label and run)."""
    stage_config, stage_pipe = first
    number = {"format": "{:.3g}"}
    summary = table(
        "Fraud pipeline against the hand-written script",
        ["what", {"name": "pipeline", **number}, {"name": "hand-written", **number},
         {"name": "ratio", "format": ".2f"}],
        rows,
        method=(
            f"`mlops run fraud --data {Path(data).name}` and `bench/handwritten.py` (same features, "
            "training and MLflow logging; no checks, gates, registry or Prefect), each in a fresh process "
            "with a fresh MLflow store; the handbook's own XGBoost reaches "
            f"{HANDBOOK_XGBOOST_AP} on its 1-week protocol"
        ),
        excluded=f"the Prefect server's start ({boot:.0f} s here), paid once per machine",
    )  # fmt: skip
    stages = table(
        f"Fraud pipeline, time per stage ({stage_config})",
        ["stage", {"name": "seconds", "format": ".2f"}],
        [[stage, seconds] for stage, seconds in sorted(stage_pipe["stages"].items(), key=lambda kv: -kv[1])],
        method="the Prefect task runs' durations, summed per stage",
    )
    return {"summary": summary, "stages": stages}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Fraud pipeline benchmark on the full handbook file.")
    parser.add_argument("--data", default=None, help="default: the handbook file")
    add_arguments(parser, "pipeline")
    args = parser.parse_args(argv)
    out = output_path(args, "pipeline")
    configs = dict(CONFIGS)
    extra: list[str] = []
    if args.smoke:
        data = args.data or str(smoke_fraud_data(Path(tempfile.gettempdir()) / "mlops-bench-smoke"))
        configs = {"defaults (train 21 d, test = last 7 d)": []}
        extra = SMOKE_FRAUD_OPTIONS
    else:
        data = args.data or str(HANDBOOK)
    if not Path(data).exists():
        sys.exit(f"benchmark data not found: {data}")

    rows, runs = [], []
    with prefect_server() as (env, boot):
        print(f"data: {data}")
        print(f"Prefect server start (excluded below; a temporary server costs the same): {boot:.1f} s\n")
        for label, options in configs.items():
            hand = run_json([sys.executable, "bench/handwritten.py", data, *options], env)
            pipe = run_pipeline("fraud", ["--data", data, *options, *extra], env)
            report(label, pipe, hand)
            short = label.split(" (")[0]
            rows += summary_rows(short, pipe, hand)
            runs.append((short, pipe))
    command = "uv run python bench/pipeline.py" + (" --smoke" if args.smoke else "")
    first = next(((short, pipe) for short, pipe in runs if pipe["stages"]), runs[-1])  # the first with stages
    doc = document("pipeline", command, tables(data, boot, rows, first), smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
