"""Unlabelled rows: features when the newest labels have not arrived yet, and the suite for scoring them."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from data_checks.fraud import raw_suite, score_suite  # noqa: E402
from usecases.fraud.features import FEATURES, KEYS, build_features  # noqa: E402
from usecases.fraud.simulator import simulate_transactions  # noqa: E402

CUSTOMER_FEATURES = [f for f in FEATURES if not f.startswith("TERMINAL_ID_")]
RISKS = [f for f in FEATURES if "_RISK_" in f]
COUNTS = [f for f in FEATURES if f.startswith("TERMINAL_ID_NB_TX_")]


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_transactions(n_customers=200, n_terminals=400, n_days=60, seed=3)


def blank_recent(frame: pd.DataFrame, days: int, how: str = "nan") -> pd.DataFrame:
    """Labels of the last `days` days unknown (as the label delay leaves them), in the given encoding."""
    recent = frame["TX_DATETIME"] > frame["TX_DATETIME"].max() - pd.Timedelta(days=days)
    labels = {
        "nan": frame["TX_FRAUD"].astype("float64").mask(recent),
        "Int64": frame["TX_FRAUD"].astype("Int64").mask(recent),
        "None": frame["TX_FRAUD"].astype(object).mask(recent, None),
    }[how]
    return frame.assign(TX_FRAUD=labels)


def terminal_reference(transactions: pd.DataFrame, delay_days: int) -> pd.DataFrame:
    """Terminal counts and risks from known labels only, with pandas time-based rolling windows."""
    df = transactions.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    for _, rows in df.groupby("TERMINAL_ID"):
        labels = rows.set_index("TX_DATETIME")["TX_FRAUD"].astype("float64")
        series = {"tx": labels.notna() | labels.isna(), "known": labels.notna(), "fraud": labels.fillna(0)}
        series = {k: v.astype("float64") for k, v in series.items()}  # tx: 1 for every row

        def window(name: str, n: int, s=series) -> np.ndarray:
            return (
                s[name].rolling(f"{delay_days + n}D").sum() - s[name].rolling(f"{delay_days}D").sum()
            ).to_numpy()

        for n in (1, 7, 30):
            known = window("known", n)
            risk = np.divide(window("fraud", n), known, out=np.zeros_like(known), where=known > 0)
            df.loc[rows.index, f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = window("tx", n)
            df.loc[rows.index, f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = risk
    return df


def validate(frame: pd.DataFrame, suite: gx.ExpectationSuite) -> list[str]:
    """Failed expectations ("type(column)") of `suite` on `frame`, run as tasks.validate runs it."""
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas(f"test-{uuid.uuid4().hex}").add_dataframe_asset("frame")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite)
    return sorted(
        f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column')})"
        for r in result.results
        if not r.success
    )


# ---------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize(("delay_days", "how"), [(7, "nan"), (7, "Int64"), (7, "None"), (3, "nan")])
def test_labels_within_the_delay_are_never_read(small, delay_days, how):
    """The key property: blanking the labels the delay hides changes no feature on any row."""
    full = build_features(small, delay_days=delay_days)
    unlabelled = blank_recent(small, delay_days, how)
    ours = build_features(unlabelled, delay_days=delay_days)
    unknown = ours["TX_FRAUD"].isna().to_numpy()
    assert unknown.sum() == unlabelled["TX_FRAUD"].isna().sum() > 1000
    assert (
        ours.loc[unknown, "TX_DATETIME"] > ours["TX_DATETIME"].max() - pd.Timedelta(days=delay_days)
    ).all()
    pd.testing.assert_frame_equal(ours[list(FEATURES)], full[list(FEATURES)], check_exact=True)
    keys = [k for k in KEYS if k != "TX_FRAUD"]
    pd.testing.assert_frame_equal(ours[keys], full[keys])
    np.testing.assert_array_equal(
        ours.loc[~unknown, "TX_FRAUD"].astype("int64"), full.loc[~unknown, "TX_FRAUD"]
    )
    assert ours["TX_FRAUD"].dtype == ("Int64" if how == "Int64" else "float64")


def test_known_labels_keep_their_dtype(small):
    assert build_features(small)["TX_FRAUD"].dtype == "int64"
    as_float = build_features(small.assign(TX_FRAUD=small["TX_FRAUD"].astype("float64")))
    assert as_float["TX_FRAUD"].dtype == "float64" and as_float["TX_FRAUD"].notna().all()


@pytest.mark.parametrize("delay_days", [7, 0])
def test_risk_uses_known_labels_only(delay_days):
    """Labels unknown at random (not just recent ones): risk = known frauds / known labels in the window."""
    frame = simulate_transactions(n_customers=60, n_terminals=60, n_days=45, seed=5)
    rng = np.random.default_rng(0)
    frame["TX_FRAUD"] = frame["TX_FRAUD"].astype("float64").mask(rng.random(len(frame)) < 0.3)
    ours = build_features(frame, delay_days=delay_days)
    theirs = terminal_reference(frame, delay_days)
    assert ours["TERMINAL_ID_RISK_7DAY_WINDOW"].gt(0).any()
    for name in [*COUNTS, *RISKS]:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-9, atol=1e-12, err_msg=name)
    # NB_TX counts every transaction, labelled or not.
    counts = build_features(frame.assign(TX_FRAUD=0), delay_days=delay_days)
    pd.testing.assert_frame_equal(ours[COUNTS], counts[COUNTS])


def test_without_a_label_column(small):
    full = build_features(small)
    ours = build_features(small.drop(columns="TX_FRAUD"))
    assert list(ours.columns) == list(full.columns)
    assert ours["TX_FRAUD"].dtype == "float64" and ours["TX_FRAUD"].isna().all()
    assert (ours[RISKS] == 0).all().all()
    pd.testing.assert_frame_equal(ours[CUSTOMER_FEATURES], full[CUSTOMER_FEATURES], check_exact=True)
    pd.testing.assert_frame_equal(ours[COUNTS], full[COUNTS], check_exact=True)
    assert build_features(small.iloc[:0].drop(columns="TX_FRAUD")).empty


@pytest.mark.parametrize("column", ["TX_AMOUNT", "TX_DATETIME"])
def test_amount_and_time_must_be_complete(small, column):
    broken = small.copy()
    broken[column] = broken[column].mask(broken.index % 100 == 0)
    with pytest.raises(ValueError, match=column):
        build_features(broken)
    with pytest.raises(ValueError, match=column):
        build_features(small.drop(columns=column))


# ---------------------------------------------------------------------------------------------- suites


def test_score_suite_accepts_missing_labels_the_raw_suite_refuses(small):
    unlabelled = blank_recent(small, 7)
    assert validate(small, raw_suite()) == [] and validate(small, score_suite()) == []
    assert validate(unlabelled, score_suite()) == []
    assert validate(small.drop(columns="TX_FRAUD"), score_suite()) == []
    assert validate(small.iloc[:50], score_suite()) == []  # a small batch to score is fine
    refused = validate(unlabelled, raw_suite())
    assert "expect_column_values_to_not_be_null(TX_FRAUD)" in refused
    assert all(failure.endswith("(TX_FRAUD)") for failure in refused)
    assert validate(small.drop(columns="TX_FRAUD"), raw_suite())


@pytest.mark.parametrize(
    ("corrupt", "failure"),
    [
        (lambda f: f.assign(TX_AMOUNT=-f["TX_AMOUNT"]), "expect_column_values_to_be_between(TX_AMOUNT)"),
        (lambda f: f.assign(TRANSACTION_ID=f["TRANSACTION_ID"] // 2), "expect_column_values_to_be_unique"),
        (lambda f: f.assign(TX_DATETIME=f["TX_DATETIME"].mask(f.index < 5)), "not_be_null(TX_DATETIME)"),
        (lambda f: f.assign(CUSTOMER_ID=f["CUSTOMER_ID"].astype(str)), "in_type_list(CUSTOMER_ID)"),
        (lambda f: f.drop(columns="TERMINAL_ID"), "expect_column_to_exist(TERMINAL_ID)"),
    ],
)
def test_score_suite_still_checks_ids_amounts_and_times(small, corrupt, failure):
    failures = validate(corrupt(blank_recent(small, 7)), score_suite())
    assert any(failure in f for f in failures), failures
