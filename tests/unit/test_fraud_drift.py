"""Drift injected into the fraud simulator: each kind changes what it should, only from its start date."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from data_checks.fraud import raw_suite  # noqa: E402
from usecases.fraud.simulator import (  # noqa: E402
    BUST_OUT_SCENARIO,
    CARD_TESTING_SCENARIO,
    NIGHT_RAID_SCENARIO,
    Drift,
    simulate_transactions,
)

N_CUSTOMERS, N_TERMINALS, N_DAYS = 300, 600, 60
SIZE = {"n_customers": N_CUSTOMERS, "n_terminals": N_TERMINALS, "n_days": N_DAYS, "seed": 11}
START = pd.Timestamp("2018-05-01")  # day 30 of 60
DAY = 86_400


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return simulate_transactions(**SIZE)


def simulate(**drift) -> pd.DataFrame:
    return simulate_transactions(**SIZE, drift=Drift(START, **drift))


def before(frame: pd.DataFrame, start: pd.Timestamp = START) -> pd.DataFrame:
    return frame[frame["TX_DATETIME"] < start]


def after(frame: pd.DataFrame, start: pd.Timestamp = START) -> pd.DataFrame:
    return frame[frame["TX_DATETIME"] >= start]


def without_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="TRANSACTION_ID").reset_index(drop=True)


def night_share(frame: pd.DataFrame) -> float:
    return float((frame["TX_DATETIME"].dt.hour <= 6).mean())


def validate(frame: pd.DataFrame, suite: gx.ExpectationSuite) -> list[str]:
    """Failed expectations ("type(column)") of `suite` on `frame`, run as tasks.validate runs it."""
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas(f"test-{uuid.uuid4().hex}").add_dataframe_asset("frame")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite)
    return [
        f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column')})"
        for r in result.results
        if not r.success
    ]


KINDS = {
    "amount": {"amount_factor": 2.0},
    "hours": {"hour_shift": -6.0},
    "new terminals": {"new_terminal_share": 0.3},
    "new customers": {"new_customer_share": 0.25},
    "card testing": {"card_testing_cards_per_day": 4},
    "night raids": {"night_raid_cards_per_day": 4},
    "bust-out": {"bust_out_cards_per_day": 3},
    "all at once": {
        "amount_factor": 1.5,
        "hour_shift": 5.5,
        "new_terminal_share": 0.2,
        "new_customer_share": 0.2,
        "card_testing_cards_per_day": 3,
        "night_raid_cards_per_day": 2,
        "bust_out_cards_per_day": 2,
    },
}


@pytest.fixture(scope="module")
def drifted() -> dict[str, pd.DataFrame]:
    return {name: simulate(**kwargs) for name, kwargs in KINDS.items()}


def test_no_drift_is_the_default(base):
    pd.testing.assert_frame_equal(simulate(), base)  # a Drift that changes nothing
    late = Drift("2030-01-01", **KINDS["all at once"])  # starts after the last simulated day
    pd.testing.assert_frame_equal(simulate_transactions(**SIZE, drift=late), base)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_before_the_start_are_unchanged_and_after_it_changed(base, drifted, kind):
    frame = drifted[kind]
    pd.testing.assert_frame_equal(before(frame), before(base))
    assert len(before(base)) > 10_000
    post, post_base = without_ids(after(frame)), without_ids(after(base))
    assert not (len(post) == len(post_base) and post.equals(post_base))


@pytest.mark.parametrize("kind", KINDS)
def test_output_contract(base, drifted, kind):
    frame = drifted[kind]
    assert list(frame.columns) == list(base.columns) and frame.dtypes.equals(base.dtypes)
    assert isinstance(frame.index, pd.RangeIndex)
    np.testing.assert_array_equal(frame["TRANSACTION_ID"], np.arange(len(frame)))
    assert frame["TX_DATETIME"].is_monotonic_increasing
    elapsed = (frame["TX_DATETIME"] - pd.Timestamp("2018-04-01")).dt.total_seconds().to_numpy()
    np.testing.assert_array_equal(elapsed, frame["TX_TIME_SECONDS"])
    np.testing.assert_array_equal(frame["TX_TIME_DAYS"], frame["TX_TIME_SECONDS"] // DAY)
    assert frame["TX_TIME_SECONDS"].mod(DAY).gt(0).all() and frame["TX_TIME_DAYS"].lt(N_DAYS).all()
    np.testing.assert_array_equal(frame["TX_FRAUD"], (frame["TX_FRAUD_SCENARIO"] > 0).astype(int))
    assert validate(frame, raw_suite()) == []


def test_seeded():
    kwargs = {**SIZE, "n_days": 40, "drift": Drift(START, **KINDS["all at once"])}
    first = simulate_transactions(**kwargs)
    pd.testing.assert_frame_equal(first, simulate_transactions(**kwargs))
    other = simulate_transactions(**{**kwargs, "seed": 12})
    assert len(first) != len(other) or not first["TX_AMOUNT"].equals(other["TX_AMOUNT"])


def test_amount_factor_scales_amounts_and_keeps_the_amount_rule(base, drifted):
    post, post_base = after(drifted["amount"]), after(base)
    for column in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID"):
        np.testing.assert_array_equal(post[column], post_base[column])
    np.testing.assert_allclose(post["TX_AMOUNT"], 2 * post_base["TX_AMOUNT"], rtol=1e-12)
    # Scenario 1 (amount > 220) applies to the new amounts: covariate drift, same concept.
    assert (post.loc[post["TX_AMOUNT"] > 220, "TX_FRAUD"] == 1).all()
    assert (post.loc[post["TX_FRAUD"] == 0, "TX_AMOUNT"] <= 220).all()
    assert (post["TX_FRAUD_SCENARIO"] == 1).mean() > 5 * (post_base["TX_FRAUD_SCENARIO"] == 1).mean()


def test_hour_shift_moves_times_within_their_day(base, drifted):
    post, post_base = after(drifted["hours"]), after(base)
    assert len(post) == len(post_base)
    pd.testing.assert_series_equal(
        post.groupby(["CUSTOMER_ID", "TX_TIME_DAYS"]).size(),
        post_base.groupby(["CUSTOMER_ID", "TX_TIME_DAYS"]).size(),
    )
    time_of_day = post_base["TX_TIME_SECONDS"].to_numpy() % DAY
    shifted = (time_of_day - 1 - 6 * 3600) % (DAY - 1) + 1
    np.testing.assert_array_equal(np.sort(post["TX_TIME_SECONDS"] % DAY), np.sort(shifted))
    assert night_share(post) > 2 * night_share(post_base)
    assert abs(night_share(before(drifted["hours"])) - night_share(post_base)) < 0.02


def test_new_terminals_appear_from_the_start(base, drifted):
    frame = drifted["new terminals"]
    post, post_base = after(frame), after(base)
    assert before(frame)["TERMINAL_ID"].lt(N_TERMINALS).all()
    new = post["TERMINAL_ID"].ge(N_TERMINALS).to_numpy()
    assert abs(new.mean() - 0.3) < 0.02
    assert post.loc[new, "TERMINAL_ID"].lt(N_TERMINALS + round(0.3 * N_TERMINALS)).all()
    assert post.loc[new, "TERMINAL_ID"].nunique() > 50
    # Only the terminal changed: same transactions, in the same order, the others at the same terminal.
    for column in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID"):
        np.testing.assert_array_equal(post[column], post_base[column])
    np.testing.assert_array_equal(
        post["TERMINAL_ID"].to_numpy()[~new], post_base["TERMINAL_ID"].to_numpy()[~new]
    )


def test_new_customers_appear_from_the_start(base, drifted):
    frame = drifted["new customers"]
    assert before(frame)["CUSTOMER_ID"].lt(N_CUSTOMERS).all()
    new = after(frame)["CUSTOMER_ID"].ge(N_CUSTOMERS)
    assert abs(new.mean() - 0.25) < 0.05
    assert after(frame).loc[new, "CUSTOMER_ID"].nunique() > 50
    # The known customers' transactions are the ones simulated without drift, labels included.
    known = frame[frame["CUSTOMER_ID"] < N_CUSTOMERS]
    pd.testing.assert_frame_equal(without_ids(known), without_ids(base))


def test_card_testing_is_a_new_fraud_scenario_from_the_start(base, drifted):
    frame = drifted["card testing"]
    tested = frame[frame["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO]
    assert CARD_TESTING_SCENARIO not in set(base["TX_FRAUD_SCENARIO"])
    assert tested["TX_DATETIME"].min() >= START
    assert (tested["TX_FRAUD"] == 1).all()
    assert tested["TX_AMOUNT"].between(0.01, 5, inclusive="left").all()
    # Per day: 4 cards, each with one burst of 3 to 10 payments within 20 minutes, at several terminals.
    bursts = tested.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"])["TX_TIME_SECONDS"].agg(["size", "min", "max"])
    assert (bursts.groupby(level="TX_TIME_DAYS").size() == 4).all()
    assert bursts.index.get_level_values("TX_TIME_DAYS").nunique() == N_DAYS - 30
    assert bursts["size"].between(3, 10).all() and (bursts["max"] - bursts["min"]).le(20 * 60).all()
    assert tested.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"])["TERMINAL_ID"].nunique().gt(1).mean() > 0.9
    # Added rows only: every other row is the one simulated without drift.
    others = frame[frame["TX_FRAUD_SCENARIO"] != CARD_TESTING_SCENARIO]
    pd.testing.assert_frame_equal(without_ids(others), without_ids(base))


@pytest.mark.parametrize(
    ("kind", "scenario", "per_day", "size", "within"),
    [
        ("night raids", NIGHT_RAID_SCENARIO, 4, (3, 8), (0, 6)),
        ("bust-out", BUST_OUT_SCENARIO, 3, (4, 10), (8, 19)),
    ],
)
def test_burst_scenarios_add_labelled_bursts_from_the_start(
    base, drifted, kind, scenario, per_day, size, within
):
    frame = drifted[kind]
    added = frame[frame["TX_FRAUD_SCENARIO"] == scenario]
    assert scenario not in set(base["TX_FRAUD_SCENARIO"])
    assert added["TX_DATETIME"].min() >= START and (added["TX_FRAUD"] == 1).all()
    low, high = (
        Drift(START).night_raid_amounts if scenario == NIGHT_RAID_SCENARIO else Drift(START).bust_out_amounts
    )
    assert added["TX_AMOUNT"].between(low, high).all()
    if scenario == BUST_OUT_SCENARIO:  # just under scenario 1's rule: every earlier label there is genuine
        assert added["TX_AMOUNT"].lt(220).all() and added["TX_AMOUNT"].gt(200).any()
    assert added["TX_DATETIME"].dt.hour.between(*within).all()
    # Per day: `per_day` cards, one burst each of `size` payments, at several terminals.
    bursts = added.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"]).size()
    assert (bursts.groupby(level="TX_TIME_DAYS").size() == per_day).all()
    assert bursts.index.get_level_values("TX_TIME_DAYS").nunique() == N_DAYS - 30
    assert bursts.between(*size).all() and bursts.nunique() > 2
    assert added.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"])["TERMINAL_ID"].nunique().gt(1).mean() > 0.9
    # Added rows only: every other row is the one simulated without drift.
    others = frame[frame["TX_FRAUD_SCENARIO"] != scenario]
    pd.testing.assert_frame_equal(without_ids(others), without_ids(base))


def test_scenarios_draw_from_streams_of_their_own(drifted):
    """Turning one concept drift on does not change the rows another draws."""
    together = simulate(card_testing_cards_per_day=4, night_raid_cards_per_day=4, bust_out_cards_per_day=3)
    for kind, scenario in (
        ("card testing", CARD_TESTING_SCENARIO),
        ("night raids", NIGHT_RAID_SCENARIO),
        ("bust-out", BUST_OUT_SCENARIO),
    ):
        alone = drifted[kind]
        mine = lambda f, s=scenario: without_ids(f[f["TX_FRAUD_SCENARIO"] == s])  # noqa: E731
        pd.testing.assert_frame_equal(mine(together), mine(alone))


def test_start_inside_a_day_starts_with_the_next_day(base):
    start = START + pd.Timedelta(hours=12)
    frame = simulate_transactions(**SIZE, drift=Drift(start, card_testing_cards_per_day=2, amount_factor=3))
    next_day = START + pd.Timedelta(days=1)
    pd.testing.assert_frame_equal(before(frame, next_day), before(base, next_day))
    assert frame.loc[frame["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO, "TX_DATETIME"].min() >= next_day
    assert Drift("2018-03-01").first_day("2018-04-01") == 0
    assert Drift("2018-04-03 00:00:01").first_day("2018-04-01") == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"amount_factor": 0},
        {"new_terminal_share": 1.5},
        {"new_customer_share": 1.0},
        {"card_testing_cards_per_day": -1},
        {"card_testing_cards_per_day": 1.5},
        {"card_testing_max_amount": 0},
        {"night_raid_cards_per_day": -2},
        {"bust_out_cards_per_day": 0.5},
        {"night_raid_amounts": (50.0, 10.0)},
        {"bust_out_amounts": (0.0, 100.0)},
    ],
)
def test_rejects_bad_drift(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Drift(START, **bad)
