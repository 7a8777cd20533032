"""Train: the XGBoost candidate (hist, early stopping on validation, seeded) and the simple baselines.

Early stopping keeps training past the best round; the candidate is cut back to `best_iteration` before it
is returned, so every prediction (evaluation, registry, serving) uses the same trees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb
from prefect import get_run_logger

from tasks._stage import stage
from tasks.split import Splits

OBJECTIVES = {
    "binary": {"objective": "binary:logistic", "eval_metric": "aucpr"},
    "regression": {"objective": "reg:squarederror", "eval_metric": "mae"},
}


@dataclass(frozen=True)
class Candidate:
    booster: xgb.Booster
    features: tuple[str, ...]
    params: dict
    best_iteration: int
    rounds_trained: int

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(xgb.DMatrix(frame[list(self.features)]))


@dataclass(frozen=True)
class FittedBaseline:
    name: str
    description: str
    predict: Callable[[pd.DataFrame], np.ndarray]


class _ProgressLog(xgb.callback.TrainingCallback):
    """Log validation progress every `every` rounds, so a long fit shows it is moving."""

    def __init__(self, log, every: int = 50):
        self.log, self.every = log, every

    def after_iteration(self, model, epoch, evals_log):
        if epoch % self.every == 0:
            scores = ", ".join(f"{m} {v[-1]:.5f}" for m, v in evals_log.get("validation", {}).items())
            self.log.info("round %d: validation %s", epoch, scores)
        return False


def fit_candidate(
    splits: Splits,
    features: Sequence[str],
    target: str,
    problem: str,
    params: dict,
    num_boost_round: int,
    early_stopping_rounds: int,
    balance_classes: bool,
    seed: int,
    log=None,
) -> Candidate:
    features = tuple(features)
    full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[problem], **params}
    y_train = splits.train[target].to_numpy()
    if problem == "binary" and balance_classes:
        positives = max(int(y_train.sum()), 1)
        full_params.setdefault("scale_pos_weight", (len(y_train) - positives) / positives)
    dtrain = xgb.DMatrix(splits.train[list(features)], label=y_train)
    dval = xgb.DMatrix(splits.validation[list(features)], label=splits.validation[target].to_numpy())
    callbacks = [_ProgressLog(log)] if log is not None else []
    booster = xgb.train(
        full_params,
        dtrain,
        num_boost_round=num_boost_round,
        evals=[(dval, "validation")],
        early_stopping_rounds=early_stopping_rounds,
        verbose_eval=False,
        callbacks=callbacks,
    )
    rounds = booster.num_boosted_rounds()
    best = booster.best_iteration
    booster = booster[: best + 1]
    return Candidate(booster, features, full_params, best, rounds)


@stage
def train(
    splits: Splits,
    features: Sequence[str],
    target: str,
    problem: str,
    params: dict,
    num_boost_round: int,
    early_stopping_rounds: int,
    balance_classes: bool,
    seed: int,
) -> Candidate:
    log = get_run_logger()
    log.info("training XGBoost on %d rows, %d features", len(splits.train), len(features))
    candidate = fit_candidate(
        splits, features, target, problem, params, num_boost_round, early_stopping_rounds,
        balance_classes, seed, log,
    )
    log.info("best iteration %d of %d trained", candidate.best_iteration, candidate.rounds_trained)
    return candidate


@stage
def train_baselines(splits: Splits, baselines, features: Sequence[str], target: str) -> list[FittedBaseline]:
    return [
        FittedBaseline(b.name, b.description, b.fit(splits.train, list(features), target)) for b in baselines
    ]
