"""Whether the servers answer: MLflow's and Prefect's health URLs, and whether `mlops serve` has registered
every deployment yet (what `up` waits for, and `status` shows)."""

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
