"""Batch-scoring benchmark on the full Fraud Detection Handbook file (1,754,155 transactions).

    uv run python bench/scoring.py [--home DIR] [--data PATH] [--chunk-rows N] [--out PATH] [--smoke]

Trains a champion on the handbook file first if the registry in --home has none (`mlops run fraud --data`),
then prints rows/s end to end (read → validate → features → validate → score → write) for chunked and
one-piece scoring, and rows/s for the model step alone (in-place XGBoost prediction on the feature matrix,
best of 5), next to MLflow's generic pyfunc `predict` on the same frame. The figures also go to
bench/results/scoring.json (`--out`), which the docs render.

`--smoke`: a tiny simulated file, a champion trained on it (absolute gates off), one repeat, the JSON to a
temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fraud-detector"
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "true",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLOPS_PREFECT_SERVER": "ephemeral",  # one temporary Prefect server for this process, none left behind
}.items():
    os.environ.setdefault(_name, _value)

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


def ensure_champion(home: Path, data: Path, options: list[str] | tuple[str, ...] = ()) -> str:
    """The champion's version in `home`, training one on `data` with the pipeline if there is none
    (`mlops run fraud --data DATA OPTIONS`, in this process)."""
    os.environ["MLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from mlflow import MlflowClient

    from champion import store

    store.configure()
    try:
        return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)
    except Exception:
        pass
    print(f"no champion in {home}: training one on {data} (mlops run fraud --data ...)", flush=True)
    from cli.main import app

    started = time.perf_counter()
    code = app(["run", "fraud", "--data", str(data), *options], standalone_mode=False) or 0
    print(f"  mlops run fraud: exit {code} in {time.perf_counter() - started:.0f} s", flush=True)
    store.configure()
    try:
        return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)
    except Exception as error:
        raise SystemExit(f"no champion after `mlops run fraud` (exit {code}): {error}") from error


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


@dataclass(frozen=True)
class ModelStep:
    """The model step alone on the whole feature table: seconds (best of `repeat`) and the model's shape."""

    rows: int
    inplace: float  # in-place prediction on the float32 matrix
    cpu: float  # CPU seconds of one in-place prediction, over all threads
    with_frame: float  # including the frame -> matrix conversion
    generic: float  # MLflow's pyfunc predict
    trees: int | None
    depth: int | None


def end_to_end(data: Path, chunk_rows: int) -> list[tuple[str, object]]:
    """The scoring flow, chunked and in one piece: (label, its result)."""
    from flows.scoring import batch_scoring

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, rows_per_chunk in ((f"chunks of {chunk_rows:,} rows", chunk_rows), ("in one piece", 0)):
            result = batch_scoring(
                "fraud", str(data), str(Path(tmp) / "scores.parquet"), chunk_rows=rows_per_chunk or None
            )
            rows.append((label, result))
    return rows


def model_step(version: str, data: Path, repeat: int) -> ModelStep:
    import json

    import mlflow
    import numpy as np
    import pandas as pd

    from champion.loading import load_scoring_model, spec_for

    model = load_scoring_model(MODEL, version=version)
    spec = spec_for("fraud", model)
    raw = pd.read_parquet(data)
    features = spec.build_features(raw)
    matrix = features[list(model.columns)].to_numpy(np.float32)
    inplace = best_of(repeat, lambda: model.predict_matrix(matrix))
    cpu = time.process_time()
    model.predict_matrix(matrix)
    cpu = time.process_time() - cpu  # CPU seconds over all threads: what the machine's load cannot inflate
    with_frame = best_of(repeat, lambda: model.predict(features))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    frame = features[list(model.columns)]
    generic = best_of(min(repeat, 3), lambda: pyfunc.predict(frame))
    trees = model._model.num_boosted_rounds() if model.flavor == "xgboost" else None
    depth = None
    if model.flavor == "xgboost":
        config = json.loads(model._model.save_config())["learner"]["gradient_booster"]
        depth = config.get("tree_train_param", {}).get("max_depth")
    return ModelStep(len(features), inplace, cpu, with_frame, generic, trees, depth)


def report(rows: list[tuple[str, object]], step: ModelStep, repeat: int) -> None:
    n, inplace, with_frame, cpu, generic = step.rows, step.inplace, step.with_frame, step.cpu, step.generic
    print(f"\nend to end ({n:,} rows; read, validate, features, validate, score, write):")
    print(f"  {'mode':<28}{'rows/s':>12}{'total s':>9}{'model rows/s':>14}  seconds per step")
    for label, r in rows:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items() if k != "total")
        print(
            f"  {label:<28}{r.rows_per_second:>12,.0f}{r.seconds['total']:>9.1f}"
            f"{r.model_rows_per_second:>14,.0f}  {steps}"
        )
    print(f"\nmodel step alone ({step.trees} trees, best of {repeat}):")
    print(f"  {'in-place predict on float32 matrix':<44}{n / inplace:>14,.0f} rows/s  ({inplace:.3f} s)")
    print(f"  {'same, incl. frame -> matrix':<44}{n / with_frame:>14,.0f} rows/s  ({with_frame:.3f} s)")
    label = f"in-place, per CPU second (x{os.cpu_count()} cores)"
    print(f"  {label:<44}{n / cpu:>14,.0f} rows/s  ({n / cpu * (os.cpu_count() or 1):,.0f} on idle cores)")
    print(
        f"  {'mlflow pyfunc predict (schema enforcement)':<44}{n / generic:>14,.0f} rows/s  ({generic:.3f} s)"
    )


def batch_table(
    rows: list[tuple[str, object]], step: ModelStep, version: str, data: Path, repeat: int
) -> dict:
    n = step.rows
    in_run = sorted(r.model_rows_per_second for _, r in rows)
    return table(
        "Batch scoring",
        ["batch scoring", {"name": "rows/s", "format": ",.0f"}],
        [
            *[
                [f"end to end, {label} (read, validate, features, validate, score, write)", r.rows_per_second]
                for label, r in rows
            ],
            [
                "model step (in-place XGBoost prediction), as timed inside the run",
                f"{in_run[0]:,.0f} – {in_run[-1]:,.0f}",
            ],
            [f"model step alone, best of {repeat}", n / step.inplace],
            ["model step including the frame → matrix conversion", n / step.with_frame],
            ["MLflow's generic `pyfunc.predict` on the same frame, for comparison", n / step.generic],
        ],
        units="rows per second of wall time",
        method=(
            f"`{MODEL}` v{version} ({step.trees if step.trees is not None else '?'} trees"
            + (f", depth {step.depth}" if step.depth else "")
            + f") scoring `{data.name}` ({n:,} rows) on {os.cpu_count()} CPUs; the model step alone is "
            f"the best of {repeat}"
        ),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / ".mlops" / "bench", help="MLOPS_HOME to use")
    parser.add_argument("--data", type=Path, default=None, help="default: the handbook file")
    parser.add_argument("--chunk-rows", type=int, default=None, help="default 1,000,000 (smoke: 20,000)")
    add_arguments(parser, "scoring")
    args = parser.parse_args(argv)
    out = output_path(args, "scoring")
    repeat = 1 if args.smoke else 5
    train_options: list[str] = []
    if args.smoke:
        data = args.data or smoke_fraud_data(Path(tempfile.gettempdir()) / "mlops-bench-smoke")
        train_options = SMOKE_FRAUD_OPTIONS
        chunk_rows = args.chunk_rows or 20_000
    else:
        data = args.data or HANDBOOK
        chunk_rows = args.chunk_rows or 1_000_000
    if not data.exists():
        sys.exit(f"no data at {data}")
    version = ensure_champion(args.home.resolve(), data, train_options)

    print(f"\n{MODEL} v{version} on {data.name}; {os.cpu_count()} CPUs", flush=True)
    rows = end_to_end(data, chunk_rows)
    step = model_step(version, data, repeat)
    report(rows, step, repeat)
    command = "uv run python bench/scoring.py" + (" --smoke" if args.smoke else "")
    doc = document(
        "scoring", command, {"batch": batch_table(rows, step, version, data, repeat)}, smoke=args.smoke
    )
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
