"""Walk-forward model selection: the booster parameters chosen on rolling-origin folds of the training window.

When a use case's `ModelSpec` declares a `search` grid and `folds`, every combination is fitted on each fold
(expanding training part, `gap` steps, then a validation block; `tasks.split.rolling_origin_folds`) and
scored by the booster's eval metric at its best round, averaged over folds; the best is what the candidate
is then fitted with (`tasks/train.py`). The record of every combination goes to the MLflow run.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from tasks.candidate import OBJECTIVES, fit_candidate
from tasks.split import Splits, rolling_origin_folds
from tasks.stage import stage

if TYPE_CHECKING:
    from usecases.spec import ModelSpec, Schema, SplitSpec

# Eval metrics where higher is better (XGBoost's own early-stopping list).
_MAXIMIZE = ("auc", "aucpr", "pre", "map", "ndcg")


def eval_metric(problem: str, model: ModelSpec) -> str:
    """The booster's eval metric (early stopping, selection, pruning): the model's, else the problem's."""
    return str({**OBJECTIVES[problem], **model.params}["eval_metric"])


def maximizes(metric: str) -> bool:
    """Whether higher is better for an XGBoost eval metric (`aucpr`, `pre@100`, ...)."""
    return metric.split("@")[0] in _MAXIMIZE


def grid(search: Mapping[str, Sequence[object]]) -> list[dict[str, object]]:
    """Every combination of a grid of booster parameters (`ModelSpec.search`); an empty grid: [{}]."""
    names = list(search)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*search.values())]


def select_params(
    train: pd.DataFrame, model: ModelSpec, schema: Schema, split: SplitSpec, seed: int
) -> tuple[dict, dict]:
    """Walk-forward model selection inside the training window.

    Every combination of `model.search` (a grid over booster parameters) is fitted on `model.folds`
    rolling-origin folds (expanding training part, `gap` steps, then a validation block;
    `tasks.split.rolling_origin_folds`), with early stopping on each fold's block, and scored by the booster's
    eval metric at its best round, averaged over folds. Each (combination, fold) is a task run on the flow's
    task runner (`fold-<k>-<combination>`), so they fit at once. Returns the chosen parameter values and a
    JSON-able record of every combination.
    """
    cut = rolling_origin_folds(train, schema.time_column, model.folds, split.gap, split.unit)
    metric = eval_metric(schema.problem, model)
    maximize = maximizes(metric)
    combinations = grid(model.search)
    submitted = [
        [
            score_fold.submit(
                Splits(fit_part, val_part, val_part, {}),
                model,
                schema,
                {**model.params, **chosen},
                seed,
                fold=k,
                label=",".join(f"{n}={v}" for n, v in chosen.items()),
            )
            for k, (fit_part, val_part) in enumerate(cut)
        ]
        for chosen in combinations
    ]
    trials = []
    for chosen, futures in zip(combinations, submitted, strict=True):
        scores, rounds = zip(*(future.result() for future in futures), strict=True)
        trials.append(
            {
                "params": chosen,
                "fold_scores": list(scores),
                "fold_rounds": list(rounds),
                "mean": float(np.mean(scores)),
            }
        )
    best = (max if maximize else min)(trials, key=lambda t: t["mean"])
    record = {
        "metric": metric,
        "greater_is_better": maximize,
        "folds": [
            {
                "train": [str(f[schema.time_column].min()), str(f[schema.time_column].max()), len(f)],
                "validation": [str(v[schema.time_column].min()), str(v[schema.time_column].max()), len(v)],
            }
            for f, v in cut
        ],
        "trials": trials,
        "selected": best["params"],
        "selected_mean": best["mean"],
    }
    return dict(best["params"]), record


@stage(task_run_name="fold-{fold}-{label}")
def score_fold(
    window: Splits, model: ModelSpec, schema: Schema, params: dict, seed: int, fold: int, label: str
) -> tuple[float, int]:
    """One combination of the walk-forward search on one fold (`window`: its training part and validation
    block): the eval metric at the best round, and the rounds to it."""
    fitted = fit_candidate(window, model, schema, params, seed)
    return fitted.validation_score, fitted.best_iteration + 1


def log_selection(run_id: str, selection: dict) -> None:
    """The selection on the MLflow run: `model_selection.json`, `selected.<param>` params, `cv_<metric>`."""
    client = MlflowClient()
    client.log_dict(run_id, selection, "model_selection.json")
    metric = f"cv_{selection['metric']}".replace("@", "_")
    client.log_batch(
        run_id,
        metrics=[Metric(metric, selection["selected_mean"], int(pd.Timestamp.now().value // 1_000_000), 0)],
        params=[Param(f"selected.{k}", str(v)) for k, v in selection["selected"].items()],
    )
