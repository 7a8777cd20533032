"""The pair store in server mode: two PostgreSQL tables (`mlops_pairs`, `mlops_labels`) in the database
MLOPS_PAIRS_URL names (postgresql://user[:password]@host:port/db), created when missing, written in batches.

The columns and their types come from `pairs.py` (a `Table`); this module knows SQL, not pairs. A batch is one
INSERT in one transaction: a reader sees all of it or none. Rows that repeat a table's unique key (a batch
written again after a killed server, `spool.py`) are skipped, not doubled.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import parse_dsn


@dataclass(frozen=True)
class Table:
    name: str
    columns: Mapping[str, str]  # column -> SQL type, in order
    unique: tuple[str, ...] = ()  # a row repeating these is skipped (ON CONFLICT DO NOTHING)
    index: tuple[str, ...] = ()  # what readers filter on


_ready: set[tuple[str, str]] = set()  # (url, table) made sure of in this process
_ready_lock = threading.Lock()


def dsn(url: str) -> str:
    """A libpq URL from a SQLAlchemy-style one (postgresql+psycopg2://... -> postgresql://...)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError(
            f"the pair store URL must be postgresql://user@host:port/database, got {redacted(url)}"
        )
    return f"postgresql://{rest}"


def redacted(url: str) -> str:
    """`url` without its password, for logs and /health."""
    scheme, sep, rest = url.partition("://")
    credentials, at, where = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{credentials.split(':')[0]}@{where}"


def connect(url: str):
    """A connection to `url`'s database, creating the database first when it does not exist."""
    try:
        return psycopg2.connect(dsn(url), connect_timeout=10)
    except psycopg2.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    params = parse_dsn(dsn(url))
    admin = psycopg2.connect(**{**params, "dbname": "postgres"}, connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(params["dbname"])))
    except psycopg2.errors.DuplicateDatabase:
        pass  # another process created it in between
    finally:
        admin.close()
    return psycopg2.connect(dsn(url), connect_timeout=10)


def _ensure(connection, url: str, table: Table) -> None:
    if (url, table.name) in _ready:
        return
    columns = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(kind)) for c, kind in table.columns.items()]
    if table.unique:
        columns.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(sql.Identifier, table.unique))))
    statements = [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(table.name), sql.SQL(", ").join(columns)
        )
    ]
    if table.index:
        statements.append(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(f"{table.name}_by_{'_'.join(table.index)}"),
                sql.Identifier(table.name),
                sql.SQL(", ").join(map(sql.Identifier, table.index)),
            )
        )
    with _ready_lock:
        for attempt in range(2):  # two processes creating the same table at once: one of them retries
            try:
                with connection, connection.cursor() as cursor:
                    for statement in statements:
                        cursor.execute(statement)
                break
            except psycopg2.errors.UniqueViolation:
                if attempt:
                    raise
        _ready.add((url, table.name))


def _execute(url: str, table: Table, statement: sql.Composable, values: Sequence, fetch: bool):
    """Run `statement` on `table` (made sure of first) in one transaction: the rows it returns when `fetch`,
    else how many it changed. A table dropped since this process made sure of it is made again, once."""
    for attempt in range(2):
        connection = connect(url)
        try:
            _ensure(connection, url, table)
            with connection, connection.cursor() as cursor:
                cursor.execute(statement, values)
                return cursor.fetchall() if fetch else cursor.rowcount
        except psycopg2.errors.UndefinedTable:
            _ready.discard((url, table.name))
            if attempt:
                raise
        finally:
            connection.close()
    raise AssertionError("unreachable")


def insert(url: str, table: Table, columns: Mapping[str, Sequence]) -> int:
    """Insert the rows of `columns` (one list per column of `table`, None for NULL) in one transaction; the
    rows added. One statement whatever the rows: each column goes as one array (unnest), which psycopg2
    adapts in C, so a batch costs the writer thread little."""
    names = list(table.columns)
    arrays = sql.SQL(", ").join(
        sql.SQL("%s::{}[]").format(sql.SQL("text" if table.columns[c] == "jsonb" else table.columns[c]))
        for c in names
    )
    values = sql.SQL(", ").join(
        sql.SQL("u.{}::jsonb" if table.columns[c] == "jsonb" else "u.{}").format(sql.Identifier(c))
        for c in names
    )
    listed = sql.SQL(", ").join(map(sql.Identifier, names))
    statement = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u ({}){}").format(
        sql.Identifier(table.name),
        listed,
        values,
        arrays,
        listed,
        sql.SQL(" ON CONFLICT DO NOTHING" if table.unique else ""),
    )
    return _execute(url, table, statement, [list(columns[c]) for c in names], fetch=False)


def select(url: str, table: Table, where: Mapping[str, object], since: tuple[str, datetime] | None):
    """(column names, rows) of `table` whose columns equal `where` (and `since`: (column, from)); JSON
    columns come back as text."""
    names = [
        sql.SQL("{}::text").format(sql.Identifier(c)) if kind == "jsonb" else sql.Identifier(c)
        for c, kind in table.columns.items()
    ]
    conditions = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in where]
    values = list(where.values())
    if since is not None:
        conditions.append(sql.SQL("{} >= %s").format(sql.Identifier(since[0])))
        values.append(since[1])
    statement = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(names), sql.Identifier(table.name), sql.SQL(" AND ").join(conditions)
    )
    return list(table.columns), _execute(url, table, statement, values, fetch=True)
