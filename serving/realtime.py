"""The model server's real-time path: raw events -> per-key state -> the use case's online features -> the
version being served, with reason codes on request.

    POST /transactions[?features=true][&explain=K]
        -> {"model_version": "3", "results": [{"TRANSACTION_ID": 7, "score": 0.91, "model_version": "3",
                                                "duplicate": false, "features": {...}, "reasons": [...]}]}
    POST /labels -> {"applied": 2, "unknown": [12]}

Features are computed with the served version's own parameters (its label delay, read from its training run),
so a new champion keeps parity with its batch features; the state keeps raw events for the longest history
any served version reads. Status codes: 404 when the use case (or version) has no online features, 422 for a
bad event or one later than the lateness allows (nothing recorded), 503 when the state store cannot be
reached (never a score from partial state).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

import numpy as np
import orjson
from fastapi.responses import Response

from serving.follower import ChampionFollower, Served
from serving.online.state import LateEventError, OnlineState
from serving.online.store import Conflict, MemoryStore, RedisStore, StateUnavailable
from serving.payloads import PayloadError, json_response
from serving.transactions import events_from, events_of_table, labels_from
from tasks.explain import ExplainUnsupported, top_reasons

log = logging.getLogger("mlops.serving")
TRUE = ("1", "true", "yes")


class Online:
    """Real-time scoring for one server: the state store, and one `OnlineState` per served version."""

    def __init__(
        self, store: MemoryStore | RedisStore, lateness: timedelta = timedelta(hours=1), history=None
    ) -> None:
        self.store, self.lateness = store, lateness
        self.longest: timedelta | None = history  # the longest history any version served here reads
        self._states: dict[str, OnlineState] = {}

    def state(self, name: str, served: Served) -> OnlineState:
        """The state as `served`'s version reads it (its own online spec), keeping the longest history."""
        spec = served.online
        self.longest = max(self.longest or spec.history, spec.history)
        state = self._states.get(served.model.version)
        if state is None or state.history < self.longest:
            state = OnlineState(self.store, spec, name, self.lateness, self.longest)
            self._states = {served.model.version: state}  # one version serves at a time
        return state

    def score(
        self, follower: ChampionFollower, raw: bytes, query: Mapping[str, str], observe=None
    ) -> Response:
        """The answer to a /transactions request; `observe(served, events, outcomes)`, when given, sees what
        was answered, feature rows included (shadow scoring: `serving/shadow.py`)."""
        served = follower.served  # one read: the whole request uses this version
        if served is None:
            return json_response(
                {"error": f"no version of {follower.name} behind @{follower.alias} yet"}, 503
            )
        version = served.model.version
        if served.online is None:
            message = f"{follower.name} v{version} cannot score raw events: {served.no_online}; use /predict"
            return json_response({"error": message, "model_version": version}, 404)
        try:
            with_features, explain = _options(query, len(served.model.columns))
            events = events_from(_loads(raw), served.online)
            state = self.state(follower.name, served)
            rows_wanted = with_features or explain > 0 or observe is not None  # built anyway: only kept
            outcomes = state.ingest(events, _scorer(served), version, rows_wanted)
            reasons = _reasons(served, outcomes, explain) if explain else {}
        except PayloadError as exc:
            return json_response({"error": exc.message, "model_version": version}, exc.status)
        except (LateEventError, ExplainUnsupported) as exc:
            return json_response({"error": str(exc), "model_version": version}, 422)
        except (StateUnavailable, Conflict) as exc:
            log.warning("real-time state: %s", exc)
            return json_response({"error": f"not scored: {exc}", "model_version": version}, 503)
        id_column = served.online.event_id
        results = []
        for outcome in outcomes:
            result = {
                id_column: outcome.id,
                "score": outcome.score,
                "model_version": outcome.version,
                "duplicate": outcome.duplicate,
            }
            if with_features and outcome.features is not None:
                result["features"] = outcome.features
            if outcome.id in reasons:
                result["reasons"] = reasons[outcome.id]
            results.append(result)
        response = json_response({"model_version": version, "results": results})
        if observe is not None:
            observe(served, events, outcomes)
        return response

    def label(self, follower: ChampionFollower, raw: bytes, observe=None) -> Response:
        """The answer to a /labels request; `observe(ids, labels)`, when given, sees the labels recorded."""
        served = follower.served
        if served is None or served.online is None:
            why = "no version is served yet" if served is None else served.no_online
            return json_response(
                {"error": f"{follower.name}: labels are not taken: {why}"}, 503 if not served else 404
            )
        try:
            ids, labels = labels_from(_loads(raw), served.online)
            done = self.state(follower.name, served).label(ids, labels)
        except PayloadError as exc:
            return json_response({"error": exc.message}, exc.status)
        except (StateUnavailable, Conflict) as exc:
            log.warning("real-time state: %s", exc)
            return json_response({"error": f"labels not recorded: {exc}"}, 503)
        if observe is not None:
            observe(ids, labels)
        return json_response({"applied": len(done.applied), "unknown": done.unknown})


def _loads(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(400, f"the request body is not valid JSON: {exc}") from None


def _options(query: Mapping[str, str], n_features: int) -> tuple[bool, int]:
    """?features=true and ?explain=K (0 <= K <= the model's inputs)."""
    with_features = query.get("features", "false").lower() in TRUE
    text = query.get("explain", "0")
    if not text.isdigit() or int(text) > n_features:
        raise PayloadError(422, f"explain must be a whole number from 0 to {n_features}, got {text!r}")
    return with_features, int(text)


def _scorer(served: Served):
    columns = served.model.columns

    def score(rows: list[dict[str, float]]) -> np.ndarray:
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise RuntimeError(f"v{served.model.version} takes {missing}, which the online features lack")
        return served.model.predict_matrix(np.array([[row[c] for c in columns] for row in rows]))

    return score


def _reasons(served: Served, outcomes, k: int) -> dict[int, list[dict]]:
    """Reason codes of the events scored now (a duplicate keeps its first answer, without them)."""
    scored = [o for o in outcomes if o.features is not None]
    if not scored:
        return {}
    columns = served.model.columns
    matrix = np.array([[o.features[c] for c in columns] for o in scored])
    per_row = top_reasons(served.model, matrix, k, served.reason)
    return {o.id: reasons for o, reasons in zip(scored, per_row, strict=True)}


def warm_start(online: Online, follower: ChampionFollower, history: str | None) -> str:
    """Fill the state from past events before serving: from `history` (a .parquet or .csv of raw events) when
    given; else, when the store holds nothing yet, from the data the served version was trained on
    ("none": start empty). Returns what was done, for the log."""
    served = follower.served
    if served is None or served.online is None or history == "none":
        return "state not warmed"
    state = online.state(follower.name, served)
    if history is None and state.watermark() is not None:
        return "state kept: the store already holds events"
    frame, source = _history_frame(follower, served, history)
    kept = state.load_history(events_of_table(frame, served.online))
    return f"state warmed with {kept:,} events of {source} (the last {state.history + state.lateness})"


def _history_frame(follower: ChampionFollower, served: Served, history: str | None):
    # lazy: reading tables and the use case's data source only when warming
    from champion.loading import training_params
    from tasks.ingest import read_table
    from usecases import spec_module

    if history is not None:
        return read_table(history), history
    module = spec_module(follower.use_case)
    params = training_params(module, served.model.name, served.model.version, served.model.run_id)
    frame = module.load(params)
    return frame, frame.attrs.get("source", f"v{served.model.version}'s training data")
