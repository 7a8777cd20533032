"""The registry's side of the model lifecycle: what is champion and why, and moving it back by hand.

Everything here reads what the pipeline recorded: version tags written at registration (`gates`,
`lineage.*`, `test_<metric>`; each gate's value and threshold are in the training run's `gate_report.json`)
and at promotion (`promoted_at`, `previous_champion`, `promoted_by_run`, `promotion`), the numbered
`champion.history.<n>` entries on the registered model, and the training runs' `decision` tags.

A rollback moves `champion` (default: to the current champion's `previous_champion`) under the same lock as
promotions, records why on the version it moves to (`rolled_back_at`, `rollback.reason`, `rollback.from`,
`rollback.by`) and on the one it leaves (`demoted_at`, `demoted.reason`), and appends to the history. It
refuses a version that failed its absolute or baseline gates, or that the gated pipeline never registered.

Status also shows the challenger (`@challenger`, the version the model server scores in shadow): its version,
since when and why, read from the latest `challenger.history.<n>` entry (`champion/challenger.py` moves it).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

from champion import store
from champion.lock import champion_lock
from champion.promotion import _now, current_champion, move_champion, read_history
from usecases.vocabulary import (
    CHALLENGER,
    CHALLENGER_HISTORY_PREFIX,
    CHALLENGER_TAG,
    CHAMPION,
    FINGERPRINT_TAG,
    GATES_TAG,
    MODEL_ROLLED_BACK,
    model_resource,
    refused_gates,
)

REGISTRATION_GATES = ("absolute.", "baseline.")  # a version that failed these never reached the registry


class RollbackRefused(ValueError):
    """The rollback was refused (nothing to roll back to, or a version that never passed its gates)."""


# ------------------------------------------------------------------------------------------- status


def registered_models(use_case: str | None = None, default: str | None = None) -> list[str]:
    """Registered models of a use case (versions tagged `use_case`, plus its default name), or all."""
    client = MlflowClient()
    if use_case is None:
        return sorted(m.name for m in client.search_registered_models())
    names = {v.name for v in client.search_model_versions(f"tags.use_case = '{use_case}'")}
    if default:
        with suppress(mlflow.exceptions.MlflowException):
            client.get_registered_model(default)
            names.add(default)
    return sorted(names)


def _metrics(tags: dict) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith("test_")}


def _gates(client: MlflowClient, version) -> dict[str, str]:
    """Each gate's verdict: from the training run's `gate_report.json`, else from the version's tags."""
    tags = dict(version.tags)
    per_gate = {k[len("gate.") :]: v for k, v in sorted(tags.items()) if k.startswith("gate.")}
    if per_gate:  # registered before the `gates` summary tag
        return per_gate
    with suppress(Exception):  # no run, no artifact, no access: the summary below still says it
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)  # a progress bar would garble `status --json`
        report = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/gate_report.json")
        return {
            g["name"]: f"{'passed' if g['passed'] else 'refused'}: {g['detail']}" for g in report["gates"]
        }
    return {"all": tags.get(GATES_TAG, "no verdict recorded")}


def model_status(name: str, refused: int = 5, history: int = 10) -> dict:
    """Champion, its promotion and gates, earlier champions, and the latest refused candidates."""
    client = MlflowClient()
    registered = client.get_registered_model(name)
    champion_version = current_champion(client, name)
    champion = None
    if champion_version is not None:
        mv = client.get_model_version(name, champion_version)
        tags = dict(mv.tags)
        champion = {
            "version": champion_version,
            "run_id": mv.run_id,
            "since": tags.get("rolled_back_at") or tags.get("promoted_at"),
            "how": "rollback"
            if tags.get("rolled_back_at")
            else ("promotion" if tags.get("promoted_at") else "?"),
            "promoted_at": tags.get("promoted_at"),
            "promoted_by_run": tags.get("promoted_by_run"),
            "previous_champion": tags.get("previous_champion") or None,
            "rollback": {
                k: tags[k]
                for k in ("rolled_back_at", "rollback.reason", "rollback.from", "rollback.by")
                if k in tags
            },
            "metrics": _metrics(tags),
            "gates": _gates(client, mv),
            "fingerprint": tags.get(FINGERPRINT_TAG),
        }
    moves = list(reversed(read_history(client, name)))[:history]
    if champion is not None and moves and moves[0].get("version") == champion_version:
        # the latest recorded move is the authority on when and how the champion got there
        champion["since"], champion["how"] = moves[0].get("at"), moves[0].get("action", champion["how"])
    previous = []
    for version in _previous_champions(client, name, champion_version):
        tags = dict(client.get_model_version(name, version).tags)
        previous.append(
            {
                "version": version,
                "promoted_at": tags.get("promoted_at"),
                "demoted_at": tags.get("demoted_at"),
                "demoted_reason": tags.get("demoted.reason"),
                "metrics": _metrics(tags),
            }
        )
    return {
        "registered_model": name,
        "champion": champion,
        "challenger": challenger_status(client, name),
        "history": moves,
        "previous_champions": previous,
        "refused": refused_candidates(client, name, refused),
        "versions": len(client.search_model_versions(f"name = '{name}'")),
        "description": (registered.description or "").split("\n")[0],
    }


def challenger_status(client: MlflowClient, name: str) -> dict | None:
    """The version in shadow (`@challenger`): since when, why and by whom, from its latest recorded move."""
    try:
        version = client.get_model_version_by_alias(name, CHALLENGER)
    except mlflow.exceptions.MlflowException:
        return None
    number, tags = str(version.version), dict(version.tags)
    moves = [e for e in read_history(client, name, CHALLENGER_HISTORY_PREFIX) if e.get("version") == number]
    if moves:
        move = moves[-1]
        since, reason, by = move.get("at"), move.get("reason", ""), move.get("by") or move.get("run_id")
    else:  # the alias set by hand in the MLflow UI: what the version's tag says, if anything
        outcome = tags.get(CHALLENGER_TAG, "")
        since, _, reason = outcome.partition(": ") if outcome.startswith("since ") else ("", "", "")
        since, by = since.removeprefix("since ") or None, None
    return {
        "version": number,
        "since": since,
        "reason": reason,
        "by": by,
        "metrics": _metrics(tags),
        "gates": tags.get(GATES_TAG),
    }


def _previous_champions(client: MlflowClient, name: str, current: str | None) -> list[str]:
    """Earlier champions, most recent first: from the alias history, else from `promoted_at` tags."""
    seen, ordered = {current}, []
    for entry in reversed(read_history(client, name)):
        for version in (entry.get("version"), entry.get("previous")):
            if version and version not in seen:
                seen.add(version)
                ordered.append(version)
    if ordered:
        return ordered
    promoted = [
        (v.tags["promoted_at"], str(v.version))
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get("promoted_at") and str(v.version) != current
    ]
    return [v for _, v in sorted(promoted, reverse=True)]


def refused_candidates(client: MlflowClient, name: str, limit: int = 5) -> list[dict]:
    """The latest training runs for `name` that ended without promoting (gate refused or rejected)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.registered_model = '{name}' and tags.decision != 'promoted'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [
        {
            "run_id": r.info.run_id,
            "started": _iso(r.info.start_time),
            "decision": r.data.tags.get("decision"),
            "version": r.data.tags.get("registered_version"),
            "summary": r.data.tags.get("decision.summary", ""),
        }
        for r in runs
    ]


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- rollback


def gate_problems(version: str, tags: dict) -> list[str]:
    """Why `version` may not be champion: not registered by the pipeline, or refused by its gates."""
    refused = refused_gates(tags)
    if refused is None or FINGERPRINT_TAG not in tags:
        return [f"v{version} was not registered by the gated pipeline (no gate verdict and lineage tags)"]
    return [f"v{version} refused by gate {name}" for name in refused if name.startswith(REGISTRATION_GATES)]


def eligible_version(client: MlflowClient, name: str, version: str, role: str, refused: type[Exception]):
    """`name` v`version`, if it may be `role` (champion or challenger): it exists, is READY and passed its
    registration gates; else `refused` saying why."""
    try:
        found = client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise refused(f"{name} has no version {version}") from None
    if found.status != "READY":
        raise refused(f"{name} v{version} is {found.status}, not READY")
    problems = gate_problems(version, dict(found.tags))
    if problems:
        raise refused(f"refusing to make {name} v{version} {role}: " + "; ".join(problems))
    return found


@dataclass(frozen=True)
class Rollback:
    name: str
    version: str  # champion now
    previous: str  # champion before
    reason: str
    at: str


def rollback(name: str, to: str | None = None, reason: str = "", by: str | None = None) -> Rollback:
    """Move `name@champion` back to `to` (default: the current champion's previous champion)."""
    by = by or store.user()
    reason = reason or "manual rollback"
    client = MlflowClient()
    with champion_lock(name, holder=f"rollback by {by}"):
        current = current_champion(client, name)
        if current is None:
            raise RollbackRefused(f"{name} has no @{CHAMPION}: nothing to roll back")
        if to is None:
            to = client.get_model_version(name, current).tags.get("previous_champion") or None
            if to is None:
                raise RollbackRefused(
                    f"{name}@{CHAMPION} v{current} has no previous champion recorded; pass --to VERSION"
                )
        to = str(to)
        if to == current:
            raise RollbackRefused(f"v{to} already is {name}@{CHAMPION}")
        eligible_version(client, name, to, CHAMPION, RollbackRefused)
        now = _now()
        move_champion(
            client,
            name,
            to,
            expected=current,
            tags={
                "rolled_back_at": now,
                "rollback.reason": reason,
                "rollback.from": current,
                "rollback.by": by,
            },
            event={"action": "rollback", "reason": reason, "by": by},
        )
        with suppress(mlflow.exceptions.MlflowException):
            client.set_model_version_tag(name, current, "demoted_at", now)
            client.set_model_version_tag(name, current, "demoted.reason", f"rolled back to v{to}: {reason}")
        for key in ("demoted_at", "demoted.reason"):
            with suppress(mlflow.exceptions.MlflowException):
                client.delete_model_version_tag(name, to, key)
    _emit_rollback_event(name, to, current, reason, by)
    return Rollback(name, to, current, reason, now)


def _emit_rollback_event(name: str, version: str, previous: str, reason: str, by: str) -> None:
    """`mlops.model.rolled-back` (model servers refresh on it)."""
    payload = {"version": version, "previous_version": previous, "reason": reason, "by": by}
    emit_registry_event(MODEL_ROLLED_BACK, name, payload)


def emit_registry_event(event: str, name: str, payload: Mapping[str, object]) -> None:
    """A registry event about `name` (rollback, challenger moves), when a Prefect API is configured; a
    failure to send it never undoes the move it reports."""
    # lazy: Prefect only once a move is made; `mlops status` imports this module and must not load it
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    with suppress(Exception):
        from prefect.events import emit_event  # lazy: as above

        emit_event(event=event, resource={"prefect.resource.id": model_resource(name)}, payload=dict(payload))
