"""The model server fuzzed from its own OpenAPI schema (schemathesis) and with hypothesis-generated JSON.

Schemathesis reads `/openapi.json` of the real app serving a real registered model and sends requests that
fit the documented body and requests that do not (its positive and negative modes); hypothesis sends any JSON
value at all. Every answer must be below 500 and, when an error, say what is wrong; the service keeps
answering. The seeded fuzzer in `test_serving_payloads.py` covers the payload checks layer by layer.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from unit.test_serving_payloads import models, serve, valid_row  # noqa: F401 - `models` is a fixture

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure replays
    database=None,  # no examples saved from earlier runs: CI and a laptop try the same cases
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module", params=["xgboost", "pyfunc"])
def served(request, models):  # noqa: F811
    with serve(models[request.param]) as client:
        yield client, models[request.param]


def _answer_is_clear(response) -> None:
    """Below 500, and an error says what is wrong."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json().get("error")
        assert isinstance(error, str) and len(error) > 10, response.text[:500]


def test_the_schema_documents_the_served_models_columns(served):
    client, model = served
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    records = body["content"]["application/json"]["schema"]["oneOf"][1]["properties"]["dataframe_records"]
    assert list(records["items"]["properties"]) == list(model.columns)


@pytest.mark.parametrize("mode", list(GenerationMode))  # bodies that fit the documented schema, and not
def test_requests_from_the_openapi_schema_never_get_a_500(served, mode):
    client, model = served
    api = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    statuses = Counter()

    @given(case=api["/predict"]["POST"].as_strategy(generation_mode=mode))
    @SETTINGS
    def check(case):
        response = case.call()
        _answer_is_clear(response)
        if response.status_code == 200:
            assert len(response.json()["predictions"]) >= 1
        statuses[response.status_code] += 1

    check()
    # the cases reach the model (fitting bodies) and the checks (the others), not only one of them
    assert statuses[200] > 0 if mode == GenerationMode.POSITIVE else set(statuses) - {200}, statuses


JSON = st.recursive(
    # what JSON can carry (no NaN, no infinity)
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "columns", "data"])


@given(payload=st.dictionaries(KEYS, JSON, max_size=3) | JSON)
@SETTINGS
def test_any_json_gets_a_4xx_with_a_message_or_predictions(served, payload):
    client, model = served
    response = client.post("/predict", json=payload)
    _answer_is_clear(response)
    assert client.post(
        "/predict", json={"dataframe_records": [valid_row(random.Random(0), model)]}
    ).is_success
