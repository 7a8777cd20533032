"""Paired records of champion and challenger, and the labels that arrive for them: written in batches by the
model server (`serving/shadow.py`, through `spool.py`), read by the comparison (`mlops compare`, the
`<use case>-challenger` flow).

A pair: `pair_id` (the event's id as text, e.g. a TRANSACTION_ID; "<request id>:<row>" for /predict rows),
`registered_model`, `event_time` (UTC; the event's own time, else when it was scored), `event` (the raw
event's fields as JSON: what the use case's metrics read, such as CUSTOMER_ID), `champion_version`,
`champion_score`, `challenger_version`, `challenger_score` (NaN when the challenger did not score it),
`challenger_error` (why not, else empty), `scored_at` (UTC), `source` ("transactions" or "predict").
A label: `pair_id`, `registered_model`, `label`, `labelled_at` (UTC); the latest label of a pair counts.

Where they go: with MLOPS_PAIRS_URL (a postgresql:// URL; `make up` sets it), two tables of that database
(`postgres.py`); without it, one Parquet file per batch under `MLOPS_HOME/pairs/<registered model>/`, written
to a temporary name and renamed, so a reader never sees half a batch. Either way `read_pairs` and
`read_labels` return the same frame shape, and a pair written twice (the same `pair_id` and challenger
version: a batch recovered after a killed server) is read once.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from champion.store import mlops_home
from tasks.challenger import postgres

PAIRS_URL_ENV = "MLOPS_PAIRS_URL"
PAIR_COLUMNS = (
    "pair_id",
    "registered_model",
    "event_time",
    "event",
    "champion_version",
    "champion_score",
    "challenger_version",
    "challenger_score",
    "challenger_error",
    "scored_at",
    "source",
)
LABEL_COLUMNS = ("pair_id", "registered_model", "label", "labelled_at")
COLUMNS = {"pairs": PAIR_COLUMNS, "labels": LABEL_COLUMNS}
TIME_COLUMNS = frozenset({"event_time", "scored_at", "labelled_at"})
NUMBER_COLUMNS = frozenset({"champion_score", "challenger_score", "label"})
SINCE = {"pairs": "event_time", "labels": "labelled_at"}  # what `since` filters on
UNIQUE = {"pairs": ("registered_model", "pair_id", "challenger_version"), "labels": ()}


def _sql_type(column: str) -> str:
    if column == "event":
        return "jsonb"
    if column in TIME_COLUMNS:
        return "timestamptz"
    return "double precision" if column in NUMBER_COLUMNS else "text"


TABLES = {
    kind: postgres.Table(
        f"mlops_{kind}",
        {c: _sql_type(c) for c in columns},
        UNIQUE[kind],
        index=("registered_model", SINCE[kind]),
    )
    for kind, columns in COLUMNS.items()
}


def pairs_url(url: str | None = None) -> str | None:
    """The PostgreSQL pair store to use: `url`, else MLOPS_PAIRS_URL; None: Parquet under MLOPS_HOME."""
    return url or os.environ.get(PAIRS_URL_ENV) or None


def where(url: str | None, registered_model: str) -> str:
    """Where `registered_model`'s pairs go, for logs and /health (no password)."""
    url = pairs_url(url)
    return postgres.redacted(url) if url else str(pairs_dir(registered_model))


def pairs_dir(registered_model: str) -> Path:
    return mlops_home() / "pairs" / registered_model


def event_json(event: object) -> str:
    """An event's fields as JSON text (non-finite numbers as null: PostgreSQL's JSON has no NaN)."""
    if isinstance(event, str):
        return event
    return orjson.dumps(event or {}, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _utc(value: object) -> datetime | None:
    """A time as an aware UTC datetime: ISO 8601 text or a datetime (pandas' Timestamp too); naive is UTC."""
    if value is None or value != value:  # None, NaT, NaN
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    if not isinstance(moment, datetime):
        raise TypeError(f"not a time: {value!r}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _number(value: object) -> float:
    return math.nan if value is None else float(value)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _converter(column: str):
    if column == "event":
        return event_json
    if column in TIME_COLUMNS:
        return _utc
    return _number if column in NUMBER_COLUMNS else _text


def columns_of(kind: str, rows: Sequence[Mapping]) -> dict[str, list]:
    """`rows` (dicts) as typed columns of `kind`, in plain Python: times as UTC datetimes (None when
    missing), scores and labels as floats (NaN), the event as JSON text, the rest as text (""). No pandas:
    the model server's writer thread runs it beside the request path, and holds the GIL meanwhile."""
    return {
        column: list(map(_converter(column), (row.get(column) for row in rows))) for column in COLUMNS[kind]
    }


def _arrow_type(column: str) -> pa.DataType:
    if column in TIME_COLUMNS:
        return pa.timestamp("us", tz="UTC")
    return pa.float64() if column in NUMBER_COLUMNS else pa.string()


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Times as UTC timestamps, scores and labels as floats (missing: NaN), the rest as text (missing: "")."""
    frame = frame.copy()
    for column in frame.columns:
        if column in TIME_COLUMNS:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        elif column in NUMBER_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif column == "event":
            frame[column] = [event_json(e) for e in frame[column]]
        else:
            frame[column] = pd.Series([_text(v) for v in frame[column]], index=frame.index, dtype="str")
    return frame


def write_batch(
    registered_model: str, kind: str, rows: Sequence[Mapping], url: str | None = None
) -> Path | None:
    """One batch of `kind` ("pairs" or "labels") rows: one Parquet file (atomically; its path), or one
    transaction in the PostgreSQL store (`url` or MLOPS_PAIRS_URL; None). None when `rows` is empty."""
    if not rows:
        return None
    columns = columns_of(kind, rows)
    if url := pairs_url(url):
        for name in NUMBER_COLUMNS.intersection(columns):
            columns[name] = [None if math.isnan(v) else v for v in columns[name]]
        postgres.insert(url, TABLES[kind], columns)
        return None
    table = pa.table({name: pa.array(values, _arrow_type(name)) for name, values in columns.items()})
    folder = pairs_dir(registered_model)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    final = folder / f"{kind}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    partial = final.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.replace(final)
    return final


def _read(registered_model: str, kind: str, since: datetime | None, url: str | None) -> pd.DataFrame:
    columns = COLUMNS[kind]
    start = None if since is None else pd.Timestamp(since)
    if start is not None and start.tzinfo is None:
        start = start.tz_localize("UTC")
    if url := pairs_url(url):
        when = None if start is None else (SINCE[kind], start.to_pydatetime())
        names, rows = postgres.select(url, TABLES[kind], {"registered_model": registered_model}, when)
        return typed(pd.DataFrame(rows, columns=names))
    files = sorted(pairs_dir(registered_model).glob(f"{kind}-*.parquet"))
    if not files:
        return typed(pd.DataFrame(columns=list(columns)))
    frame = typed(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True))
    if start is not None:
        frame = frame[frame[SINCE[kind]] >= start]
    return frame.reset_index(drop=True)


def read_pairs(registered_model: str, since: datetime | None = None, url: str | None = None) -> pd.DataFrame:
    """Every pair recorded for `registered_model` (from `since`, on `event_time`; a naive time is UTC), in
    the order scored, the `event` JSON expanded into columns beside the pair's own (as JSON has them: times
    as ISO 8601 text)."""
    frame = _read(registered_model, "pairs", since, url)
    frame = frame.sort_values("scored_at", kind="stable").drop_duplicates(list(UNIQUE["pairs"]))
    frame = frame.reset_index(drop=True)
    events = pd.DataFrame([orjson.loads(e) if e else {} for e in frame["event"]], index=frame.index)
    events = events.drop(columns=[c for c in events.columns if c in frame.columns])
    return pd.concat([frame.drop(columns="event"), events], axis=1)


def read_labels(registered_model: str, since: datetime | None = None, url: str | None = None) -> pd.DataFrame:
    """The latest label of each pair (from `since`, on `labelled_at`)."""
    frame = _read(registered_model, "labels", since, url)
    frame = frame.sort_values("labelled_at", kind="stable").drop_duplicates("pair_id", keep="last")
    return frame.reset_index(drop=True)
