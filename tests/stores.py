"""Registry stores for the flow tests: what a registry holds (to compare before and after), the invariants it
must keep whatever happened to a run, and fresh PostgreSQL databases.

MLflow and psycopg2 are imported inside the functions, like everything the unit tests may load.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from usecases.vocabulary import CHAMPION, HISTORY_PREFIX

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def client_for(uri: str):
    """An MLflow client on tracking and registry store `uri` (leaves the process's global URI alone)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def snapshot(uri: str) -> dict:
    """Everything a run can write to the store at `uri`, to compare before and after:

    - `registry`: every registered model (description, tags, aliases) and version (description, tags, run,
      source, logged model, status, last update);
    - `runs`: every run of every experiment, deleted ones too (status, end time, params, metrics, tags);
    - `logged_models`: every logged model (name, run, status, tags, params).
    """
    from mlflow.entities import ViewType

    client = client_for(uri)
    registry = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{model.name}'")
        registry[model.name] = {
            "description": model.description or "",
            "tags": dict(model.tags),
            "aliases": {alias: str(version) for alias, version in dict(model.aliases).items()},
            "updated": model.last_updated_timestamp,
            "versions": {
                str(v.version): {
                    "tags": dict(v.tags),
                    "description": v.description or "",
                    "run_id": v.run_id,
                    "source": v.source,
                    "model_id": getattr(v, "model_id", None),
                    "status": v.status,
                    "updated": v.last_updated_timestamp,
                }
                for v in sorted(versions, key=lambda v: int(v.version))
            },
        }
    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    runs = {}
    for run in client.search_runs(ids, run_view_type=ViewType.ALL, max_results=50_000) if ids else []:
        runs[run.info.run_id] = {
            "experiment": run.info.experiment_id,
            "status": run.info.status,
            "lifecycle": run.info.lifecycle_stage,
            "end_time": run.info.end_time,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "tags": dict(run.data.tags),
        }
    logged = {}
    for model in client.search_logged_models(ids) if ids else []:
        logged[model.model_id] = {
            "name": model.name,
            "run_id": model.source_run_id,
            "status": str(model.status),
            "tags": dict(model.tags),
            "params": dict(model.params),
        }
    return {"registry": registry, "runs": runs, "logged_models": logged}


def new_runs(before: dict, after: dict) -> dict:
    """The runs `after` holds that `before` did not, by id; fails if a run of `before` changed or went."""
    changed = [r for r in before["runs"] if after["runs"].get(r) != before["runs"][r]]
    assert not changed, {r: (before["runs"][r], after["runs"].get(r)) for r in changed}
    return {r: run for r, run in after["runs"].items() if r not in before["runs"]}


def new_logged_models(before: dict, after: dict) -> dict:
    """The logged models `after` holds that `before` did not; fails if one of `before` changed or went."""
    changed = [
        m for m in before["logged_models"] if after["logged_models"].get(m) != before["logged_models"][m]
    ]
    assert not changed, changed
    return {m: model for m, model in after["logged_models"].items() if m not in before["logged_models"]}


def copy_home(template: Path, home: Path) -> Path:
    """A self-contained copy of the MLOPS_HOME `template` (SQLite store and artifacts) at `home`.

    The database is copied with SQLite's backup API (consistent even while a connection is open), then every
    absolute path into `template` it records (the experiments', runs' and logged models' artifact locations,
    the versions' storage locations) is rewritten into `home`. Fails if the copy still names the template
    anywhere, in the database or in the artifacts' metadata files.
    """
    import shutil
    import sqlite3

    template, home = Path(template).resolve(), Path(home).resolve()
    shutil.copytree(template, home, ignore=shutil.ignore_patterns("mlflow.db", "mlflow.db-*", "*.lock"))
    source = sqlite3.connect(f"file:{template / 'mlflow.db'}?mode=ro", uri=True)
    copy = sqlite3.connect(home / "mlflow.db")
    try:
        source.backup(copy)
        old, new = f"{template}/", f"{home}/"
        columns = [
            (table, column)
            for (table,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            for (column,) in copy.execute(f"SELECT name FROM pragma_table_info('{table}')").fetchall()
        ]
        for table, column in columns:
            copy.execute(
                f"UPDATE {table} SET {column} = replace({column}, ?, ?) "
                f"WHERE typeof({column}) = 'text' AND instr({column}, ?) > 0",
                (old, new, old),
            )
        copy.commit()
        left = [
            f"{table}.{column}"
            for table, column in columns
            if copy.execute(
                f"SELECT count(*) FROM {table} WHERE typeof({column}) = 'text' AND instr({column}, ?) > 0",
                (str(template),),
            ).fetchone()[0]
        ]
    finally:
        source.close()
        copy.close()
    # MLflow writes a logged model's full artifact URI into its MLmodel file (`artifact_path`)
    for path in home.rglob("MLmodel"):
        path.write_text(path.read_text().replace(old, new))
    metadata = [p for p in home.rglob("*") if p.is_file() and p.suffix in ("", ".json", ".yaml", ".txt")]
    left += [
        str(p) for p in metadata if p.stat().st_size < 1_000_000 and str(template) in p.read_text("latin-1")
    ]
    assert not left, f"the copy of {template} still points into it: {left}"
    return home


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
    for name, model in state["registry"].items():
        champion = model["aliases"].get(CHAMPION)
        if champion is not None and not passed_its_gates(model["versions"].get(champion, {}).get("tags", {})):
            problems.append(f"{name}@{CHAMPION} is v{champion}, which did not pass its gates")
        for version, tags in ((v, d["tags"]) for v, d in model["versions"].items()):
            if not has_verdict(tags) and not tags.get("promotion", "").startswith("failed"):
                problems.append(f"{name} v{version} has no gate verdict")
    return problems


def history_breaks(state: dict, name: str) -> list[str]:
    """Where the recorded alias moves (`champion.history.<n>`) stop telling one story: each move must start
    where the previous one ended, and the last must end at the current champion."""
    import json

    model = state["registry"][name]
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
