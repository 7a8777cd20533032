"""Real-time scoring from raw transactions (`POST /transactions`, `POST /labels`): parity with batch scoring,
and the service under real conditions. Redis is a real server: the machine's (MLOPS_TEST_REDIS_URL, default
db 15 of 127.0.0.1:6379, under a prefix of each test's own) and, for the outage, one started here.

The champion is the session's small simulated fraud run (`champion_home`); the events are the Fraud Detection
Handbook's, whose raw schema is the same.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import timedelta
from itertools import pairwise

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import needs
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from ports import end_group, start_on_a_free_port

from champion.store import configure
from cli.main import app as cli
from serving.app import create_app
from serving.follower import ChampionFollower
from serving.online.store import MemoryStore, RedisStore
from serving.realtime import Online, warm_start
from usecases.fraud.features import FEATURES, build_features

NAME = "fraud-detector"
DAY = pd.Timestamp("2018-08-01")
RAW = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def redis_store() -> RedisStore:
    url = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    store = RedisStore(url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    try:
        store.keys()
    except Exception as exc:
        needs("a Redis server", f"{url}: {exc}")
    return store


@pytest.fixture
def stores():
    made = []

    def make(kind: str):
        store = redis_store() if kind == "redis" else MemoryStore()
        made.append(store)
        return store

    yield make
    for store in made:
        store.clear()


@pytest.fixture(scope="module")
def handbook_month(handbook_path, tmp_path_factory):
    """The handbook's 38 days before DAY (history) and DAY itself, as files and frames."""
    start = DAY - timedelta(days=38)
    frame = pq.read_table(
        handbook_path,
        columns=RAW,
        filters=[("TX_DATETIME", ">=", start), ("TX_DATETIME", "<", DAY + timedelta(days=1))],
    ).to_pandas()
    frame = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    folder = tmp_path_factory.mktemp("handbook-day")
    history, day = frame[frame.TX_DATETIME < DAY], frame[frame.TX_DATETIME >= DAY]
    history.to_parquet(folder / "history.parquet")
    frame.to_parquet(folder / "all.parquet")
    return {"history": folder / "history.parquet", "all": folder / "all.parquet", "day": day, "frame": frame}


def service(store, history, use_case="fraud", lateness=timedelta(hours=1)):
    configure()  # MLflow on this test's MLOPS_HOME, as `mlops serve-model` does
    follower = ChampionFollower(NAME, use_case=use_case)
    assert follower.refresh(), follower.last_error
    online = Online(store, lateness)
    warm_start(online, follower, history)
    return TestClient(create_app(follower, start_following=False, online=online)), follower


def payload(rows: pd.DataFrame) -> list[dict]:
    out = rows[RAW[:-1]].copy()
    out["TX_DATETIME"] = out["TX_DATETIME"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return out.to_dict(orient="records")


def replay(client: TestClient, day: pd.DataFrame, per_request: int, singly: int = 0) -> pd.DataFrame:
    """POST the day's transactions in order (the first `singly` one per request, the rest `per_request` at a
    time); the features and scores answered, by transaction id."""
    answers = []
    records = payload(day)
    singly = min(singly, len(records))
    bounds = [*range(singly), *range(singly, len(records), per_request), len(records)]
    for start, end in pairwise(bounds):
        response = client.post("/transactions?features=true", json=records[start:end])
        assert response.status_code == 200, response.text
        answers += response.json()["results"]
    assert not any(a["duplicate"] for a in answers)
    return pd.DataFrame(
        [{"TRANSACTION_ID": a["TRANSACTION_ID"], "score": a["score"], **a["features"]} for a in answers]
    ).set_index("TRANSACTION_ID")


def test_a_handbook_day_through_the_service_equals_batch_scoring(
    champion_home, handbook_month, stores, tmp_path
):
    """Every feature equals `build_features` (1e-9) and every score `mlops score` (1e-6), with the state in
    Redis (the first 1,000 transactions one request each, then requests of 100) and in the process
    (requests of 100)."""
    out = tmp_path / "scores.parquet"
    code = cli(["score", "fraud", "-i", str(handbook_month["all"]), "-o", str(out)], standalone_mode=False)
    assert (code or 0) == 0
    batch_scores = pd.read_parquet(out).set_index("TRANSACTION_ID")["fraud_score"]
    batch = build_features(handbook_month["frame"], delay_days=7).set_index("TRANSACTION_ID")
    day = handbook_month["day"]
    for kind, singly in (("redis", 1000), ("embedded", 0)):
        client, _ = service(stores(kind), handbook_month["history"])
        online = replay(client, day, 100, singly)
        assert len(online) == len(day) > 8_000
        ids = online.index
        expected = batch.loc[ids, list(FEATURES)].astype(float)
        feature_gap = (online[list(FEATURES)] - expected).abs().max().max()
        score_gap = (online["score"] - batch_scores.loc[ids]).abs().max()
        assert feature_gap <= 1e-9, (kind, feature_gap)
        assert score_gap <= 1e-6, (kind, score_gap)


def test_a_new_champion_with_another_delay_is_served_with_its_own_features(
    champion_home, handbook_month, stores
):
    """v2 records a 3-day label delay: once the alias moves, the online features use 3 days (as batch
    scoring of v2 does), read from the same raw events the state kept for v1."""
    client, follower = service(stores("embedded"), handbook_month["history"])
    day = handbook_month["day"]
    first = replay(client, day.iloc[:200], 50)
    mlflow.set_tracking_uri(f"sqlite:///{champion_home / 'mlflow.db'}")
    registry = MlflowClient()
    v1 = registry.get_model_version_by_alias(NAME, "champion")
    params = {**registry.get_run(v1.run_id).data.params, "param.delay_days": "3"}
    with mlflow.start_run(experiment_id=registry.get_run(v1.run_id).info.experiment_id) as run:
        mlflow.log_params(params)
    v2 = registry.create_model_version(NAME, v1.source, run_id=run.info.run_id).version
    registry.set_registered_model_alias(NAME, "champion", v2)
    assert follower.refresh() and follower.served.model.version == str(v2)
    second = replay(client, day.iloc[200:400], 50)
    frame = handbook_month["frame"]
    for answered, delay in ((first, 7), (second, 3)):
        batch = build_features(frame, delay_days=delay).set_index("TRANSACTION_ID").loc[answered.index]
        gap = (answered[list(FEATURES)] - batch[list(FEATURES)].astype(float)).abs().max().max()
        assert gap <= 1e-9, (delay, gap)
    # The delays really differ on these rows, so the check above could fail.
    risk = "TERMINAL_ID_RISK_7DAY_WINDOW"
    other = build_features(frame, delay_days=7).set_index("TRANSACTION_ID").loc[second.index, risk]
    assert (other - second[risk]).abs().max() > 0.01


def events(*rows) -> list[dict]:
    """Transactions of card 1 / terminal 5 (unless given) at the given hours of 2018-09-01, with ids."""
    out = []
    for tx_id, hour, *rest in rows:
        customer, terminal = rest if rest else (1, 5)
        moment = pd.Timestamp("2018-09-01") + timedelta(hours=hour)
        out.append(
            {
                "TRANSACTION_ID": tx_id,
                "TX_DATETIME": moment.isoformat(),
                "CUSTOMER_ID": customer,
                "TERMINAL_ID": terminal,
                "TX_AMOUNT": 10.0 * tx_id,
            }
        )
    return out


def test_duplicates_late_events_labels_and_bad_input(champion_home, stores):
    """One real Redis: an event posted twice counts once; an out-of-order event within the lateness reads
    exactly the events before it; a later one is refused and changes nothing; bad fields are named."""
    store = stores("redis")
    client, follower = service(store, "none")
    post = lambda body, query="?features=true": client.post(f"/transactions{query}", json=body)  # noqa: E731
    first = post(events((1, 10.0)))
    assert first.status_code == 200, first.text
    again = post(events((1, 10.0))).json()["results"][0]
    assert again["duplicate"] is True and again["score"] == first.json()["results"][0]["score"]

    # 3 (10:20) before 2 (10:10): 2 sees 1 only; 4 sees 1, 2, 3; the twice-posted 1 counts once.
    answers = {
        a["TRANSACTION_ID"]: a["features"]
        for body in (events((3, 10 + 1 / 3)), events((2, 10 + 1 / 6)), events((4, 11.0)))
        for a in post(body).json()["results"]
    }
    assert [answers[i]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] for i in (2, 3, 4)] == [2.0, 2.0, 4.0]
    assert answers[2]["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx((10 + 20) / 2)

    state = Online(store).state(NAME, follower.served)
    before = state.events_of("CUSTOMER_ID", 1)
    late = post(events((5, 9.0)))  # two hours behind the newest event, one hour allowed
    assert late.status_code == 422 and "behind the newest event" in late.json()["error"], late.text
    half_bad = events((6, 11.5), (7, 11.6))
    del half_bad[1]["TX_AMOUNT"]
    refused = post(half_bad)
    assert refused.status_code == 422 and "event 1 (TRANSACTION_ID 7): TX_AMOUNT is missing" in refused.text
    assert state.events_of("CUSTOMER_ID", 1).tobytes() == before.tobytes(), (
        "a refused request changed the state"
    )

    for body, status, words in (
        ([{**events((8, 12.0))[0], "TX_DATETIME": "yesterday"}], 422, "TX_DATETIME must be an ISO 8601 time"),
        ([{**events((8, 12.0))[0], "CUSTOMER_ID": "abc"}], 422, "CUSTOMER_ID must be a whole number"),
        ([{**events((8, 12.0))[0], "TX_AMOUNT": "NaN"}], 422, "TX_AMOUNT must be a finite number"),
        ([], 422, "no events"),
        ("just text", 400, "send one event"),
    ):
        response = post(body)
        assert response.status_code == status and words in response.json()["error"], response.text
    assert client.post("/transactions", content=b"{").status_code == 400
    assert post(events((8, 12.0)), "?explain=99").status_code == 422

    explained = post(events((8, 12.0)), "?explain=3").json()["results"][0]
    assert len(explained["reasons"]) == 3 and all(r["reason"] for r in explained["reasons"])

    two = [{"TRANSACTION_ID": 1, "TX_FRAUD": 1}, {"TRANSACTION_ID": 999, "TX_FRAUD": 0}]
    labels = client.post("/labels", json=two)
    assert labels.json() == {"applied": 1, "unknown": [999]}
    assert state.events_of("TERMINAL_ID", 5)["label"][0] == 1.0
    bad_label = client.post("/labels", json=[{"TRANSACTION_ID": 1, "TX_FRAUD": 2}])
    assert bad_label.status_code == 422 and "TX_FRAUD must be 0 or 1" in bad_label.text


def test_a_version_without_online_features_answers_404(champion_home):
    client, _ = service(MemoryStore(), "none", use_case=None)
    response = client.post("/transactions", json=events((1, 10.0)))
    assert response.status_code == 404 and "cannot score raw events" in response.json()["error"]


def test_redis_unreachable_is_a_503_never_a_score(champion_home, tmp_path):
    """A Redis started here, then killed: 503 naming the store, nothing scored; back: scores again."""

    def launch(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def answers(port: int) -> bool:
        try:
            return RedisStore(f"redis://127.0.0.1:{port}/0").keys() >= 0
        except Exception:
            return False

    process, port = start_on_a_free_port(launch, answers, 30, "redis-server")
    try:
        client, _ = service(RedisStore(f"redis://127.0.0.1:{port}/0"), "none")
        assert client.post("/transactions", json=events((1, 10.0))).status_code == 200
        end_group(process.pid)
        process.wait(10)
        down = client.post("/transactions", json=events((2, 10.5)))
        assert down.status_code == 503, down.text
        assert f"127.0.0.1:{port}" in down.json()["error"] and "score" not in down.json()
        process = launch(port)  # the same port, free again
        deadline = pd.Timestamp.now() + pd.Timedelta(seconds=20)
        while not answers(port):
            assert pd.Timestamp.now() < deadline, "redis-server did not come back"
        back = client.post("/transactions", json=events((2, 10.5)))
        assert back.status_code == 200 and back.json()["results"][0]["duplicate"] is False
    finally:
        end_group(process.pid)


@pytest.mark.parametrize("kind, days", [("embedded", 20), ("redis", 12)])
def test_weeks_of_events_with_labels_arriving_late_keep_parity(kind, days, stores):
    """The state alone (no model): simulated transactions after 40 days of history, labels posted once they
    are a delay old, as a fraud team confirms them; every feature equals `build_features` on the whole table,
    terminal risks included (which read only those labels)."""
    from serving.online.state import OnlineState, as_events
    from usecases.fraud import spec as fraud
    from usecases.fraud.simulator import simulate_transactions

    raw = simulate_transactions(n_customers=300, n_terminals=600, n_days=40 + days, seed=3)
    raw = raw.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    batch = build_features(raw, delay_days=7).set_index("TRANSACTION_ID")
    spec = fraud.build_spec(fraud.Params()).online
    times = raw["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
    all_events = as_events({**{c: raw[c].to_numpy() for c in raw.columns}, "TX_DATETIME": times}, spec)
    split = times < times[0] + 40 * 86_400 * 10**9
    state = OnlineState(stores(kind), spec, NAME)
    state.load_history(all_events[split])
    replayed, labels = all_events[~split].copy(), all_events[~split]["label"].copy()
    replayed["label"] = np.nan
    online, confirmed, delay = {}, 0, 7 * 86_400 * 10**9
    for start in range(0, len(replayed), 20):
        # Every label a delay old by the batch's newest event (features never read a younger one).
        newest = replayed["t"][min(start + 20, len(replayed)) - 1]
        due = confirmed + int(np.searchsorted(replayed["t"][confirmed:start], newest - delay, side="right"))
        if due > confirmed:
            state.label(replayed["id"][confirmed:due].tolist(), labels[confirmed:due].tolist())
            confirmed = due
        for outcome in state.ingest(
            replayed[start : start + 20], lambda rows: np.zeros(len(rows)), "1", True
        ):
            online[outcome.id] = outcome.features
    assert confirmed > 0, "no label arrived during the replay: the terminal risks were not put to the test"
    answered = pd.DataFrame.from_dict(online, orient="index")
    gap = (answered[list(FEATURES)] - batch.loc[answered.index, list(FEATURES)].astype(float)).abs().max()
    assert len(answered) == (~split).sum() and gap.max() <= 1e-9, gap[gap > 1e-9]
