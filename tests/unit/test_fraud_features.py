"""The vectorised baseline features: equal to the handbook's groupby/rolling code, leak-free, causal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from usecases.fraud.features import FEATURES, KEYS, build_features
from usecases.fraud.simulator import simulate_transactions

HANDBOOK_FEATURES = [
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
]


def reference_features(transactions: pd.DataFrame, delay_days: int = 7) -> pd.DataFrame:
    """The handbook's chapter 3.4 code, one entity at a time with pandas time-based rolling windows."""
    df = transactions.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    df["TX_DURING_WEEKEND"] = df["TX_DATETIME"].apply(lambda d: int(d.weekday() >= 5))
    df["TX_DURING_NIGHT"] = df["TX_DATETIME"].apply(lambda d: int(d.hour <= 6))
    for _, rows in df.groupby("CUSTOMER_ID"):
        amounts = rows.set_index("TX_DATETIME")["TX_AMOUNT"]
        for n in (1, 7, 30):
            total = amounts.rolling(f"{n}D").sum()
            count = amounts.rolling(f"{n}D").count()
            df.loc[rows.index, f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = count.to_numpy()
            df.loc[rows.index, f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = (total / count).to_numpy()
    for _, rows in df.groupby("TERMINAL_ID"):
        labels = rows.set_index("TX_DATETIME")["TX_FRAUD"]
        nb_fraud_delay = labels.rolling(f"{delay_days}D").sum()
        nb_tx_delay = labels.rolling(f"{delay_days}D").count()
        for n in (1, 7, 30):
            nb_fraud = labels.rolling(f"{delay_days + n}D").sum() - nb_fraud_delay
            nb_tx = labels.rolling(f"{delay_days + n}D").count() - nb_tx_delay
            df.loc[rows.index, f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = nb_tx.to_numpy()
            df.loc[rows.index, f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = (nb_fraud / nb_tx).fillna(0).to_numpy()
    return df[[*KEYS, *HANDBOOK_FEATURES]]


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_transactions(n_customers=200, n_terminals=400, n_days=60, seed=3)


def _assert_same(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert list(ours.columns) == list(theirs.columns)
    pd.testing.assert_frame_equal(ours[list(KEYS)], theirs[list(KEYS)], check_dtype=False)
    for name in FEATURES:
        ours_values, theirs_values = ours[name].to_numpy(float), theirs[name].to_numpy(float)
        np.testing.assert_allclose(ours_values, theirs_values, rtol=1e-9, atol=1e-9, err_msg=name)


def test_feature_names_are_the_handbooks():
    assert list(FEATURES) == HANDBOOK_FEATURES


def test_equals_reference_implementation(small):
    ours = build_features(small)
    assert len(ours) == len(small) > 10_000
    assert ours["TERMINAL_ID_RISK_7DAY_WINDOW"].gt(0).any()  # the comparison covers non-trivial risks
    _assert_same(ours, reference_features(small))


@pytest.mark.parametrize("delay_days", [3, 0])
def test_equals_reference_with_tied_timestamps_and_other_delays(delay_days):
    """Times floored to the hour: many ties inside customers/terminals and rows exactly on window edges."""
    frame = simulate_transactions(n_customers=60, n_terminals=60, n_days=45, seed=5)
    frame["TX_DATETIME"] = frame["TX_DATETIME"].dt.floor("h")
    frame = frame.sample(frac=1.0, random_state=0)  # ids no longer follow time within a tie
    ours = build_features(frame, delay_days=delay_days)
    assert ours.duplicated(["CUSTOMER_ID", "TX_DATETIME"]).sum() > 20
    assert ours.duplicated(["TERMINAL_ID", "TX_DATETIME"]).sum() > 20
    _assert_same(ours, reference_features(frame, delay_days=delay_days))


def test_output_layout(small):
    ours = build_features(small.assign(EXTRA="x"))
    assert list(ours.columns) == [*KEYS, *HANDBOOK_FEATURES]
    assert "TX_FRAUD_SCENARIO" not in ours.columns and "EXTRA" not in ours.columns
    assert isinstance(ours.index, pd.RangeIndex)
    assert (ours[list(FEATURES)].dtypes.map(lambda d: d.kind) != "O").all()
    assert ours[list(FEATURES)].notna().all().all()
    assert ours[["TX_DURING_WEEKEND", "TX_DURING_NIGHT"]].isin([0, 1]).all().all()
    assert ours.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).index.equals(ours.index)


def test_input_order_extra_columns_and_scenario_do_not_matter(small):
    expected = build_features(small)
    shuffled = small.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled["TX_FRAUD_SCENARIO"] = np.random.default_rng(0).integers(0, 4, len(shuffled))
    shuffled["NOISE"] = np.random.default_rng(1).normal(size=len(shuffled))
    pd.testing.assert_frame_equal(build_features(shuffled), expected)
    pd.testing.assert_frame_equal(build_features(small.drop(columns="TX_FRAUD_SCENARIO")), expected)


@pytest.mark.parametrize("delay_days", [7, 1, 0])
def test_labels_are_used_only_after_the_delay(small, delay_days):
    """Flipping the label at time s changes exactly the later rows of its terminal with s+D <= t < s+D+30."""
    base = build_features(small, delay_days=delay_days)
    rng = np.random.default_rng(2)
    for row in rng.choice(len(small), size=8, replace=False):
        flipped = small.copy()
        flipped.loc[row, "TX_FRAUD"] = 1 - flipped.loc[row, "TX_FRAUD"]
        after = build_features(flipped, delay_days=delay_days)
        changed = (after[list(FEATURES)] != base[list(FEATURES)]).any(axis=1).to_numpy()
        s, terminal = small.loc[row, "TX_DATETIME"], small.loc[row, "TERMINAL_ID"]
        position = np.flatnonzero(base["TRANSACTION_ID"] == small.loc[row, "TRANSACTION_ID"])[0]
        lag = base["TX_DATETIME"] - s
        expected = (
            (base["TERMINAL_ID"] == terminal)
            & (lag >= pd.Timedelta(days=delay_days))
            & (lag < pd.Timedelta(days=delay_days + 30))
            & (base.index > position)
        ).to_numpy()
        assert expected.any() or delay_days == 7
        np.testing.assert_array_equal(changed, expected)
        assert not changed[(base["TX_DATETIME"] < s + pd.Timedelta(days=delay_days)).to_numpy()].any()
        assert not changed[(base["TRANSACTION_ID"] == small.loc[row, "TRANSACTION_ID"]).to_numpy()].any()


def test_own_label_never_used(small):
    """All labels flipped: features of a row are those of the original for every row within the delay."""
    flipped = small.assign(TX_FRAUD=1 - small["TX_FRAUD"])
    base, after = build_features(small), build_features(flipped)
    early = (base["TX_DATETIME"] < base["TX_DATETIME"].min() + pd.Timedelta(days=7)).to_numpy()
    assert early.sum() > 100
    pd.testing.assert_frame_equal(base.loc[early, list(FEATURES)], after.loc[early, list(FEATURES)])
    assert (base.loc[~early, list(FEATURES)] != after.loc[~early, list(FEATURES)]).any(axis=None)


@pytest.mark.parametrize("cut", ["2018-04-05 13:00", "2018-05-02", "2018-05-20 08:30:00"])
def test_no_feature_reads_the_future(small, cut):
    full = build_features(small)
    cut = pd.Timestamp(cut)
    truncated = build_features(small[small["TX_DATETIME"] < cut])
    before = full[full["TX_DATETIME"] < cut].reset_index(drop=True)
    assert 0 < len(truncated) < len(full)
    pd.testing.assert_frame_equal(truncated, before)


def test_rejects_bad_input(small):
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="delay_days"):
            build_features(small, delay_days=bad)
    with pytest.raises(ValueError, match="TX_AMOUNT"):
        build_features(small.drop(columns="TX_AMOUNT"))


def test_empty_input(small):
    empty = build_features(small.iloc[:0])
    assert list(empty.columns) == [*KEYS, *HANDBOOK_FEATURES] and empty.empty


@pytest.mark.parametrize("delay_days", [7, 0])
def test_online_features_equal_the_batch_ones_with_ties(delay_days):
    """`online_features` (the model server's path), one event at a time from per-key state, equals
    `build_features` on the whole table: times floored to the hour (ties broken by id, rows on window edges),
    ids not following time, and each label posted as soon as its event is in (with no delay the next event
    reads it). Events arriving out of order: tests/flow/test_realtime.py."""
    from serving.online.state import OnlineState, as_events
    from serving.online.store import MemoryStore
    from usecases.fraud import spec as fraud

    frame = simulate_transactions(n_customers=150, n_terminals=100, n_days=50, seed=6)
    frame["TX_DATETIME"] = frame["TX_DATETIME"].dt.floor("h")
    frame["TRANSACTION_ID"] = np.random.default_rng(0).permutation(len(frame))
    batch = build_features(frame, delay_days=delay_days).set_index("TRANSACTION_ID")
    spec = fraud.build_spec(fraud.Params(delay_days=delay_days)).online
    times = frame["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
    events = as_events({**{c: frame[c].to_numpy() for c in frame.columns}, "TX_DATETIME": times}, spec)
    state = OnlineState(MemoryStore(), spec, "test", lateness=pd.Timedelta(hours=1))
    old = events["t"] < times.min() + 40 * 86_400 * 10**9
    state.load_history(events[old])
    replay = events[~old][np.lexsort((events[~old]["id"], events[~old]["t"]))]
    online = {}
    for event in replay:
        outcome = state.ingest(event[None], lambda rows: np.zeros(len(rows)), "1", True)[0]
        online[outcome.id] = outcome.features
        state.label([int(event["id"])], [float(event["label"])])
    answered = pd.DataFrame.from_dict(online, orient="index")
    assert len(answered) == len(replay) > 400
    assert pd.Series(replay["t"]).duplicated().sum() > 100  # ties
    for name in FEATURES:
        expected = batch.loc[answered.index, name].astype(float)
        np.testing.assert_allclose(answered[name], expected, rtol=0, atol=1e-9, err_msg=name)
