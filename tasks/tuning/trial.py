"""One trial as a Prefect task run: ask the study for values, score them on the folds, record the child run.

The task opens the study from its storage URL itself, so it runs the same on a thread of the flow's process
and on a Dask worker in another process (or machine): the storage is what trials share.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import mlflow

from tasks.selection import grid
from tasks.stage import stage
from tasks.tuning.apply import tuned_spec
from tasks.tuning.folds import TuningFolds
from tasks.tuning.objective import score
from tasks.tuning.records import log_trial
from tasks.tuning.space import suggest
from tasks.tuning.study import TrialResult, load, open_storage, run_one

if TYPE_CHECKING:
    from usecases.params import TrainingParams
    from usecases.search_space import Tuned
    from usecases.spec import UseCaseSpec


@dataclass(frozen=True)
class TrialJob:
    """Everything a trial needs besides the folds, picklable for a Dask worker."""

    build_spec: Callable[[TrainingParams], UseCaseSpec]
    params: TrainingParams
    space: tuple[Tuned, ...]
    seed: int
    warmup: int
    storage_url: str
    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str


@functools.cache
def _storage(url: str):
    """One storage (engine, heartbeat) per process and URL."""
    return open_storage(url)


@stage(task_run_name="trial-{slot}")
def run_trial(job: TrialJob, data: TuningFolds, slot: int) -> TrialResult:
    """Trial `slot` of this tuning run (its study number is in the result and the child run)."""
    mlflow.set_tracking_uri(job.tracking_uri)
    study = load(job.study, _storage(job.storage_url), job.seed, job.warmup)

    def objective(trial):
        trial.set_user_attr("tuning_run", job.parent_run_id)  # which run (process) added it
        spec = tuned_spec(job.build_spec, job.params, job.space, suggest(trial, job.space))
        return score(spec, data, job.seed, trial)

    result = run_one(study, objective, job.seed)
    log_trial(job.parent_run_id, job.experiment_id, job.study, job.metric, result)
    return result


@stage(task_run_name="spec-defaults")
def score_defaults(spec: UseCaseSpec, data: TuningFolds, seed: int) -> tuple[float, dict]:
    """What the spec trains without tuning, on the same folds: its model params, or the best combination of
    its own walk-forward grid (`ModelSpec.search`) when it declares one. Returns the value and the params."""
    scored = []
    for chosen in grid(spec.model.search if spec.model.folds > 0 else {}):
        model = replace(spec.model, params={**spec.model.params, **chosen}, search={}, folds=0)
        scored.append((score(replace(spec, model=model), data, seed).value, chosen))
    pick = max if spec.metrics.greater_is_better else min
    value, chosen = pick(scored, key=lambda pair: pair[0])
    return value, {**spec.model.params, **chosen}
