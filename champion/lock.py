"""One lock per registered model around every change of its `champion` alias.

Training runs compare a candidate with the champion, register it and move the alias; `mlops rollback` moves
the alias by hand. Both do it inside `champion_lock(name)`, so two of them never interleave: the second one
waits, then re-reads the champion it has to beat. The lock lives where the registry lives, so it holds across
processes and machines that share the registry:

- SQLite registry (the embedded default): an exclusive `flock` on `<db file>.<model>.lock` beside the
  database;
- PostgreSQL registry: a session-level advisory lock (`pg_advisory_lock`) in the registry's own database;
- anything else, e.g. an HTTP MLflow server: a Prefect global concurrency limit `mlops-champion-<model>` with
  one slot. It serialises runs that talk to the same Prefect API; a process without `PREFECT_API_URL` starts
  a temporary Prefect server of its own, so there set `MLOPS_REGISTRY_LOCK_URI` to the database behind the
  MLflow server (`postgresql://...`) or point every run at one Prefect server.

`MLOPS_REGISTRY_LOCK_URI` overrides where the lock lives; `MLOPS_REGISTRY_LOCK_TIMEOUT` (seconds, default
900) bounds the wait. A process that dies while holding the lock releases it: the file lock and the advisory
lock go with the process or its connection, a Prefect slot with its lease. The holder renews the lease every
3/4 of its length; once a dead holder's lease has expired, the Prefect server's repossessor service (every
15 s; it runs in `prefect server start`, not in Prefect's per-process temporary server) frees the slot. The
lease is `MLOPS_REGISTRY_LOCK_LEASE` seconds, default 60, the shortest the server accepts (Prefect's own
default, 300 s, would block the next run for five minutes after a crash).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient

from champion import store

DEFAULT_TIMEOUT = 900.0
POLL_SECONDS = 0.2
LEASE_SECONDS = 60.0  # a Prefect slot's lease: how long a crashed holder keeps it (the server's minimum)


class RegistryLockTimeout(TimeoutError):
    """Another run held the champion lock for longer than the timeout."""


def lock_uri() -> str:
    """Where the lock lives: MLOPS_REGISTRY_LOCK_URI, else the MLflow registry URI."""
    override = os.environ.get("MLOPS_REGISTRY_LOCK_URI")
    if override:
        return override
    store.configure()
    return mlflow.get_registry_uri()


def lock_kind(uri: str) -> str:
    """`file` (SQLite or a local folder), `postgres` or `prefect`."""
    scheme = urlparse(uri).scheme.lower()
    if scheme.startswith("sqlite") or scheme in ("", "file"):
        return "file"
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return "postgres"
    return "prefect"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a registered model (Postgres advisory locks take a bigint)."""
    digest = hashlib.sha256(f"mlops.champion:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_file(uri: str, name: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme.lower().startswith("sqlite"):
        # sqlite:////abs/path.db or sqlite:///rel/path.db
        path = Path(unquote(uri.split(":///", 1)[1]))
        return path.resolve().parent / f"{path.name}.{_slug(name)}.lock"
    folder = Path(unquote(parsed.path if parsed.scheme else uri)).resolve()
    return folder / f".{_slug(name)}.champion.lock"


@contextmanager
def champion_lock(name: str, timeout: float | None = None, holder: str = "") -> Iterator[str]:
    """Hold the champion lock of registered model `name`; yields a description of the lock used."""
    timeout = (
        float(os.environ.get("MLOPS_REGISTRY_LOCK_TIMEOUT", DEFAULT_TIMEOUT)) if timeout is None else timeout
    )
    uri = lock_uri()
    kind = lock_kind(uri)
    started = time.monotonic()
    if kind == "file":
        manager = _file_lock(lock_file(uri, name), timeout, holder)
    elif kind == "postgres":
        manager = _postgres_lock(uri, name, timeout)
    else:
        manager = _prefect_lock(name, timeout)
    with manager as description:
        waited = time.monotonic() - started
        store.run_logger().info("champion lock on %s acquired (%s, waited %.1f s)", name, description, waited)
        yield description


@contextmanager
def _file_lock(path: Path, timeout: float, holder: str) -> Iterator[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    store.run_logger().info(
                        "waiting for the champion lock %s, held by %s", path, _read_holder(path)
                    )
                    announced = True
                if time.monotonic() > deadline:
                    raise RegistryLockTimeout(
                        f"champion lock {path} still held by {_read_holder(path)} after {timeout:.0f} s"
                    ) from None
                time.sleep(POLL_SECONDS)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "holder": holder}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield f"file lock {path}"
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')} {info.get('holder') or ''}".strip()
    except (OSError, ValueError):
        return "another process"


def _postgres_dsn(uri: str) -> str:
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    return parsed._replace(scheme="postgresql" if scheme in ("postgresql", "postgres") else scheme).geturl()


@contextmanager
def _postgres_lock(uri: str, name: str, timeout: float) -> Iterator[str]:
    import psycopg2  # lazy: an optional dependency, only for a Postgres registry

    key = lock_key(name)
    connection = psycopg2.connect(_postgres_dsn(uri), application_name=f"mlops champion lock {name}"[:63])
    connection.autocommit = True
    try:
        deadline = time.monotonic() + timeout
        announced = False
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cursor.fetchone()[0]:
                    break
                if not announced:
                    store.run_logger().info(
                        "waiting for the champion lock of %s (advisory lock %d)", name, key
                    )
                    announced = True
                if time.monotonic() > deadline:
                    raise RegistryLockTimeout(
                        f"champion lock of {name} (advisory lock {key}) still held after {timeout:.0f} s"
                    )
                time.sleep(POLL_SECONDS)
        try:
            yield f"postgres advisory lock {key}"
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        connection.close()  # closing the session releases the lock in any case


@contextmanager
def _prefect_lock(name: str, timeout: float) -> Iterator[str]:
    # lazy: Prefect only for a remote registry; `mlops status` imports this module and must not load it
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = f"mlops-champion-{_slug(name)}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    acquired = False
    try:
        lease = float(os.environ.get("MLOPS_REGISTRY_LOCK_LEASE", LEASE_SECONDS))
        with concurrency(limit, occupy=1, timeout_seconds=timeout, strict=True, lease_duration=lease):
            acquired = True
            yield f"Prefect global concurrency limit {limit}"
    except TimeoutError as exc:
        if acquired:
            raise
        raise RegistryLockTimeout(
            f"Prefect concurrency limit {limit}: no slot after {timeout:.0f} s"
        ) from exc


def ensure_store(experiment_name: str) -> str:
    """Create (or find) the use case's experiment, with the embedded store's schema created under a file lock.

    Two first runs at once on a fresh MLOPS_HOME would otherwise both run MLflow's schema migrations on the
    same SQLite file and one would fail. Returns the experiment id.
    """
    uri = store.tracking_uri()
    if lock_kind(uri) != "file" or not urlparse(uri).scheme.startswith("sqlite"):
        return store.experiment_id(experiment_name)
    path = lock_file(uri, "schema")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path, DEFAULT_TIMEOUT, "schema creation"):
        experiment = store.experiment_id(experiment_name)
        MlflowClient().search_registered_models(max_results=1)  # the registry store's tables too
    return experiment
