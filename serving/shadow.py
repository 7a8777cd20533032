"""Shadow scoring: the model server follows `name@challenger` too and scores every request with it off the
request path, recording both versions' scores side by side (the pairs `mlops compare` judges).

The request path (POST /transactions, /predict, /labels) answers with the champion as it would without a
challenger, then hands what it already has (the champion's input rows, ids, event fields and scores) to a
queue: one lock, one short `os.write` to the spool (`tasks/challenger/spool.py`) and one `put`; never a wait.
When `max_pending` rows already wait for the challenger, the request's rows are counted as dropped instead
(labels are always taken). One worker thread takes the queue in batches, scores the challenger (one matrix
per batch, one XGBoost thread, so the champion keeps the cores), and hands the pairs to the writer, which
stores them in batches. A row that waited longer
than `timeout` when the worker takes it is recorded without a challenger score, saying why.

/transactions reuses the champion's online feature rows: the challenger is scored on them when its inputs are
among them and its online features are defined alike (same history: for fraud, the same label delay);
otherwise the pair records why not. /predict gives the challenger the champion's input matrix (its columns
when they are among the champion's, else the payload read again against the challenger's signature).

Without a challenger (`@challenger` not set, or removed) nothing is queued or recorded; labels are recorded
while a challenger is in shadow. `stop()` (the app's shutdown: SIGTERM, SIGINT) scores or times out what is
queued and flushes: a clean stop loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import orjson
import pandas as pd

from champion.loading import ModelNotFoundError, resolve_version
from serving.follower import ChampionFollower, Served
from serving.payloads import PayloadError, present_columns, to_matrix
from tasks.challenger.spool import PairWriter
from usecases.spec import OnlineSpec
from usecases.vocabulary import CHALLENGER, CHALLENGER_RETIRED, CHALLENGER_SET

log = logging.getLogger("mlops.serving")
ABSENT = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")  # MLflow's codes for a missing alias/model
STOP = None  # the queue's last item
# The worker wakes at most this often (rows gather meanwhile: one challenger call and one spool line per
# batch), and yields the GIL between requests, so the answers it runs beside wait for it only briefly.
LINGER = 0.05


@dataclass(frozen=True)
class ShadowSettings:
    """How the server records pairs: the challenger's time limit, the store's batches and where they go."""

    timeout: float = 2.0  # seconds a row may wait for the challenger; older ones are recorded without it
    batch: int = 500  # rows per write to the store
    flush_seconds: float = 5.0  # at the latest, a row reaches the store this long after it was scored
    max_pending: int = 10_000  # rows waiting for the challenger; more are dropped (counted)
    pairs_url: str | None = None  # PostgreSQL store; default MLOPS_PAIRS_URL, else Parquet under MLOPS_HOME


class ChallengerFollower(ChampionFollower):
    """Follows `name@challenger`. Unlike the champion, a removed alias stops the shadow (served -> None); and
    the challenger predicts on one thread, leaving the others to the answers."""

    # a promotion can take the challenger away (it became champion); these set or remove it
    events = (*ChampionFollower.events, CHALLENGER_SET, CHALLENGER_RETIRED)

    def refresh(self) -> bool:
        try:
            resolve_version(self.name, alias=self.alias)
        except ModelNotFoundError as exc:
            if getattr(exc.__cause__, "error_code", None) in ABSENT:
                gone, self.served = self.served, None
                self.last_check, self.last_error = _now(), None
                self.checks += 1
                if gone is not None:
                    log.info(
                        "%s@%s removed: v%s no longer in shadow", self.name, self.alias, gone.model.version
                    )
                return gone is not None
        except Exception:
            pass  # the registry did not answer: the champion's refresh says so and keeps what it has
        swapped = super().refresh()
        if swapped and self.served.model.booster is not None:
            self.served.model.booster.set_param("nthread", 1)
        return swapped


class Item(NamedTuple):
    source: str  # "transactions", "predict" or "labels"
    queued: float  # time.monotonic()
    at: float  # time.time(): when the champion answered
    champion: Served | None
    challenger: Served | None
    payload: tuple
    rows: int  # rows accepted for it


class Shadow:
    """The challenger's side of a model server: its follower, the queue, the worker and the pair writer."""

    def __init__(self, challenger: ChallengerFollower, writer: PairWriter, timeout: float = 2.0) -> None:
        self.challenger, self.writer, self.timeout = challenger, writer, timeout
        self.counts: Counter = Counter()  # "timed out", "not scored", "failed"
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._compatible: dict[tuple[str, str], str | None] = {}

    @classmethod
    def open(
        cls,
        name: str,
        use_case: str | None,
        poll_seconds: float = 10.0,
        settings: ShadowSettings | None = None,
    ) -> Shadow:
        """The shadow of `name`'s server: the challenger loaded now if there is one, the writer ready (the
        spools of stopped servers recovered)."""
        settings = settings or ShadowSettings()
        challenger = ChallengerFollower(name, CHALLENGER, poll_seconds, use_case=use_case)
        challenger.refresh()
        writer = PairWriter(
            name, settings.pairs_url, settings.batch, settings.flush_seconds, settings.max_pending
        )
        return cls(challenger, writer, settings.timeout)

    def start(self, follow: bool = True) -> None:
        if follow:
            self.challenger.start()
        self._worker = threading.Thread(target=self._run, name="shadow-scoring", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Score (or time out) what is queued, flush, close the spool: a clean stop loses nothing."""
        self.challenger.stop()
        if self._worker is None:
            self._drain_and_close()
            return
        self._queue.put(STOP)
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("shadow scoring did not finish within %s s; its spool is kept", timeout)

    # -------------------------------------------------------------------------------------- request path

    def transactions(self, champion: Served, events: np.ndarray, outcomes: Sequence) -> None:
        """/transactions answered: `events` (the structured array), `outcomes` (with feature rows)."""
        self._offer("transactions", champion, (events, outcomes), len(outcomes))

    def predictions(self, champion: Served, matrix: np.ndarray, scores: np.ndarray, raw: bytes) -> None:
        """/predict answered: the checked input matrix, the scores, the request body."""
        self._offer("predict", champion, (matrix, scores, raw), len(matrix))

    def labels(self, ids: Sequence[int], labels: Sequence[float]) -> None:
        self._offer("labels", None, (ids, labels), len(ids))

    def _offer(self, source: str, champion: Served | None, payload: tuple, rows: int) -> None:
        challenger = self.challenger.served
        if challenger is None or not rows:
            return
        try:
            if self.writer.accept("labels" if source == "labels" else "pairs", rows):
                self._queue.put(
                    Item(source, time.monotonic(), time.time(), champion, challenger, payload, rows)
                )
        except Exception as exc:  # the answer is already made: never fail it for the shadow's sake
            self.counts["failed"] += rows
            log.warning("shadow: not queued: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        stopping = False
        while not stopping:
            wait = self.writer.seconds_until_due()  # None: nothing buffered, sleep until a request
            items = []
            if wait is None or wait > 0:
                with contextlib.suppress(queue.Empty):
                    items.append(self._queue.get(timeout=wait))
            items += self._take(self.writer.batch)
            stopping = STOP in items
            self._handle([i for i in items if i is not STOP])
            self.writer.flush_if_due()
            if not stopping and sum(i.rows for i in items) < self.writer.batch:
                time.sleep(LINGER)
        self._drain_and_close()

    def _take(self, limit: int) -> list:
        items: list = []
        while sum(i.rows for i in items if i is not STOP) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _drain_and_close(self) -> None:
        while items := [i for i in self._take(self.writer.batch) if i is not STOP]:
            self._handle(items)
        if not self.writer.close():
            log.warning(
                "shadow: pairs left in %s for the next start (%s)", self.writer.path, self.writer.last_error
            )

    def _handle(self, items: list[Item]) -> None:
        labels = [i for i in items if i.source == "labels"]
        pairs = [i for i in items if i.source != "labels"]
        for kind, group, rows_of in (("labels", labels, self._label_rows), ("pairs", pairs, self._pairs)):
            if not group:
                continue
            try:
                rows = rows_of(group)
            except Exception as exc:  # a bug, not the challenger failing: count the rows, keep the worker
                log.exception("shadow: %d request(s) not recorded: %s", len(group), exc)
                self.counts["failed"] += sum(i.rows for i in group)
                rows = []
            self.writer.spool(kind, rows, sum(i.rows for i in group))

    def _label_rows(self, items: list[Item]) -> list[dict]:
        rows = []
        for item in items:
            at = datetime.fromtimestamp(item.at, UTC).isoformat()
            ids, labels = item.payload
            rows += [
                {
                    "pair_id": str(i),
                    "registered_model": self.challenger.name,
                    "label": float(y),
                    "labelled_at": at,
                }
                for i, y in zip(ids, labels, strict=True)
            ]
        return rows

    def _pairs(self, items: list[Item]) -> list[dict]:
        """The pairs of `items`, the challenger scored in one matrix per challenger version."""
        rows: list[dict] = []
        groups: dict[int, tuple[Served, list[np.ndarray], list[list[dict]]]] = {}
        now = time.monotonic()
        for item in items:
            time.sleep(0)  # let a request waiting for the GIL have it
            pairs_of = self._transactions if item.source == "transactions" else self._predict
            made, inputs, error = pairs_of(item)
            waited = now - item.queued
            late = waited > self.timeout
            if late:
                error, inputs = f"not scored: waited {waited:.2f} s, over the {self.timeout:g} s limit", None
                self.counts["timed out"] += len(made)
            for row in made:
                row["challenger_version"] = item.challenger.model.version
                row["challenger_score"] = math.nan
                row["challenger_error"] = error or ""
            if inputs is not None and made:
                group = groups.setdefault(id(item.challenger), (item.challenger, [], []))
                group[1].append(inputs)
                group[2].append(made)
            elif made and not late:
                self.counts["not scored"] += len(made)
            rows += made
        for challenger, matrices, made in groups.values():
            targets = [row for part in made for row in part]
            try:
                scores = np.asarray(challenger.model.predict_matrix(np.vstack(matrices)), dtype=float).ravel()
                for row, score in zip(targets, scores, strict=True):
                    row["challenger_score"] = float(score)
            except Exception as exc:  # the challenger failed: the pairs say so
                self.counts["not scored"] += len(targets)
                for row in targets:
                    row["challenger_error"] = (
                        f"v{challenger.model.version} failed: {type(exc).__name__}: {exc}"
                    )
        return rows

    def _pair(self, item: Item, pair_id: str, event: dict, event_time: str, score: float) -> dict:
        return {
            "pair_id": pair_id,
            "registered_model": self.challenger.name,
            "event_time": event_time,
            "event": event,
            "champion_version": item.champion.model.version,
            "champion_score": float(score),
            "scored_at": datetime.fromtimestamp(item.at, UTC).isoformat(),
            "source": item.source,
        }

    def _transactions(self, item: Item) -> tuple[list[dict], np.ndarray | None, str | None]:
        """(pairs, the challenger's input matrix or None, why not) of one /transactions request: the events
        scored now (a duplicate was paired when first scored)."""
        events, outcomes = item.payload
        spec: OnlineSpec = item.champion.online
        fresh = [o for o in outcomes if not o.duplicate and o.features is not None]
        position: dict[int, int] = {}
        for p, i in enumerate(events["id"].tolist()):
            position.setdefault(i, p)
        made = []
        for outcome in fresh:
            event = events[position[outcome.id]]
            moment = pd.Timestamp(int(event["t"])).isoformat()
            fields = {spec.event_id: outcome.id, spec.time: moment}
            fields.update({k: int(event[k]) for k in spec.keys})
            fields.update({v: float(event[v]) for v in spec.values})
            made.append(self._pair(item, str(outcome.id), fields, moment, outcome.score))
        error = self._incompatible(item.champion, item.challenger)
        columns = item.challenger.model.columns
        missing = [c for c in columns if fresh and c not in fresh[0].features]
        if missing and not error:
            error = f"the challenger v{item.challenger.model.version} takes {missing}: no online features"
        if error or not fresh:
            return made, None, error
        return made, np.array([[o.features[c] for c in columns] for o in fresh], dtype=float), None

    def _incompatible(self, champion: Served, challenger: Served) -> str | None:
        """Why the challenger cannot be scored on the champion's online feature rows; None when it can."""
        key = (champion.model.version, challenger.model.version)
        if key not in self._compatible:
            self._compatible[key] = _why_not_alike(champion, challenger)
        return self._compatible[key]

    def _predict(self, item: Item) -> tuple[list[dict], np.ndarray | None, str | None]:
        """(pairs, the challenger's input matrix or None, why not) of one /predict request."""
        matrix, scores, raw = item.payload
        champion, challenger = item.champion.model, item.challenger.model
        request = uuid.uuid4().hex
        spec = item.champion.online
        body = (
            orjson.loads(raw)
            if spec is not None or not set(challenger.columns) <= set(champion.columns)
            else None
        )
        fields = present_columns(body, (spec.event_id, spec.time, *spec.keys, *spec.values)) if spec else {}
        scored_at = datetime.fromtimestamp(item.at, UTC).isoformat()
        made = []
        for row, score in enumerate(np.asarray(scores).ravel()):
            event = {name: values[row] for name, values in fields.items()}
            made.append(
                self._pair(item, f"{request}:{row}", event, _time_of(event, spec) or scored_at, score)
            )
        if set(challenger.columns) <= set(champion.columns):
            return made, matrix[:, [champion.columns.index(c) for c in challenger.columns]], None
        try:
            inputs = to_matrix(body, challenger)
        except PayloadError as exc:
            return made, None, f"v{challenger.version} cannot read this request: {exc.message}"
        return made, inputs, None

    # ------------------------------------------------------------------------------------------ health

    def health(self) -> dict:
        served = self.challenger.served
        counts, writer = self.writer.counts, self.writer
        return {
            "enabled": True,
            "alias": self.challenger.alias,
            "challenger_version": served.model.version if served else None,
            "status": "scoring" if served else f"no challenger: @{self.challenger.alias} is not set",
            "last_error": self.challenger.last_error,
            "timeout_seconds": self.timeout,
            "pairs_recorded": counts["recorded pairs"],
            "labels_recorded": counts["recorded labels"],
            "pairs_dropped": counts["dropped pairs"] + counts["dropped labels"],
            "pairs_timed_out": self.counts["timed out"],
            "pairs_not_scored": self.counts["not scored"],
            "pairs_lost_on_restart": writer.recovery.lost["pairs"],
            "pairs_recovered_on_restart": writer.recovery.recovered["pairs"],
            "pending": writer.pending,
            "store": writer.where,
            "store_error": writer.last_error,
        }


def _why_not_alike(champion: Served, challenger: Served) -> str | None:
    mine, theirs = champion.online, challenger.online
    version = f"the challenger v{challenger.model.version}"
    if theirs is None:
        return f"{version} has no online features: {challenger.no_online}"
    shape = ("event_id", "time", "keys", "values", "history")
    if any(getattr(mine, a) != getattr(theirs, a) for a in shape):
        return (
            f"{version} computes its online features otherwise than the champion "
            f"v{champion.model.version} ({theirs.history} of history, not {mine.history}): the server keeps "
            "the champion's"
        )
    return None


def _time_of(event: dict, spec: OnlineSpec | None) -> str | None:
    """The event's own time when a /predict row carries it as ISO 8601 text."""
    value = event.get(spec.time) if spec else None
    try:
        return datetime.fromisoformat(value).isoformat() if isinstance(value, str) else None
    except ValueError:
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
