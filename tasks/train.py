"""Train: the stage that fits the candidate on the training window, and the simple baselines beside it.

The candidate is XGBoost (`tasks/candidate.py`: hist, early stopping on validation, seeded, cut back to its
best iteration), fitted after a walk-forward model selection when the use case's `ModelSpec` asks for one
(`tasks/selection.py`), or fine-tuned from a registered model (`--init`): then no model selection runs, the
parent's structure is given. Its validation curve and the selection go to the MLflow run. The baselines are
the use case's own (`UseCaseSpec.baselines`), each a task run, fitted on the same training window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from champion.store import run_logger
from tasks.candidate import Candidate, fine_tune, fit_candidate
from tasks.selection import log_selection, select_params
from tasks.split import Splits
from tasks.stage import stage
from usecases.spec import SplitSpec

if TYPE_CHECKING:
    from tasks.lineage import Parent
    from usecases.spec import Baseline, ModelSpec, Schema


@dataclass(frozen=True)
class FittedBaseline:
    name: str
    description: str
    predict: Callable[[pd.DataFrame], np.ndarray]


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
        candidate = fine_tune(splits, init, model, schema, seed, log)
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
            log_selection(run_id, selection)
    log.info("training XGBoost on %d rows, %d features", len(splits.train), len(schema.features))
    candidate = fit_candidate(splits, model, schema, params, seed, log)
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


@stage(task_run_name="baseline-{baseline.name}")
def fit_baseline(baseline: Baseline, train: pd.DataFrame, schema: Schema) -> FittedBaseline:
    """One baseline fitted on the training window (or the sample of it the Dask executor keeps)."""
    return FittedBaseline(
        baseline.name, baseline.description, baseline.fit(train, list(schema.features), schema.target)
    )


def train_baselines(
    splits: Splits, baselines: Sequence[Baseline], schema: Schema, submit: Callable | None = None
) -> list[FittedBaseline]:
    """Every baseline at once, each a task run: `submit(task, **parameters)` starts one where the executor
    wants it (the Dask executor: on its workers, `splits.train` already there); None: the flow's threads."""
    submit = submit or (lambda task, **parameters: task.submit(**parameters))
    train = splits.train
    futures = [submit(fit_baseline, baseline=b, train=train, schema=schema) for b in baselines]
    return [future.result() for future in futures]
