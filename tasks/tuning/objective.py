"""A parameter set's value on the tuning folds: the spec's primary metric, averaged over the folds.

On each fold the candidate is fitted as a run fits it (`tasks.candidate.fit_candidate`: the spec's model,
early stopping on the fold's block), then scored on that block with the use case's own metrics (its
calibration, e.g. the decision threshold, decided on the same block). A trial is pruned on its first fold
only, where every trial reports the same rounds: optuna-integration's `XGBoostPruningCallback` reads the
booster's eval metric there, when that metric agrees in direction with the primary one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.candidate import fit_candidate
from tasks.selection import eval_metric, maximizes
from tasks.split import Splits
from tasks.tuning.folds import TuningFolds, fold_training

if TYPE_CHECKING:
    import optuna

    from usecases.spec import UseCaseSpec


@dataclass(frozen=True)
class Scored:
    value: float  # the primary metric, mean over folds
    fold_values: tuple[float, ...]
    fold_rounds: tuple[int, ...]  # boosting rounds early stopping kept, per fold
    seconds: float


def prunable(spec: UseCaseSpec) -> bool:
    """Pruning on the eval metric makes sense only when it points the way the primary metric does."""
    return maximizes(eval_metric(spec.problem, spec.model)) == spec.metrics.greater_is_better


def score(spec: UseCaseSpec, data: TuningFolds, seed: int, trial: optuna.trial.Trial | None = None) -> Scored:
    """`spec`'s model (its booster parameters, window, replay, recency) on every fold. With `trial`, the
    first fold reports each round's eval metric to it and raises `optuna.TrialPruned` when told to stop."""
    started = time.perf_counter()
    values, rounds = [], []
    for k, fold in enumerate(data.folds):
        rows, weights, block = fold_training(fold, spec)
        callbacks = ()
        if trial is not None and k == 0 and prunable(spec):
            # why: optuna-integration loads with a trial only (the flow and `mlops run` never need it)
            from optuna_integration import XGBoostPruningCallback

            metric = eval_metric(spec.problem, spec.model)
            callbacks = (XGBoostPruningCallback(trial, f"validation-{metric}"),)
        window = Splits(rows, block, block, {}, weights)
        candidate = fit_candidate(
            window, spec.model, spec.schema, dict(spec.model.params), seed, None, callbacks
        )
        predictions = candidate.predict(block)
        metrics = spec.metrics
        context = metrics.calibrate(block, predictions) if metrics.calibrate else {}
        values.append(float(metrics.compute(block, predictions, context)[metrics.primary]))
        rounds.append(candidate.best_iteration + 1)
    return Scored(float(np.mean(values)), tuple(values), tuple(rounds), time.perf_counter() - started)
