"""Shadow scoring and the pair store: the model server scores every request with the challenger too, off the
request path, and records the pairs durably (`serving/shadow.py`, `tasks/challenger/`).

The app runs in process (FastAPI's TestClient: its lifespan starts and drains the shadow) on tiny XGBoost
versions registered with the fraud features and a recorded label delay, so the server computes their online
features as for a trained fraud model. The stores are real: Parquet under a temporary MLOPS_HOME and a
throwaway PostgreSQL database; the killed writer is a real process, SIGKILLed.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from conftest import needs
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature
from stores import postgres_available, postgres_database
from typer.testing import CliRunner

from champion.loading import load_scoring_model
from cli.main import app as cli
from infra.servers.settings import Settings
from serving.app import create_app
from serving.follower import ChampionFollower
from serving.online.store import MemoryStore
from serving.realtime import Online
from serving.shadow import ChallengerFollower, Shadow, ShadowSettings
from tasks.challenger.pairs import PAIR_COLUMNS, read_labels, read_pairs, write_batch
from tasks.challenger.spool import PairWriter, spool_dir
from usecases.fraud.features import FEATURES
from usecases.vocabulary import CHALLENGER, CHAMPION

NAME = "fraud-detector"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1 and v2 (label delay 7 days, different trees) and v3 (3 days): tiny boosters on the 15 features."""
    home = tmp_path_factory.mktemp("shadow-registry")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("shadow", artifact_location=(home / "artifacts").as_uri())
    client.create_registered_model(NAME)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.gamma(2.0, 2.0, (400, len(FEATURES))), columns=list(FEATURES))
    label = (frame.TX_AMOUNT + frame.CUSTOMER_ID_NB_TX_1DAY_WINDOW > 8).astype(int)
    for seed, delay in ((1, 7), (2, 7), (3, 3)):
        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 1 + seed, "seed": seed},
            xgb.DMatrix(frame, label=label),
            num_boost_round=3 * seed,
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_params({"param.delay_days": str(delay)})
            info = mlflow.xgboost.log_model(
                booster,
                name="model",
                signature=infer_signature(frame.head(), booster.predict(xgb.DMatrix(frame.head()))),
                pip_requirements=["xgboost"],  # not inferred: seconds per version
            )
        client.create_model_version(NAME, info.model_uri, run_id=run.info.run_id, model_id=info.model_id)
    yield client
    mlflow.set_tracking_uri(None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Pairs under a fresh MLOPS_HOME (the registry stays the module's); no PostgreSQL store."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))
    monkeypatch.delenv("MLOPS_PAIRS_URL", raising=False)
    return tmp_path / "mlops"


@pytest.fixture
def pairs_database():
    if not postgres_available():
        needs("PostgreSQL at 127.0.0.1:5432", "the server-mode pair store is tested on it")
    with postgres_database() as uri:
        yield uri.replace("postgresql+psycopg2://", "postgresql://")


def aliases(client: MlflowClient, champion: str, challenger: str | None) -> None:
    client.set_registered_model_alias(NAME, CHAMPION, champion)
    if challenger is not None:
        client.set_registered_model_alias(NAME, CHALLENGER, challenger)
    elif CHALLENGER in client.get_registered_model(NAME).aliases:
        client.delete_registered_model_alias(NAME, CHALLENGER)


def app(shadow: Shadow | None) -> TestClient:
    follower = ChampionFollower(NAME, use_case="fraud")
    assert follower.refresh(), follower.last_error
    return TestClient(
        create_app(follower, start_following=False, online=Online(MemoryStore()), shadow=shadow)
    )


def events(*rows) -> list[dict]:
    """Transactions (id, hour of 2018-09-01, card, terminal)."""
    return [
        {
            "TRANSACTION_ID": tx_id,
            "TX_DATETIME": (pd.Timestamp("2018-09-01") + timedelta(hours=hour)).isoformat(),
            "CUSTOMER_ID": card,
            "TERMINAL_ID": terminal,
            "TX_AMOUNT": 7.5 * tx_id,
        }
        for tx_id, hour, card, terminal in rows
    ]


# three events, then one, then the first again (a duplicate: answered as first, not paired again)
REQUESTS = [
    events((1, 10, 1, 5), (2, 10.2, 1, 6), (3, 10.5, 2, 5)),
    events((4, 10.7, 1, 5)),
    events((1, 10, 1, 5)),
]


def predict_rows(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(7)
    rows = [
        {f: float(v) for f, v in zip(FEATURES, rng.gamma(2.0, 2.0, len(FEATURES)), strict=True)}
        for _ in range(n)
    ]
    for i, row in enumerate(rows):
        row.update(CUSTOMER_ID=100 + i, TX_DATETIME=f"2018-09-02T0{i}:00:00")  # beside the inputs: the event
    return rows


def replay(client: TestClient) -> tuple[list[dict], list[float]]:
    """The REQUESTS, then one /predict: the /transactions results and the predictions."""
    results = []
    for body in REQUESTS:
        response = client.post("/transactions?features=true", json=body)
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    response = client.post("/predict", json={"dataframe_records": predict_rows()})
    assert response.status_code == 200, response.text
    return results, response.json()["predictions"]


def pair_row(i: int, score: float = 0.5) -> dict:
    return {
        "pair_id": str(i),
        "registered_model": NAME,
        "event_time": f"2018-09-01T10:{i % 60:02d}:00",
        "event": {"TRANSACTION_ID": i, "CUSTOMER_ID": i % 7, "TX_DATETIME": f"2018-09-01T10:{i % 60:02d}:00"},
        "champion_version": "1",
        "champion_score": score,
        "challenger_version": "2",
        "challenger_score": math.nan if i % 5 == 0 else 1 - score,
        "challenger_error": "not scored: waited" if i % 5 == 0 else "",
        "scored_at": pd.Timestamp("2026-01-01", tz="UTC") + timedelta(seconds=i),
        "source": "transactions",
    }


# --------------------------------------------------------------------------------------- the pair store


def test_the_pair_store_round_trip_parquet_and_postgres_alike(home, pairs_database):
    """Both stores give the same frames; a batch written twice is read once; `since` filters; the latest
    label of a pair counts."""
    rows = [pair_row(i, score=i / 20) for i in range(12)]
    labels = [
        {"pair_id": "3", "registered_model": NAME, "label": 0, "labelled_at": "2026-01-02T00:00:00"},
        {"pair_id": "3", "registered_model": NAME, "label": 1, "labelled_at": "2026-01-03T00:00:00+00:00"},
        {"pair_id": "4", "registered_model": NAME, "label": 0, "labelled_at": "2026-01-02T00:00:00"},
    ]
    frames = {}
    for store in (None, pairs_database):
        write_batch(NAME, "pairs", rows[:8], store)
        write_batch(NAME, "pairs", rows[5:], store)  # 5..7 again, as a recovered batch would be
        write_batch(NAME, "labels", labels, store)
        write_batch("another-model", "pairs", rows[:2], store)
        frames[store] = (
            read_pairs(NAME, url=store),
            read_pairs(NAME, since=pd.Timestamp("2018-09-01T10:06:00"), url=store),
            read_labels(NAME, url=store),
        )
    for parquet, postgres in zip(frames[None], frames[pairs_database], strict=True):
        pd.testing.assert_frame_equal(parquet, postgres[parquet.columns])
    pairs, since, latest = frames[None]
    assert list(pairs.pair_id) == [str(i) for i in range(12)]
    assert set(PAIR_COLUMNS) - {"event"} <= set(pairs.columns) and {"CUSTOMER_ID", "TX_DATETIME"} <= set(
        pairs.columns
    )
    assert pairs.challenger_score.isna().sum() == 3 and str(pairs.event_time.dt.tz) == "UTC"
    assert list(since.pair_id) == [str(i) for i in range(6, 12)]
    assert dict(zip(latest.pair_id, latest.label, strict=True)) == {"3": 1.0, "4": 0.0}
    assert len(list((home / "pairs" / NAME).glob("pairs-*.parquet"))) == 2


def test_a_clean_close_stores_every_row_and_leaves_no_spool(home):
    writer = PairWriter(NAME, batch=1_000, flush_seconds=3600)
    for start in range(0, 1_234, 100):
        chunk = [pair_row(i) for i in range(start, min(start + 100, 1_234))]
        assert writer.accept("pairs", len(chunk))
        writer.spool("pairs", chunk)
        writer.flush_if_due()  # one batch of 1,000 on the way
    assert writer.counts["recorded pairs"] == 1_000 and writer.pending == 234
    assert writer.close()
    assert len(read_pairs(NAME)) == 1_234
    assert not list(spool_dir(NAME).iterdir())


def test_a_full_queue_drops_and_counts(home):
    writer = PairWriter(NAME, max_pending=25)
    assert writer.accept("pairs", 20)
    assert not writer.accept("pairs", 10)  # 30 > 25: dropped, not accepted
    assert writer.counts["dropped pairs"] == 10 and writer.pending == 20
    writer.spool("pairs", [pair_row(i) for i in range(20)])
    assert writer.close() and len(read_pairs(NAME)) == 20


KILLED_WRITER = """
import sys, time
from datetime import UTC, datetime
from tasks.challenger.spool import PairWriter
writer = PairWriter("fraud-detector", batch=100, flush_seconds=3600)
def row(i):
    return {"pair_id": str(i), "registered_model": "fraud-detector", "event_time": "2018-09-01T10:00:00",
            "event": {"TRANSACTION_ID": i}, "champion_version": "1", "champion_score": 0.25,
            "challenger_version": "2", "challenger_score": 0.75, "challenger_error": "",
            "scored_at": datetime.now(UTC), "source": "transactions"}
for start in range(0, 950, 10):             # scored: 9 batches stored, 50 rows buffered
    assert writer.accept("pairs", 10)
    writer.spool("pairs", [row(i) for i in range(start, start + 10)])
    writer.flush_if_due()
for _ in range(5):                          # 50 rows waiting for the challenger
    assert writer.accept("pairs", 10)
assert writer.accept("labels", 2)
writer.spool("labels", [{"pair_id": "7", "registered_model": "fraud-detector", "label": 1,
                         "labelled_at": datetime.now(UTC)}] * 2)
print(writer.counts["recorded pairs"], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("store", ["parquet", "postgres"])
def test_a_killed_writer_loses_only_unscored_rows_and_the_restart_says_how_many(home, store, request):
    url = request.getfixturevalue("pairs_database") if store == "postgres" else None
    env = {**os.environ, "MLOPS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("MLOPS_PAIRS_URL", None)
    if url:
        env["MLOPS_PAIRS_URL"] = url
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "900"  # stored before the kill
        before = len(read_pairs(NAME, url=url))
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    writer = PairWriter(NAME, url=url)  # the restart
    recovery = writer.recovery
    assert (recovery.recovered["pairs"], recovery.lost["pairs"], recovery.recovered["labels"]) == (50, 50, 2)
    assert "50 pairs recovered" in str(recovery) and "50 pairs lost" in str(recovery)
    pairs = read_pairs(NAME, url=url)
    stored = set(pairs.pair_id)
    assert before >= 900 and {str(i) for i in range(950)} <= stored
    assert len(pairs) - before <= 100  # at most one batch was not stored when it was killed
    health = Shadow(ChallengerFollower(NAME, CHALLENGER), writer).health()
    assert health["pairs_lost_on_restart"] == 50 and health["pairs_recovered_on_restart"] == 50
    assert read_labels(NAME, url=url).label.tolist()[-1] == 1.0
    assert writer.close() and [p.name for p in spool_dir(NAME).iterdir()] == []
    again = PairWriter(NAME, url=url)
    assert again.recovery.spools == 0 and again.close()  # recovered once, not again


# --------------------------------------------------------------------------------------- the server


def test_the_challenger_in_shadow_pairs_every_answer_and_changes_none(registry, home):
    aliases(registry, "1", "2")
    shadow = Shadow.open(NAME, "fraud", settings=ShadowSettings(batch=4, flush_seconds=60))
    with app(None) as plain, app(shadow) as shadowed:
        assert replay(shadowed) == replay(plain)  # the answers do not change
        assert shadowed.post("/labels", json=[{"TRANSACTION_ID": 2, "TX_FRAUD": 1}]).status_code == 200
        health = shadowed.get("/health").json()["shadow"]
        assert health["challenger_version"] == "2" and health["status"] == "scoring"
        assert plain.get("/health").json()["shadow"] == {"enabled": False}
    # the app stopped: everything queued is stored
    results, predictions = replay(app(None))
    v2 = load_scoring_model(NAME, "2")
    pairs = read_pairs(NAME)
    assert len(pairs) == 4 + 3 and (pairs.challenger_error == "").all()
    assert (pairs.champion_version == "1").all() and (pairs.challenger_version == "2").all()

    tx = pairs[pairs.source == "transactions"].set_index("pair_id")
    fresh = [r for r in results if not r["duplicate"]]  # the twice-posted 1 was paired when first scored
    assert sorted(tx.index) == ["1", "2", "3", "4"] == sorted(str(r["TRANSACTION_ID"]) for r in fresh)
    answered = {str(r["TRANSACTION_ID"]): r for r in fresh}
    features = np.array([[answered[i]["features"][c] for c in v2.columns] for i in tx.index])
    np.testing.assert_allclose(tx.challenger_score, v2.predict_matrix(features), rtol=1e-6)
    np.testing.assert_allclose(tx.champion_score, [answered[i]["score"] for i in tx.index], rtol=1e-6)
    assert np.abs(tx.challenger_score - tx.champion_score).max() > 0.01  # two different models
    assert tx.loc["3", "CUSTOMER_ID"] == 2 and tx.loc["3", "TERMINAL_ID"] == 5
    assert tx.loc["3", "TX_DATETIME"] == "2018-09-01T10:30:00" and tx.loc["3", "TX_AMOUNT"] == 22.5
    assert tx.loc["3", "event_time"] == pd.Timestamp("2018-09-01T10:30:00", tz="UTC")

    rows = predict_rows()
    pr = pairs[pairs.source == "predict"].sort_values("pair_id")
    assert len({p.split(":")[0] for p in pr.pair_id}) == 1 and [p.split(":")[1] for p in pr.pair_id] == [
        "0",
        "1",
        "2",
    ]
    matrix = np.array([[row[c] for c in v2.columns] for row in rows])
    np.testing.assert_allclose(pr.challenger_score, v2.predict_matrix(matrix), rtol=1e-6)
    np.testing.assert_allclose(pr.champion_score, predictions, rtol=1e-6)
    assert pr.CUSTOMER_ID.tolist() == [100, 101, 102]
    assert pr.event_time.tolist()[1] == pd.Timestamp("2018-09-02T01:00:00", tz="UTC")
    assert read_labels(NAME)[["pair_id", "label"]].values.tolist() == [["2", 1.0]]


def test_a_challenger_with_other_features_is_paired_with_the_reason(registry, home):
    """v3 reads a 3-day label delay: the server keeps the champion's features, so /transactions pairs say
    why the challenger was not scored; /predict rows are scored (same inputs)."""
    aliases(registry, "1", "3")
    shadow = Shadow.open(NAME, "fraud")
    with app(shadow) as client:
        replay(client)
    assert shadow.health()["pairs_not_scored"] == 4
    pairs = read_pairs(NAME)
    tx, pr = pairs[pairs.source == "transactions"], pairs[pairs.source == "predict"]
    assert len(tx) == 4 and tx.challenger_score.isna().all()
    assert tx.challenger_error.str.contains("otherwise than the champion v1").all()
    assert tx.challenger_error.str.contains(r"33 days, 0:00:00 of history, not 37 days").all()
    assert len(pr) == 3 and pr.challenger_score.notna().all() and (pr.challenger_error == "").all()


def test_without_a_challenger_nothing_is_recorded_until_one_is_set(registry, home):
    aliases(registry, "1", None)
    shadow = Shadow.open(NAME, "fraud", settings=ShadowSettings(flush_seconds=0.05))
    with app(shadow) as client:
        replay(client)
        client.post("/labels", json=[{"TRANSACTION_ID": 2, "TX_FRAUD": 1}])
        health = client.get("/health").json()["shadow"]
        assert health["challenger_version"] is None and "no challenger" in health["status"]
        assert read_pairs(NAME).empty and read_labels(NAME).empty

        aliases(registry, "1", "2")
        assert shadow.challenger.refresh()
        client.post("/transactions", json=events((10, 12, 3, 5)))
        deadline = time.monotonic() + 20
        while len(read_pairs(NAME)) < 1:  # flushed within flush_seconds, while serving
            assert time.monotonic() < deadline, "the pair was not stored while serving"
            time.sleep(0.05)

        aliases(registry, "1", None)
        assert shadow.challenger.refresh() and shadow.challenger.served is None
        client.post("/transactions", json=events((11, 12.5, 3, 5)))
    assert read_pairs(NAME).pair_id.tolist() == ["10"]


def test_rows_that_waited_past_the_time_limit_are_recorded_without_the_challenger(registry, home):
    aliases(registry, "1", "2")
    shadow = Shadow.open(NAME, "fraud", settings=ShadowSettings(timeout=0.05))
    client = app(shadow)  # no `with`: the app's start-up does not run, so the worker waits
    replay(client)
    time.sleep(0.2)
    shadow.start(follow=False)
    shadow.stop()
    pairs = read_pairs(NAME)
    assert len(pairs) == 7 and pairs.challenger_score.isna().all() and pairs.champion_score.notna().all()
    assert pairs.challenger_error.str.match(r"not scored: waited \d+\.\d\d s, over the 0\.05 s limit").all()
    health = shadow.health()
    assert (health["pairs_timed_out"], health["pairs_not_scored"], health["pairs_recorded"]) == (7, 0, 7)


def test_server_mode_passes_the_pair_store_to_clients_and_the_runner(tmp_path):
    settings = Settings.from_env(
        {"MLOPS_SERVERS_DIR": str(tmp_path), "MLOPS_ENV_FILE": "", "MLOPS_DB_PREFIX": "x"}
    )
    assert settings.pairs_url == "postgresql://postgres@127.0.0.1:5432/x_pairs"
    assert settings.pairs_url in settings.databases()  # created by `up`, dropped by `down --purge`
    assert settings.client_env()["MLOPS_PAIRS_URL"] == settings.runner_env()["MLOPS_PAIRS_URL"]
    mine = f"postgresql://me@db:5432/{uuid.uuid4().hex[:6]}"
    assert (
        Settings.from_env({"MLOPS_ENV_FILE": "", "MLOPS_PAIRS_URL": mine}).serve_env()["MLOPS_PAIRS_URL"]
        == mine
    )


def test_a_pair_store_url_that_is_not_postgresql_is_refused_up_front(home, monkeypatch):
    monkeypatch.setenv("MLOPS_PAIRS_URL", "redis://me:s3cret@127.0.0.1:6379/0")
    result = CliRunner().invoke(cli, ["serve-model", "fraud", "--port", "1"])
    assert result.exit_code == 2 and "MLOPS_PAIRS_URL must be a postgresql:// URL" in result.output
    assert "s3cret" not in result.output
    with pytest.raises(ValueError, match="must be postgresql://"):
        PairWriter(NAME, url="redis://127.0.0.1:6379/0")
