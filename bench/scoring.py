"""Batch-scoring benchmark on the full Fraud Detection Handbook file (1,754,155 transactions).

    uv run python bench/scoring.py [--home DIR] [--data PATH] [--chunk-rows N]

Trains a champion on the handbook file first if the registry in --home has none (`mlops run fraud --data`),
then prints rows/s end to end (read → validate → features → validate → score → write) for chunked and
one-piece scoring, and rows/s for the model step alone (in-place XGBoost prediction on the feature matrix,
best of 5), next to MLflow's generic pyfunc `predict` on the same frame.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANDBOOK = ROOT.parent / "shared/data/fraud-handbook/transactions.parquet"
MODEL = "fraud-detector"
sys.path.insert(0, str(ROOT))
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "true",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_name, _value)


def ensure_champion(home: Path, data: Path) -> str:
    """The champion's version in `home`, training one on `data` with the pipeline if there is none."""
    os.environ["MLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from mlflow import MlflowClient

    from tasks import tracking

    tracking.configure()
    try:
        return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)
    except Exception:
        pass
    print(f"no champion in {home}: training one on {data} (mlops run fraud --data ...)", flush=True)
    from flows.training import training_flow
    from usecases.fraud.spec import Params

    started = time.perf_counter()
    outcome = training_flow("fraud")(Params(data=str(data)))
    print(f"  trained in {time.perf_counter() - started:.0f} s: {outcome.decision.summary}", flush=True)
    return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / ".mlops" / "bench", help="MLOPS_HOME to use")
    parser.add_argument("--data", type=Path, default=HANDBOOK)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data}")
    version = ensure_champion(args.home.resolve(), args.data)

    import mlflow
    import numpy as np
    import pandas as pd

    from champion.loading import load_scoring_model, spec_for
    from flows.scoring import batch_scoring

    print(f"\n{MODEL} v{version} on {args.data.name}; {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, chunk_rows in ((f"chunked ({args.chunk_rows:,} rows)", args.chunk_rows), ("one piece", 0)):
            out = Path(tmp) / "scores.parquet"
            result = batch_scoring("fraud", str(args.data), str(out), chunk_rows=chunk_rows or None)
            rows.append((label, result))

    model = load_scoring_model(MODEL, version=version)
    spec = spec_for("fraud", model)
    raw = pd.read_parquet(args.data)
    features = spec.build_features(raw)
    matrix = features[list(model.columns)].to_numpy(np.float32)
    n = len(features)
    inplace = best_of(5, lambda: model.predict_matrix(matrix))
    cpu = time.process_time()
    model.predict_matrix(matrix)
    cpu = time.process_time() - cpu  # CPU seconds over all threads: what the machine's load cannot inflate
    with_frame = best_of(5, lambda: model.predict(features))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    frame = features[list(model.columns)]
    generic = best_of(3, lambda: pyfunc.predict(frame))
    trees = model._model.num_boosted_rounds() if model.flavor == "xgboost" else "?"

    print(f"\nend to end ({n:,} rows; read, validate, features, validate, score, write):")
    print(f"  {'mode':<28}{'rows/s':>12}{'total s':>9}{'model rows/s':>14}  seconds per step")
    for label, r in rows:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items() if k != "total")
        print(
            f"  {label:<28}{r.rows_per_second:>12,.0f}{r.seconds['total']:>9.1f}"
            f"{r.model_rows_per_second:>14,.0f}  {steps}"
        )
    print(f"\nmodel step alone ({trees} trees, best of 5):")
    print(f"  {'in-place predict on float32 matrix':<44}{n / inplace:>14,.0f} rows/s  ({inplace:.3f} s)")
    print(f"  {'same, incl. frame -> matrix':<44}{n / with_frame:>14,.0f} rows/s  ({with_frame:.3f} s)")
    label = f"in-place, per CPU second (x{os.cpu_count()} cores)"
    print(f"  {label:<44}{n / cpu:>14,.0f} rows/s  ({n / cpu * (os.cpu_count() or 1):,.0f} on idle cores)")
    print(
        f"  {'mlflow pyfunc predict (schema enforcement)':<44}{n / generic:>14,.0f} rows/s  ({generic:.3f} s)"
    )


if __name__ == "__main__":
    main()
