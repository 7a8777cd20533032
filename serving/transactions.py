"""Raw events in: checking `/transactions` and `/labels` payloads against the use case's online spec.

A payload is one event (a JSON object), a list of them, or {"transactions": [...]} ({"labels": [...]}).
Every field the spec names must be there: the id and the keys whole numbers, the time an ISO 8601 string
(naive times are read as UTC, as the training data's are; an offset is converted to UTC), the values finite
numbers. A payload that is not JSON or of the wrong shape is a 400; a missing or malformed field a 422 naming
the event and the field; more than MAX_ROWS events a 413. Nothing is scored or recorded unless the whole
payload is good.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from serving.online.state import as_events
from serving.payloads import MAX_ROWS, PayloadError, describe
from usecases.spec import OnlineSpec

INT64 = (-(2**63), 2**63)


def events_from(body: object, spec: OnlineSpec) -> np.ndarray:
    """The structured event array of a `/transactions` payload (see the module docstring)."""
    records = _records(body, "transactions")
    columns: dict[str, list] = {name: [] for name in (spec.event_id, spec.time, *spec.keys, *spec.values)}
    for i, record in enumerate(records):
        where = _where(i, record, spec)
        columns[spec.event_id].append(_whole(record, spec.event_id, where))
        columns[spec.time].append(_time(record, spec.time, where))
        for key in spec.keys:
            columns[key].append(_whole(record, key, where))
        for value in spec.values:
            columns[value].append(_number(record, value, where))
    return as_events({name: np.asarray(values) for name, values in columns.items()}, spec)


def labels_from(body: object, spec: OnlineSpec) -> tuple[list[int], list[float]]:
    """(ids, labels) of a `/labels` payload; a label is 0 or 1."""
    records = _records(body, "labels")
    ids, labels = [], []
    for i, record in enumerate(records):
        where = _where(i, record, spec)
        ids.append(_whole(record, spec.event_id, where))
        label = _field(record, spec.label, where)
        if type(label) not in (int, float) or label not in (0, 1):
            raise PayloadError(422, f"{where}: {spec.label} must be 0 or 1, got {describe(label)}")
        labels.append(float(label))
    return ids, labels


def events_of_table(frame: pd.DataFrame, spec: OnlineSpec) -> np.ndarray:
    """The events of a raw table (history to warm the state from), as `events_from` makes them."""
    missing = [c for c in (spec.event_id, spec.time, *spec.keys, *spec.values) if c not in frame.columns]
    if missing:
        raise ValueError(f"the history lacks columns {missing}")
    times = pd.to_datetime(frame[spec.time])
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    columns = {c: frame[c].to_numpy() for c in frame.columns if c != spec.time}
    columns[spec.time] = times.to_numpy("datetime64[ns]").view(np.int64)
    return as_events(columns, spec)


def _records(body: object, name: str) -> list[dict]:
    if isinstance(body, dict) and name in body:
        body = body[name]
    records = [body] if isinstance(body, dict) else body
    if not isinstance(records, list):
        raise PayloadError(400, f"send one event (a JSON object), a list of them, or {{{name!r}: [...]}}")
    if not records:
        raise PayloadError(422, "no events in the request")
    if len(records) > MAX_ROWS:
        raise PayloadError(413, f"{len(records):,} events in one request; at most {MAX_ROWS:,}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise PayloadError(400, f"event {i} must be a JSON object, got {describe(record)}")
    return records


def _where(i: int, record: dict, spec: OnlineSpec) -> str:
    given = record.get(spec.event_id)
    return f"event {i}" + (f" ({spec.event_id} {given})" if type(given) is int else "")


def _field(record: dict, name: str, where: str):
    if name not in record or record[name] is None:
        raise PayloadError(422, f"{where}: {name} is missing")
    return record[name]


def _whole(record: dict, name: str, where: str) -> int:
    value = _field(record, name, where)
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise PayloadError(422, f"{where}: {name} must be a whole number, got {describe(value)}")
    if not INT64[0] <= value < INT64[1]:
        raise PayloadError(422, f"{where}: {name} {value} is out of range for a 64-bit integer")
    return value


def _number(record: dict, name: str, where: str) -> float:
    value = _field(record, name, where)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise PayloadError(422, f"{where}: {name} must be a finite number, got {describe(value)}")
    return float(value)


def _time(record: dict, name: str, where: str) -> int:
    """Nanoseconds since the epoch, UTC."""
    value = _field(record, name, where)
    if not isinstance(value, str):
        raise PayloadError(422, f"{where}: {name} must be an ISO 8601 string, got {describe(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(
            422,
            f"{where}: {name} must be an ISO 8601 time such as 2018-09-01T10:00:00, got {describe(value)}",
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return int(np.datetime64(moment, "ns").view(np.int64))
