"""Reason codes from XGBoost's own contributions (tasks/explain.py) and the fraud sentences
(usecases/fraud/reasons.py), on a small booster trained here on the handbook's feature names."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from champion.loading import ScoringModel
from tasks.card import contributions_table
from tasks.explain import (
    ExplainUnsupported,
    contributions,
    contributions_plot,
    mean_abs_contributions,
    reason_column_names,
    reason_columns,
    top_reasons,
)
from usecases.fraud.features import FEATURES
from usecases.fraud.reasons import reason_text


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 1_500
    data = pd.DataFrame(rng.gamma(2.0, 2.0, size=(n, len(FEATURES))), columns=list(FEATURES))
    data["TX_DURING_NIGHT"] = (rng.random(n) < 0.3).astype("int64")
    data["TERMINAL_ID_RISK_7DAY_WINDOW"] = rng.random(n) * 0.2
    data.loc[rng.random(n) < 0.05, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] = (
        np.nan
    )  # missing values are explained too
    signal = data.TX_AMOUNT / 4 + 2 * data.TX_DURING_NIGHT + 20 * data.TERMINAL_ID_RISK_7DAY_WINDOW
    data["label"] = (signal + rng.normal(size=n) > 3.5).astype(int)
    return data


@pytest.fixture(scope="module")
def model(frame) -> ScoringModel:
    """A real (small) booster, held as `load_scoring_model` holds an xgboost-flavoured version."""
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "nthread": 1, "seed": 0},
        xgb.DMatrix(frame[list(FEATURES)], label=frame["label"]),
        num_boost_round=40,
    )
    return ScoringModel(
        "tiny-fraud", "3", None, tuple(FEATURES), {}, frozenset(FEATURES), "xgboost", "test", _model=booster
    )


def test_contributions_sum_to_the_margin(model, frame):
    matrix = frame[list(FEATURES)].to_numpy(np.float32)
    contrib = contributions(model, matrix)
    assert contrib.shape == (len(frame), len(FEATURES) + 1)
    margin = model.booster.predict(xgb.DMatrix(frame[list(FEATURES)]), output_margin=True)
    np.testing.assert_allclose(contrib.astype(np.float64).sum(axis=1), margin, rtol=0, atol=1e-5)
    # the margin is what the score is made of: the logistic of it is the model's prediction
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), model.predict_matrix(matrix), atol=1e-6)
    assert np.ptp(contrib[:, -1]) == 0  # the last column is the bias, the same for every row
    with pytest.raises(ValueError, match="15 columns"):
        contributions(model, matrix[:, :3])


def test_top_reasons_are_the_largest_contributions_in_order(model, frame):
    matrix = frame[list(FEATURES)].to_numpy(np.float64)[:50]
    contrib = contributions(model, matrix)
    reasons = top_reasons(model, matrix, 3)
    assert len(reasons) == 50
    for r, row in enumerate(reasons):
        assert [len(row)] == [3]
        magnitudes = [abs(item["contribution"]) for item in row]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes[-1] >= np.sort(np.abs(contrib[r, :-1]))[-3]  # none left out is larger
        for item in row:
            j = FEATURES.index(item["feature"])
            assert item["contribution"] == pytest.approx(float(contrib[r, j]))
            value = matrix[r, j]
            assert item["value"] is None if math.isnan(value) else item["value"] == value
            assert item["reason"].startswith(f"{item['feature']} = ")  # the default sentence
    assert all(len(row) == len(FEATURES) for row in top_reasons(model, matrix[:2], 99))
    assert top_reasons(model, matrix[:2], 0) == [[], []]


def test_one_row_is_explained_in_milliseconds(model, frame):
    row = frame[list(FEATURES)].to_numpy(np.float64)[:1]
    top_reasons(model, row, 3, reason_text)
    started = time.perf_counter()
    for _ in range(20):
        top_reasons(model, row, 3, reason_text)
    per_row = (time.perf_counter() - started) / 20
    assert per_row < 0.05, f"{per_row * 1000:.1f} ms per row"  # loose: a loaded 2-core machine


def test_batch_columns_match_the_per_row_reasons(model, frame):
    matrix = frame[list(FEATURES)].to_numpy(np.float32)[:40]
    columns = reason_columns(model, matrix, 2, reason_text)
    assert (
        list(columns)
        == reason_column_names(2)
        == [
            "reason_1",
            "reason_1_feature",
            "reason_1_contribution",
            "reason_2",
            "reason_2_feature",
            "reason_2_contribution",
        ]
    )
    per_row = top_reasons(model, matrix, 2, reason_text)
    for r, row in enumerate(per_row):
        for i, item in enumerate(row, start=1):
            assert columns[f"reason_{i}"][r] == item["reason"]
            assert columns[f"reason_{i}_feature"][r] == item["feature"]
            assert columns[f"reason_{i}_contribution"][r] == pytest.approx(item["contribution"])
    beyond = reason_columns(model, matrix[:2], len(FEATURES) + 1)
    assert beyond[f"reason_{len(FEATURES) + 1}"] == [None, None]


def test_a_version_without_a_reachable_booster_is_refused_by_name(model, frame):
    pyfunc = ScoringModel(
        "stock-forecaster", "7", None, model.columns, {}, frozenset(), "pyfunc", "test", _model=object()
    )
    assert pyfunc.booster is None
    matrix = frame[list(FEATURES)].to_numpy(np.float32)[:1]
    for call in (contributions, lambda m, x: top_reasons(m, x, 3), lambda m, x: reason_columns(m, x, 3)):
        with pytest.raises(ExplainUnsupported, match="stock-forecaster v7") as caught:
            call(pyfunc, matrix)
        assert "pyfunc" in str(caught.value)


def test_mean_abs_contributions_overall_and_per_slice_group(model, frame):
    night = np.where(frame["TX_DURING_NIGHT"] == 1, "night", "day")
    table = mean_abs_contributions(model, frame, {"night": night})
    magnitude = np.abs(contributions(model, frame[list(FEATURES)].to_numpy(np.float32))[:, :-1]).astype(float)
    overall = pd.Series(magnitude.mean(axis=0), index=list(FEATURES))
    assert list(table.columns) == ["overall", "night: day", "night: night"]
    assert list(table.index) == list(overall.sort_values(ascending=False).index)
    np.testing.assert_allclose(table["overall"], overall.loc[table.index], rtol=1e-6)
    at_night = magnitude[night == "night"].mean(axis=0)
    np.testing.assert_allclose(
        table["night: night"], pd.Series(at_night, FEATURES).loc[table.index], rtol=1e-6
    )
    assert table.attrs["rows"] == {
        "overall": len(frame),
        "night: day": int((night == "day").sum()),
        "night: night": int((night == "night").sum()),
    }
    assert table.index[0] in ("TX_AMOUNT", "TX_DURING_NIGHT", "TERMINAL_ID_RISK_7DAY_WINDOW")
    markdown = contributions_table(table).splitlines()
    assert markdown[0] == "| feature | overall | night: day | night: night |"
    assert len(markdown) == 2 + len(FEATURES) + 1 and markdown[-1].startswith("| rows | 1,500 |")
    figure = contributions_plot(table)
    assert len(figure.axes) == 2  # overall, and the night slice's groups


def test_training_candidates_are_explained_from_their_trees(model, frame):
    candidate = SimpleNamespace(booster=model.booster, features=tuple(FEATURES))
    table = mean_abs_contributions(candidate, frame.head(100))
    assert list(table.columns) == ["overall"] and len(table) == len(FEATURES)


ROW = {
    "TX_AMOUNT": 412.5,
    "TX_DURING_WEEKEND": 1,
    "TX_DURING_NIGHT": 0,
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 5,
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": 420.0,
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW": 14,
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": 150.0,
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW": 36,
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": 100.0,
    "TERMINAL_ID_NB_TX_1DAY_WINDOW": 0,
    "TERMINAL_ID_RISK_1DAY_WINDOW": 0.0,
    "TERMINAL_ID_NB_TX_7DAY_WINDOW": 24,
    "TERMINAL_ID_RISK_7DAY_WINDOW": 0.125,
    "TERMINAL_ID_NB_TX_30DAY_WINDOW": 90,
    "TERMINAL_ID_RISK_30DAY_WINDOW": 0.02,
}


@pytest.mark.parametrize(
    "feature, sentence",
    [
        ("TX_AMOUNT", "amount 412.50, 4.1x the customer's 30-day average (100.00)"),
        ("TX_DURING_WEEKEND", "made at the weekend"),
        ("TX_DURING_NIGHT", "made in the daytime (07:00-23:59)"),
        (
            "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
            "customer made 5 transactions in the last day (4.2x its 30-day daily rate of 1.2)",
        ),
        (
            "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
            "customer made 14 transactions in the last 7 days (2.0 a day, 1.7x its 30-day daily rate of 1.2)",
        ),
        ("CUSTOMER_ID_NB_TX_30DAY_WINDOW", "customer made 36 transactions in the last 30 days (1.2 a day)"),
        (
            "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
            "customer's 1-day average spend 420.00, 4.2x its 30-day average (100.00)",
        ),
        (
            "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
            "customer's 30-day average spend 100.00; this amount (412.50) is 4.1x it",
        ),
        (
            "TERMINAL_ID_RISK_7DAY_WINDOW",
            "terminal's fraud share 12.5 % over the 7 days behind the label delay (24 transactions); "
            "2.0 % over 30 days",
        ),
        (
            "TERMINAL_ID_RISK_1DAY_WINDOW",
            "terminal had no transactions in the day behind the label delay: no fraud share known (0 %)",
        ),
        (
            "TERMINAL_ID_NB_TX_7DAY_WINDOW",
            "terminal had 24 transactions in the 7 days behind the label delay "
            "(3.4 a day, 1.1x its 30-day daily rate of 3.0)",
        ),
    ],
)
def test_fraud_reasons_read_like_sentences(feature, sentence):
    assert reason_text(feature, ROW) == sentence


def test_fraud_reasons_leave_out_comparisons_they_cannot_make():
    assert reason_text("TX_AMOUNT", {"TX_AMOUNT": 12.0}) == "amount 12.00"
    assert (
        reason_text("TX_AMOUNT", {"TX_AMOUNT": 12.0, "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": 0})
        == "amount 12.00"
    )
    assert reason_text("CUSTOMER_ID_NB_TX_1DAY_WINDOW", {"CUSTOMER_ID_NB_TX_1DAY_WINDOW": 1.0}) == (
        "customer made 1 transaction in the last day"
    )
    assert reason_text("TERMINAL_ID_RISK_30DAY_WINDOW", {"TERMINAL_ID_RISK_30DAY_WINDOW": 0.5}) == (
        "terminal's fraud share 50.0 % over the 30 days behind the label delay"
    )
    assert reason_text("CUSTOMER_ID_NB_TX_1DAY_WINDOW", {"CUSTOMER_ID_NB_TX_1DAY_WINDOW": float("nan")}) == (
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW unknown"
    )
    every = {f: reason_text(f, ROW) for f in FEATURES}
    assert all(every.values()) and len(set(every.values())) == len(FEATURES)


def test_the_fraud_spec_writes_its_reasons_with_these_sentences():
    from usecases.fraud.spec import Params, build_spec

    assert build_spec(Params()).reason is reason_text
