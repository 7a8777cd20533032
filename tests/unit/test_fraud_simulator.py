"""The vectorised handbook simulator: statistics against the published table, schema, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import needs

from usecases.fraud.simulator import COLUMNS, simulate_transactions

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared/data/fraud-handbook/transactions.parquet"

ROWS_TOLERANCE = 0.05  # relative difference in row count
FRAUD_RATE_TOLERANCE = 0.20  # relative difference in fraud rate (seeds 0-3, 42 measured within 3 %)
SCENARIO_SHARE_TOLERANCE = 0.03  # absolute difference in each scenario's share of frauds (measured < 1.6 pts)

EXPECTED_DTYPES = {
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": "datetime64[ns]",
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    "TX_AMOUNT": "float64",
    "TX_TIME_SECONDS": "int64",
    "TX_TIME_DAYS": "int64",
    "TX_FRAUD": "int64",
    "TX_FRAUD_SCENARIO": "int64",
}


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    if not REFERENCE.exists():
        needs("the handbook reference data", f"not found at {REFERENCE}")
    return pd.read_parquet(REFERENCE)


@pytest.fixture(scope="module")
def handbook_sized() -> pd.DataFrame:
    return simulate_transactions(n_customers=5000, n_terminals=10000, n_days=183, seed=42)


def _scenario_shares(frame: pd.DataFrame) -> pd.Series:
    frauds = frame.loc[frame["TX_FRAUD"] == 1, "TX_FRAUD_SCENARIO"]
    return frauds.value_counts(normalize=True).reindex([1, 2, 3], fill_value=0.0)


def test_handbook_size_covers_its_customers_terminals_and_days(handbook_sized):
    """The handbook-sized table is the whole simulation, not a truncated one: ids within the sizes asked for,
    every day of the 183 from 2018-04-01, (nearly) every customer and terminal in use. (How long it takes is
    a benchmark's question, bench/, not a test's.)"""
    frame = handbook_sized
    assert frame["CUSTOMER_ID"].between(0, 4999).all() and frame["CUSTOMER_ID"].nunique() > 0.99 * 5000
    assert frame["TERMINAL_ID"].between(0, 9999).all() and frame["TERMINAL_ID"].nunique() > 0.99 * 10000
    assert sorted(frame["TX_TIME_DAYS"].unique()) == list(range(183))
    assert frame["TX_DATETIME"].min() >= pd.Timestamp("2018-04-01")
    assert frame["TX_DATETIME"].max() < pd.Timestamp("2018-10-01")


def test_row_count_close_to_reference(handbook_sized, reference):
    frame = handbook_sized
    assert abs(len(frame) / len(reference) - 1) < ROWS_TOLERANCE


def test_fraud_rate_close_to_reference(handbook_sized, reference):
    frame = handbook_sized
    ours, theirs = frame["TX_FRAUD"].mean(), reference["TX_FRAUD"].mean()
    assert abs(ours / theirs - 1) < FRAUD_RATE_TOLERANCE, (ours, theirs)


def test_scenario_mix_close_to_reference(handbook_sized, reference):
    frame = handbook_sized
    ours, theirs = _scenario_shares(frame), _scenario_shares(reference)
    assert (ours - theirs).abs().max() < SCENARIO_SHARE_TOLERANCE, pd.DataFrame({"ours": ours, "ref": theirs})


def test_schema_matches_reference(handbook_sized, reference):
    frame = handbook_sized
    assert list(frame.columns) == list(reference.columns)
    assert frame.dtypes.equals(reference.dtypes)


def test_schema_and_invariants(handbook_sized):
    frame = handbook_sized
    assert tuple(frame.columns) == COLUMNS
    assert {c: str(t) for c, t in frame.dtypes.items()} == EXPECTED_DTYPES
    assert isinstance(frame.index, pd.RangeIndex)
    np.testing.assert_array_equal(frame["TRANSACTION_ID"], np.arange(len(frame)))
    assert frame["TX_DATETIME"].is_monotonic_increasing
    elapsed = (frame["TX_DATETIME"] - pd.Timestamp("2018-04-01")).dt.total_seconds().to_numpy()
    np.testing.assert_array_equal(elapsed, frame["TX_TIME_SECONDS"])
    np.testing.assert_array_equal(frame["TX_TIME_DAYS"], frame["TX_TIME_SECONDS"] // 86400)
    assert frame["TX_TIME_DAYS"].between(0, 182).all()
    assert frame["TX_TIME_SECONDS"].mod(86400).gt(0).all()  # 0 < time of day
    assert (frame["TX_AMOUNT"] >= 0).all()
    np.testing.assert_array_equal(frame["TX_FRAUD"], (frame["TX_FRAUD_SCENARIO"] > 0).astype(int))
    assert set(frame["TX_FRAUD_SCENARIO"].unique()) == {0, 1, 2, 3}
    # Scenario 1 is decided on the amount; only scenario 3 inflates amounts afterwards.
    assert (frame.loc[frame["TX_FRAUD_SCENARIO"] == 1, "TX_AMOUNT"] > 220).all()
    assert (frame.loc[frame["TX_FRAUD"] == 0, "TX_AMOUNT"] <= 220).all()
    assert frame["CUSTOMER_ID"].between(0, 4999).all() and frame["TERMINAL_ID"].between(0, 9999).all()


def test_compromised_terminal_days_are_all_fraud(handbook_sized):
    """Scenario 2 takes every transaction of a compromised terminal (scenario 3 may relabel some)."""
    frame = handbook_sized
    s2 = frame.loc[frame["TX_FRAUD_SCENARIO"] == 2, ["TERMINAL_ID", "TX_TIME_DAYS"]].drop_duplicates()
    on_those_days = frame.merge(s2, on=["TERMINAL_ID", "TX_TIME_DAYS"])
    assert len(on_those_days) > 1000
    assert (on_those_days["TX_FRAUD"] == 1).all()


def test_compromised_customer_amounts_are_multiplied_by_five(handbook_sized):
    frame = handbook_sized
    genuine_median = frame[frame["TX_FRAUD"] == 0].groupby("CUSTOMER_ID")["TX_AMOUNT"].median()
    s3 = frame[frame["TX_FRAUD_SCENARIO"] == 3]
    ratio = (s3["TX_AMOUNT"] / s3["CUSTOMER_ID"].map(genuine_median)).median()
    assert 4 < ratio < 6, ratio


def test_same_seed_same_frame_and_other_seed_differs():
    kwargs = {"n_customers": 100, "n_terminals": 200, "n_days": 30}
    first = simulate_transactions(**kwargs, seed=7)
    pd.testing.assert_frame_equal(first, simulate_transactions(**kwargs, seed=7))
    other = simulate_transactions(**kwargs, seed=8)
    assert len(first) != len(other) or not first["TX_AMOUNT"].equals(other["TX_AMOUNT"])


@pytest.mark.parametrize(
    ("n_customers", "n_terminals", "n_days"),
    [(1, 1, 1), (3, 5, 2), (20, 40, 10), (0, 10, 5), (10, 0, 5), (10, 10, 0)],
)
def test_small_sizes(n_customers, n_terminals, n_days):
    frame = simulate_transactions(
        n_customers=n_customers, n_terminals=n_terminals, n_days=n_days, radius=50.0
    )
    assert {c: str(t) for c, t in frame.dtypes.items()} == EXPECTED_DTYPES
    np.testing.assert_array_equal(frame["TRANSACTION_ID"], np.arange(len(frame)))
    assert frame["TX_TIME_DAYS"].lt(max(n_days, 1)).all()
    if n_customers == 0 or n_terminals == 0 or n_days == 0:
        assert frame.empty
    if n_days == 1:  # the handbook's daily compromise loop runs over range(max day) = range(0)
        assert frame["TX_FRAUD_SCENARIO"].isin([0, 1]).all()


def test_customers_without_terminals_in_reach_do_not_transact():
    assert simulate_transactions(n_customers=50, n_terminals=50, n_days=5, radius=1e-9).empty
