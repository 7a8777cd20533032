"""The model server's payload checks, fuzzed: no payload, however malformed, gets a 500 or stops the service.

Random payloads (seeded, reproducible) for each accepted format go to the real FastAPI app in process
(`fastapi.testclient`, no server) serving real registered models loaded the way `mlops serve-model` loads
them: an XGBoost booster and a pyfunc whose signature has long, integer and boolean columns. Every answer must
be below 500 and, when it is an error, a JSON object whose `error` says what is wrong.

The generator is a seeded `random.Random` that knows the checks' layers; a failure prints the seed, the case
number and the payload, so it replays exactly. `test_serving_schema.py` adds schemathesis (from the app's
OpenAPI schema) and hypothesis (any JSON).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
import xgboost as xgb
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature

from champion.loading import load_scoring_model
from serving.app import create_app
from serving.follower import ChampionFollower, Served
from serving.payloads import MAX_ROWS, PayloadError, to_matrix

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

FORMATS = ("dataframe_records", "dataframe_split", "instances", "inputs")
CASES_PER_FORMAT = 250
SEED = 20260513


# ------------------------------------------------------------------------------------------ the models


class SumModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input.astype("float64").sum(axis=1).to_numpy()


def _example(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, n),
            "count": rng.integers(0, 20, n).astype("int64"),
            "small": rng.integers(0, 5, n).astype("int32"),
            "flag": rng.integers(0, 2, n).astype(bool),
        }
    )


def _register(client: MlflowClient, experiment: str, name: str, log) -> str:
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log()
    client.create_registered_model(name)
    return client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    ).version


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"xgboost": ScoringModel, "pyfunc": ScoringModel}, registered in a SQLite store and loaded back."""
    home = tmp_path_factory.mktemp("serving")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("payloads", artifact_location=(home / "artifacts").as_uri())
    frame = _example(np.random.default_rng(0), 400)
    numeric = frame.drop(columns=["small", "flag"]).assign(flag=frame.flag.astype("int64"))
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": 0},
        xgb.DMatrix(numeric, label=(numeric.amount > 100).astype(int)),
        num_boost_round=5,
    )
    _register(
        client,
        experiment,
        "fuzz-xgboost",
        lambda: mlflow.xgboost.log_model(
            booster,
            name="model",
            signature=infer_signature(numeric.head(5), booster.predict(xgb.DMatrix(numeric.head(5)))),
            model_format="ubj",
        ),
    )
    _register(
        client,
        experiment,
        "fuzz-pyfunc",
        lambda: mlflow.pyfunc.log_model(
            name="model",
            python_model=SumModel(),
            signature=infer_signature(frame.head(5), np.zeros(5)),
        ),
    )
    loaded = {
        "xgboost": load_scoring_model("fuzz-xgboost", version="1"),
        "pyfunc": load_scoring_model("fuzz-pyfunc", version="1"),
    }
    assert loaded["xgboost"].flavor == "xgboost" and loaded["pyfunc"].flavor == "pyfunc"
    assert loaded["pyfunc"].column_types == {
        "amount": "double",
        "count": "long",
        "small": "integer",
        "flag": "boolean",
    }
    yield loaded
    mlflow.set_tracking_uri(None)


def serve(model) -> TestClient:
    """A client on the real app serving `model` (no polling thread: the model is set)."""
    follower = ChampionFollower(model.name, poll_seconds=3600)
    follower.served = Served(model, "now")
    return TestClient(create_app(follower, start_following=False))


@pytest.fixture(scope="module", params=["xgboost", "pyfunc"])
def service(request, models):
    """(TestClient on the real app serving the model, the model)."""
    model = models[request.param]
    with serve(model) as client:
        yield client, model


def valid_row(rng: random.Random, model) -> dict:
    row = {}
    for column in model.columns:
        kind = model.column_types[column]
        row[column] = (
            rng.random() < 0.5
            if kind == "boolean"
            else rng.randint(0, 9)
            if kind in ("long", "integer")
            else rng.uniform(0, 300)
        )
    return row


# ------------------------------------------------------------------------------------------ the generator

TEXT = ["", "amount", "count", "flag", "small", "NaN", "1e999", "é\u0000\ud7ff", "x" * 200, "[]", "null"]
NUMBERS = [0, -0.0, 1, -1, 0.5, 1e308, -1e308, 5e-324, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 2**70]


def json_scalar(rng: random.Random):
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(NUMBERS)
    if kind == 3:
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.randint(-1000, 1000)
    if kind == 4:
        return rng.choice(TEXT)
    return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))


def json_value(rng: random.Random, depth: int = 0):
    """Any JSON value: scalars, lists and objects nested a few levels, now and then very deeply."""
    roll = rng.random()
    if depth > 3 or roll < 0.55:
        return json_scalar(rng)
    if roll < 0.6:  # nested: a little, or 1,000 levels (orjson decodes up to 1,024)
        value = json_scalar(rng)
        return DEEP if rng.random() < 0.5 else [[[value]]]
    if roll < 0.8:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [*FORMATS, *TEXT, "columns", "data", "index"]
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def well_formed(rng: random.Random, model, key: str) -> dict:
    """A payload the service accepts, in format `key` (for instances/inputs: either of their layouts)."""
    rows = [valid_row(rng, model) for _ in range(rng.randint(1, 6))]
    columns = list(model.columns)
    if key == "dataframe_records" or (key == "instances" and rng.random() < 0.5):
        return {key: rows}
    if key == "dataframe_split":
        rng.shuffle(columns)
        return {key: {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}
    if key == "inputs" and rng.random() < 0.5:
        return {key: {c: [r[c] for r in rows] for c in columns}}
    return {key: [[r[c] for c in columns] for r in rows]}


def containers(value, path=()):
    """Every (path, container) inside a decoded JSON value."""
    if isinstance(value, dict | list):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            yield from containers(v, (*path, k))


def mutate(rng: random.Random, payload: dict) -> dict:
    """One to three random edits anywhere in the payload: replace, delete, add, duplicate or wrap a part."""
    for _ in range(rng.randint(1, 3)):
        targets = list(containers(payload))
        _, node = rng.choice(targets)
        if isinstance(node, dict):
            keys = list(node)
            edit = rng.randrange(4)
            if edit == 0 and keys:
                node[rng.choice(keys)] = json_value(rng)
            elif edit == 1 and keys:
                del node[rng.choice(keys)]
            elif edit == 2:
                node[rng.choice([*FORMATS, *TEXT, "columns", "data"])] = json_value(rng)
            elif keys:
                k = rng.choice(keys)
                node[k] = [node[k]] if rng.random() < 0.5 else {"columns": node[k], "data": node[k]}
        elif node:
            i = rng.randrange(len(node))
            edit = rng.randrange(4)
            if edit == 0:
                node[i] = json_value(rng)
            elif edit == 1:
                del node[i]
            elif edit == 2:
                node.insert(i, node[i] if rng.random() < 0.5 else json_value(rng))
            else:
                node[i] = [node[i]]
        else:
            node.append(json_value(rng))
    return payload


def payloads(seed: int, model):
    """(description, request body as bytes) cases: mutated payloads of each format, random JSON, and raw
    bytes that are not JSON at all."""
    rng = random.Random(seed)
    for key in FORMATS:
        for i in range(CASES_PER_FORMAT):
            body = well_formed(rng, model, key)
            if i % 10:  # nine in ten are broken somewhere; the rest are fine
                body = mutate(rng, body)
            yield f"{key} #{i}", encode(body)
    for i in range(100):
        yield f"any JSON #{i}", encode(json_value(rng))
    for i in range(50):
        valid = json.dumps(well_formed(rng, model, rng.choice(FORMATS))).encode()
        cut = valid[: rng.randrange(len(valid))]
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        yield f"bytes #{i}", rng.choice([cut, noise, valid + noise, valid.replace(b"1", b"NaN", 1)])


# ------------------------------------------------------------------------------------------ the tests


def test_to_matrix_raises_only_payload_errors(models):
    """The check itself, without HTTP: a malformed payload raises a PayloadError with a 4xx, nothing else."""
    for model in models.values():
        for description, raw in payloads(SEED, model):
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            try:
                matrix = to_matrix(body, model)
            except PayloadError as exc:
                assert 400 <= exc.status < 500 and exc.message, (model.flavor, description, raw[:2000])
            else:
                assert matrix.shape[1] == len(model.columns) and matrix.shape[0] >= 1, (description, raw)


def test_random_payloads_get_a_4xx_with_a_message_never_a_500(service):
    client, model = service
    statuses = Counter()
    for description, raw in payloads(SEED, model):
        response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        case = f"{model.flavor} {description}: {raw[:2000]!r} -> {response.status_code} {response.text[:500]}"
        assert response.status_code < 500, case
        assert response.headers["content-type"] == "application/json", case
        answer = response.json()
        assert answer["model_version"] == model.version, case
        if response.status_code == 200:
            predictions = answer["predictions"]
            assert predictions and all(isinstance(p, float) and math.isfinite(p) for p in predictions), case
        else:
            assert isinstance(answer["error"], str) and len(answer["error"]) > 10, case
        statuses[response.status_code] += 1
    # the generator reaches every layer of the checks, not only the first one
    assert statuses[200] > 50 and statuses[400] > 50 and statuses[422] > 200, statuses
    # and the service still answers a good request afterwards
    rows = [valid_row(random.Random(1), model) for _ in range(3)]
    after = client.post("/predict", json={"dataframe_records": rows})
    assert after.status_code == 200 and len(after.json()["predictions"]) == 3


DEEP = "@@deep@@"  # a value nested 1,000 lists deep, spliced into the JSON text (json.dumps would recurse)


def encode(body) -> bytes:
    return json.dumps(body, allow_nan=False).replace(f'"{DEEP}"', "[" * 1000 + "1.0" + "]" * 1000).encode()


def record(model, **values) -> dict:
    return {**valid_row(random.Random(3), model), **values}


CRASHES = {
    # the case: a list where a column name belongs (was a TypeError, a 500)
    "a list as a column name": (
        lambda m: {
            "dataframe_split": {"columns": [[m.columns[0]], *m.columns[1:]], "data": [[1] * len(m.columns)]}
        },
        400,
        "item 0 is a list",
    ),
    "an object as a column name": (
        lambda m: {
            "dataframe_split": {"columns": [*m.columns[:-1], {"a": 1}], "data": [[1] * len(m.columns)]}
        },
        400,
        "is an object",
    ),
    "columns not a list": (
        lambda m: {"dataframe_split": {"columns": 7, "data": []}},
        400,
        "list of column names",
    ),
    "a column named twice": (
        lambda m: {
            "dataframe_split": {"columns": [*m.columns, "amount"], "data": [[1] * (len(m.columns) + 1)]}
        },
        422,
        "names a column twice: amount",
    ),
    # a deeply nested value: its repr raised RecursionError (a 500)
    "a deeply nested value": (
        lambda m: {"dataframe_records": [record(m, amount=DEEP)]},
        422,
        "column amount: expected double, got a list",
    ),
    # whole numbers a double holds but an int64 does not: the pyfunc path wrapped them around silently
    "2**64 in a long column": (
        lambda m: {"dataframe_records": [record(m, count=2**64)]},
        422,
        "column count: 1.84467e+19 in row 0 is out of range for long",
    ),
    "below the int64 range": (
        lambda m: {"inputs": {c: [v] for c, v in record(m, count=-(2**63) - 4096).items()}},
        422,
        "out of range for long",
    ),
    "a long string": (
        lambda m: {"dataframe_records": [record(m, amount="x" * 10_000)]},
        422,
        "got string 'xxxx",
    ),
}


@pytest.mark.parametrize("case", CRASHES)
def test_malformed_payloads_that_used_to_crash_or_mislead(service, case):
    client, model = service
    build, status, message = CRASHES[case]
    response = client.post("/predict", content=encode(build(model)))
    assert response.status_code == status, response.text
    assert message in response.json()["error"], response.text


def test_an_int32_column_is_range_checked_too(models):
    model = models["pyfunc"]
    with serve(model) as client:
        response = client.post("/predict", json={"dataframe_records": [record(model, small=2**31)]})
    assert response.status_code == 422, response.text
    assert "column small: 2.14748e+09 in row 0 is out of range for integer" in response.json()["error"]


def test_a_number_beyond_a_double_is_a_422(models):
    """orjson refuses such numbers (a 400); to_matrix, which other callers use, names the column too."""
    model = models["xgboost"]
    with pytest.raises(PayloadError, match="column amount: the number in row 1 is too large") as raised:
        to_matrix({"inputs": {"amount": [1.0, 10**400], "count": [1, 1], "flag": [0, 0]}}, model)
    assert raised.value.status == 422


def test_too_many_rows_is_a_413_and_the_limit_itself_is_served(service):
    client, model = service
    row = [valid_row(random.Random(2), model)[c] for c in model.columns]
    columns = list(model.columns)
    too_many = client.post(
        "/predict", json={"dataframe_split": {"columns": columns, "data": [row] * (MAX_ROWS + 1)}}
    )
    assert too_many.status_code == 413, too_many.text
    assert f"{MAX_ROWS + 1:,} rows in one request; at most {MAX_ROWS:,}" in too_many.json()["error"]
    at_limit = client.post("/predict", json={"instances": [row] * MAX_ROWS})
    assert at_limit.status_code == 200, at_limit.text[:500]
    assert len(at_limit.json()["predictions"]) == MAX_ROWS
