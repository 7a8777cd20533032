"""The reference for the pipeline benchmark: the same work as `mlops run fraud`, hand-written in one script.

Same features (the vectorised handbook features), same windows, same XGBoost and logistic-regression fits,
same MLflow logging (params, metrics, the UBJ model) — without data checks, gates, registry or Prefect.
Prints one JSON line: wall seconds, peak RSS and test average precision. It is the reference that
bench/pipeline.py and bench/wall_clock.py run and report (their JSON holds its figures), so by default it
writes no results file of its own; `--out PATH` also writes that line's figures there.

    uv run python bench/handwritten.py PATH [--end YYYY-MM-DD] [--train-days 21] ... [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# The pipeline's XGBoost parameters for fraud.
PARAMS = {
    "objective": "binary:logistic",
    "eval_metric": "aucpr",
    "tree_method": "hist",
    "max_depth": 6,
    "eta": 0.1,
    "nthread": 2,
    "seed": 42,
    "max_delta_step": 1,  # the pipeline's default class-imbalance handling
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--end", default=None)
    parser.add_argument("--train-days", type=int, default=21)
    parser.add_argument("--validation-days", type=int, default=7)
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--delay-days", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    return parser.parse_args()


def log_run(table, test, features: list[str], booster, metrics: dict, source: str) -> None:
    """What `mlops run` logs to MLflow: params, metrics, the input and the UBJ model, in a throwaway store."""
    # why: main imported these in its timed start-up; here they are already loaded
    import mlflow
    import xgboost as xgb

    with tempfile.TemporaryDirectory() as home:
        mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
        experiment = mlflow.create_experiment("bench", artifact_location=Path(home, "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_params({k: str(v) for k, v in PARAMS.items()})
            mlflow.log_metrics(metrics)
            mlflow.log_input(mlflow.data.from_pandas(table, source=source), context="raw")
            example = test[features].head(5)
            mlflow.xgboost.log_model(
                booster,
                name="model",
                input_example=example,
                signature=mlflow.models.infer_signature(example, booster.predict(xgb.DMatrix(example))),
                model_format="ubj",
            )


def main() -> None:
    args = arguments()

    started = time.perf_counter()
    import mlflow  # noqa: F401  (timed here, used by log_run)
    import numpy as np
    import pandas as pd
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from usecases.fraud.features import FEATURES, build_features

    imported = time.perf_counter()
    table = build_features(pd.read_parquet(args.path), delay_days=args.delay_days)
    days = table.TX_DATETIME.dt.normalize()
    end = pd.Timestamp(args.end) if args.end else days.max()
    test_lo = end - pd.Timedelta(days=args.test_days - 1)
    val_hi = test_lo - pd.Timedelta(days=args.delay_days + 1)
    val_lo = val_hi - pd.Timedelta(days=args.validation_days - 1)
    train_hi = val_lo - pd.Timedelta(days=args.delay_days + 1)
    train_lo = train_hi - pd.Timedelta(days=args.train_days - 1)
    train = table[(days >= train_lo) & (days <= train_hi)]
    val = table[(days >= val_lo) & (days <= val_hi)]
    test = table[(days >= test_lo) & (days <= end)]
    features = list(FEATURES)

    y = train.TX_FRAUD.to_numpy()
    booster = xgb.train(
        PARAMS,
        xgb.DMatrix(train[features], label=y),
        num_boost_round=300,
        evals=[(xgb.DMatrix(val[features], label=val.TX_FRAUD), "validation")],
        early_stopping_rounds=50,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    scores = booster.predict(xgb.DMatrix(test[features]))
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train[features], y)
    lr_scores = lr.predict_proba(test[features])[:, 1]
    metrics = {
        "test_average_precision": float(average_precision_score(test.TX_FRAUD, scores)),
        "test_roc_auc": float(roc_auc_score(test.TX_FRAUD, scores)),
        "baseline_test_average_precision": float(average_precision_score(test.TX_FRAUD, lr_scores)),
    }
    log_run(table, test, features, booster, metrics, args.path)
    finished = time.perf_counter()
    figures = {
        "seconds": finished - imported,
        "seconds_with_imports": finished - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **metrics,
        "windows": {"train": str(train_lo.date()), "test": f"{test_lo.date()}..{end.date()}"},
        "rows": {"train": len(train), "validation": len(val), "test": len(test)},
        "np": np.__version__,
    }
    print(json.dumps(figures))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
