"""The servers' PostgreSQL databases: create the ones missing before the servers start (`up`, the containers'
entry point) and drop them on `down --purge`. psycopg2 and SQLAlchemy are imported inside the functions: the
other commands of `python -m infra.servers` start without them."""

from __future__ import annotations

from collections.abc import Iterable


def _connect_maintenance(url: str):
    """An autocommit connection to the `postgres` database of `url`'s server, and `url`'s database name."""
    import psycopg2  # why: see the module docstring
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = psycopg2.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        dbname="postgres",
        connect_timeout=10,
    )
    connection.autocommit = True
    return connection, parsed.database


def ensure_databases(urls: Iterable[str]) -> list[str]:
    """Create each URL's database when it does not exist; return the ones created."""
    from psycopg2 import sql  # why: see the module docstring

    created = []
    for url in urls:
        connection, name = _connect_maintenance(url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
        finally:
            connection.close()
    return created


def drop_databases(urls: Iterable[str]) -> list[str]:
    """Drop each URL's database (closing other sessions on it first); return the ones dropped."""
    from psycopg2 import sql  # why: see the module docstring

    dropped = []
    for url in urls:
        connection, name = _connect_maintenance(url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is not None:
                    cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                    dropped.append(name)
        finally:
            connection.close()
    return dropped
