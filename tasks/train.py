"""Train: the XGBoost candidate (hist, early stopping on validation, seeded) and the simple baselines.

Early stopping keeps training past the best round; the candidate is cut back to `best_iteration` before it
is returned, so every prediction (evaluation, registry, serving) uses the same trees.

Optional, per use case (`ModelSpec`): a target transform (the booster learns e.g. log(target)), a linear
offset (least squares on some feature columns, fitted on the training window, used as the booster's base
margin so the trees learn a correction to it, e.g. to HAR's forecast), and a walk-forward model selection
(each combination of a small parameter grid scored on rolling-origin folds inside the training window).
The candidate's `predict` applies offset and inverse transform (`tasks/pyfunc_model.py`, the same code the
registered model runs), so it returns target units.

From a registered model (`--init`, `tasks/lineage.py: Parent`): `continue` boosts on from its booster on
this run's training window (`xgb_model=`), early stopping on validation as usual, at most `--update-rounds`
trees added; `refresh` keeps its trees and refits their leaves on the training window (XGBoost's refresh
updater, which needs exactly as many rounds as there are trees and the parent's eta). Either way the parent's
offset and transform are kept, and no model selection runs (the parent's structure is given).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xgboost as xgb

from tasks import pyfunc_model
from tasks.split import Splits, SplitSpec, rolling_origin_folds
from tasks.stage import stage
from tasks.tracking import run_logger

if TYPE_CHECKING:
    from tasks.lineage import Parent
    from usecases.spec import Baseline, ModelSpec, Schema

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
    target_transform: str = "identity"
    # Linear base margin {"features": [...], "intercept": b, "coef": [...]}, in the transformed space.
    offset: dict | None = None
    # Walk-forward model selection: every combination's fold scores and the one chosen.
    selection: dict | None = None
    # The eval metric on validation at `best_iteration` (in the transformed space).
    validation_score: float = float("nan")
    # Fine-tuned from a registered model: its trees (the first `parent_trees` of this booster) and URI.
    parent_trees: int = 0
    parent_uri: str | None = None
    update: str | None = None  # "continue" | "refresh"
    # Every training window behind the trees ((lo, hi) dates): this run's, after its parent's.
    trained_on: tuple[tuple[str, str], ...] = ()
    # The validation eval metric after every boosting round trained (past `best_iteration` too): the curve.
    curve: tuple[float, ...] = ()

    @property
    def transformed(self) -> bool:
        """True when the booster's raw output is not yet the prediction (transform or offset to apply)."""
        return self.target_transform != "identity" or self.offset is not None

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns a prediction reads: the features, then any offset column that is not one."""
        extra = [c for c in (self.offset or {}).get("features", ()) if c not in self.features]
        return (*self.features, *extra)

    @property
    def config(self) -> dict:
        """What `tasks/pyfunc_model.py` needs besides the booster; JSON-able."""
        return {
            "features": list(self.features),
            "target_transform": self.target_transform,
            "offset": self.offset,
        }

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.transformed:
            return pyfunc_model.predict(self.booster, frame, self.config)
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


def fit_offset(frame: pd.DataFrame, columns: Sequence[str], label: np.ndarray) -> dict:
    """Least squares `label ~ intercept + frame[columns] . coef` (e.g. HAR-RV in logs)."""
    x = np.column_stack([np.ones(len(frame)), frame[list(columns)].to_numpy(dtype=np.float64)])
    solution = np.linalg.lstsq(x, label, rcond=None)[0]
    return {
        "features": list(columns),
        "intercept": float(solution[0]),
        "coef": [float(c) for c in solution[1:]],
    }


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
    *,
    target_transform: str = "identity",
    offset_features: Sequence[str] = (),
) -> Candidate:
    features = tuple(features)
    full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[problem], **params}
    y_train = splits.train[target].to_numpy()
    if problem == "binary" and balance_classes:
        positives = max(int(y_train.sum()), 1)
        full_params.setdefault("scale_pos_weight", (len(y_train) - positives) / positives)
    offset = None
    if target_transform != "identity" or offset_features:
        y_train = pyfunc_model.forward(y_train, target_transform)
        y_val = pyfunc_model.forward(splits.validation[target].to_numpy(), target_transform)
        if offset_features:
            offset = fit_offset(splits.train, offset_features, y_train)
        margins = [pyfunc_model.offset_margin(part, offset) for part in (splits.train, splits.validation)]
    else:
        y_val, margins = splits.validation[target].to_numpy(), [None, None]
    dtrain = xgb.DMatrix(splits.train[list(features)], label=y_train, base_margin=margins[0])
    dval = xgb.DMatrix(splits.validation[list(features)], label=y_val, base_margin=margins[1])
    callbacks = [_ProgressLog(log)] if log is not None else []
    history: dict = {}
    booster = xgb.train(
        full_params,
        dtrain,
        num_boost_round=num_boost_round,
        evals=[(dval, "validation")],
        early_stopping_rounds=early_stopping_rounds,
        verbose_eval=False,
        callbacks=callbacks,
        evals_result=history,
    )
    rounds = booster.num_boosted_rounds()
    best = booster.best_iteration
    score = float(booster.best_score)
    booster = booster[: best + 1]
    return Candidate(
        booster,
        features,
        full_params,
        best,
        rounds,
        target_transform,
        offset,
        validation_score=score,
        curve=_curve(history, str(full_params["eval_metric"])),
    )


def _curve(history: dict, metric: str) -> tuple[float, ...]:
    """The validation metric per round from `xgb.train(..., evals_result=...)`."""
    return tuple(float(v) for v in history.get("validation", {}).get(metric, ()))


# Eval metrics where higher is better (XGBoost's own early-stopping list).
_MAXIMIZE = ("auc", "aucpr", "pre", "map", "ndcg")


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
    names = list(model.search)
    metric = str({**OBJECTIVES[schema.problem], **model.params}["eval_metric"])
    maximize = metric.split("@")[0] in _MAXIMIZE
    combinations = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(model.search[n] for n in names))
    ]
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


def fit_from_spec(
    splits: Splits, model: ModelSpec, schema: Schema, params: dict, seed: int, log=None
) -> Candidate:
    """`fit_candidate` with `params` and the rest of the model spec: the final fit and every fold's."""
    return fit_candidate(
        splits,
        schema.features,
        schema.target,
        schema.problem,
        params,
        model.num_boost_round,
        model.early_stopping_rounds,
        model.balance_classes,
        seed,
        log,
        target_transform=model.target_transform,
        offset_features=model.offset_features,
    )


@stage(task_run_name="fold-{fold}-{label}")
def score_fold(
    window: Splits, model: ModelSpec, schema: Schema, params: dict, seed: int, fold: int, label: str
) -> tuple[float, int]:
    """One combination of the walk-forward search on one fold (`window`: its training part and validation
    block): the eval metric at the best round, and the rounds to it."""
    fitted = fit_from_spec(window, model, schema, params, seed)
    return fitted.validation_score, fitted.best_iteration + 1


# Parent parameters that shape refitted leaves: a loaded booster has forgotten them (defaults would apply).
_LEAF_PARAMS = (
    *("eta", "learning_rate", "lambda", "reg_lambda", "alpha", "reg_alpha"),
    *("max_delta_step", "scale_pos_weight"),
)


def fine_tune(
    splits: Splits,
    parent: Parent,
    target: str,
    problem: str,
    params: dict,
    num_boost_round: int,
    early_stopping_rounds: int,
    seed: int,
    log=None,
) -> Candidate:
    """Continue boosting from, or refresh the leaves of, `parent` on the training window."""
    import json

    config = parent.config
    transform, offset = config.get("target_transform", "identity"), config.get("offset")
    features = tuple(parent.features)
    y_train, y_val = splits.train[target].to_numpy(), splits.validation[target].to_numpy()
    if transform != "identity" or offset:
        y_train, y_val = pyfunc_model.forward(y_train, transform), pyfunc_model.forward(y_val, transform)
    margins = [pyfunc_model.offset_margin(part, offset) for part in (splits.train, splits.validation)]
    dtrain = xgb.DMatrix(splits.train[list(features)], label=y_train, base_margin=margins[0])
    dval = xgb.DMatrix(splits.validation[list(features)], label=y_val, base_margin=margins[1])
    objective = json.loads(parent.booster.save_config())["learner"]["objective"]["name"]
    start = parent.booster.copy()  # xgb.train grows the model it is given in place
    trees = start.num_boosted_rounds()
    if parent.mode == "refresh":
        full_params = {
            "objective": objective,
            "seed": seed,
            "nthread": params.get("nthread", 0),
            **{k: _number(parent.params[k]) for k in _LEAF_PARAMS if k in parent.params},
            "process_type": "update",
            "updater": "refresh",
            "refresh_leaf": 1,
        }
        if "eta" not in full_params and "learning_rate" not in full_params:
            raise ValueError(f"{parent.uri} did not record its eta: a refresh would refit with 0.3")
        # Exactly one round per tree: more fails ("No more tree left"), fewer silently drops trees.
        booster = xgb.train(full_params, dtrain, num_boost_round=trees, xgb_model=start, verbose_eval=False)
        score = float("nan")
        best = trees - 1
        rounds = trees
        curve = ()  # a refresh adds no rounds: there is no curve to draw
    else:
        full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[problem], **params}
        full_params["objective"] = objective  # the parent's: its margins mean what its objective says
        if "scale_pos_weight" in parent.params:  # the parent's class weighting, kept for its added trees
            full_params.setdefault("scale_pos_weight", _number(parent.params["scale_pos_weight"]))
        added = min(num_boost_round, parent.update_rounds or num_boost_round)
        history: dict = {}
        booster = xgb.train(
            full_params,
            dtrain,
            num_boost_round=added,
            evals=[(dval, "validation")],
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
            callbacks=[_ProgressLog(log)] if log is not None else [],
            xgb_model=start,
            evals_result=history,
        )
        rounds = booster.num_boosted_rounds()
        best = booster.best_iteration  # counts the parent's trees: rounds go on from them
        score = float(booster.best_score)
        booster = booster[: best + 1]
        curve = _curve(history, str(full_params["eval_metric"]))
    return Candidate(
        booster,
        features,
        full_params,
        best,
        rounds,
        transform,
        offset,
        validation_score=score,
        curve=curve,
        parent_trees=trees,
        parent_uri=parent.uri,
        update=parent.mode,
    )


def _number(value):
    """A logged parameter ("0.1", "1") back as a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number


@stage
def train(
    splits: Splits,
    model: ModelSpec,
    schema: Schema,
    split: SplitSpec,
    seed: int,
    run_id: str | None = None,
    init: Parent | None = None,
) -> Candidate:
    """Fit the candidate on the training window (walk-forward selection first, when the model spec asks),
    or fine-tune `init` on it."""
    log = run_logger()
    if init is not None:
        log.info(
            "fine-tuning %s (%d trees, %s) on %d rows of the training window",
            init.uri,
            init.trees,
            init.mode,
            len(splits.train),
        )
        candidate = fine_tune(
            splits,
            init,
            schema.target,
            schema.problem,
            dict(model.params),
            model.num_boost_round,
            model.early_stopping_rounds,
            seed,
            log,
        )
        log.info(
            "%d trees: %d from %s, %d added (%d trained)",
            candidate.booster.num_boosted_rounds(),
            candidate.parent_trees,
            init.uri,
            candidate.booster.num_boosted_rounds() - candidate.parent_trees,
            candidate.rounds_trained - candidate.parent_trees,
        )
        candidate = replace(candidate, trained_on=(*init.trained_on, *_train_window(splits)))
        if run_id is not None:
            log_curve(run_id, candidate)
        return candidate
    params = dict(model.params)
    selection = None
    if model.search and model.folds > 0:
        chosen, selection = select_params(splits.train, model, schema, split, seed)
        params = {**params, **chosen}
        log.info(
            "walk-forward selection over %d folds: %s (mean validation %s %.6g); tried %s",
            model.folds,
            chosen,
            selection["metric"],
            selection["selected_mean"],
            ", ".join(f"{t['params']} {t['mean']:.6g}" for t in selection["trials"]),
        )
        if run_id is not None:
            _log_selection(run_id, selection)
    log.info("training XGBoost on %d rows, %d features", len(splits.train), len(schema.features))
    candidate = fit_from_spec(splits, model, schema, params, seed, log)
    if selection is not None:
        candidate = replace(candidate, selection=selection)
    candidate = replace(candidate, trained_on=_train_window(splits))
    log.info("best iteration %d of %d trained", candidate.best_iteration, candidate.rounds_trained)
    if run_id is not None:
        log_curve(run_id, candidate)
    return candidate


def log_curve(run_id: str, candidate: Candidate) -> None:
    """`validation_<eval metric>` at every boosting round as one MLflow metric with steps, so the run page
    draws the training curve; `best_iteration` is logged beside it to mark where the model was cut."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    if not candidate.curve:
        return
    name = f"validation_{candidate.params['eval_metric']}"
    now = int(pd.Timestamp.now().value // 1_000_000)
    first = candidate.parent_trees if candidate.update == "continue" else 0  # rounds go on from the parent's
    points = [Metric(name, v, now, first + i) for i, v in enumerate(candidate.curve)]
    points.append(Metric("best_iteration", float(candidate.best_iteration), now, 0))
    client = MlflowClient()
    for i in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=points[i : i + 1000])


def _train_window(splits: Splits) -> tuple[tuple[str, str], ...]:
    window = splits.windows.get("train")
    return ((str(window[0]), str(window[1])),) if window else ()


def _log_selection(run_id: str, selection: dict) -> None:
    """The selection on the MLflow run: `model_selection.json`, `selected.<param>` params, `cv_<metric>`."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    client.log_dict(run_id, selection, "model_selection.json")
    metric = f"cv_{selection['metric']}".replace("@", "_")
    client.log_batch(
        run_id,
        metrics=[Metric(metric, selection["selected_mean"], int(pd.Timestamp.now().value // 1_000_000), 0)],
        params=[Param(f"selected.{k}", str(v)) for k, v in selection["selected"].items()],
    )


@stage(task_run_name="baseline-{baseline.name}")
def fit_baseline(baseline: Baseline, train: pd.DataFrame, schema: Schema) -> FittedBaseline:
    """One baseline fitted on the training window (or the sample of it the Dask executor keeps)."""
    return FittedBaseline(
        baseline.name, baseline.description, baseline.fit(train, list(schema.features), schema.target)
    )


def train_baselines(
    splits: Splits, baselines: Sequence[Baseline], schema: Schema, runner=None
) -> list[FittedBaseline]:
    """Every baseline at once, each a task run through the task runner (`tasks.cluster.submit`): the flow's
    threads, or the Dask workers when `runner` is the run's `DaskTaskRunner`."""
    from tasks.cluster import submit

    # On Dask the training rows go to the cluster once, not once per baseline.
    train = splits.train if runner is None else runner.client.scatter(splits.train)
    futures = [submit(runner, fit_baseline, baseline=b, train=train, schema=schema) for b in baselines]
    return [future.result() for future in futures]
