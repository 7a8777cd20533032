"""The gated-training flow's data stages, for the executor a run chose (`--executor local|dask`).

The flow calls the same stages in the same order either way; `stages_for` gives it the in-process ones
(`tasks/ingest.py`, `validate.py`, `features.py`, `split.py`, `train.py`) or their Dask counterparts (this
package's modules of the same names, on the cluster `cluster.py` opens), unless `unsupported` says what keeps
the run off Dask. Everything after training — evaluation on the collected validation and test windows,
champion re-scoring, gates, registry — is the same code.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import ExitStack
from typing import TYPE_CHECKING

from champion.store import run_logger
from tasks import features, ingest, refit, split, tracking, train, validate
from tasks.dask.cluster import (
    DaskSettings,
    ExecutorError,
    dask_runner,
    release_memory,
    resolve_executor,
    scratch_folder,
    submit,
)
from tasks.dask.features import featurize_distributed
from tasks.dask.ingest import ingest_distributed, record_dataset
from tasks.dask.split import in_memory_table, split_distributed
from tasks.dask.train import train_distributed
from tasks.dask.validate import validate_distributed
from usecases.spec import ContinualSpec

if TYPE_CHECKING:
    from usecases.params import TrainingParams
    from usecases.spec import UseCaseSpec


def unsupported(spec: UseCaseSpec, params: TrainingParams) -> list[str]:
    """What keeps this run off the Dask executor (empty: nothing)."""
    reasons = []
    if spec.feature_history is None and not spec.feature_keys:
        reasons.append(
            "its features declare neither feature_keys nor a feature_history (they cannot be computed in "
            "key shards or in time chunks)"
        )
    if spec.feature_keys and not spec.id_columns:
        reasons.append("it declares feature_keys but no id_columns to put key shards' features back together")
    if spec.split.unit != "days":
        reasons.append(f"it splits by {spec.split.unit}, not calendar days")
    if spec.raw_check_view is not None:
        reasons.append("its raw checks need a cross-row view of the whole table")
    if spec.model.search and spec.model.folds > 0:
        reasons.append("it selects its model by walk-forward folds")
    if spec.model.target_transform != "identity" or spec.model.offset_features:
        reasons.append("its model learns a transformed target or a base margin")
    if getattr(params, "init", "scratch") != "scratch":
        reasons.append(f"--init {params.init} (fine-tuning runs on the local executor)")
    return reasons


class LocalStages:
    """The in-process stages, as the flow always ran them."""

    name = "local"

    def __init__(self, spec: UseCaseSpec, params: TrainingParams, run_id: str, refusal: str | None = None):
        self.spec, self.params, self.run_id = spec, params, run_id
        self.refusal = refusal  # raised by the first stage, inside the flow's run (recorded as failed)

    def ingest(self):
        if self.refusal:
            raise ExecutorError(self.refusal)
        return ingest.ingest(self.spec.load, self.params)

    def validate(self, frame, suite_factory):
        return validate.validate(frame, suite_factory, self.run_id)

    def featurize(self, raw):
        return split.with_known_target(features.featurize(raw, self.spec.build_features), self.spec.target)

    def split(self, table):
        spec = self.spec
        return split.split(table, spec.split, spec.schema, spec.test_filter, spec.continual)

    def log_datasets(self, raw, splits):
        return tracking.log_input_table(self.run_id, self.spec.name, raw, splits)

    def train(self, splits, parent):
        spec = self.spec
        return train.train(splits, spec.model, spec.schema, spec.split, self.params.seed, self.run_id, parent)

    def train_baselines(self, splits):
        return train.train_baselines(splits, self.spec.baselines, self.spec.schema)

    def refit(self, candidate, table, splits, evaluation):
        return refit.refit(candidate, table, splits, evaluation, self.spec)

    def in_memory(self, table):
        """The table as `tasks.compare.compare` reads it."""
        return table

    def close(self) -> None:
        pass


class DaskStages(LocalStages):
    """The same stages on a Dask cluster; the cluster opens with the first stage and closes with the run."""

    name = "dask"

    def __init__(self, spec: UseCaseSpec, params: TrainingParams, run_id: str, settings: DaskSettings):
        reasons = unsupported(spec, params)
        refusal = (
            f"use case {spec.name} cannot run on the Dask executor: {'; '.join(reasons)}. "
            "Run it with --executor local."
        )
        if spec.continual != ContinualSpec():  # why: xgboost.dask fits the training window as it is
            run_logger().info("executor dask: no refit, replay, recency weights nor held-out keys")
            spec = dataclasses.replace(spec, continual=ContinualSpec())
        super().__init__(spec, params, run_id, refusal if reasons else None)
        self.settings = settings
        self._exit = ExitStack()
        self._runner = self._scratch = None
        self.windows = None  # split.DistributedWindows, after split

    @property
    def runner(self):
        """prefect-dask's `DaskTaskRunner` on the cluster: the run's parallel tasks run on the workers."""
        if self._runner is None:
            run_logger().info("executor dask: %s", self.settings.describe())
            self._runner = self._exit.enter_context(dask_runner(self.settings))
            self._scratch = self._exit.enter_context(scratch_folder(self.settings))
        return self._runner

    @property
    def scratch(self):
        """The run's folder for what the workers write (features); opened with the runner."""
        self.runner  # noqa: B018 - opens the runner, and the folder with it, on first use
        return self._scratch

    @property
    def client(self):
        """The runner's `distributed.Client`, for the Dask DataFrame work."""
        return self.runner.client

    def workers(self) -> int:
        return max(len(self.client.scheduler_info()["workers"]), 1)

    def ingest(self):
        if self.refusal:
            raise ExecutorError(self.refusal)
        rows = self.settings.partition_rows
        return ingest_distributed(self.client, self.spec, self.params, self.workers(), rows)

    def validate(self, frame, suite_factory):
        report = validate_distributed(frame, suite_factory, self.run_id, self.client)
        release_memory(self.client)
        return report

    def featurize(self, raw):
        table = featurize_distributed(raw, self.spec, self.client, self.scratch, self.settings)
        release_memory(self.client)
        return table

    def split(self, table):
        splits, self.windows = split_distributed(table, self.spec, self.params.seed, self.run_id, self.client)
        release_memory(self.client)
        return splits

    def log_datasets(self, raw, splits):
        return record_dataset(self.run_id, self.spec, raw, splits, self.windows.rows)

    def train(self, splits, parent):
        if parent is not None:  # `unsupported` refused --init already; a parent here is a bug
            raise ExecutorError("fine-tuning runs on the local executor")
        candidate = train_distributed(splits, self.windows, self.spec, self.params.seed, self.client)
        release_memory(self.client)
        return candidate

    def train_baselines(self, splits):
        """Each baseline a task run on a worker; the training rows (a sample) go to the cluster once, not once
        per baseline."""
        shared = dataclasses.replace(splits, train=self.client.scatter(splits.train))  # a Future to the rows
        spec, to_workers = self.spec, functools.partial(submit, self.runner)
        return train.train_baselines(shared, spec.baselines, spec.schema, to_workers)

    def refit(self, candidate, table, splits, evaluation):
        return refit.Refitted(candidate)  # the spec's continual part was dropped: see __init__

    def in_memory(self, table):
        return in_memory_table(self.windows, table, self.spec, self.params.earlier_windows, self.client)

    def close(self) -> None:
        self._exit.close()
        self._runner = None


def stages_for(spec: UseCaseSpec, params: TrainingParams, run_id: str) -> LocalStages:
    """The run's stages: `params.executor` (default MLOPS_EXECUTOR, else local). Never raises: what is wrong
    with the choice is raised by the first stage, inside the run."""
    try:
        executor = resolve_executor(getattr(params, "executor", None))
        if executor == "dask":
            return DaskStages(spec, params, run_id, DaskSettings.from_env())
    except ExecutorError as exc:
        return LocalStages(spec, params, run_id, str(exc))
    return LocalStages(spec, params, run_id)
