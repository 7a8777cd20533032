"""The challenger: a second alias, `@challenger`, for a version the model server scores in shadow.

A registered version that passed its absolute and baseline gates but is not champion can be made challenger:
by hand (`mlops challenge USE_CASE --version N`), or by the training flow for a candidate that only the
champion or forgetting gate held back. The model server then scores live traffic with it too, without
answering with it, and the comparison flow (`flows/challenger.py`) judges the pairs: it promotes the
challenger on that evidence or retires it.

Every move happens under the champion lock (`champion.lock.champion_lock`) and is recorded like the
champion's: on the version (the `challenger` tag: "since <time>: <reason>", "retired <time>: <reason>",
"promoted <time>: <evidence>") and as a numbered `challenger.history.<n>` entry on the registered model
(action, version, previous, reason, by or run), written before the alias moves and taken back if it does not.
A promotion moves `champion` with the champion protocol's compare-and-set (`move_champion`), so evidence
gathered against one champion never replaces another; a refusal moves no alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext, suppress
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from champion import store
from champion.lifecycle import eligible_version, emit_registry_event
from champion.lock import champion_lock
from champion.promotion import (
    Promotion,
    _now,
    append_history,
    current_champion,
    describe_history,
    move_champion,
    read_history,
)
from usecases.vocabulary import (
    CHALLENGER,
    CHALLENGER_HISTORY_PREFIX,
    CHALLENGER_RETIRED,
    CHALLENGER_SET,
    CHALLENGER_TAG,
    CHAMPION,
    MODEL_PROMOTED,
    PROMOTION_TAG,
)

PROMOTED_ON_EVIDENCE = "promoted on live evidence"  # the champion history's action for such a promotion


class ChallengerRefused(ValueError):
    """The challenger move was refused (unknown or ungated version, the champion itself, a stale request)."""


@dataclass(frozen=True)
class ChallengerMove:
    name: str
    version: str  # the challenger now
    previous: str | None  # the challenger before; equal to `version` when it already was (nothing moved)
    at: str


def current_challenger(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHALLENGER).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_challenger(
    name: str, version: str, reason: str, by: str | None = None, *, locked: bool = False
) -> ChallengerMove:
    """Make `version` the challenger of `name`, replacing (retiring) an earlier one.

    Refuses (`ChallengerRefused`, nothing moved) a version that does not exist or is not READY, that failed
    its absolute or baseline gates or was not registered by the gated pipeline, or that is the champion.
    `locked`: the caller already holds `champion_lock(name)` (the training flow, right after its verdict).
    """
    by, version = by or store.user(), str(version)
    client = MlflowClient()
    with _lock(name, f"challenger by {by}", locked):
        _take_back_unfinished(client, name)
        _check_version(client, name, version, "challenger")
        if current_champion(client, name) == version:
            raise ChallengerRefused(f"v{version} is {name}@{CHAMPION}: a challenger must be another version")
        previous = current_challenger(client, name)
        if previous == version:  # already: nothing to move or record
            return ChallengerMove(name, version, previous, _now())
        now = _now()
        tags = {version: f"since {now}: {reason}"}
        if previous is not None:
            tags[previous] = f"retired {now}: replaced by v{version}"
        _move(client, name, version, tags, {"action": "set", "reason": reason, "by": by})
    was = f"v{previous}" if previous else "none"
    store.run_logger().info(
        "%s@%s: %s -> v%s, scored in shadow now (%s)", name, CHALLENGER, was, version, reason
    )
    payload = {"version": version, "previous_version": previous, "reason": reason, "by": by}
    emit_registry_event(CHALLENGER_SET, name, payload)
    return ChallengerMove(name, version, previous, now)


def retire_challenger(
    name: str, reason: str, by: str | None = None, expected: str | None = None
) -> str | None:
    """Remove `name@challenger`, saying why; return the version retired, None when there was none.

    `expected`: retire only if the challenger still is this version (a decision about one version must not
    retire another set meanwhile): `ChallengerRefused` otherwise, nothing moved. Never touches `champion`.
    """
    by = by or store.user()
    client = MlflowClient()
    with champion_lock(name, holder=f"challenger retired by {by}"):
        _take_back_unfinished(client, name)
        current = current_challenger(client, name)
        if current is None:
            return None
        if expected is not None and str(expected) != current:
            raise ChallengerRefused(
                f"{name}@{CHALLENGER} is v{current}, not v{expected}: not retiring a challenger this "
                "decision is not about"
            )
        now = _now()
        _move(
            client,
            name,
            None,
            {current: f"retired {now}: {reason}"},
            {"action": "retired", "reason": reason, "by": by},
        )
    store.run_logger().info("%s@%s: v%s retired (%s)", name, CHALLENGER, current, reason)
    emit_registry_event(CHALLENGER_RETIRED, name, {"version": current, "reason": reason, "by": by})
    return current


def promote_challenger(
    name: str, version: str, champion_was: str | None, evidence: str, run_id: str
) -> Promotion:
    """Make the challenger `version` champion on live evidence, if the champion still is `champion_was`.

    Under the lock: refuses (`ChallengerRefused`) when `version` is no longer the challenger or no longer
    passes its registration gates; raises `StaleChampionError` when the champion moved since the evidence
    was gathered against it. Either way no alias moves. Done, the champion history says "promoted on live
    evidence", the challenger alias is gone (its history says "promoted") and `mlops.model.promoted` is sent.
    A retry after a move that landed reports that move.
    """
    version = str(version)
    client = MlflowClient()
    with champion_lock(name, holder=f"run {run_id}: challenger promotion"):
        _take_back_unfinished(client, name)
        tags = dict(_check_version(client, name, version, "champion").tags)
        champion, challenger = current_champion(client, name), current_challenger(client, name)
        if champion == version:  # an earlier attempt of this run moved it (or someone did by hand)
            moved = tags.get("promoted_by_run") == run_id
            previous = (tags.get("previous_champion") or None) if moved else champion
        elif challenger != version:
            raise ChallengerRefused(
                f"{name}@{CHALLENGER} is {'v' + challenger if challenger else 'unset'}, not v{version}: "
                "not promoting on evidence about a version that is no longer the challenger"
            )
        else:
            moved, previous = True, _promote_locked(client, name, version, champion_was, evidence, run_id)
        if challenger == version:
            _close_challenger(client, name, version, evidence, run_id)
    if moved:
        payload = {"version": version, "previous_version": previous, "moved": True, "from": CHALLENGER}
        emit_registry_event(MODEL_PROMOTED, name, {**payload, "evidence": evidence, "run_id": run_id})
    return Promotion(name, version, previous, moved=moved)


# --- inside the lock --------------------------------------------------------------------------------------


def _lock(name: str, holder: str, locked: bool):
    return nullcontext() if locked else champion_lock(name, holder=holder)


def _check_version(client: MlflowClient, name: str, version: str, role: str):
    """The version, if it may be `role`; `ChallengerRefused` saying why not."""
    return eligible_version(client, name, version, role, ChallengerRefused)


def _promote_locked(
    client: MlflowClient, name: str, version: str, champion_was: str | None, evidence: str, run_id: str
) -> str | None:
    now = _now()
    previous = move_champion(
        client,
        name,
        version,
        expected=champion_was,
        tags={
            "promoted_at": now,
            "promoted_by_run": run_id,
            "previous_champion": champion_was or "",
            PROMOTION_TAG: f"promoted {now} on live evidence by run {run_id}: {evidence}"[:5000],
        },
        event={"action": PROMOTED_ON_EVIDENCE, "run_id": run_id, "reason": evidence},
    )
    for key in ("demoted_at", "demoted.reason"):  # a rolled-back version earned its place back
        with suppress(mlflow.exceptions.MlflowException):
            client.delete_model_version_tag(name, version, key)
    store.run_logger().info(
        "%s@%s: %s -> v%s on live evidence (%s)",
        name,
        CHAMPION,
        f"v{previous}" if previous else "none",
        version,
        evidence,
    )
    return previous


def _close_challenger(client: MlflowClient, name: str, version: str, evidence: str, run_id: str) -> None:
    """The promoted challenger leaves `@challenger`; the champion moved already, so a failure here is only
    logged (the alias then names the champion, which scores the same in shadow, until the next move)."""
    try:
        tags = {version: f"promoted {_now()}: {evidence}"}
        _move(client, name, None, tags, {"action": "promoted", "reason": evidence, "run_id": run_id})
    except Exception as exc:
        store.run_logger().warning(
            "%s v%s is champion, but removing @%s failed: %s", name, version, CHALLENGER, exc
        )


def _move(
    client: MlflowClient, name: str, to: str | None, outcomes: Mapping[str, str], event: Mapping[str, str]
) -> None:
    """Point `@challenger` at `to` (None: remove it), with each version's outcome tag and a history entry.

    Record first, then the alias; if the alias write fails, the record is taken back (as `move_champion`
    does for the champion), unless the write landed and only its answer was lost.
    """
    previous = current_challenger(client, name)
    before = {v: client.get_model_version(name, v).tags.get(CHALLENGER_TAG) for v in outcomes}
    entry = {**event, "version": to or "", "previous": previous or ""}
    key = append_history(client, name, entry, CHALLENGER_HISTORY_PREFIX)
    try:
        for version, outcome in outcomes.items():
            client.set_model_version_tag(name, version, CHALLENGER_TAG, outcome[:5000])
        if to is None:
            client.delete_registered_model_alias(name, CHALLENGER)
        else:
            client.set_registered_model_alias(name, CHALLENGER, to)
    except Exception as exc:
        if current_challenger(client, name) != to:
            _restore(client, name, before)
            with suppress(Exception):
                client.delete_registered_model_tag(name, key)
            raise
        store.run_logger().warning("%s@%s moved though the call reported %r", name, CHALLENGER, exc)
    with suppress(Exception):  # a display of the history: the tags above are the record
        describe_history(client, name)


def _restore(client: MlflowClient, name: str, before: Mapping[str, str | None]) -> None:
    for version, value in before.items():
        with suppress(Exception):
            if value is None:
                client.delete_model_version_tag(name, version, CHALLENGER_TAG)
            else:
                client.set_model_version_tag(name, version, CHALLENGER_TAG, value)


def _take_back_unfinished(client: MlflowClient, name: str) -> None:
    """A process that died between recording a challenger move and making it left a history entry that
    starts at the current challenger but names another: remove it, so the history only names moves made."""
    try:
        entries = read_history(client, name, CHALLENGER_HISTORY_PREFIX)
    except mlflow.exceptions.MlflowException:
        return  # no registered model yet
    current = current_challenger(client, name) or ""
    if not entries or entries[-1].get("version", "") == current or entries[-1].get("previous", "") != current:
        return
    entry = entries[-1]
    client.delete_registered_model_tag(name, f"{CHALLENGER_HISTORY_PREFIX}{entry['seq']:06d}")
    store.run_logger().warning(
        "%s: the %s move %s (%s) never completed (its process died): its history entry taken back",
        name,
        CHALLENGER,
        entry["seq"],
        entry.get("action", "?"),
    )
