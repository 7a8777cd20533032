"""Checking a `/predict` payload against the model's signature: MLflow's scoring formats in, floats out.

Malformed JSON or a payload of the wrong shape is a 400; a missing column, a non-numeric or null value, a
fraction or an out-of-range number in an integer column is a 422 naming the column and the row; more than
MAX_ROWS rows a 413. A bad payload never gets a 500.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import orjson
from fastapi.responses import Response

from champion.loading import ScoringModel

MAX_ROWS = 100_000
INTEGER_TYPES = {"long", "integer"}
# The range a signature's integer type holds; a pyfunc model gets those columns as int64/int32.
INTEGER_RANGES = {"long": (-(2.0**63), 2.0**63), "integer": (-(2.0**31), 2.0**31)}
NUMERIC_TYPES = {"double", "float", "long", "integer", "boolean"}


class PayloadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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
                400, f"dataframe_split.columns must be a list of column names; got {describe(names)}"
            )
        for i, name in enumerate(names):
            if not isinstance(name, str):
                message = f"dataframe_split.columns must hold names (strings): item {i} is {describe(name)}"
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


def present_columns(body: object, names: tuple[str, ...]) -> dict[str, list]:
    """The columns among `names` that a payload of an accepted shape carries, one value per row each
    (what a /predict row says about its event besides the model's inputs; missing names are left out)."""
    found: dict[str, list] = {}
    if isinstance(body, dict):
        for name in names:
            try:
                found[name] = _column_values(body, (name,))[0][name]
            except PayloadError:
                continue
    return found


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
                    raise PayloadError(422, f"column {column}: expected {kind}, got {describe(v)} in row {i}")
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


def describe(value: object) -> str:
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


def json_response(content: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def predict_response(follower, raw: bytes, observe=None) -> Response:
    """`/predict`'s answer: the served version's scores for a checked payload, or the error naming what is
    wrong with it. `observe(served, matrix, scores, raw)`, when given, sees what was answered (shadow
    scoring: `serving/shadow.py`)."""
    served = follower.served  # one read: the whole request uses this model
    if served is None:
        return json_response({"error": f"no version of {follower.name} behind @{follower.alias} yet"}, 503)
    try:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(400, f"the request body is not valid JSON: {exc}") from None
        matrix = to_matrix(body, served.model)
    except PayloadError as exc:
        return json_response({"error": exc.message, "model_version": served.model.version}, exc.status)
    predictions = np.asarray(served.model.predict_matrix(matrix)).ravel()
    response = json_response({"predictions": predictions, "model_version": served.model.version})
    if observe is not None:
        observe(served, matrix, predictions, raw)
    return response
