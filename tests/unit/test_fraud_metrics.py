"""Card precision top-k and the known-compromised-cards filter: hand-made frames and the handbook's code."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest

from usecases.fraud.metrics import card_precision_at_k, remove_known_compromised
from usecases.fraud.simulator import simulate_transactions


def _frame(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "TX_DATETIME": pd.to_datetime([r[0] for r in rows]),
            "CUSTOMER_ID": [r[1] for r in rows],
            "TX_FRAUD": [r[2] for r in rows],
        }
    )


def test_card_precision_by_hand():
    # Day 1, k = 2. Card 1: max score 0.9 and max label 1 come from different transactions.
    # Ranking 1 (0.9, fraud), 2 (0.8, genuine), 3 (0.7, fraud) -> top 2 holds one fraud: 1/2; card 1 found.
    # Day 2: card 1 (0.95) is removed as already detected; ranking 3 (0.9, fraud), 4 (0.5), 2 (0.4)
    # -> 1/2. Mean 0.5 (without the removal, day 2 would be cards 1 and 3: 2/2, mean 0.75).
    frame = _frame(
        [
            ("2018-08-08 10:00", 1, 0),
            ("2018-08-08 11:00", 1, 1),
            ("2018-08-08 12:00", 2, 0),
            ("2018-08-08 13:00", 3, 1),
            ("2018-08-09 09:00", 1, 1),
            ("2018-08-09 10:00", 3, 1),
            ("2018-08-09 11:00", 4, 0),
            ("2018-08-09 23:59", 2, 0),
        ]
    )
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.95, 0.9, 0.5, 0.4])
    assert card_precision_at_k(frame, scores, k=2) == pytest.approx(0.5)
    # Order of rows does not matter.
    perm = np.random.default_rng(0).permutation(len(frame))
    assert card_precision_at_k(frame.iloc[perm], scores[perm], k=2) == pytest.approx(0.5)
    # k larger than the cards of a day still divides by k: day 1 has 2 frauds of 3 cards -> 2/4; day 2,
    # card 1 and 3 removed, nothing left that is fraud -> 0/4.
    assert card_precision_at_k(frame, scores, k=4) == pytest.approx((2 / 4 + 0 / 4) / 2)


def test_card_precision_breaks_score_ties_by_customer_id():
    # Cards 9 (fraud) and 5 (genuine) tie at 0.5; k = 1 checks the smaller id, 5, whatever the row order.
    frame = _frame([("2018-08-08 10:00", 9, 1), ("2018-08-08 11:00", 5, 0)])
    assert card_precision_at_k(frame, np.array([0.5, 0.5]), k=1) == 0.0
    assert card_precision_at_k(frame.iloc[::-1], np.array([0.5, 0.5]), k=1) == 0.0


def _handbook_card_precision_top_k(predictions_df: pd.DataFrame, top_k: int) -> float:
    """The handbook's chapter 4 code (remove_detected_compromised_cards=True), kept close to the original."""
    list_days = sorted(predictions_df["TX_TIME_DAYS"].unique())
    detected: list[int] = []
    per_day = []
    for day in list_days:
        df_day = predictions_df[predictions_df["TX_TIME_DAYS"] == day]
        df_day = df_day[["predictions", "CUSTOMER_ID", "TX_FRAUD"]]
        df_day = df_day[~df_day.CUSTOMER_ID.isin(detected)]
        df_day = df_day.groupby("CUSTOMER_ID").max().sort_values(by="predictions", ascending=False)
        top = df_day.reset_index().head(top_k)
        found = list(top[top.TX_FRAUD == 1].CUSTOMER_ID)
        per_day.append(len(found) / top_k)
        detected.extend(found)
    return float(np.mean(per_day))


def test_card_precision_matches_handbook_code():
    frame = simulate_transactions(n_customers=300, n_terminals=600, n_days=20, seed=11)
    rng = np.random.default_rng(0)
    # A score that is informative but imperfect, without ties.
    scores = 0.5 * frame["TX_FRAUD"].to_numpy() + rng.random(len(frame))
    assert frame["TX_FRAUD"].sum() > 20
    for k in (5, 20):
        expected = _handbook_card_precision_top_k(frame.assign(predictions=scores), k)
        assert 0 < expected < 1
        assert card_precision_at_k(frame, scores, k=k) == pytest.approx(expected)


def test_card_precision_rejects_bad_input():
    frame = _frame([("2018-08-08", 1, 0)])
    with pytest.raises(ValueError):
        card_precision_at_k(frame, np.array([0.1, 0.2]), k=1)
    with pytest.raises(ValueError):
        card_precision_at_k(frame, np.array([0.1]), k=0)


def test_remove_known_compromised_by_hand():
    table = _frame(
        [
            ("2018-07-01 12:00", 3, 1),  # long before: known from the first test day
            ("2018-08-01 23:00", 1, 1),  # known from 08-09 (08-01 < 08-09 - 7 days)
            ("2018-08-05 00:10", 2, 1),  # known from 08-13
            ("2018-08-05 00:20", 2, 0),
            ("2018-08-06 10:00", 4, 0),  # never defrauded
        ]
    )
    test = _frame([(f"2018-08-{d:02d} 12:00", c, 0) for d in (8, 9, 12, 13) for c in (1, 2, 3, 4)]).set_index(
        pd.Index(range(100, 116))
    )
    kept = remove_known_compromised(test, table, delay_days=7)
    got = {(t.day, c) for t, c in zip(kept["TX_DATETIME"], kept["CUSTOMER_ID"], strict=True)}
    assert got == {(8, 1), (8, 2), (8, 4), (9, 2), (9, 4), (12, 2), (12, 4), (13, 4)}
    assert list(kept.columns) == list(test.columns)
    assert kept.index.is_monotonic_increasing and kept.index.isin(test.index).all()
    # With no delay, a fraud counts from the following day on: card 1 is known on 08-08 too.
    assert (
        1
        not in remove_known_compromised(test, table, delay_days=0)
        .query("TX_DATETIME < '2018-08-09'")["CUSTOMER_ID"]
        .to_list()
    )


def test_remove_known_compromised_without_frauds_keeps_everything():
    table = _frame([("2018-08-01", 1, 0)])
    test = _frame([("2018-08-10", 1, 0), ("2018-08-11", 2, 0)])
    pd.testing.assert_frame_equal(remove_known_compromised(test, table), test)


def _handbook_get_train_test_set(
    transactions_df, start_date_training, delta_train=7, delta_delay=7, delta_test=7
):
    """The handbook's `get_train_test_set` (chapter 3.5), test-set part."""
    tx_datetime, tx_days = transactions_df["TX_DATETIME"], transactions_df["TX_TIME_DAYS"]
    train_end = start_date_training + datetime.timedelta(days=delta_train)
    train_df = transactions_df[(tx_datetime >= start_date_training) & (tx_datetime < train_end)]
    test_df = []
    known_defrauded_customers = set(train_df[train_df.TX_FRAUD == 1].CUSTOMER_ID)
    start_tx_time_days_training = train_df.TX_TIME_DAYS.min()
    for day in range(delta_test):
        test_df_day = transactions_df[
            tx_days == start_tx_time_days_training + delta_train + delta_delay + day
        ]
        delay_day = transactions_df[tx_days == start_tx_time_days_training + delta_train + day - 1]
        known_defrauded_customers |= set(delay_day[delay_day.TX_FRAUD == 1].CUSTOMER_ID)
        test_df.append(test_df_day[~test_df_day.CUSTOMER_ID.isin(known_defrauded_customers)])
    return pd.concat(test_df).sort_values("TRANSACTION_ID")


def test_remove_known_compromised_matches_handbook():
    transactions = simulate_transactions(n_customers=300, n_terminals=600, n_days=40, seed=4)
    start = pd.Timestamp("2018-04-15")
    expected = _handbook_get_train_test_set(transactions, start, delta_test=10)  # 10 > delay: test labels too
    tx_datetime = transactions["TX_DATETIME"]
    test_period = transactions[
        tx_datetime.between(start + pd.Timedelta(days=14), start + pd.Timedelta(days=24), inclusive="left")
    ]
    since_train_start = transactions[tx_datetime >= start]
    got = remove_known_compromised(test_period, since_train_start, delay_days=7)
    assert 0 < len(expected) < len(test_period)
    pd.testing.assert_frame_equal(got.sort_values("TRANSACTION_ID"), expected)
    # With the whole history, frauds before the training week are remembered too: never fewer removed.
    with_history = remove_known_compromised(test_period, transactions, delay_days=7)
    assert set(with_history.TRANSACTION_ID) <= set(got.TRANSACTION_ID)
    assert len(with_history) < len(got)
