"""Promotion: move the registered model's `champion` alias to a version that passed every gate.

The alias is the only thing consumers load (`models:/<name>@champion`), so moving it is the single step that
changes what is served. It is a compare-and-set: if the champion changed after this run re-scored it, the
comparison is stale and the alias is left alone. The flows call it (through the `promote` stage,
`tasks/promote.py`, which retries) inside `champion.lock.champion_lock`, together with the champion's
re-scoring and the gate, so concurrent runs take turns. Every move is recorded: on the version (`promoted_at`,
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

from champion.store import run_logger
from usecases.vocabulary import CHALLENGER_HISTORY_PREFIX, CHAMPION, HISTORY_PREFIX, PROMOTION_TAG


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
    that did not happen. A process killed between the two (SIGKILL, a lost machine) cannot take them back: the
    next move does (`take_back_unfinished_move`). Callers hold `champion_lock(name)`, so nothing else moves
    the alias meanwhile.
    """
    previous = current_champion(client, name)
    if previous != expected:
        raise StaleChampionError(
            f"{name}@{CHAMPION} is {'v' + previous if previous else 'unset'}, but this run compared against "
            f"{'no champion' if expected is None else 'v' + expected}: not moving it on a stale "
            "comparison; rerun to compare against the current champion"
        )
    take_back_unfinished_move(client, name, previous)
    before = dict(client.get_model_version(name, version).tags)
    history_key = append_history(client, name, {**event, "version": version, "previous": previous or ""})
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHAMPION, version)
    except Exception as exc:
        if current_champion(client, name) != version:
            _restore_tags(client, name, version, tags, before)
            with suppress(Exception):
                client.delete_registered_model_tag(name, history_key)
            raise
        # The write landed and only its answer was lost: the move happened, with its record already written.
        run_logger().warning("%s@%s moved to v%s though the call reported %r", name, CHAMPION, version, exc)
    with suppress(Exception):  # a display of the history: the tags above are the record
        describe_history(client, name)
    return previous


HISTORY_HEADING = "\n\n## Champion history"
CHALLENGER_HEADING = "\n\n## Challenger history"


def describe_history(client: MlflowClient, name: str, last: int = 10) -> None:
    """Show the latest moves of `champion` (and of `challenger`, when it ever moved) as tables in the
    registered model's description, where the MLflow UI shows them on the model's page (the numbered JSON
    tags hold the record; this is for people)."""
    description = client.get_registered_model(name).description or ""
    base = description.split(HISTORY_HEADING)[0].split(CHALLENGER_HEADING)[0]
    head = ["| # | at | action | to | from | run / by | reason |", "|---|---|---|---|---|---|---|"]
    sections = []
    for heading, prefix in (
        (HISTORY_HEADING, HISTORY_PREFIX),
        (CHALLENGER_HEADING, CHALLENGER_HISTORY_PREFIX),
    ):
        entries = read_history(client, name, prefix)
        if not entries:
            continue
        rows = [
            f"| {e['seq']} | {e.get('at', '')} | {e.get('action', '')} | "
            f"{'v' + e['version'] if e.get('version') else 'none'} | "
            f"{'v' + e['previous'] if e.get('previous') else 'none'} | "
            f"{e.get('run_id') or e.get('by', '')} | {e.get('reason', '')} |"
            for e in reversed(entries[-last:])
        ]
        sections.append(f"{heading} (latest first)\n\n" + "\n".join([*head, *rows]) + "\n")
    client.update_registered_model(name, description=base + "".join(sections))


def settle_unfinished_move(name: str) -> dict | None:
    """Under the lock, before anything reads the history: take back a move a dead process left half-done."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        return None  # no model yet: no history
    return take_back_unfinished_move(client, name, current_champion(client, name))


def take_back_unfinished_move(client: MlflowClient, name: str, champion: str | None) -> dict | None:
    """Remove the record of a move whose process died before the alias moved; return its history entry.

    Such a move left its history entry (and maybe its version's promotion tags): the last entry starts at the
    current champion but names another version. Called under the champion lock, where no move is under way.
    The version keeps a `promotion` tag saying what happened instead.
    """
    entries = read_history(client, name)
    current = champion or ""
    if not entries or entries[-1].get("version") == current or entries[-1].get("previous", "") != current:
        return None
    entry = entries[-1]
    client.delete_registered_model_tag(name, f"{HISTORY_PREFIX}{entry['seq']:06d}")
    version, run_id = entry.get("version", ""), entry.get("run_id")
    mover = run_id or entry.get("by", "?")
    with suppress(mlflow.exceptions.MlflowException):
        if run_id and client.get_model_version(name, version).tags.get("promoted_by_run") == run_id:
            for key in ("promoted_at", "promoted_by_run", "previous_champion"):
                client.delete_model_version_tag(name, version, key)
        client.set_model_version_tag(
            name,
            version,
            PROMOTION_TAG,
            f"failed {entry.get('at', '')}: the move to {CHAMPION} by {mover} stopped before the alias "
            f"moved (its history entry {entry['seq']} was taken back at {_now()})",
        )
    run_logger().warning(
        "%s: v%s's move to %s never completed (its process died): its history entry %s taken back",
        name,
        version,
        CHAMPION,
        entry["seq"],
    )
    return entry


def _restore_tags(client, name, version, tags: Mapping[str, str], before: Mapping[str, str]) -> None:
    for key in tags:
        with suppress(Exception):
            if key in before:
                client.set_model_version_tag(name, version, key, before[key])
            else:
                client.delete_model_version_tag(name, version, key)


def append_history(
    client: MlflowClient, name: str, event: Mapping[str, str], prefix: str = HISTORY_PREFIX
) -> str:
    """Add `<prefix><n>` = JSON event (with its time) to the registered model; return the key. The prefix is
    `champion.history.` for moves of the champion, `challenger.history.` for those of the challenger."""
    entries = read_history(client, name, prefix)
    number = (entries[-1]["seq"] + 1) if entries else 1
    key = f"{prefix}{number:06d}"
    record = {"at": _now(), **{k: str(v)[:500] for k, v in event.items()}}
    client.set_registered_model_tag(name, key, json.dumps(record, sort_keys=True))
    return key


def read_history(client: MlflowClient, name: str, prefix: str = HISTORY_PREFIX) -> list[dict]:
    """Every recorded move of `name@champion` (or of the alias `prefix` records), oldest first, each with its
    `seq` number."""
    tags = client.get_registered_model(name).tags
    entries = []
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                entries.append({"seq": int(key[len(prefix) :]), **json.loads(value)})
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
