"""Per-key event state for real-time features: each key's raw events within the history the features read.

The state keeps raw events, not running aggregates: a version trained with other windows or another label
delay reads the same events, and an event up to `lateness` out of order is placed where it belongs (its
features read exactly the events before it in (time, id) order, as `build_features` does in batch).

Layout in the store (`serving/online/store.py`), under a prefix naming the registered model and the event
layout:
- `<prefix>key:<column>:<value>`: that key's events, a NumPy structured array (time, id, the spec's values,
  label, and the score and version it was answered with), pruned to `retention` behind the newest event;
- `<prefix>watermark`: the newest event time seen (an event more than `lateness` older is refused);
- `<prefix>index:<day>`: event id -> its key values, per day of event time, so a late label finds its events;
  dropped whole once the day leaves the retention.
One request is one store transaction: every event in it is scored and recorded, or none is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from serving.online.store import Conflict, MemoryStore, RedisStore, Writes
from usecases.spec import OnlineSpec

NS_PER_DAY = 86_400 * 10**9
RETRIES = 20  # optimistic transactions: conflicts only when replicas write the same key at once
LABEL_CHUNK = 2_000  # labels per store transaction (OnlineState.label)


class LateEventError(ValueError):
    """An event older than the newest one by more than the allowed lateness: its place is gone."""


@dataclass(frozen=True)
class Outcome:
    """One event's answer: scored now, or the answer it got when first posted (`duplicate`)."""

    id: int
    score: float | None
    version: str | None
    duplicate: bool
    features: dict[str, float] | None = None


@dataclass(frozen=True)
class Labelled:
    applied: list[int]
    unknown: list[int]


class OnlineState:
    """Raw events per key for one registered model, read and written in store transactions."""

    def __init__(
        self,
        store: MemoryStore | RedisStore,
        spec: OnlineSpec,
        namespace: str,
        lateness: timedelta = timedelta(hours=1),
        history: timedelta | None = None,
    ) -> None:
        self.store, self.spec, self.lateness = store, spec, lateness
        # What is kept: the longest history any served version reads (`history`, at least the spec's), plus
        # the lateness an event may still arrive with.
        self.history = max(history or spec.history, spec.history)
        self.dtype = np.dtype(
            [("t", "<i8"), ("id", "<i8")]
            + [(v, "<f8") for v in spec.values]
            + [("label", "<f8"), ("score", "<f8"), ("version", "<i8")]
        )
        layout = hashlib.sha256(str(self.dtype.descr).encode()).hexdigest()[:8]
        self.prefix = f"{getattr(store, 'prefix', '')}mlops:{namespace}:{layout}:"
        self.watermark_key = self.prefix + "watermark"

    # ----------------------------------------------------------------------------------------------- names

    @property
    def retention_ns(self) -> int:
        return int((self.history + self.lateness).total_seconds() * 10**9)

    @property
    def lateness_ns(self) -> int:
        return int(self.lateness.total_seconds() * 10**9)

    def key(self, column: str, value: int) -> str:
        return f"{self.prefix}key:{column}:{int(value)}"

    def index_key(self, day: int) -> str:
        return f"{self.prefix}index:{day}"

    # ----------------------------------------------------------------------------------------------- events

    def watermark(self) -> int | None:
        with self.store.transaction([self.watermark_key], self.ttl_ms) as (values, _):
            return _decode_int(values[0])

    @property
    def ttl_ms(self) -> int:
        return self.retention_ns // 10**6

    def ingest(
        self,
        events: np.ndarray,
        score: Callable[[list[dict[str, float]]], np.ndarray],
        version: str,
        with_features: bool = False,
    ) -> list[Outcome]:
        """Features, scores and records for `events` (a structured array with `t`, `id`, the spec's keys and
        values), in the order given. `score` maps feature rows to scores (the served version)."""
        order = np.lexsort((events["id"], events["t"]))  # placed in time order, answered in the order given
        keys = sorted({self.key(c, v) for c in self.spec.keys for v in events[c]})
        outcomes = self._atomically(
            [self.watermark_key, *keys],
            lambda values, writes: self._ingest(
                events[order], keys, values, writes, score, version, with_features
            ),
        )
        answers = [None] * len(events)
        for position, outcome in zip(order, outcomes, strict=True):
            answers[position] = outcome
        return answers

    def _ingest(self, events, keys, values, writes: Writes, score, version, with_features) -> list[Outcome]:
        watermark = _decode_int(values[0])
        if watermark is not None:
            late = np.flatnonzero(events["t"] < watermark - self.lateness_ns)
            if late.size:
                event = events[late[0]]
                behind = timedelta(microseconds=int(watermark - event["t"]) // 1000)
                raise LateEventError(
                    f"{self.spec.event_id} {int(event['id'])}: {self.spec.time} is {behind} behind the "
                    f"newest event; this service places events at most {self.lateness} late"
                )
        state = {key: _decode(blob, self.dtype) for key, blob in zip(keys, values[1:], strict=True)}
        outcomes: list[Outcome | None] = []
        fresh, rows = [], []
        posted: dict[int, int] = {}  # id -> position, for events of this request
        twins: list[tuple[int, int]] = []  # (position, position of the same id posted first)
        for i, event in enumerate(events):
            mine = {c: self.key(c, event[c]) for c in self.spec.keys}
            first = state[mine[self.spec.keys[0]]]
            seen = np.flatnonzero(first["id"] == event["id"])
            if seen.size:
                if int(event["id"]) in posted:  # twice in this request: answered below, with the first
                    twins.append((i, posted[int(event["id"])]))
                    outcomes.append(None)
                    continue
                record = first[seen[0]]
                answered = not np.isnan(record["score"])  # events loaded from history were never scored
                outcomes.append(
                    Outcome(
                        int(event["id"]),
                        float(record["score"]) if answered else None,
                        str(int(record["version"])) if answered else None,
                        duplicate=True,
                    )
                )
                continue
            posted[int(event["id"])] = i
            earlier = {c: _before(state[mine[c]], event) for c in self.spec.keys}
            rows.append(dict(self.spec.compute(event, earlier)))
            fresh.append(i)
            outcomes.append(None)
            record = self._record(event)
            for key in mine.values():
                state[key] = np.concatenate((state[key], record))
        scores = np.asarray(score(rows), dtype=np.float64) if rows else np.zeros(0)
        newest = int(events["t"].max())
        cut = max(newest, watermark or newest) - self.retention_ns
        for i, row, value in zip(fresh, rows, scores, strict=True):
            event = events[i]
            for c in self.spec.keys:
                array = state[self.key(c, event[c])]
                array["score"][array["id"] == event["id"]] = value
                array["version"][array["id"] == event["id"]] = int(version)
            outcomes[i] = Outcome(
                int(event["id"]), float(value), str(version), False, row if with_features else None
            )
            key_values = ",".join(str(int(event[c])) for c in self.spec.keys)
            writes.hset(
                self.index_key(int(event["t"]) // NS_PER_DAY), str(int(event["id"])), key_values.encode()
            )
        for i, first_at in twins:
            outcomes[i] = Outcome(outcomes[first_at].id, outcomes[first_at].score, str(version), True)
        for key, array in state.items():
            kept = array[array["t"] > cut]
            writes.put[key] = kept[np.lexsort((kept["id"], kept["t"]))].tobytes()
        self._advance(watermark, max(newest, watermark or newest), writes)
        return outcomes

    def _record(self, event) -> np.ndarray:
        record = np.zeros(1, dtype=self.dtype)
        record["t"], record["id"] = event["t"], event["id"]
        for v in self.spec.values:
            record[v] = event[v]
        record["label"] = np.nan
        record["score"] = np.nan
        return record

    def _advance(self, old: int | None, new: int, writes: Writes) -> None:
        """Move the watermark; drop the index days that left the retention."""
        writes.put[self.watermark_key] = str(new).encode()
        if old is None:
            return
        first_kept_day = (new - self.retention_ns) // NS_PER_DAY
        for day in range((old - self.retention_ns) // NS_PER_DAY, first_kept_day):
            writes.delete.add(self.index_key(day))

    # ----------------------------------------------------------------------------------------------- labels

    def label(self, ids: Sequence[int], labels: Sequence[float], chunk: int = LABEL_CHUNK) -> Labelled:
        """Record late labels; ids the state no longer (or never) held come back as `unknown`. A request's
        labels go `chunk` ids at a time, each chunk one transaction: a day's labels in one transaction held
        Redis past its socket timeout on a loaded machine. Recording a label twice changes nothing, so a
        request that failed part-way is simply sent again."""
        watermark = self.watermark()
        if watermark is None:
            return Labelled([], [int(i) for i in ids])
        known, unknown = [], []
        for start in range(0, len(ids), chunk):
            done = self._label(ids[start : start + chunk], labels[start : start + chunk], watermark)
            known += done.applied
            unknown += done.unknown
        return Labelled(sorted(known), unknown)

    def _label(self, ids: Sequence[int], labels: Sequence[float], watermark: int) -> Labelled:
        days = range((watermark - self.retention_ns) // NS_PER_DAY, watermark // NS_PER_DAY + 1)
        names = [str(int(i)) for i in ids]
        where: dict[int, list[str]] = {}
        for found in self.store.hash_get([self.index_key(day) for day in days], names):
            for name, value in zip(names, found, strict=True):
                if value is not None:
                    parts = value.decode().split(",")
                    where[int(name)] = [self.key(c, v) for c, v in zip(self.spec.keys, parts, strict=True)]
        known = {int(i): float(y) for i, y in zip(ids, labels, strict=True) if int(i) in where}
        keys = sorted({key for i in known for key in where[i]})

        def put_labels(values, writes: Writes) -> None:
            for key, blob in zip(keys, values, strict=True):
                array = _decode(blob, self.dtype)
                hit = np.isin(array["id"], list(known))
                if hit.any():
                    array["label"][hit] = [known[int(i)] for i in array["id"][hit]]
                    writes.put[key] = array.tobytes()

        self._atomically(keys, put_labels)
        return Labelled(sorted(known), [int(i) for i in ids if int(i) not in known])

    # ------------------------------------------------------------------------------------------- warm start

    def load_history(self, events: np.ndarray, chunk_keys: int = 2_000) -> int:
        """Fill the state from past events (with labels where known): those within the retention of the
        newest. Returns the number of events kept. Events the state already holds (same id) stay as they
        are, with their scores and labels: loading history into a live store adds, never loses."""
        if not len(events):
            return 0
        newest = int(events["t"].max())
        kept = events[events["t"] > newest - self.retention_ns]
        records = np.zeros(len(kept), dtype=self.dtype)
        for name in ("t", "id", "label", *self.spec.values):
            records[name] = kept[name]
        records["score"] = np.nan
        order = np.lexsort((records["id"], records["t"]))
        records, kept = records[order], kept[order]
        blobs: dict[str, bytes] = {}
        for column in self.spec.keys:
            values = kept[column]
            by_key = np.argsort(values, kind="stable")
            bounds = np.flatnonzero(np.diff(values[by_key])) + 1
            for group in np.split(by_key, bounds):
                if group.size:
                    blobs[self.key(column, values[group[0]])] = records[group].tobytes()
        names = list(blobs)

        def merge(chunk: list[str]):
            def change(values, writes: Writes) -> None:
                for key, held in zip(chunk, values, strict=True):
                    writes.put[key] = _merged(_decode(held, self.dtype), blobs[key], self.dtype)

            return change

        for start in range(0, len(names), chunk_keys):
            chunk = names[start : start + chunk_keys]
            self._atomically(chunk, merge(chunk))
        unlabelled = np.flatnonzero(np.isnan(records["label"]))

        def index_and_watermark(values, writes: Writes) -> None:
            for i in unlabelled:
                key_values = ",".join(str(int(kept[c][i])) for c in self.spec.keys)
                day = int(records["t"][i]) // NS_PER_DAY
                writes.hset(self.index_key(day), str(int(records["id"][i])), key_values.encode())
            current = _decode_int(values[0])
            writes.put[self.watermark_key] = str(max(newest, current or newest)).encode()

        self._atomically([self.watermark_key], index_and_watermark)
        return len(records)

    def _atomically(self, keys: list[str], change):
        """`change(values, writes)` in one store transaction on `keys`, read again and retried while another
        writer changes one of them in between; its result."""
        for _ in range(RETRIES):
            try:
                with self.store.transaction(keys, self.ttl_ms) as (values, writes):
                    result = change(values, writes)
                return result
            except Conflict:
                continue
        raise Conflict(f"{RETRIES} conflicting writes in a row on the same keys; try again")

    def events_of(self, column: str, value: int) -> np.ndarray:
        """A key's events as the state holds them (for tests and inspection)."""
        key = self.key(column, value)
        with self.store.transaction([key], self.ttl_ms) as (values, _):
            return _decode(values[0], self.dtype)


def _merged(held: np.ndarray, blob: bytes, dtype: np.dtype) -> bytes:
    """`held` plus the events of `blob` it lacks (by id), in (time, id) order."""
    loaded = _decode(blob, dtype)
    if held.size:
        loaded = loaded[~np.isin(loaded["id"], held["id"])]
    both = np.concatenate((held, loaded))
    return both[np.lexsort((both["id"], both["t"]))].tobytes()


def _before(array: np.ndarray, event) -> np.ndarray:
    """The events of `array` sorted before `event` in (time, id) order."""
    t, i = event["t"], event["id"]
    return array[(array["t"] < t) | ((array["t"] == t) & (array["id"] < i))]


def _decode(blob: bytes | None, dtype: np.dtype) -> np.ndarray:
    if not blob:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(blob, dtype=dtype).copy()


def _decode_int(blob: bytes | None) -> int | None:
    return None if blob is None else int(blob)


def as_events(columns: Mapping[str, np.ndarray], spec: OnlineSpec) -> np.ndarray:
    """A structured event array (`t`, `id`, keys, values, label) from columns named as in the raw data."""
    n = len(columns[spec.event_id])
    dtype = [("t", "<i8"), ("id", "<i8")] + [(k, "<i8") for k in spec.keys]
    dtype += [(v, "<f8") for v in spec.values] + [("label", "<f8")]
    events = np.zeros(n, dtype=dtype)
    events["t"] = columns[spec.time]
    events["id"] = columns[spec.event_id]
    for name in (*spec.keys, *spec.values):
        events[name] = columns[name]
    events["label"] = columns.get(spec.label, np.nan)
    return events
