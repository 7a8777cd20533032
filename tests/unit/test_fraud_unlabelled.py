"""Unlabelled rows: features when the newest labels have not arrived yet, the raw suite that trains on such
an extract (and its Dask merge), the suite for scoring them, and the windows cut from the known labels."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from data_checks.fraud import MAX_FRAUD_RATE, MIN_KNOWN_LABEL_SHARE, raw_suite, score_suite  # noqa: E402
from tasks.dask.merge import merge_plan, merge_suite, partials  # noqa: E402
from tasks.split import cut_again  # noqa: E402
from tasks.validate import report_from_result, validate_frame  # noqa: E402
from usecases.fraud.features import FEATURES, KEYS, build_features  # noqa: E402
from usecases.fraud.simulator import simulate_transactions  # noqa: E402
from usecases.fraud.spec import Params, build_spec  # noqa: E402

CUSTOMER_FEATURES = [f for f in FEATURES if not f.startswith("TERMINAL_ID_")]
RISKS = [f for f in FEATURES if "_RISK_" in f]
COUNTS = [f for f in FEATURES if f.startswith("TERMINAL_ID_NB_TX_")]


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_transactions(n_customers=200, n_terminals=400, n_days=60, seed=3)


def blank(frame: pd.DataFrame, unknown, how: str = "nan") -> pd.DataFrame:
    """The labels of the rows `unknown` (a boolean mask) missing, in the given encoding: float64 NaN (CSV),
    Int64 pd.NA (nullable Parquet) or object None."""
    unknown = np.asarray(unknown, dtype=bool)
    labels = {
        "nan": frame["TX_FRAUD"].astype("float64").mask(unknown),
        "Int64": frame["TX_FRAUD"].astype("Int64").mask(unknown),
        "None": frame["TX_FRAUD"].astype(object).mask(unknown, None),
    }[how]
    return frame.assign(TX_FRAUD=labels)


def blank_recent(frame: pd.DataFrame, days: int, how: str = "nan") -> pd.DataFrame:
    """Labels of the last `days` days unknown (as the label delay leaves them), in the given encoding."""
    return blank(frame, frame["TX_DATETIME"] > frame["TX_DATETIME"].max() - pd.Timedelta(days=days), how)


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


ENCODINGS = ["nan", "Int64", "None"]
# An object column is no loader's dtype for the label (CSV and Parquet give float64 or Int64): the type check
# refuses it, and nothing else may fail on its missing values.
TYPE_FAILURE = {"None": ["expect_column_values_to_be_in_type_list(TX_FRAUD)"]}


def observed_rate(frame: pd.DataFrame) -> float | None:
    """The fraud rate the raw suite computed on `frame`."""
    report = validate_frame(frame, raw_suite())
    means = [
        r["result"].get("observed_value")
        for r in report.result["results"]
        if r["expectation_config"]["type"] == "expect_column_mean_to_be_between"
    ]
    assert len(means) == 1
    return means[0]


def test_score_suite_accepts_missing_labels(small):
    unlabelled = blank_recent(small, 7)
    assert validate(small, raw_suite()) == [] and validate(small, score_suite()) == []
    assert validate(unlabelled, score_suite()) == []
    assert validate(small.drop(columns="TX_FRAUD"), score_suite()) == []
    assert validate(small.iloc[:50], score_suite()) == []  # a small batch to score is fine


@pytest.mark.parametrize("how", ENCODINGS)
def test_raw_suite_accepts_the_newest_labels_missing(small, how):
    """A weekly extract: the last 7 days not labelled yet. The in-set check and the fraud rate leave the
    missing labels out, in every encoding; the rate is the known labels' mean, not one counting them as 0."""
    unlabelled = blank_recent(small, 7, how)
    unknown = unlabelled["TX_FRAUD"].isna()
    assert 0.05 < unknown.mean() < 0.2
    assert validate(unlabelled, raw_suite()) == TYPE_FAILURE.get(how, [])
    known = small.loc[~unknown.to_numpy(), "TX_FRAUD"]
    assert observed_rate(unlabelled) == pytest.approx(known.mean(), rel=1e-12)
    assert known.mean() != pytest.approx(known.sum() / len(small), rel=1e-3)  # the two means differ here


@pytest.mark.parametrize("how", ENCODINGS)
def test_raw_suite_rate_is_over_known_labels(small, how):
    """Known labels 30 % fraud, over half the rows unknown: above the rate's maximum, though counting the
    unknown rows as 0 would land inside the bounds."""
    known = np.arange(len(small)) < int(len(small) * 0.55)
    frame = small.assign(TX_FRAUD=(np.arange(len(small)) % 10 < 3).astype("int64"))
    frame = blank(frame, ~known, how)
    assert frame["TX_FRAUD"].notna().mean() > MIN_KNOWN_LABEL_SHARE
    assert frame["TX_FRAUD"].fillna(0).astype("float64").mean() < MAX_FRAUD_RATE < observed_rate(frame)
    assert validate(frame, raw_suite()) == sorted(
        ["expect_column_mean_to_be_between(TX_FRAUD)", *TYPE_FAILURE.get(how, [])]
    )


@pytest.mark.parametrize(
    ("how", "value"),
    [(how, value) for how in ENCODINGS for value in (2, -1, 0.5) if (how, value) != ("Int64", 0.5)],
)  # an Int64 column cannot hold 0.5
def test_raw_suite_refuses_labels_outside_0_1_beside_missing_ones(small, how, value):
    frame = blank_recent(small, 7, how)
    labels = frame["TX_FRAUD"].copy()
    labels.iloc[[10, 20, 30]] = value
    failures = validate(frame.assign(TX_FRAUD=labels), raw_suite())
    assert failures == sorted(["expect_column_values_to_be_in_set(TX_FRAUD)", *TYPE_FAILURE.get(how, [])])


@pytest.mark.parametrize("how", ENCODINGS)
def test_raw_suite_refuses_an_extract_with_no_label_known(small, how):
    frame = blank(small, np.ones(len(small), dtype=bool), how)
    report = validate_frame(frame, raw_suite())
    failed = {(f.expectation, f.column): f.observed for f in report.failures}
    # (GX checks an object column's type value by value, skipping nulls: all None passes the type check.)
    assert set(failed) == {
        ("expect_column_values_to_not_be_null", "TX_FRAUD"),
        ("expect_column_mean_to_be_between", "TX_FRAUD"),
    }, report.summary()
    said = failed[("expect_column_values_to_not_be_null", "TX_FRAUD")]
    assert said.startswith(f"{len(small):,} unexpected values (100 %)"), said
    assert "fewer than 50% of TX_FRAUD labels known" in said, said
    assert failed[("expect_column_mean_to_be_between", "TX_FRAUD")].startswith("observed None"), failed


def test_raw_suite_refuses_an_extract_without_a_label_column(small):
    failures = validate(small.drop(columns="TX_FRAUD"), raw_suite())
    assert "expect_column_to_exist(TX_FRAUD)" in failures
    assert all(failure.endswith("(TX_FRAUD)") for failure in failures), failures


@pytest.mark.parametrize(("unknown_share", "refused"), [(0.45, False), (0.55, True)])
def test_raw_suite_needs_half_the_labels_known(small, unknown_share, refused):
    """Unknown labels at random (not only recent ones), on either side of MIN_KNOWN_LABEL_SHARE."""
    assert MIN_KNOWN_LABEL_SHARE == 0.5
    unknown = np.random.default_rng(1).permutation(len(small)) < int(len(small) * unknown_share)
    failures = validate(blank(small, unknown, "Int64"), raw_suite())
    assert failures == (["expect_column_values_to_not_be_null(TX_FRAUD)"] if refused else [])


# ------------------------------------------------------------------------------------- the Dask merge


def merged_outcomes(frame: pd.DataFrame, bounds: list[int]) -> list[tuple]:
    """The raw suite on `frame` cut into partitions at `bounds`, merged as the Dask executor merges it
    (`tasks.dask.merge`: the plan, each partition's GX result and partials, the table's repeated ids)."""
    suite = raw_suite()
    plan = merge_plan(suite, frame.columns)  # refuses any expectation it cannot merge
    parts = [frame.iloc[lo:hi] for lo, hi in zip([0, *bounds], [*bounds, len(frame)], strict=True)]
    results = [validate_frame(part, raw_suite()).result for part in parts]
    counts = frame["TRANSACTION_ID"].value_counts()
    merged = merge_suite(
        suite,
        results,
        [partials(part, plan) for part in parts],
        {"TRANSACTION_ID": counts[counts > 1]},
        frame.iloc[:0],
    )
    report = report_from_result(merged, suite, {str(n): str(t) for n, t in frame.dtypes.items()})
    return [(o.expectation, o.column, o.success, o.observed) for o in report.outcomes]


@pytest.mark.parametrize("how", ENCODINGS)
@pytest.mark.parametrize("case", ["newest unlabelled", "out of set", "none known", "over half unknown"])
def test_dask_merge_of_the_label_checks_equals_the_whole_table(small, how, case):
    """The newest partition holds only unlabelled rows (the last 7 days): its own known-label check and
    fraud rate fail alone, and the merge must still give the whole table's verdict and observed values."""
    n = len(small)
    recent = (small["TX_DATETIME"] > small["TX_DATETIME"].max() - pd.Timedelta(days=7)).to_numpy()
    unknown = {
        "newest unlabelled": recent,
        "out of set": recent,
        "none known": np.ones(n, dtype=bool),
        "over half unknown": np.arange(n) >= n * 0.4,
    }[case]
    frame = blank(small, unknown, how)
    if case == "out of set":
        frame.loc[[5, 500], "TX_FRAUD"] = 2
    first_recent = int(np.argmax(recent))  # rows are in time order: the unlabelled ones last
    bounds = [n // 3, 2 * n // 3, first_recent]
    assert bounds == sorted(bounds) and frame["TX_FRAUD"].iloc[first_recent:].isna().all()
    whole = validate_frame(frame, raw_suite())
    expected = [(o.expectation, o.column, o.success, o.observed) for o in whole.outcomes]
    assert merged_outcomes(frame, bounds) == expected
    label = {(e, c): ok for e, c, ok, _ in expected if c == "TX_FRAUD"}
    assert label[("expect_column_values_to_not_be_null", "TX_FRAUD")] is (
        case in ("newest unlabelled", "out of set")
    )
    assert label[("expect_column_values_to_be_in_set", "TX_FRAUD")] is (case != "out of set")


# ------------------------------------------------------------------------------------- the windows


def test_windows_end_at_the_newest_known_label_and_hold_no_unlabelled_target():
    """What training cuts (`tasks.split.cut_again`: features on every row, then the rows with a known target,
    then the split): no unlabelled row is a target, and the test window ends on the last labelled day."""
    raw = simulate_transactions(n_customers=300, n_terminals=600, n_days=70, seed=42)
    unlabelled = blank_recent(raw, 7, "Int64")
    last_known = unlabelled.loc[unlabelled["TX_FRAUD"].notna(), "TX_DATETIME"].max().normalize()
    assert last_known < unlabelled["TX_DATETIME"].max().normalize()
    splits = cut_again(build_spec(Params()), unlabelled)
    assert splits.windows["test"][1] == str(last_known.date())
    assert cut_again(build_spec(Params()), raw).windows["test"][1] > str(last_known.date())
    for name in ("train", "validation", "test"):
        part = getattr(splits, name)
        assert len(part) and part["TX_FRAUD"].notna().all(), name
        assert (
            part["TRANSACTION_ID"].isin(unlabelled.loc[unlabelled["TX_FRAUD"].isna(), "TRANSACTION_ID"]).sum()
            == 0
        )


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
