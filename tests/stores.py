"""Registry stores for the flow tests: what a registry holds (to compare before and after), the invariants it
must keep whatever happened to a run, and fresh PostgreSQL databases.

MLflow and psycopg2 are imported inside the functions, like everything the unit tests may load.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CHAMPION = "champion"


def client_for(uri: str):
    """An MLflow client on tracking and registry store `uri` (leaves the process's global URI alone)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def snapshot(uri: str) -> dict:
    """Every registered model with its tags, aliases and versions (each with its tags): the whole registry."""
    client = client_for(uri)
    state = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{model.name}'")
        state[model.name] = {
            "tags": dict(model.tags),
            "aliases": {alias: str(version) for alias, version in dict(model.aliases).items()},
            "versions": {
                str(v.version): dict(v.tags) for v in sorted(versions, key=lambda v: int(v.version))
            },
        }
    return state


def has_verdict(tags: dict) -> bool:
    """The version says what its gates decided: one `gates` summary tag, or one `gate.<name>` tag per gate."""
    return bool(tags.get("gates")) or any(key.startswith("gate.") for key in tags)


def passed_its_gates(tags: dict) -> bool:
    if tags.get("gates"):
        return tags["gates"].startswith("passed")
    verdicts = [value for key, value in tags.items() if key.startswith("gate.")]
    return bool(verdicts) and all(value.startswith("passed") for value in verdicts)


def invariant_violations(state: dict) -> list[str]:
    """What a registry must never show, whatever happened to the runs that wrote it: a champion that did not
    pass its gates, or a version without its gate verdicts (unless it says its promotion failed)."""
    problems = []
    for name, model in state.items():
        champion = model["aliases"].get(CHAMPION)
        if champion is not None and not passed_its_gates(model["versions"].get(champion, {})):
            problems.append(f"{name}@{CHAMPION} is v{champion}, which did not pass its gates")
        for version, tags in model["versions"].items():
            if not has_verdict(tags) and not tags.get("promotion", "").startswith("failed"):
                problems.append(f"{name} v{version} has no gate verdict")
    return problems


def history_breaks(state: dict, name: str) -> list[str]:
    """Where the recorded alias moves (`champion.history.<n>`) stop telling one story: each move must start
    where the previous one ended, and the last must end at the current champion."""
    import json

    from champion.promotion import HISTORY_PREFIX

    model = state[name]
    entries = [json.loads(v) for k, v in sorted(model["tags"].items()) if k.startswith(HISTORY_PREFIX)]
    problems, previous = [], ""
    for entry in entries:
        if entry["previous"] != previous:
            problems.append(
                f"move to v{entry['version']} starts at {entry['previous'] or 'none'!r}, not {previous!r}"
            )
        previous = entry["version"]
    if previous != model["aliases"].get(CHAMPION, ""):
        problems.append(f"the last recorded move ends at v{previous}, the champion is {model['aliases']}")
    return problems


def postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_ADMIN, connect_timeout=3).close()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _admin():
    import psycopg2

    connection = psycopg2.connect(POSTGRES_ADMIN)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def create_database(template: str | None = None) -> str:
    """A new database (a copy of `template` when given); returns its SQLAlchemy URI for MLflow."""
    name = f"mlops_test_{uuid.uuid4().hex[:10]}"
    with _admin() as cursor:
        if template:
            # a template must have no other sessions: end ours (MLflow's pooled connections) first
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                (template,),
            )
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            cursor.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"  # SQLAlchemy 2.1 defaults to psycopg 3


def drop_database(uri: str) -> None:
    name = uri.rsplit("/", 1)[1]
    with _admin() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    uri = create_database(template)
    try:
        yield uri
    finally:
        drop_database(uri)


def database_name(uri: str) -> str:
    return uri.rsplit("/", 1)[1]
