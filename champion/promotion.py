"""Promotion: move the registered model's `champion` alias to a version that passed every gate.

The alias is the only thing consumers load (`models:/<name>@champion`), so moving it is the single step that
changes what is served. It is a compare-and-set: if the champion changed after this run re-scored it, the
comparison is stale and the alias is left alone. The training flow calls it (as the `promote` stage,
`tasks/promote.py`) inside `champion.lock.champion_lock`, together with the champion's re-scoring and the
gate, so concurrent runs take turns. Every move is recorded: on the version (`promoted_at`,
`previous_champion`, `promoted_by_run`, `promotion`) and as a numbered `champion.history.<n>` entry on the
registered model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow import MlflowClient

from tasks.tracking import run_logger

CHAMPION = "champion"
# On a version: a hash of its data, code and parameters; an identical rerun reuses it (tasks/register.py).
FINGERPRINT_TAG = "lineage.fingerprint"


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
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def promote(name: str, version: str, compared_with: str | None, run_id: str) -> Promotion:
    """Move `champion` to `version` if it still is `compared_with`. Call it inside `champion_lock(name)`.

    Idempotent under retry: when an earlier attempt of the same run moved the alias but reported an error,
    the retry finds the move recorded (`promoted_by_run` is this run) and reports it as the move it was.
    """
    client = MlflowClient()
    previous = current_champion(client, name)
    if previous == version:
        tags = client.get_model_version(name, version).tags
        if tags.get("promoted_by_run") == run_id and tags.get("previous_champion", "") != version:
            return Promotion(name, version, tags.get("previous_champion") or None, moved=True)
        return Promotion(name, version, previous, moved=False)
    now = _now()
    move_champion(
        client,
        name,
        version,
        expected=compared_with,
        tags={
            "promoted_at": now,
            "promoted_by_run": run_id,
            "previous_champion": previous or "",
            PROMOTION_TAG: f"promoted {now} by run {run_id}",
        },
        event={"action": "promoted", "run_id": run_id},
    )
    run_logger().info("%s@%s: %s -> v%s", name, CHAMPION, f"v{previous}" if previous else "none", version)
    return Promotion(name, version, previous, moved=True)


# --- the alias move and its history, shared by promotion and rollback ------------------------------------

PROMOTION_TAG = "promotion"  # on a version: the outcome of the last attempt to promote it
HISTORY_PREFIX = "champion.history."  # on the registered model: one tag per alias move, numbered


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def move_champion(
    client: MlflowClient,
    name: str,
    version: str,
    expected: str | None,
    tags: Mapping[str, str],
    event: Mapping[str, str],
) -> str | None:
    """Compare-and-set `name@champion` from `expected` to `version`, recording why.

    The version's tags and a numbered history entry on the registered model are written first, then the
    alias moves; if the alias move fails, both are taken back, so the recorded history never names a move
    that did not happen. Callers hold `champion_lock(name)`, so nothing else moves the alias meanwhile.
    """
    previous = current_champion(client, name)
    if previous != expected:
        raise StaleChampionError(
            f"{name}@{CHAMPION} is {'v' + previous if previous else 'unset'}, but this run compared against "
            f"{'no champion' if expected is None else 'v' + expected}: not moving it on a stale "
            "comparison; rerun to compare against the current champion"
        )
    before = dict(client.get_model_version(name, version).tags)
    history_key = append_history(client, name, {**event, "version": version, "previous": previous or ""})
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHAMPION, version)
    except Exception:
        if current_champion(client, name) == version:
            raise  # the alias did move though the call failed: keep the record of it, so a retry sees it
        _restore_tags(client, name, version, tags, before)
        with suppress(Exception):
            client.delete_registered_model_tag(name, history_key)
        raise
    return previous


def _restore_tags(client, name, version, tags: Mapping[str, str], before: Mapping[str, str]) -> None:
    for key in tags:
        with suppress(Exception):
            if key in before:
                client.set_model_version_tag(name, version, key, before[key])
            else:
                client.delete_model_version_tag(name, version, key)


def append_history(client: MlflowClient, name: str, event: Mapping[str, str]) -> str:
    """Add `champion.history.<n>` = JSON event (with its time) to the registered model; return the key."""
    entries = read_history(client, name)
    number = (entries[-1]["seq"] + 1) if entries else 1
    key = f"{HISTORY_PREFIX}{number:06d}"
    record = {"at": _now(), **{k: str(v)[:500] for k, v in event.items()}}
    client.set_registered_model_tag(name, key, json.dumps(record, sort_keys=True))
    return key


def read_history(client: MlflowClient, name: str) -> list[dict]:
    """Every recorded move of `name@champion`, oldest first, each with its `seq` number."""
    tags = client.get_registered_model(name).tags
    entries = []
    for key, value in tags.items():
        if key.startswith(HISTORY_PREFIX):
            try:
                entries.append({"seq": int(key[len(HISTORY_PREFIX) :]), **json.loads(value)})
            except ValueError:
                continue
    return sorted(entries, key=lambda e: e["seq"])


def mark_not_promoted(name: str, version: str, outcome: str, reason: str) -> None:
    """Say on the version why it is not champion (`refused`: a gate said no; `failed`: an error)."""
    with suppress(Exception):
        MlflowClient().set_model_version_tag(
            name, version, PROMOTION_TAG, f"{outcome} {_now()}: {reason}"[:5000]
        )


def rolled_back_hold(name: str, version: str) -> str | None:
    """Why a version that a rollback demoted must not become champion again automatically, if it was."""
    try:
        tags = MlflowClient().get_model_version(name, version).tags
    except mlflow.exceptions.MlflowException:
        return None
    if not tags.get("demoted_at"):
        return None
    reason = tags.get("demoted.reason", "no reason given")
    return (
        f"v{version} was rolled back at {tags['demoted_at']} ({reason}): "
        f"not promoted again automatically; `mlops rollback <use case> --to {version}` reinstates it"
    )
