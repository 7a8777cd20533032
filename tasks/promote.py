"""Promote: move the registered model's `champion` alias to a version that passed every gate.

The alias is the only thing consumers load (`models:/<name>@champion`), so moving it is the single step that
changes what is served. It is a compare-and-set: if the champion changed after this run re-scored it, the
comparison is stale and the alias is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow import MlflowClient
from prefect import get_run_logger

from tasks._stage import mlflow_stage

CHAMPION = "champion"


class StaleChampionError(RuntimeError):
    """The champion moved after this run compared against it."""


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    previous: str | None
    moved: bool  # False when the version already was the champion


def current_champion(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION).version
    except mlflow.exceptions.MlflowException:
        return None


@mlflow_stage
def promote(name: str, version: str, compared_with: str | None, run_id: str) -> Promotion:
    client = MlflowClient()
    previous = current_champion(client, name)
    if previous == version:
        return Promotion(name, version, previous, moved=False)
    if previous != compared_with:
        raise StaleChampionError(
            f"{name}@{CHAMPION} is v{previous}, but this run compared against "
            f"{'no champion' if compared_with is None else 'v' + compared_with}: not promoting on a stale "
            "comparison; rerun to compare against the current champion"
        )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, version, "promoted_at", now)
    client.set_model_version_tag(name, version, "promoted_by_run", run_id)
    client.set_model_version_tag(name, version, "previous_champion", previous or "")
    client.set_registered_model_alias(name, CHAMPION, version)
    get_run_logger().info("%s@%s: v%s -> v%s", name, CHAMPION, previous or "-", version)
    return Promotion(name, version, previous, moved=True)
