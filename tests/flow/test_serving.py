"""The model service: answers from the champion, follows the alias without a restart, 4xx for bad payloads.

Models here are small XGBoost boosters registered directly (no training pipeline), so the tests are fast.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import uvicorn
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.models import infer_signature
from ports import bound_socket, end_group, start_on_a_free_port

from serving.app import create_app
from serving.follower import ChampionFollower
from tasks.challenger.pairs import read_pairs
from usecases.vocabulary import CHALLENGER

NAME = "toy-detector"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
COLUMNS = ["amount", "count", "flag"]


def register_toy(home: Path, seed: int, name: str = NAME, champion: bool = True, tags=None) -> str:
    """Train a tiny booster on random data, register it with a signature, optionally make it champion."""
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, 500),
            "count": rng.integers(0, 20, 500).astype("int64"),
            "flag": rng.integers(0, 2, 500).astype("int64"),
        }
    )
    label = ((frame.amount > 120) ^ (frame.flag == 1)).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2 + seed % 3, "seed": seed},
        xgb.DMatrix(frame, label=label),
        num_boost_round=5 + seed,
    )
    client = MlflowClient()
    experiment = client.get_experiment_by_name("toy") or client.get_experiment(
        client.create_experiment("toy", artifact_location=(home / "artifacts").as_uri())
    )
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        info = mlflow.xgboost.log_model(
            booster,
            name="model",
            signature=infer_signature(frame.head(5), booster.predict(xgb.DMatrix(frame.head(5)))),
            input_example=frame.head(3),
            model_format="ubj",
        )
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags=tags or {}
    ).version
    if champion:
        client.set_registered_model_alias(name, "champion", version)
    return str(version)


class Service:
    """The app under uvicorn in a thread, on a socket bound here (port 0: the kernel's choice, held)."""

    def __init__(self, follower: ChampionFollower):
        self.socket = bound_socket()
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(follower), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


@pytest.fixture
def rows():
    return [
        {"amount": 150.0, "count": 3, "flag": 0},
        {"amount": 20.5, "count": 0, "flag": 1},
        {"amount": 99.0, "count": 12, "flag": 1},
    ]


def expected(version: str, rows, name: str = NAME) -> np.ndarray:
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return np.asarray(model.predict(pd.DataFrame(rows)[COLUMNS].astype({"count": "int64", "flag": "int64"})))


def test_serves_the_champion_and_follows_the_alias_without_restart(mlops_home, rows):
    v1 = register_toy(mlops_home, seed=1)
    follower = ChampionFollower(NAME, poll_seconds=0.2)
    with Service(follower) as service:
        health = httpx.get(f"{service.url}/health")
        assert health.status_code == 200
        assert health.json()["version"] == v1 and health.json()["status"] == "ok"
        answer = httpx.post(f"{service.url}/predict", json={"dataframe_records": rows}).json()
        assert answer["model_version"] == v1
        np.testing.assert_allclose(answer["predictions"], expected(v1, rows), rtol=1e-6)

        v2 = register_toy(mlops_home, seed=4)  # a different model; the alias moves to it
        deadline = time.monotonic() + 20
        while httpx.get(f"{service.url}/health").json()["version"] != v2:
            assert time.monotonic() < deadline, "the service did not pick up the new champion"
            time.sleep(0.1)
        answer = httpx.post(f"{service.url}/invocations", json={"dataframe_records": rows}).json()
        assert answer["model_version"] == v2
        np.testing.assert_allclose(answer["predictions"], expected(v2, rows), rtol=1e-6)
        assert not np.allclose(expected(v1, rows), expected(v2, rows))

        # a registered version without the alias is never served: not after two more looks at the registry
        register_toy(mlops_home, seed=7, champion=False)
        checks = follower.checks
        deadline = time.monotonic() + 20
        while follower.checks < checks + 2:
            assert time.monotonic() < deadline, "the service stopped polling"
            time.sleep(0.05)
        assert httpx.get(f"{service.url}/health").json()["version"] == v2


def test_every_payload_shape_mlflow_accepts(mlops_home, rows):
    v1 = register_toy(mlops_home, seed=2)
    follower = ChampionFollower(NAME, poll_seconds=60)
    follower.refresh()
    want = expected(v1, rows)
    with Service(follower) as service:
        payloads = [
            {"dataframe_records": rows},
            {"dataframe_split": {"columns": COLUMNS, "data": [[r[c] for c in COLUMNS] for r in rows]}},
            {"instances": rows},
            {"instances": [[r[c] for c in COLUMNS] for r in rows]},
            {"inputs": {c: [r[c] for r in rows] for c in COLUMNS}},
            {"dataframe_records": [{**r, "extra": "ignored"} for r in rows]},
        ]
        for payload in payloads:
            response = httpx.post(f"{service.url}/predict", json=payload)
            assert response.status_code == 200, (payload, response.text)
            np.testing.assert_allclose(response.json()["predictions"], want, rtol=1e-6)


BAD_PAYLOADS = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"rows": []}, 400, "exactly one of"),
    ({"dataframe_records": [{"amount": 1.0, "count": 1}]}, 422, "flag"),
    ({"dataframe_records": [{"amount": "lots", "count": 1, "flag": 0}]}, 422, "column amount"),
    ({"dataframe_records": [{"amount": None, "count": 1, "flag": 0}]}, 422, "null"),
    ({"dataframe_records": [{"amount": 1.0, "count": 1.5, "flag": 0}]}, 422, "column count"),
    ({"dataframe_records": [{"amount": 1.0, "count": True, "flag": 0}]}, 422, "boolean"),
    ({"dataframe_records": []}, 422, "no rows"),
    ({"dataframe_split": {"columns": ["amount", "count"], "data": [[1.0, 2]]}}, 422, "flag"),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2]]}}, 422, "row 0"),
    ({"instances": [[1.0, 2]]}, 422, "takes 3"),
    ({"dataframe_records": "nope"}, 400, "list of records"),
    # issue 13: a list where a column name belongs was a TypeError, a 500
    ({"dataframe_split": {"columns": [["amount"], "count", "flag"], "data": [[1.0, 2, 0]]}}, 400, "item 0"),
]


def test_bad_payloads_get_a_clear_4xx_never_a_500(mlops_home):
    register_toy(mlops_home, seed=3)
    follower = ChampionFollower(NAME, poll_seconds=60)
    follower.refresh()
    with Service(follower) as service:
        for payload, status, message in BAD_PAYLOADS:
            if isinstance(payload, bytes):
                response = httpx.post(f"{service.url}/predict", content=payload)
            else:
                response = httpx.post(f"{service.url}/predict", json=payload)
            assert response.status_code == status, (payload, response.text)
            assert message in response.json()["error"], (payload, response.text)


def test_no_champion_yet_is_503_then_serves_once_promoted(mlops_home, rows):
    mlflow.set_tracking_uri(f"sqlite:///{mlops_home / 'mlflow.db'}")
    follower = ChampionFollower(NAME, poll_seconds=0.2)
    follower.refresh()
    with Service(follower) as service:
        assert httpx.get(f"{service.url}/health").status_code == 503
        assert httpx.post(f"{service.url}/predict", json={"dataframe_records": rows}).status_code == 503
        version = register_toy(mlops_home, seed=5)
        deadline = time.monotonic() + 20
        while httpx.get(f"{service.url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(f"{service.url}/health").json()["version"] == version


def test_serve_model_command(mlops_home, rows, tmp_path):
    """`mlops serve-model` as a real process: health reports the champion's version and the challenger in
    shadow; stopped with SIGTERM, it has stored the pair of every row it answered."""
    version = register_toy(mlops_home, seed=6, name="fraud-detector", tags={"use_case": "fraud"})
    challenger = register_toy(mlops_home, seed=2, name="fraud-detector", champion=False)
    MlflowClient().set_registered_model_alias("fraud-detector", CHALLENGER, challenger)
    env = {**os.environ, "MLOPS_HOME": str(mlops_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "serve-model.log"

    def launch(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve-model", "fraud", "--port", str(port)],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def answers(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    process, port = start_on_a_free_port(launch, answers, 120, "mlops serve-model")
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.json()["version"] == version and health.json()["registered_model"] == "fraud-detector"
        bad = httpx.post(f"http://127.0.0.1:{port}/predict", json={"dataframe_records": [{"x": 1}]})
        assert bad.status_code == 422
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"dataframe_records": rows}, timeout=10)
        assert answer.status_code == 200
        shadow = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["shadow"]
        assert shadow["challenger_version"] == challenger and shadow["pairs_lost_on_restart"] == 0
    finally:
        process.terminate()  # SIGTERM: a clean stop
        process.wait(30)
        end_group(process.pid)
    pairs = read_pairs("fraud-detector")
    assert len(pairs) == len(rows) and (pairs.challenger_version == challenger).all()
    np.testing.assert_allclose(
        pairs.sort_values("pair_id").champion_score, answer.json()["predictions"], rtol=1e-6
    )
    np.testing.assert_allclose(
        pairs.sort_values("pair_id").challenger_score, expected(challenger, rows, "fraud-detector"), rtol=1e-6
    )


@pytest.mark.usefixtures("prefect_server")
def test_a_promotion_event_refreshes_before_the_next_poll(mlops_home, monkeypatch, rows):
    """With a Prefect API, the `mlops.model.promoted` event makes the service look at once."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the listener thread reads the env
    v1 = register_toy(mlops_home, seed=1)
    follower = ChampionFollower(NAME, poll_seconds=600)  # polling alone would not see the move in time
    with Service(follower) as service:
        deadline = time.monotonic() + 20
        while httpx.get(f"{service.url}/health").json()["version"] != v1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert follower.subscribed.wait(30), "the service did not subscribe to promotion events"
        v2 = register_toy(mlops_home, seed=4)
        emit_event(
            event="mlops.model.promoted",
            resource={"prefect.resource.id": f"mlflow.registered-model.{NAME}"},
            payload={"version": v2},
        )
        deadline = time.monotonic() + 30
        while httpx.get(f"{service.url}/health").json()["version"] != v2:
            assert time.monotonic() < deadline, "the promotion event did not trigger a refresh"
            time.sleep(0.2)
