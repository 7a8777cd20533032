"""The Dask cluster a run's data work executes on, and how that work is laid out on it.

`--executor dask` (a field of `TrainingParams`, so also the Prefect form; the default comes from
MLOPS_EXECUTOR, else `local`) connects to the scheduler at MLOPS_DASK_ADDRESS, or starts a `LocalCluster` of
process workers for the run and stops it afterwards: MLOPS_DASK_WORKERS (default 2), MLOPS_DASK_THREADS per
worker (default 1), MLOPS_DASK_MEMORY_LIMIT per worker (Dask's, default "auto": the machine's memory shared
out); MLOPS_DASK_PARTITION_ROWS, the rows a task holds — raw partitions and feature key shards (default
100,000); MLOPS_DASK_CHUNK_DAYS, the feature time chunks' length for use cases without feature keys (default:
the use case's feature history); MLOPS_DASK_SCRATCH, a folder this process and the workers share, where a run
writes its features once for the stages after them (default: the system's temporary folder).
Prefect tasks go to the workers through prefect-dask's `DaskTaskRunner` (`dask_runner`, `submit`).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EXECUTORS = ("local", "dask")
ENV_EXECUTOR = "MLOPS_EXECUTOR"
ENV_ADDRESS = "MLOPS_DASK_ADDRESS"
ENV_WORKERS = "MLOPS_DASK_WORKERS"
ENV_THREADS = "MLOPS_DASK_THREADS"
ENV_MEMORY = "MLOPS_DASK_MEMORY_LIMIT"
ENV_CHUNK_DAYS = "MLOPS_DASK_CHUNK_DAYS"
ENV_PARTITION_ROWS = "MLOPS_DASK_PARTITION_ROWS"
# Rows a task holds (raw partitions, feature key shards): a worker's peak follows its tasks' size, not the
# table's (at 8x the handbook, 100,000 keeps each below the whole table; 250,000 did not).
PARTITION_ROWS = 100_000
# Partitions per worker at least, so the raw checks and the feature shards run in parallel even from one file.
PARTITIONS_PER_WORKER = 2
# Dask settings of the workers: a shuffle's outgoing buffer and what it keeps in memory before writing to
# disk (Dask's defaults, 1 GiB and 100 MiB a worker, would alone come near the share of the table a worker
# is meant to hold).
WORKER_CONFIG = {"distributed.p2p.comm.buffer": "128 MiB", "distributed.p2p.storage.buffer": "32 MiB"}
# The workers' environment: Arrow's allocator gives freed memory back (its default, mimalloc, keeps a worker's
# high-water mark of every Parquet read and shuffle).
WORKER_ENVIRON = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
ENV_SCRATCH = "MLOPS_DASK_SCRATCH"


def worker_environment() -> dict[str, str]:
    """`WORKER_CONFIG` and `WORKER_ENVIRON` as the environment of workers started elsewhere (`make up
    DASK=1`, compose)."""
    config = {"DASK_" + key.upper().replace(".", "__"): value for key, value in WORKER_CONFIG.items()}
    return config | WORKER_ENVIRON


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
    # Rows a task holds: raw partitions and feature key shards.
    partition_rows: int = PARTITION_ROWS
    # Where the features are written once for the stages after them: a folder this process and every worker
    # can read (None: the system's temporary folder, enough for a cluster on this machine).
    scratch: str | None = None

    @classmethod
    def from_env(cls) -> DaskSettings:
        return cls(
            address=os.environ.get(ENV_ADDRESS, "").strip() or None,
            workers=_positive_int(ENV_WORKERS, 2),
            threads=_positive_int(ENV_THREADS, 1),
            memory_limit=os.environ.get(ENV_MEMORY, "").strip() or "auto",
            chunk_days=_positive_int(ENV_CHUNK_DAYS, 0) or None,
            partition_rows=_positive_int(ENV_PARTITION_ROWS, PARTITION_ROWS),
            scratch=os.environ.get(ENV_SCRATCH, "").strip() or None,
        )

    @property
    def chunk(self):
        """The feature time chunks' length as a `pd.Timedelta`; None: the use case's feature history."""
        import pandas as pd  # why: `mlops` commands import this module for its settings and errors alone

        return pd.Timedelta(days=self.chunk_days) if self.chunk_days else None

    def describe(self) -> str:
        if self.address:
            return f"Dask scheduler {self.address}"
        return (
            f"LocalCluster of {self.workers} process workers x {self.threads} threads "
            f"(memory limit {self.memory_limit} each)"
        )


@contextmanager
def dask_runner(settings: DaskSettings | None = None) -> Iterator[object]:
    """prefect-dask's `DaskTaskRunner` on the configured cluster, started. Prefect tasks submitted to it
    (`submit`) run on the workers as task runs of the flow run; its `client`, a `distributed.Client`, carries
    the Dask DataFrame work. On exit the client closes, and a cluster it started stops."""
    # why: Dask loads only when a run uses it
    import dask
    import xgboost.dask  # noqa: F401  (registers XGBoost's Dask collective before the first training)
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    settings = settings or DaskSettings.from_env()
    if settings.address:
        runner = DaskTaskRunner(
            address=settings.address, client_kwargs={"timeout": "30s", "set_as_default": False}
        )
    else:
        # Process workers: the GIL does not serialise the pandas/GX work, and a worker that dies takes only
        # its own tasks with it (the nanny restarts it; the scheduler reruns them elsewhere).
        cluster = {
            "n_workers": settings.workers,
            "threads_per_worker": settings.threads,
            "processes": True,
            "memory_limit": settings.memory_limit,
            "dashboard_address": os.environ.get("MLOPS_DASK_DASHBOARD") or None,
            "silence_logs": logging.WARNING,
        }
        runner = DaskTaskRunner(
            cluster_class=LocalCluster, cluster_kwargs=cluster, client_kwargs={"set_as_default": False}
        )
    # The scheduler of a LocalCluster runs in this process: its INFO lines would flood the run's log.
    # Shuffles announce themselves, and stopping workers kills them, at WARNING; prefect-dask says where
    # its cluster is at INFO (the run already said).
    levels = {
        "distributed": logging.WARNING,
        "distributed.shuffle": logging.ERROR,
        "distributed.nanny": logging.ERROR,
        "prefect.task_runner.dask": logging.WARNING,
    }
    before = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        # The nannies hand the config to the workers they start, and set their environment before they do.
        spawn = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRON.items()}
        with dask.config.set({**WORKER_CONFIG, **spawn}), runner:
            try:
                runner.client  # noqa: B018 - connects (or starts the cluster) now, so a failure names it
            except OSError as exc:
                raise ExecutorError(f"cannot reach the Dask scheduler at {settings.address}: {exc}") from exc
            yield runner
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def scratch_folder(settings: DaskSettings) -> Iterator[Path]:
    """A folder of the run's own under `settings.scratch` (or the system's temp folder), removed after."""
    if settings.scratch:
        Path(settings.scratch).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="mlops-dask-", dir=settings.scratch))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _trim_memory() -> int:
    """On a worker: collect garbage and hand freed heap back to the system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        return 0


def release_memory(client) -> None:
    """After a stage: what its tasks freed leaves the workers' resident memory, so the next stage starts
    from what the workers really hold (Dask's documented manual trim)."""
    client.run(_trim_memory)


def submit(runner, task, **parameters):
    """`task` as a task run of the current flow run, on a Dask worker through the run's `DaskTaskRunner`: a
    `distributed.Future` of the task's result, which Dask collections can take as input. A worker reports to
    the flow run's Prefect API; where that is Prefect's temporary in-process server, its address goes along
    (else each worker would start its own)."""
    # why: Prefect loads only with a run, not with the `mlops` commands that read this module's settings
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def send():
        return runner.client.submit(task, parameters=parameters, return_type="result")

    if PREFECT_API_URL.value():
        return send()
    with temporary_settings({PREFECT_API_URL: str(get_run_context().client.api_url)}):
        return send()
