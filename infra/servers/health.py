"""Whether the servers answer: MLflow's and Prefect's health URLs, Redis's PING, and whether `mlops serve` has
registered every deployment yet (what `up` waits for, and `status` shows)."""

from __future__ import annotations

import warnings

from infra.servers.processes import http_ok
from infra.servers.settings import Settings


def mlflow_healthy(settings: Settings) -> bool:
    return http_ok(f"{settings.mlflow_url}/health")


def prefect_healthy(settings: Settings) -> bool:
    return http_ok(f"{settings.prefect_api_url}/health")


def deployments_registered(settings: Settings) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time chatter of the flows' libraries
        from infra.deployments import all_plans  # why: Prefect and the flows, only once `up` waits on them

    headers = settings.prefect_headers()
    return all(
        http_ok(f"{settings.prefect_api_url}/deployments/name/{plan.full_name}", headers=headers)
        for plan in all_plans()
    )


def redis_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why the Redis at `url` does not answer PING (refused, auth, loading its data); None when it does."""
    import redis  # why: the client takes a second to import on a busy machine; only `up` and `status` use it

    try:
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as client:
            client.ping()
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def redis_pid(url: str, timeout: float = 3.0) -> int | None:
    """The process id of the Redis that answers at `url` once it has loaded its data (None before): tells
    the one `up` started from another program's on the same port."""
    import redis  # why: as above

    try:
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as client:
            client.ping()  # refused while the append-only file loads (BusyLoadingError)
            return int(client.info("server")["process_id"])
    except (redis.exceptions.RedisError, OSError, KeyError, ValueError):
        return None
