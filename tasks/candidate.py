"""The XGBoost candidate: what a fitted one is, and how it is fitted (hist, early stopping, seeded).

Early stopping keeps training past the best round; the candidate is cut back to `best_iteration` before it
is returned, so every prediction (evaluation, registry, serving) uses the same trees.

Optional, per use case (`ModelSpec`): a target transform (the booster learns e.g. log(target)) and a linear
offset (least squares on some feature columns, fitted on the training window, used as the booster's base
margin so the trees learn a correction to it, e.g. to HAR's forecast). The candidate's `predict` applies
offset and inverse transform (`tasks/pyfunc_model.py`, the same code the registered model runs), so it
returns target units.

From a registered model (`--init`, `tasks/lineage.py: Parent`): `continue` boosts on from its booster on
this run's training window (`xgb_model=`), early stopping on validation as usual, at most `--update-rounds`
trees added; `refresh` keeps its trees and refits their leaves on the training window (XGBoost's refresh
updater, which needs exactly as many rounds as there are trees and the parent's eta). Either way the parent's
offset and transform are kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xgboost as xgb

from tasks import pyfunc_model
from tasks.split import Splits

if TYPE_CHECKING:
    from tasks.lineage import Parent
    from usecases.spec import ModelSpec, Schema

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
    # Refitted after the gates on every labelled row up to the newest label: the (first, last) day. The gates
    # judged the candidate this one was refitted from (same parameters and rounds), on rows it never saw.
    refit_on: tuple[str, str] | None = None

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
    splits: Splits, model: ModelSpec, schema: Schema, params: dict, seed: int, log=None, callbacks=()
) -> Candidate:
    """XGBoost with `params` and the rest of the model spec on `splits`' training window, early stopping on
    its validation window: the final fit and every walk-forward fold's. `callbacks`: more XGBoost training
    callbacks (a tuning trial's pruning)."""
    features, target, transform = tuple(schema.features), schema.target, model.target_transform
    full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[schema.problem], **params}
    y_train = splits.train[target].to_numpy()
    if schema.problem == "binary" and model.balance_classes:
        positives = max(int(y_train.sum()), 1)
        full_params.setdefault("scale_pos_weight", (len(y_train) - positives) / positives)
    offset = None
    if transform != "identity" or model.offset_features:
        y_train = pyfunc_model.forward(y_train, transform)
        y_val = pyfunc_model.forward(splits.validation[target].to_numpy(), transform)
        if model.offset_features:
            offset = fit_offset(splits.train, model.offset_features, y_train)
        margins = [pyfunc_model.offset_margin(part, offset) for part in (splits.train, splits.validation)]
    else:
        y_val, margins = splits.validation[target].to_numpy(), [None, None]
    matrices = _matrices(splits, features, (y_train, y_val), margins)
    rounds, patience = model.num_boost_round, model.early_stopping_rounds
    fitted = _early_stopped(full_params, matrices, rounds, patience, log, callbacks=callbacks)
    return Candidate(
        features=features, params=full_params, target_transform=transform, offset=offset, **fitted
    )


def refit_candidate(
    candidate: Candidate, rows: pd.DataFrame, weights: np.ndarray | None, model: ModelSpec, schema: Schema
) -> Candidate:
    """`candidate`'s recipe fitted again on `rows`: its parameters and as many rounds as early stopping
    chose (there is no later window left to stop on), its transform, an offset fitted again on these rows."""
    label = pyfunc_model.forward(rows[schema.target].to_numpy(), candidate.target_transform)
    offset = fit_offset(rows, model.offset_features, label) if candidate.offset is not None else None
    dtrain = xgb.DMatrix(
        rows[list(candidate.features)],
        label=label,
        base_margin=pyfunc_model.offset_margin(rows, offset),
        weight=weights,
    )
    rounds = candidate.best_iteration + 1
    booster = xgb.train(candidate.params, dtrain, num_boost_round=rounds, verbose_eval=False)
    return replace(candidate, booster=booster, offset=offset, rounds_trained=rounds, curve=())


def _matrices(
    splits: Splits, features: tuple[str, ...], labels: tuple[np.ndarray, np.ndarray], margins: Sequence
) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    """The training and validation windows as XGBoost matrices, with their labels and base margins."""
    dtrain = xgb.DMatrix(
        splits.train[list(features)], label=labels[0], base_margin=margins[0], weight=splits.weights
    )
    dval = xgb.DMatrix(splits.validation[list(features)], label=labels[1], base_margin=margins[1])
    return dtrain, dval


def _early_stopped(
    params: dict,
    matrices: tuple[xgb.DMatrix, xgb.DMatrix],
    rounds: int,
    patience: int,
    log=None,
    start: xgb.Booster | None = None,
    callbacks=(),
) -> dict:
    """Boost up to `rounds` (on from `start`, if given), early stopping on validation, then cut back to the
    best iteration: the booster and what `Candidate` records of the fit."""
    dtrain, dval = matrices
    history: dict = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=[(dval, "validation")],
        early_stopping_rounds=patience,
        verbose_eval=False,
        callbacks=[*([_ProgressLog(log)] if log is not None else []), *callbacks],
        xgb_model=start,
        evals_result=history,
    )
    best = booster.best_iteration  # from a parent: counts its trees, rounds go on from them
    return {
        "booster": booster[: best + 1],
        "best_iteration": best,
        "rounds_trained": booster.num_boosted_rounds(),
        "validation_score": float(booster.best_score),
        "curve": _curve(history, str(params["eval_metric"])),
    }


def _curve(history: dict, metric: str) -> tuple[float, ...]:
    """The validation metric per round from `xgb.train(..., evals_result=...)`."""
    return tuple(float(v) for v in history.get("validation", {}).get(metric, ()))


# Parent parameters that shape refitted leaves: a loaded booster has forgotten them (defaults would apply).
_LEAF_PARAMS = (
    *("eta", "learning_rate", "lambda", "reg_lambda", "alpha", "reg_alpha"),
    *("max_delta_step", "scale_pos_weight"),
)


def fine_tune(
    splits: Splits, parent: Parent, model: ModelSpec, schema: Schema, seed: int, log=None
) -> Candidate:
    """Continue boosting from, or refresh the leaves of, `parent` on the training window."""
    config = parent.config
    transform, offset = config.get("target_transform", "identity"), config.get("offset")
    features = tuple(parent.features)
    y_train, y_val = splits.train[schema.target].to_numpy(), splits.validation[schema.target].to_numpy()
    if transform != "identity" or offset:
        y_train, y_val = pyfunc_model.forward(y_train, transform), pyfunc_model.forward(y_val, transform)
    margins = [pyfunc_model.offset_margin(part, offset) for part in (splits.train, splits.validation)]
    matrices = _matrices(splits, features, (y_train, y_val), margins)
    objective = json.loads(parent.booster.save_config())["learner"]["objective"]["name"]
    start = parent.booster.copy()  # xgb.train grows the model it is given in place
    trees = start.num_boosted_rounds()
    if parent.mode == "refresh":
        full_params = _refresh_params(parent, objective, model.params, seed)
        # Exactly one round per tree: more fails ("No more tree left"), fewer silently drops trees.
        booster = xgb.train(
            full_params, matrices[0], num_boost_round=trees, xgb_model=start, verbose_eval=False
        )
        # A refresh adds no rounds: no validation score, and no curve to draw.
        fitted = {"booster": booster, "best_iteration": trees - 1, "rounds_trained": trees}
    else:
        full_params = _continue_params(parent, objective, model.params, schema.problem, seed)
        added = min(model.num_boost_round, parent.update_rounds or model.num_boost_round)
        fitted = _early_stopped(full_params, matrices, added, model.early_stopping_rounds, log, start)
    return Candidate(
        features=features,
        params=full_params,
        target_transform=transform,
        offset=offset,
        parent_trees=trees,
        parent_uri=parent.uri,
        update=parent.mode,
        **fitted,
    )


def _refresh_params(parent: Parent, objective: str, params: Mapping, seed: int) -> dict:
    """XGBoost's refresh updater with the parent's objective and the parameters that shape its leaves."""
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
    return full_params


def _continue_params(parent: Parent, objective: str, params: Mapping, problem: str, seed: int) -> dict:
    """This run's booster parameters, with the parent's objective and class weighting."""
    full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[problem], **params}
    full_params["objective"] = objective  # the parent's: its margins mean what its objective says
    if "scale_pos_weight" in parent.params:  # the parent's class weighting, kept for its added trees
        full_params.setdefault("scale_pos_weight", _number(parent.params["scale_pos_weight"]))
    return full_params


def _number(value):
    """A logged parameter ("0.1", "1") back as a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number
