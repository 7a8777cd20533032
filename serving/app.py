"""Online serving: an HTTP service answering predictions from a registered model's current champion.

    GET  /health    200 {"status": "ok", "version": "3", ...}: the version served (503 before one loads)
    POST /predict   {"dataframe_records": [...]}, {"dataframe_split": {"columns": [...], "data": [...]}},
                    {"instances": [...]} or {"inputs": ...}, as `mlflow models serve` takes them
                    → {"predictions": [...], "model_version": "3"}
    POST /invocations  the same, under MLflow's path

With a token (`mlops serve-model --token-file PATH`, or the environment variable MLOPS_SERVE_TOKEN), the two
prediction paths answer 401 unless the request carries `Authorization: Bearer <token>` (compared in constant
time); `/health` and `/ping` stay open for load balancers' and orchestrators' probes.

The service follows the alias: a background thread asks the registry where `@champion` points every
`poll_seconds` (and at once when a `mlops.model.promoted` Prefect event for the model arrives, when a Prefect
API is configured), loads a new version next to the one serving, and swaps them in one assignment. Requests
in flight finish on the model they started with; no restart, no gap. If loading fails, the old model keeps
serving and the failure shows in `/health`.

Every payload is checked against the model's signature before it reaches the model: malformed JSON or a
payload of the wrong shape is a 400, a missing column, a non-numeric or null value, a fraction or an
out-of-range number in an integer column is a 422 naming the column and the row, more than MAX_ROWS rows a
413. A bad payload never gets a 500.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import math
import os
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from champion import store
from champion.loading import ScoringModel, load_scoring_model, resolve_version
from usecases.vocabulary import MODEL_PROMOTED, MODEL_ROLLED_BACK, model_resource

log = logging.getLogger("mlops.serving")

MAX_ROWS = 100_000
INTEGER_TYPES = {"long", "integer"}
# The range a signature's integer type holds; a pyfunc model gets those columns as int64/int32.
INTEGER_RANGES = {"long": (-(2.0**63), 2.0**63), "integer": (-(2.0**31), 2.0**31)}
NUMERIC_TYPES = {"double", "float", "long", "integer", "boolean"}
TOKEN_ENV = "MLOPS_SERVE_TOKEN"


class TokenError(ValueError):
    """The token file cannot be read, or holds no token."""


def load_token(token_file: Path | None = None, env: dict[str, str] | None = None) -> str | None:
    """The bearer token prediction requests must carry: the first line of `token_file` (which wins), else
    MLOPS_SERVE_TOKEN, else None (no token: predictions are open, as before)."""
    if token_file is not None:
        try:
            lines = Path(token_file).expanduser().read_text().strip().splitlines()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise TokenError(f"the token file {token_file} is empty")
        return token
    token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return token or None


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>` (constant-time comparison)."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


class PayloadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Served:
    model: ScoringModel
    loaded_at: str


class ChampionFollower:
    """Holds the model `name@alias` points to, and follows the alias when it moves."""

    def __init__(self, name: str, alias: str = "champion", poll_seconds: float = 10.0):
        self.name, self.alias, self.poll_seconds = name, alias, poll_seconds
        self.served: Served | None = None
        self.last_check: str | None = None
        self.last_error: str | None = None
        self.checks = 0  # registry look-ups done (poll or event), successful or not
        self.subscribed = threading.Event()  # set once listening for promotion events
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def refresh(self) -> bool:
        """Load the version the alias points to if it is not the one serving; True when it swapped."""
        try:
            target = str(resolve_version(self.name, alias=self.alias).version)
            self.last_check = _now()
            current = self.served
            if current is not None and current.model.version == target:
                self.last_error = None
                return False
            model = load_scoring_model(self.name, version=target)
            self.served = Served(model, _now())  # one assignment: requests see the old or the new model
            self.last_error = None
            log.info(
                "%s@%s: now serving v%s (was %s)",
                self.name,
                self.alias,
                target,
                f"v{current.model.version}" if current else "nothing",
            )
            return True
        except Exception as exc:  # keep serving what we have; report it on /health
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("%s@%s: could not refresh: %s", self.name, self.alias, self.last_error)
            return False
        finally:
            self.checks += 1

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        poller = threading.Thread(target=self._poll, name="champion-poller", daemon=True)
        poller.start()
        self._threads.append(poller)
        listener = threading.Thread(target=self._listen, name="champion-events", daemon=True)
        listener.start()
        self._threads.append(listener)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _poll(self) -> None:
        if self.served is None:
            self.refresh()
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.refresh()

    def _listen(self) -> None:
        """Refresh at once on a `mlops.model.promoted` event for this model (only with a Prefect API)."""
        # lazy: Prefect only to listen for events; a server without a Prefect API never loads it
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            return
        try:
            asyncio.run(self._listen_async())
        except Exception as exc:  # polling still follows the alias
            log.info("not listening for promotion events (%s); polling every %s s", exc, self.poll_seconds)

    async def _listen_async(self) -> None:
        # lazy: as in _listen
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        wanted = EventFilter(
            event=EventNameFilter(name=[MODEL_PROMOTED, MODEL_ROLLED_BACK]),
            resource=EventResourceFilter(id=[model_resource(self.name)]),
        )
        async with get_events_subscriber(filter=wanted) as subscriber:
            self.subscribed.set()
            async for _event in subscriber:
                if self._stop.is_set():
                    return
                self.wake()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- payloads


def _column_values(body: dict, columns: tuple[str, ...]) -> tuple[dict[str, list], int]:
    """Column name -> list of values, from any of the accepted payload shapes; and the row count."""
    keys = [k for k in ("dataframe_records", "dataframe_split", "instances", "inputs") if k in body]
    if len(keys) != 1:
        raise PayloadError(
            400,
            "the JSON object must have exactly one of dataframe_records, dataframe_split, instances, inputs"
            + (f" (got {', '.join(keys)})" if keys else f" (got keys {', '.join(map(str, body)) or 'none'})"),
        )
    key = keys[0]
    data = body[key]
    if key == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise PayloadError(400, 'dataframe_split must be {"columns": [...], "data": [[...], ...]}')
        names = data.get("columns", list(columns))
        if not isinstance(names, list):
            raise PayloadError(
                400, f"dataframe_split.columns must be a list of column names; got {_describe(names)}"
            )
        for i, name in enumerate(names):
            if not isinstance(name, str):
                message = f"dataframe_split.columns must hold names (strings): item {i} is {_describe(name)}"
                raise PayloadError(400, message)
        if len(set(names)) != len(names):
            duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
            raise PayloadError(422, f"dataframe_split.columns names a column twice: {', '.join(duplicated)}")
        rows = data["data"]
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(names):
                raise PayloadError(
                    422,
                    f"dataframe_split.data row {i} must be a list of {len(names)} values (one per column)",
                )
        position = {n: i for i, n in enumerate(names)}
        _require(columns, position)
        return {c: [row[position[c]] for row in rows] for c in columns}, len(rows)
    if isinstance(data, dict):  # {"column": [values...]} (inputs / instances in columnar form)
        _require(columns, data)
        values = {c: data[c] if isinstance(data[c], list) else [data[c]] for c in columns}
        lengths = {len(v) for v in values.values()}
        if len(lengths) > 1:
            raise PayloadError(422, f"{key}: columns have different lengths {sorted(lengths)}")
        return values, lengths.pop() if lengths else 0
    if not isinstance(data, list):
        raise PayloadError(400, f"{key} must be a list of records (or, for instances/inputs, of rows)")
    if all(isinstance(r, dict) for r in data):
        for i, record in enumerate(data):
            missing = [c for c in columns if c not in record]
            if missing:
                raise PayloadError(422, f"record {i} is missing required column(s): {', '.join(missing)}")
        return {c: [r[c] for r in data] for c in columns}, len(data)
    if key != "dataframe_records" and all(isinstance(r, list) for r in data):
        for i, row in enumerate(data):
            if len(row) != len(columns):
                raise PayloadError(
                    422,
                    f"{key} row {i} has {len(row)} values; the model takes {len(columns)}: {list(columns)}",
                )
        return {c: [row[j] for row in data] for j, c in enumerate(columns)}, len(data)
    raise PayloadError(422, f"{key} must hold only JSON objects (records) or only lists (rows)")


def _require(columns: tuple[str, ...], present) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        raise PayloadError(422, f"missing required column(s): {', '.join(missing)}")


def to_matrix(body: object, model: ScoringModel) -> np.ndarray:
    """Check a decoded JSON payload against the model's signature; return its input matrix."""
    if not isinstance(body, dict):
        raise PayloadError(400, "the request body must be a JSON object")
    columns = model.columns
    values, n = _column_values(body, columns)
    if n == 0:
        raise PayloadError(422, "no rows to score")
    if n > MAX_ROWS:
        raise PayloadError(413, f"{n:,} rows in one request; at most {MAX_ROWS:,}")
    matrix = np.empty((n, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        column_values = values[column]
        kind = model.column_types.get(column, "double")
        if kind not in NUMERIC_TYPES:
            raise PayloadError(422, f"column {column}: type {kind} is not supported by this service")
        if not all(type(v) is float or type(v) is int for v in column_values):
            for i, v in enumerate(column_values):
                if v is None:
                    if column in model.required:
                        raise PayloadError(422, f"column {column}: missing value (null) in row {i}")
                elif isinstance(v, bool) and kind != "boolean":
                    raise PayloadError(422, f"column {column}: expected {kind}, got boolean {v} in row {i}")
                elif not isinstance(v, int | float):
                    raise PayloadError(
                        422, f"column {column}: expected {kind}, got {_describe(v)} in row {i}"
                    )
            column_values = [math.nan if v is None else v for v in column_values]
        try:
            array = np.asarray(column_values, dtype=np.float64)
        except OverflowError:  # an integer beyond a double (orjson refuses those; other callers may not)
            i = next(i for i, v in enumerate(column_values) if not _fits_a_double(v))
            raise PayloadError(
                422, f"column {column}: the number in row {i} is too large for {kind}"
            ) from None
        if column in model.required and not np.isfinite(array).all():
            i = int(np.flatnonzero(~np.isfinite(array))[0])
            raise PayloadError(422, f"column {column}: non-finite value {array[i]} in row {i}")
        if kind in INTEGER_TYPES:
            fractional = np.flatnonzero(np.isfinite(array) & (array != np.round(array)))
            if fractional.size:
                i = int(fractional[0])
                raise PayloadError(
                    422, f"column {column}: expected {kind} (a whole number), got {array[i]} in row {i}"
                )
            low, high = INTEGER_RANGES[kind]
            outside = np.flatnonzero(np.isfinite(array) & ((array < low) | (array >= high)))
            if outside.size:
                i = int(outside[0])
                raise PayloadError(
                    422, f"column {column}: {array[i]:.6g} in row {i} is out of range for {kind}"
                )
        matrix[:, j] = array
    return matrix


def _fits_a_double(value: float) -> bool:
    try:
        float(value)
        return True
    except OverflowError:
        return False


def _describe(value: object) -> str:
    """A short description of a JSON value for an error message (never the repr of a whole structure: a
    deeply nested one would not even have one)."""
    if isinstance(value, str):
        return f"string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with {len(value)} key(s)"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r:.40}"


# ------------------------------------------------------------------------------------------- the app


def _json(content: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


JSON_TYPES = {"boolean": "boolean", "integer": "integer", "long": "integer"}


def payload_schema(model=None) -> dict:
    """The request body `/predict` accepts, as OpenAPI documents it (MLflow's scoring formats); with a model,
    its columns and their types. The handler checks every payload itself: this is for clients and for
    schema-driven fuzzing (`tests/unit/test_serving_schema.py`)."""
    value = {"type": ["number", "integer", "boolean", "null"]}
    row: dict = {"type": "object"}
    if model is not None:
        columns = {
            c: {"type": JSON_TYPES.get(model.column_types.get(c, ""), "number")} for c in model.columns
        }
        row = {"type": "object", "properties": columns, "required": list(columns)}
    split = {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "data": {"type": "array", "items": {"type": "array", "items": value}},
        },
        "required": ["columns", "data"],
    }
    return {
        "oneOf": [
            {"type": "object", "properties": {"dataframe_split": split}, "required": ["dataframe_split"]},
            {
                "type": "object",
                "properties": {"dataframe_records": {"type": "array", "items": row}},
                "required": ["dataframe_records"],
            },
            {
                "type": "object",
                "properties": {"instances": {"type": "array", "items": row}},
                "required": ["instances"],
            },
            {
                "type": "object",
                "properties": {"inputs": {"type": "array", "items": row}},
                "required": ["inputs"],
            },
        ]
    }


def create_app(follower: ChampionFollower, start_following: bool = True, token: str | None = None) -> FastAPI:
    """The service; with `token`, /predict and /invocations require `Authorization: Bearer <token>`."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if start_following:
            follower.start()
        try:
            yield
        finally:
            follower.stop()

    app = FastAPI(title=f"{follower.name}@{follower.alias}", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    def health() -> Response:
        served = follower.served
        body = {
            "status": "ok" if served else "no model",
            "registered_model": follower.name,
            "alias": follower.alias,
            "version": served.model.version if served else None,
            "run_id": served.model.run_id if served else None,
            "loaded_at": served.loaded_at if served else None,
            "last_check": follower.last_check,
            "last_error": follower.last_error,
            "poll_seconds": follower.poll_seconds,
        }
        return _json(body, 200 if served else 503)

    @app.get("/ping")
    def ping() -> Response:
        return _json({"status": "ok" if follower.served else "no model"}, 200 if follower.served else 503)

    async def predict(request: Request) -> Response:
        if token is not None and not bearer_ok(request.headers.get("authorization"), token):
            response = _json({"error": "unauthorized: send Authorization: Bearer <token>"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="predictions"'
            return response
        served = follower.served  # one read: the whole request uses this model
        if served is None:
            return _json({"error": f"no version of {follower.name} behind @{follower.alias} yet"}, 503)
        raw = await request.body()
        try:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise PayloadError(400, f"the request body is not valid JSON: {exc}") from None
            matrix = to_matrix(body, served.model)
        except PayloadError as exc:
            return _json({"error": exc.message, "model_version": served.model.version}, exc.status)
        predictions = served.model.predict_matrix(matrix)
        return _json({"predictions": np.asarray(predictions).ravel(), "model_version": served.model.version})

    served = follower.served
    body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": payload_schema(served.model if served else None)}},
        }
    }
    app.add_api_route("/predict", predict, methods=["POST"], openapi_extra=body)
    app.add_api_route("/invocations", predict, methods=["POST"], openapi_extra=body)
    return app


def serve(
    name: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    alias: str = "champion",
    poll_seconds: float = 10.0,
    token: str | None = None,
) -> None:
    """Serve `name@alias` until interrupted (blocking); with `token`, predictions require it (bearer)."""
    store.configure()
    follower = ChampionFollower(name, alias, poll_seconds)
    follower.refresh()  # serve at once if there is a champion; otherwise 503 until there is
    # The interpreter holds MLflow's, Prefect's and pandas' objects for good: keep the garbage collector
    # from rescanning them mid-request.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    log.info("serving %s@%s v%s", name, alias, follower.served.model.version if follower.served else "-")
    uvicorn.run(
        create_app(follower, token=token), host=host, port=port, log_level="warning", access_log=False
    )
    log.info("stopped after %.0f s", time.perf_counter() - started)
