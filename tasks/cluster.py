"""Where a run's data work executes: in the flow's process (`local`) or on a Dask cluster (`dask`).

`--executor dask` (a field of `TrainingParams`, so also the Prefect form; the default comes from
MLOPS_EXECUTOR, else `local`) connects to the scheduler at MLOPS_DASK_ADDRESS, or starts a `LocalCluster` of
process workers for the run and stops it afterwards: MLOPS_DASK_WORKERS (default 2), MLOPS_DASK_THREADS per
worker (default 1), MLOPS_DASK_MEMORY_LIMIT per worker (Dask's, default "auto": the machine's memory shared
out); MLOPS_DASK_CHUNK_DAYS, the feature time chunks' length (default: the use case's feature history). What
runs there is `tasks/distributed.py`: Dask DataFrames, `dask.delayed` and `xgboost.dask`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

EXECUTORS = ("local", "dask")
ENV_EXECUTOR = "MLOPS_EXECUTOR"
ENV_ADDRESS = "MLOPS_DASK_ADDRESS"
ENV_WORKERS = "MLOPS_DASK_WORKERS"
ENV_THREADS = "MLOPS_DASK_THREADS"
ENV_MEMORY = "MLOPS_DASK_MEMORY_LIMIT"
ENV_CHUNK_DAYS = "MLOPS_DASK_CHUNK_DAYS"


class ExecutorError(ValueError):
    """An executor that is unknown, unreachable, or cannot run what the use case asks: an input error."""


def default_executor() -> str:
    """MLOPS_EXECUTOR, else `local` (checked when a run starts, with `resolve_executor`)."""
    return os.environ.get(ENV_EXECUTOR, "").strip().lower() or "local"


def resolve_executor(value: str | None) -> str:
    executor = (value or default_executor()).strip().lower()
    if executor not in EXECUTORS:
        raise ExecutorError(
            f"unknown executor {executor!r} (from --executor or {ENV_EXECUTOR}); "
            f"use one of {', '.join(EXECUTORS)}"
        )
    return executor


def _positive_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ExecutorError(f"{name}={text!r}: expected a positive integer")
    return value


@dataclass(frozen=True)
class DaskSettings:
    address: str | None = None
    workers: int = 2
    threads: int = 1
    memory_limit: str = "auto"
    # Feature time chunks, in days; None: as long as the use case's feature_history.
    chunk_days: int | None = None

    @classmethod
    def from_env(cls) -> DaskSettings:
        return cls(
            address=os.environ.get(ENV_ADDRESS, "").strip() or None,
            workers=_positive_int(ENV_WORKERS, 2),
            threads=_positive_int(ENV_THREADS, 1),
            memory_limit=os.environ.get(ENV_MEMORY, "").strip() or "auto",
            chunk_days=_positive_int(ENV_CHUNK_DAYS, 0) or None,
        )

    def describe(self) -> str:
        if self.address:
            return f"Dask scheduler {self.address}"
        return (
            f"LocalCluster of {self.workers} process workers x {self.threads} threads "
            f"(memory limit {self.memory_limit} each)"
        )


@contextmanager
def dask_client(settings: DaskSettings | None = None) -> Iterator[object]:
    """A `distributed.Client` on the configured cluster; closed, and a cluster it started stopped, on exit."""
    import xgboost.dask  # noqa: F401  (registers XGBoost's Dask collective before the first training)
    from distributed import Client, LocalCluster

    settings = settings or DaskSettings.from_env()
    # The scheduler of a LocalCluster runs in this process: its INFO lines would flood the run's log.
    # Shuffles (hashed value counts) announce themselves, and stopping workers kills them, at WARNING.
    levels = {
        "distributed": logging.WARNING,
        "distributed.shuffle": logging.ERROR,
        "distributed.nanny": logging.ERROR,
    }
    before = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        with _client(settings, Client, LocalCluster) as client:
            yield client
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def _client(settings: DaskSettings, Client, LocalCluster):  # noqa: N803 - the classes, imported lazily
    if settings.address:
        try:
            client = Client(settings.address, timeout="30s", set_as_default=False)
        except OSError as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {settings.address}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    # Process workers: the GIL does not serialise the pandas/GX work, and a worker that dies takes only its
    # own tasks with it (the nanny restarts it; the scheduler reruns them elsewhere).
    cluster = LocalCluster(
        n_workers=settings.workers,
        threads_per_worker=settings.threads,
        processes=True,
        memory_limit=settings.memory_limit,
        dashboard_address=os.environ.get("MLOPS_DASK_DASHBOARD") or None,
        silence_logs=logging.WARNING,
    )
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
