"""The real-time state (`serving/online/state.py`) on the embedded store: what it keeps, for how long, and
what loading history into a live store does. Parity with batch features: tests/unit/test_fraud_features.py
and tests/flow/test_realtime.py (Redis too)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from serving.online.state import NS_PER_DAY, LateEventError, OnlineState, as_events
from serving.online.store import MemoryStore
from usecases.fraud import spec as fraud

SPEC = fraud.build_spec(fraud.Params()).online  # 30-day windows behind a 7-day delay: 37 days kept
T0 = np.datetime64("2018-09-01T00:00:00", "ns").view(np.int64)


def events(*rows, label=np.nan) -> np.ndarray:
    """(id, day, card, terminal) rows at noon of 2018-09-01 + day."""
    ids, days, cards, terminals = (np.array(column) for column in zip(*rows, strict=True))
    return as_events(
        {
            "TRANSACTION_ID": ids,
            "TX_DATETIME": T0 + (days * 24 + 12) * 3_600 * 10**9,
            "CUSTOMER_ID": cards,
            "TERMINAL_ID": terminals,
            "TX_AMOUNT": ids * 1.0,
            "TX_FRAUD": np.full(len(ids), label),
        },
        SPEC,
    )


def constant(rows):
    return np.full(len(rows), 0.5)


@pytest.fixture
def state():
    return OnlineState(MemoryStore(), SPEC, "test", lateness=timedelta(hours=1))


def test_what_is_kept_is_bounded_by_the_history_the_features_read(state):
    """Events older than the longest window plus the delay (and the lateness) leave a key when it is next
    written, and the label index drops whole days: memory follows the retention, not the traffic."""
    state.ingest(events((1, 0, 7, 3), (2, 10, 7, 3)), constant, "1")
    assert list(state.events_of("CUSTOMER_ID", 7)["id"]) == [1, 2]
    state.ingest(events((3, 38, 7, 4)), constant, "1")  # day 0 is now 38 days behind (37 + 1 h kept): gone
    assert list(state.events_of("CUSTOMER_ID", 7)["id"]) == [2, 3]
    # Terminal 3 was not written since: it keeps its events until touched (or its wall-clock expiry).
    assert list(state.events_of("TERMINAL_ID", 3)["id"]) == [1, 2]
    index_days = {key for key in state.store._values if ":index:" in key}
    assert state.index_key(int(T0 // NS_PER_DAY)) not in index_days
    assert state.index_key(int(T0 // NS_PER_DAY) + 38) in index_days
    assert state.label([1], [1.0]).unknown == [1]  # its day left the index with it


def test_history_loaded_into_a_live_store_adds_and_keeps_what_was_answered(state):
    state.ingest(events((5, 1, 7, 3)), constant, "4")
    kept = state.load_history(events((4, 0, 7, 3), (5, 1, 7, 3), (6, 0, 8, 9), label=0.0))
    assert kept == 3
    card = state.events_of("CUSTOMER_ID", 7)
    assert list(card["id"]) == [4, 5]
    assert card["score"][1] == 0.5 and card["version"][1] == 4  # the answered event, not the history's copy
    assert list(state.events_of("CUSTOMER_ID", 8)["id"]) == [6]


def test_a_duplicate_in_one_request_and_a_late_event(state):
    answers = state.ingest(events((1, 0, 7, 3), (1, 0, 7, 3)), constant, "2")
    assert [(a.duplicate, a.score, a.version) for a in answers] == [(False, 0.5, "2"), (True, 0.5, "2")]
    assert len(state.events_of("CUSTOMER_ID", 7)) == 1
    with pytest.raises(LateEventError, match="behind the newest event"):
        state.ingest(events((9, -1, 7, 3)), constant, "2")
    assert len(state.events_of("CUSTOMER_ID", 7)) == 1


def test_labels_go_in_chunks_and_land_as_in_one_transaction(state):
    """A request's labels split into transactions of `chunk` ids record the same labels, and say the same
    unknown ids, as one transaction would."""
    rows = [(i, i % 3, 100 + i % 4, 200 + i % 5) for i in range(1, 12)]
    state.ingest(events(*rows), constant, "1")
    twin = OnlineState(MemoryStore(), SPEC, "test", lateness=timedelta(hours=1))
    twin.ingest(events(*rows), constant, "1")
    ids, labels = [*range(1, 12), 99], [float(i % 2) for i in range(1, 13)]
    chunked, whole = state.label(ids, labels, chunk=2), twin.label(ids, labels, chunk=len(ids))
    assert chunked == whole and chunked.unknown == [99] and chunked.applied == list(range(1, 12))
    for card in range(100, 104):
        mine, theirs = state.events_of("CUSTOMER_ID", card), twin.events_of("CUSTOMER_ID", card)
        assert list(mine["label"]) == list(theirs["label"]) == [float(i % 2) for i in mine["id"]]
