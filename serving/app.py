"""Online serving: an HTTP service answering from a registered model's current champion.

    GET  /health        200 {"status": "ok", "version": "3", ...}: the version served (503 before one loads)
    POST /predict       {"dataframe_records": [...]}, {"dataframe_split": {"columns": [...], "data": [...]}},
                        {"instances": [...]} or {"inputs": ...}, as `mlflow models serve` takes them
                        -> {"predictions": [...], "model_version": "3"}
    POST /invocations   the same, under MLflow's path
    POST /transactions  raw events (fraud: TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT):
                        features computed online from per-key state, scored; ?features=true, ?explain=3
    POST /labels        late labels (TRANSACTION_ID, TX_FRAUD) for the state's label-delayed features

With a challenger (`name@challenger`), every answer of /predict, /transactions and /labels is also handed to
the shadow (`serving/shadow.py`): the challenger scores it off the request path and the pairs are recorded;
`/health` says how many ("shadow": {...}).

With a token (`mlops serve-model --token-file PATH`, or MLOPS_SERVE_TOKEN), every POST answers 401 unless
the request carries `Authorization: Bearer <token>` (constant-time comparison); `/health` and `/ping` stay
open for load balancers' and orchestrators' probes. The service follows the alias (`serving/follower.py`),
checks payloads before they reach the model (`serving/payloads.py`, `serving/transactions.py`), and keeps
real-time state in Redis (`MLOPS_REDIS_URL`) or in this process (`serving/online/`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from champion import store
from serving.auth import bearer_ok
from serving.follower import ChampionFollower
from serving.online.store import MemoryStore, open_store
from serving.payloads import json_response, payload_schema, predict_response
from serving.realtime import Online, warm_start
from serving.shadow import Shadow, ShadowSettings
from usecases.vocabulary import CHAMPION

log = logging.getLogger("mlops.serving")

# ------------------------------------------------------------------------------------------- the app


def create_app(
    follower: ChampionFollower,
    start_following: bool = True,
    token: str | None = None,
    online: Online | None = None,
    shadow: Shadow | None = None,
) -> FastAPI:
    """The service; with `token`, every POST requires `Authorization: Bearer <token>`; `online`: where the
    real-time state lives (default: this process); `shadow`: the challenger scored beside the champion (None:
    no shadow scoring). The shadow's worker runs from the app's start-up to its shutdown, which drains it."""
    online = online or Online(MemoryStore())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if start_following:
            if follower.served is None:  # answer the first request with the champion when there is one
                await asyncio.to_thread(follower.refresh)
            follower.start()
        if shadow is not None:
            shadow.start(follow=start_following)
        try:
            yield
        finally:
            follower.stop()
            if shadow is not None:  # what is queued is scored (or timed out) and stored before exit
                await asyncio.to_thread(shadow.stop)

    app = FastAPI(title=f"{follower.name}@{follower.alias}", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    def health() -> Response:
        body = follower.health()
        body["shadow"] = shadow.health() if shadow is not None else {"enabled": False}
        return json_response(body, 200 if follower.served else 503)

    @app.get("/ping")
    def ping() -> Response:
        return json_response(
            {"status": "ok" if follower.served else "no model"}, 200 if follower.served else 503
        )

    def refused(request: Request) -> Response | None:
        if token is not None and not bearer_ok(request.headers.get("authorization"), token):
            response = json_response({"error": "unauthorized: send Authorization: Bearer <token>"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="predictions"'
            return response
        return None

    async def predict(request: Request) -> Response:
        if (response := refused(request)) is not None:
            return response
        return predict_response(follower, await request.body(), shadow and shadow.predictions)

    served = follower.served
    body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": payload_schema(served.model if served else None)}},
        }
    }
    app.add_api_route("/predict", predict, methods=["POST"], openapi_extra=body)
    app.add_api_route("/invocations", predict, methods=["POST"], openapi_extra=body)

    @app.post("/transactions")
    async def transactions(request: Request) -> Response:
        if (response := refused(request)) is not None:
            return response
        observe = shadow and shadow.transactions
        return online.score(follower, await request.body(), request.query_params, observe)

    @app.post("/labels")
    async def labels(request: Request) -> Response:
        if (response := refused(request)) is not None:
            return response
        return online.label(follower, await request.body(), shadow and shadow.labels)

    return app


@dataclass(frozen=True)
class RealTime:
    """The real-time path's settings: whose online features, where the state lives, how late an event may
    be, what history warms the state (a file; None: the version's own data if the store is empty; "none")."""

    use_case: str | None = None
    state_url: str | None = None
    lateness: timedelta = timedelta(hours=1)
    history: str | None = None


@dataclass(frozen=True)
class Options:
    """How a server serves, besides where it listens: the alias it follows, how often it checks it, the
    token, the real-time path, and the shadow (None: no shadow scoring)."""

    alias: str = CHAMPION
    poll_seconds: float = 10.0
    token: str | None = None
    realtime: RealTime = RealTime()
    shadow: ShadowSettings | None = ShadowSettings()


def build_app(name: str, options: Options | None = None) -> FastAPI:
    """The service for `name` as `mlops serve-model` runs it: the alias's version loaded (503 until there is
    one), the real-time state warmed, the challenger followed when `options.shadow` (and the alias is the
    champion's). In-process, e.g. to benchmark with and without a challenger in shadow."""
    store.configure()
    options = options or Options()
    realtime = options.realtime
    follower = ChampionFollower(name, options.alias, options.poll_seconds, use_case=realtime.use_case)
    follower.refresh()  # serve at once if there is a champion; otherwise 503 until there is
    online = Online(open_store(realtime.state_url), realtime.lateness)
    log.info("real-time state: %s; %s", online.store.kind, warm_start(online, follower, realtime.history))
    shadow = None
    if options.shadow is not None and options.alias == CHAMPION:
        shadow = Shadow.open(name, realtime.use_case, options.poll_seconds, options.shadow)
        served = shadow.challenger.served
        log.info(
            "shadow: %s; pairs to %s; %s",
            f"{name}@{shadow.challenger.alias} v{served.model.version}" if served else "no challenger yet",
            shadow.writer.where,
            shadow.writer.recovery,
        )
    served = follower.served
    log.info("serving %s@%s v%s", name, options.alias, served.model.version if served else "-")
    return create_app(follower, token=options.token, online=online, shadow=shadow)


def serve(name: str, host: str = "127.0.0.1", port: int = 8080, options: Options | None = None) -> None:
    """Serve `name` until interrupted (blocking); a clean stop (SIGTERM, SIGINT) stores every pair."""
    app = build_app(name, options)
    # The interpreter holds MLflow's, Prefect's and pandas' objects for good: keep the garbage collector
    # from rescanning them mid-request.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    log.info("stopped after %.0f s", time.perf_counter() - started)
