"""The validation stage and the fraud suites: what passes, what fails, and how failures read.

Frames are generated here with numpy (2,000 raw transactions, 1 % fraud), so the tests depend on nothing
but `tasks.validate` and `data_checks.fraud`. The `validate` task runs inside a real Prefect flow
(`prefect_test_harness`) against a real SQLite MLflow store in a temporary directory.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import json  # noqa: E402
import pickle  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from fraud_frames import N_ROWS, _label_two, _missing_amount, _negative_amounts, make_features, make_raw  # noqa: E402

from data_checks.fraud import (  # noqa: E402
    FEATURE_COLUMNS,
    MAX_FRAUD_RATE,
    MIN_FRAUD_RATE,
    MIN_ROWS,
    REQUIRED_COLUMNS,
    feature_suite,
    raw_suite,
)
from tasks.validate import (  # noqa: E402
    DataValidationError,
    ValidationReport,
    artifact_key,
    validate_frame,
)

N_FRAUD = 20  # 1 %


def read_like_loader(path: Path) -> pd.DataFrame:
    """The fraud use case's own loader on a file, as `mlops run fraud --data PATH` reads it (a CSV's
    TX_DATETIME parsed, unparseable -> NaT)."""
    from usecases.fraud.spec import Params, load

    return load(Params(data=str(path)))


def failed(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in report.failures}


def failure(report: ValidationReport, expectation: str, column: str | None):
    matches = [f for f in report.failures if (f.expectation, f.column) == (expectation, column)]
    assert matches, f"{expectation}({column}) did not fail:\n{report.summary()}"
    return matches[0]


# --------------------------------------------------------------------------------------------- raw suite


def test_suites_are_named_and_bounds_sane():
    assert raw_suite().name == "fraud_raw"
    assert feature_suite().name == "fraud_features"
    assert 0 < MIN_FRAUD_RATE < N_FRAUD / N_ROWS < MAX_FRAUD_RATE < 1
    assert MIN_ROWS <= N_ROWS
    assert len(FEATURE_COLUMNS) == 15 and len(set(FEATURE_COLUMNS)) == 15


def _parquet(tmp_path: Path) -> pd.DataFrame:
    make_raw().to_parquet(tmp_path / "tx.parquet")
    return pd.read_parquet(tmp_path / "tx.parquet")


def _csv(tmp_path: Path) -> pd.DataFrame:
    make_raw().to_csv(tmp_path / "tx.csv", index=False)
    return read_like_loader(tmp_path / "tx.csv")


def _nullable(tmp_path: Path) -> pd.DataFrame:
    frame = make_raw()
    return frame.astype({"TRANSACTION_ID": "Int64", "CUSTOMER_ID": "Int64", "TX_FRAUD": "Int64"})


@pytest.mark.parametrize("load", [_parquet, _csv, _nullable], ids=["parquet", "csv", "nullable-Int64"])
def test_valid_raw_frame_passes(load, tmp_path):
    frame = load(tmp_path)
    report = validate_frame(frame, raw_suite())

    assert report.success, report.summary()
    assert report.failures == ()
    assert report.evaluated == len(raw_suite().expectations) == len(report.outcomes)
    assert report.summary() == f"fraud_raw: all {report.evaluated} expectations passed"
    assert report.result["success"] is True
    json.dumps(report.result)  # JSON-able as promised


def test_csv_input_is_what_the_loader_gives(tmp_path):
    frame = _csv(tmp_path)
    assert str(frame["TRANSACTION_ID"].dtype) == "int64"
    assert str(frame["TX_DATETIME"].dtype).startswith("datetime64[")


def _drop_amount(frame):
    return frame.drop(columns="TX_AMOUNT")


def _duplicate_id(frame):
    frame.loc[1, "TRANSACTION_ID"] = frame.loc[0, "TRANSACTION_ID"]
    return frame


def _too_few_rows(frame):
    head = frame.head(500).copy()
    head["TX_FRAUD"] = 0
    head.loc[[1, 2, 3, 4, 5], "TX_FRAUD"] = 1
    return head


def _fraud_rate_high(frame):
    frame.loc[: N_ROWS // 2, "TX_FRAUD"] = 1
    return frame


def _fraud_rate_zero(frame):
    frame["TX_FRAUD"] = 0
    return frame


DEFECTS = {
    "missing column": (
        _drop_amount,
        {
            ("expect_column_to_exist", "TX_AMOUNT"),
            ("expect_column_values_to_be_in_type_list", "TX_AMOUNT"),
            ("expect_column_values_to_not_be_null", "TX_AMOUNT"),
            ("expect_column_values_to_be_between", "TX_AMOUNT"),
        },
        ("expect_column_to_exist", "TX_AMOUNT", ["column TX_AMOUNT missing"]),
    ),
    "label out of {0,1}": (
        _label_two,
        {("expect_column_values_to_be_in_set", "TX_FRAUD")},
        ("expect_column_values_to_be_in_set", "TX_FRAUD", ["2 unexpected values", "e.g. [2]"]),
    ),
    "negative amount": (
        _negative_amounts,
        {("expect_column_values_to_be_between", "TX_AMOUNT")},
        ("expect_column_values_to_be_between", "TX_AMOUNT", ["3 unexpected values", "e.g. [-5.0, -1.0]"]),
    ),
    "missing amount": (
        _missing_amount,
        {("expect_column_values_to_not_be_null", "TX_AMOUNT")},
        ("expect_column_values_to_not_be_null", "TX_AMOUNT", ["1 unexpected value"]),
    ),
    "duplicate id": (
        _duplicate_id,
        {("expect_column_values_to_be_unique", "TRANSACTION_ID")},
        ("expect_column_values_to_be_unique", "TRANSACTION_ID", ["2 unexpected values", "e.g. [0]"]),
    ),
    "too few rows": (
        _too_few_rows,
        {("expect_table_row_count_to_be_between", None)},
        ("expect_table_row_count_to_be_between", None, ["observed 500", f"expected >= {MIN_ROWS}"]),
    ),
    "fraud rate too high": (
        _fraud_rate_high,
        {("expect_column_mean_to_be_between", "TX_FRAUD")},
        ("expect_column_mean_to_be_between", "TX_FRAUD", ["observed 0.5", "expected between 0.0005 and 0.2"]),
    ),
    "fraud rate zero": (
        _fraud_rate_zero,
        {("expect_column_mean_to_be_between", "TX_FRAUD")},
        ("expect_column_mean_to_be_between", "TX_FRAUD", ["observed 0"]),
    ),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_defect_fails_naming_expectation_column_and_observed(name):
    corrupt, expected_failures, (expectation, column, observed_parts) = DEFECTS[name]
    report = validate_frame(corrupt(make_raw()), raw_suite())

    assert not report.success
    assert failed(report) == expected_failures, report.summary()
    found = failure(report, expectation, column)
    for part in observed_parts:
        assert part in found.observed, found.observed
    line = (
        f"fraud_raw: {expectation}({column}) failed — " if column else f"fraud_raw: {expectation} failed — "
    )
    assert line + found.observed in report.summary().splitlines()
    # every other expectation still ran and is reported
    assert len(report.outcomes) == report.evaluated == len(raw_suite().expectations)


def test_missing_column_does_not_hide_other_checks():
    report = validate_frame(_drop_amount(make_raw()), raw_suite())
    for f in report.failures:
        assert f.observed == "column TX_AMOUNT missing", f
    passed = {(o.expectation, o.column) for o in report.outcomes if o.success}
    assert ("expect_column_values_to_be_in_set", "TX_FRAUD") in passed
    assert ("expect_column_values_to_be_unique", "TRANSACTION_ID") in passed


def test_unparseable_timestamp_is_reported_as_missing_or_unparseable(tmp_path):
    frame = make_raw().astype({"TX_DATETIME": "str"})
    frame.loc[[4, 8], "TX_DATETIME"] = ["not a date", "2018-13-45 99:00:00"]
    frame.to_csv(tmp_path / "tx.csv", index=False)
    loaded = read_like_loader(tmp_path / "tx.csv")
    assert loaded["TX_DATETIME"].isna().sum() == 2

    report = validate_frame(loaded, raw_suite())

    assert failed(report) == {("expect_column_values_to_not_be_null", "TX_DATETIME")}, report.summary()
    found = failure(report, "expect_column_values_to_not_be_null", "TX_DATETIME")
    assert "2 unexpected values" in found.observed
    assert "missing or unparseable" in found.observed


def test_wrong_types_are_reported_with_the_real_dtype():
    frame = make_raw()
    frame["TX_FRAUD"] = frame["TX_FRAUD"].astype("float32")  # float64 is accepted: CSV with missing labels
    frame["CUSTOMER_ID"] = "C" + frame["CUSTOMER_ID"].astype("str")
    report = validate_frame(frame, raw_suite())

    assert failed(report) == {
        ("expect_column_values_to_be_in_type_list", "TX_FRAUD"),
        ("expect_column_values_to_be_in_type_list", "CUSTOMER_ID"),
    }, report.summary()
    assert failure(report, "expect_column_values_to_be_in_type_list", "TX_FRAUD").observed.startswith(
        "dtype float32"
    )
    assert failure(report, "expect_column_values_to_be_in_type_list", "CUSTOMER_ID").observed.startswith(
        "dtype str"
    )


def test_several_defects_are_all_listed():
    frame = _duplicate_id(_label_two(_negative_amounts(make_raw()))).drop(columns="CUSTOMER_ID")
    report = validate_frame(frame, raw_suite())
    expected = {
        ("expect_column_values_to_be_between", "TX_AMOUNT"),
        ("expect_column_values_to_be_in_set", "TX_FRAUD"),
        ("expect_column_values_to_be_unique", "TRANSACTION_ID"),
        ("expect_column_to_exist", "CUSTOMER_ID"),
        ("expect_column_values_to_be_in_type_list", "CUSTOMER_ID"),
        ("expect_column_values_to_not_be_null", "CUSTOMER_ID"),
    }
    assert failed(report) == expected

    message = str(DataValidationError(report))
    assert f"failed {len(expected)} of {report.evaluated} expectations" in message
    for expectation, column in expected:
        assert f"{expectation}({column}) failed" in message
    assert "column CUSTOMER_ID missing" in message
    assert "e.g. [-5.0, -1.0]" in message
    assert len(report.summary().splitlines()) == len(expected)


def test_error_and_report_pickle_and_render():
    report = validate_frame(_negative_amounts(make_raw()), raw_suite())
    error = pickle.loads(pickle.dumps(DataValidationError(report)))
    assert isinstance(error, ValueError)
    assert error.report == report
    assert "expect_column_values_to_be_between(TX_AMOUNT) failed" in str(error)

    markdown = report.to_markdown()
    assert "`fraud_raw` FAILED" in markdown
    assert markdown.count("\n| ") == report.evaluated + 1  # header + one row per expectation
    assert "| ❌ | `expect_column_values_to_be_between` | TX_AMOUNT | 3 unexpected values" in markdown
    assert "| ✅ | `expect_column_mean_to_be_between` | TX_FRAUD | observed 0.01" in markdown


def test_validate_frame_leaves_the_frame_alone():
    frame = _negative_amounts(make_raw())
    before = frame.copy()
    validate_frame(frame, raw_suite())
    pd.testing.assert_frame_equal(frame, before)


def test_concurrent_validations_do_not_see_each_others_frames():
    from concurrent.futures import ThreadPoolExecutor

    frames = [make_raw(seed=i) if i % 2 else _negative_amounts(make_raw(seed=i)) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda frame: validate_frame(frame, raw_suite()), frames))
    assert [r.success for r in reports] == [bool(i % 2) for i in range(8)]


def test_results_come_back_in_suite_order():
    report = validate_frame(make_raw(), raw_suite())
    suite_order = [(e.expectation_type, getattr(e, "column", None)) for e in raw_suite().expectations]
    assert [(o.expectation, o.column) for o in report.outcomes] == suite_order
    assert {c for c in REQUIRED_COLUMNS} <= {o.column for o in report.outcomes}


# ----------------------------------------------------------------------------------------- feature suite


def test_feature_suite_passes_on_valid_features():
    report = validate_frame(make_features(), feature_suite())
    assert report.success, report.summary()


def test_feature_suite_fails_on_risk_above_one():
    frame = make_features()
    frame.loc[7, "TERMINAL_ID_RISK_7DAY_WINDOW"] = 1.5
    report = validate_frame(frame, feature_suite())

    assert failed(report) == {("expect_column_values_to_be_between", "TERMINAL_ID_RISK_7DAY_WINDOW")}
    found = failure(report, "expect_column_values_to_be_between", "TERMINAL_ID_RISK_7DAY_WINDOW")
    assert "1 unexpected value" in found.observed and "e.g. [1.5]" in found.observed
    assert "expected between 0.0 and 1.0" in found.observed


def test_feature_suite_fails_on_missing_feature_and_bad_flag():
    frame = make_features().drop(columns="CUSTOMER_ID_NB_TX_7DAY_WINDOW")
    frame.loc[3, "TX_DURING_NIGHT"] = 3
    frame.loc[4, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] = np.nan
    report = validate_frame(frame, feature_suite())

    assert ("expect_column_to_exist", "CUSTOMER_ID_NB_TX_7DAY_WINDOW") in failed(report)
    assert ("expect_column_values_to_be_in_set", "TX_DURING_NIGHT") in failed(report)
    assert ("expect_column_values_to_not_be_null", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW") in failed(report)


def test_artifact_key_is_prefect_safe():
    assert artifact_key("fraud_raw") == "validation-fraud-raw"
    assert artifact_key("Fraud Features.v2") == "validation-fraud-features-v2"
