"""Following a registry alias: the model (and its use case's online features) that `name@alias` points to now.

A background thread asks the registry where the alias points every `poll_seconds` (and at once when a
`mlops.model.promoted` Prefect event for the model arrives, when a Prefect API is configured), loads a new
version next to the one serving, and swaps them in one assignment. Requests in flight finish on the model they
started with. If loading fails, the old model keeps serving and the failure shows in `/health`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from champion.loading import ModelNotFoundError, ScoringModel, load_scoring_model, resolve_version, spec_for
from usecases.spec import OnlineSpec
from usecases.vocabulary import MODEL_PROMOTED, MODEL_ROLLED_BACK, model_resource

log = logging.getLogger("mlops.serving")


@dataclass(frozen=True)
class Served:
    model: ScoringModel
    loaded_at: str
    # The version's own use-case spec parts (built with the parameters it was trained with), when the
    # follower knows the use case: its online features and reason texts. Otherwise why not.
    online: OnlineSpec | None = None
    reason: Callable[[str, Mapping[str, float]], str] | None = None
    no_online: str | None = None


class ChampionFollower:
    """Holds the model `name@alias` points to, and follows the alias when it moves."""

    events: tuple[str, ...] = (MODEL_PROMOTED, MODEL_ROLLED_BACK)  # the events that move this alias

    def __init__(
        self, name: str, alias: str = "champion", poll_seconds: float = 10.0, use_case: str | None = None
    ):
        self.name, self.alias, self.poll_seconds, self.use_case = name, alias, poll_seconds, use_case
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
            self.served = self._with_spec(model)  # one assignment: requests see the old or the new model
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

    def _with_spec(self, model: ScoringModel) -> Served:
        if self.use_case is None:
            return Served(model, _now(), no_online="the server was started without a use case")
        try:
            spec = spec_for(self.use_case, model)
        except ModelNotFoundError as exc:  # its parameters cannot be read: /predict still serves
            return Served(model, _now(), no_online=str(exc))
        why = None if spec.online else f"the {self.use_case} use case declares no online features"
        return Served(model, _now(), spec.online, spec.reason, why)

    def health(self) -> dict:
        """What `/health` reports: the version served, when it loaded, the last registry check and error."""
        served = self.served
        return {
            "status": "ok" if served else "no model",
            "registered_model": self.name,
            "alias": self.alias,
            "version": served.model.version if served else None,
            "run_id": served.model.run_id if served else None,
            "loaded_at": served.loaded_at if served else None,
            "last_check": self.last_check,
            "last_error": self.last_error,
            "poll_seconds": self.poll_seconds,
            "online": served.no_online is None if served else None,
        }

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
            event=EventNameFilter(name=list(self.events)),
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
