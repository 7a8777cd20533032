"""The gated-training flow's data stages, for the executor a run chose (`--executor local|dask`).

The flow calls the same stages in the same order either way; `stages_for` gives it the in-process ones
(`tasks/ingest.py`, `validate.py`, `features.py`, `split.py`, `train.py`) or their Dask counterparts
(`tasks/distributed.py`, on the cluster `tasks/cluster.py` opens). Everything after training — evaluation on
the collected validation and test windows, champion re-scoring, gates, registry — is the same code.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from tasks.cluster import (
    DaskSettings,
    ExecutorError,
    dask_runner,
    release_memory,
    resolve_executor,
    scratch_folder,
)

if TYPE_CHECKING:
    from usecases.spec import TrainingParams, UseCaseSpec


class LocalStages:
    """The in-process stages, as the flow always ran them."""

    name = "local"

    def __init__(self, spec: UseCaseSpec, params: TrainingParams, run_id: str, refusal: str | None = None):
        self.spec, self.params, self.run_id = spec, params, run_id
        self.refusal = refusal  # raised by the first stage, inside the flow's run (recorded as failed)

    def ingest(self):
        from tasks.ingest import ingest

        if self.refusal:
            raise ExecutorError(self.refusal)

        return ingest(self.spec.load, self.params)

    def validate(self, frame, suite_factory):
        from tasks.validate import validate

        return validate(frame, suite_factory, self.run_id)

    def featurize(self, raw):
        from tasks.features import featurize
        from tasks.split import with_known_target

        return with_known_target(featurize(raw, self.spec.build_features), self.spec.target)

    def split(self, table):
        from tasks.split import split

        spec = self.spec
        return split(table, spec.split, spec.schema, spec.test_filter)

    def log_datasets(self, raw, splits):
        from flows.gated_training import _log_datasets

        return _log_datasets(self.run_id, self.spec, raw, splits)

    def train(self, splits, parent):
        from tasks.train import train

        spec = self.spec
        return train(splits, spec.model, spec.schema, spec.split, self.params.seed, self.run_id, parent)

    def train_baselines(self, splits):
        from tasks.train import train_baselines

        return train_baselines(splits, self.spec.baselines, self.spec.schema, self.runner)

    @property
    def runner(self):
        """Where the run's parallel tasks go (`tasks.cluster.submit`): None, the flow's own task runner."""
        return None

    def in_memory(self, table):
        """The table as `evaluate_earlier` reads it."""
        return table

    def close(self) -> None:
        pass


class DaskStages(LocalStages):
    """The same stages on a Dask cluster; the cluster opens with the first stage and closes with the run."""

    name = "dask"

    def __init__(self, spec: UseCaseSpec, params: TrainingParams, run_id: str, settings: DaskSettings):
        from tasks.distributed import unsupported

        reasons = unsupported(spec, params)
        refusal = (
            f"use case {spec.name} cannot run on the Dask executor: {'; '.join(reasons)}. "
            "Run it with --executor local."
        )
        super().__init__(spec, params, run_id, refusal if reasons else None)
        self.settings = settings
        self._exit = ExitStack()
        self._runner = self._scratch = None
        self.windows = None  # tasks.distributed.DistributedWindows, after split

    @property
    def runner(self):
        """prefect-dask's `DaskTaskRunner` on the cluster: the run's parallel tasks run on the workers."""
        if self._runner is None:
            from tasks.tracking import run_logger

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
        from tasks.distributed import ingest_distributed

        if self.refusal:
            raise ExecutorError(self.refusal)
        rows = self.settings.partition_rows
        return ingest_distributed(self.client, self.spec, self.params, self.workers(), rows)

    def validate(self, frame, suite_factory):
        from tasks.distributed import validate_distributed

        report = validate_distributed(frame, suite_factory, self.run_id, self.client)
        release_memory(self.client)
        return report

    def featurize(self, raw):
        from tasks.distributed import featurize_distributed

        table = featurize_distributed(raw, self.spec, self.client, self.scratch, self.settings)
        release_memory(self.client)
        return table

    def split(self, table):
        from tasks.distributed import split_distributed

        splits, self.windows = split_distributed(table, self.spec, self.params.seed, self.run_id, self.client)
        release_memory(self.client)
        return splits

    def log_datasets(self, raw, splits):
        from tasks.distributed import log_datasets

        return log_datasets(self.run_id, self.spec, raw, splits, self.windows, self.client)

    def train(self, splits, parent):
        from tasks.distributed import train_distributed

        if parent is not None:  # `unsupported` refused --init already; a parent here is a bug
            raise ExecutorError("fine-tuning runs on the local executor")
        candidate = train_distributed(splits, self.windows, self.spec, self.params.seed, self.client)
        release_memory(self.client)
        return candidate

    def in_memory(self, table):
        from tasks.distributed import in_memory_table

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
