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
# Cell values: valid, edges of the checks, anything JSON has; and per integer type, whole numbers just past
# its range and far past it, as JSON integers and as floats.
CELL = (
    st.integers(-10, 10)
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.5, -1e300, 1e19, 2**31 - 1, -(2**31), -(2**63)])
    | st.none()
    | st.booleans()
    | st.text(max_size=4)
)
BEYOND = {
    kind: st.sampled_from([high, -high - 1, float(high), -float(high) * 2])
    | st.integers(high, 2**70)
    | st.integers(-(2**70), -high - 1)
    for kind, high in (("integer", 2**31), ("long", 2**63))
}


def records_naming_the_columns(model) -> st.SearchStrategy:
    """`dataframe_records` whose rows name every column of the model, with values from valid to absurd: these
    get past the payload's shape to the per-column checks (types, nulls, whole numbers, integer ranges)."""
    kinds = model.column_types
    valid = {c: st.booleans() if k == "boolean" else st.integers(0, 9) for c, k in kinds.items()}
    anything = st.lists(
        st.fixed_dictionaries({c: valid[c] | CELL for c in model.columns}), min_size=1, max_size=3
    )
    integer_columns = [c for c in model.columns if kinds[c] in BEYOND]
    # valid rows but for one cell: every column's checks are reached, not only the first column's; an integer
    # column's cell is often just past its range
    column = st.sampled_from(integer_columns) | st.sampled_from(list(model.columns))
    cell = column.flatmap(
        lambda c: st.tuples(st.just(c), (BEYOND[kinds[c]] | CELL) if c in integer_columns else CELL)
    )
    one_cell = st.tuples(
        st.lists(st.fixed_dictionaries(valid), min_size=1, max_size=3), st.integers(0, 2), cell
    ).map(
        lambda drawn: [
            {**r, drawn[2][0]: drawn[2][1]} if i == drawn[1] % len(drawn[0]) else r
            for i, r in enumerate(drawn[0])
        ]
    )
    return st.builds(lambda rows: {"dataframe_records": rows}, anything | one_cell)


def column_problem(rows: list[dict], model) -> tuple[str, str] | None:
    """What the service must refuse in these rows, as it checks them (column by column in the model's order;
    in a column: value types, then nulls in required columns, then whole numbers, then the integer range):
    (column, words the error says), or None if it must score them. An oracle written from the contract in
    serving/app.py's docstring, not from its code."""
    for column in model.columns:
        kind = model.column_types[column]
        values = [row[column] for row in rows]
        for v in values:
            if v is None:
                if column in model.required:
                    return column, "missing value (null)"
            elif isinstance(v, bool):
                if kind != "boolean":
                    return column, "got boolean"
            elif not isinstance(v, int | float):
                return column, "got string"
        numbers = [float(v) for v in values if v is not None]
        if kind in ("long", "integer"):
            if any(x != round(x) for x in numbers):
                return column, "a whole number"
            low, high = {"long": (-(2.0**63), 2.0**63), "integer": (-(2.0**31), 2.0**31)}[kind]
            if any(not low <= x < high for x in numbers):
                return column, f"is out of range for {kind}"
    return None


def test_any_json_gets_a_4xx_with_a_message_or_predictions(served):
    """Any JSON at all, and records that name the model's columns with any values: every answer is below 500
    and clear, and for the records it is the one the column contract gives (the oracle above): predictions,
    one per row, or a 422 naming the first offending column and why. Every check of every column is reached
    (counted), the integer range checks included."""
    client, model = served
    reached = Counter()

    @given(payload=st.dictionaries(KEYS, JSON, max_size=3) | JSON | records_naming_the_columns(model))
    @settings(SETTINGS, max_examples=200)
    def check(payload):
        response = client.post("/predict", json=payload)
        _answer_is_clear(response)
        rows = payload.get("dataframe_records") if isinstance(payload, dict) and len(payload) == 1 else None
        if not (
            isinstance(rows, list)
            and rows
            and all(isinstance(r, dict) and set(r) == set(model.columns) for r in rows)
        ):
            return
        problem = column_problem(rows, model)
        if problem is None:
            assert response.status_code == 200, (payload, response.text[:500])
            assert len(response.json()["predictions"]) == len(rows)
            reached["scored"] += 1
            return
        column, why = problem
        assert response.status_code == 422, (payload, problem, response.text[:500])
        error = response.json()["error"]
        assert error.startswith(f"column {column}: ") and why in error, (payload, problem, error)
        reached[(model.column_types[column], why.split(" for ")[0])] += 1

    check()
    assert client.post(
        "/predict", json={"dataframe_records": [valid_row(random.Random(0), model)]}
    ).is_success
    kinds = set(model.column_types.values())
    expected = {"scored"} | {(k, "is out of range") for k in kinds & {"long", "integer"}}
    assert expected <= set(reached), reached
