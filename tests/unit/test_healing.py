"""Healing, the pure parts: held-out keys, replay and recency weights, the refit, earlier windows and which
rows a comparison may use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.candidate import fit_candidate, refit_candidate
from tasks.split import earlier_windows, held_out, split_frame, training_rows
from usecases.spec import ContinualSpec, Holdout, ModelSpec, Schema, SplitSpec

SPLIT = SplitSpec(train=10, validation=5, test=7, gap=3)
HOLDOUT = Holdout("card", 0.2)


def frame(days=60, per_day=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * per_day
    times = pd.date_range("2024-01-01", periods=n, freq=f"{86400 // per_day}s")
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2 * x - 3)))).astype("int64")
    return pd.DataFrame(
        {"t": times, "card": rng.integers(0, 500, n), "x": x, "noise": rng.normal(size=n), "y": y}
    )


def test_held_out_keys_are_the_same_in_every_run_and_about_the_share():
    table = frame()
    held = held_out(table, HOLDOUT)
    assert 0.15 < held.mean() < 0.25  # 20 % of 500 cards, give or take the hash
    assert (held == held_out(table.sample(frac=1, random_state=1).sort_index(), HOLDOUT)).all()
    as_int32 = table.assign(card=table["card"].astype("int32"))
    assert (held_out(as_int32, HOLDOUT) == held).all()  # the key's width does not move the holdout
    by_card = pd.Series(held).groupby(table["card"].to_numpy()).nunique()
    assert (by_card == 1).all()  # a card is held out whole
    assert held_out(table, Holdout("card", 0.2, salt="other")).tolist() != held.tolist()
    assert not held_out(table, None).any()


def test_held_out_keys_leave_training_and_validation_but_stay_in_test():
    table = frame()
    plain = split_frame(table, SPLIT, "t", "y")
    held = split_frame(table, SPLIT, "t", "y", continual=ContinualSpec(holdout=HOLDOUT))
    for part in ("train", "validation"):
        assert not held_out(getattr(held, part), HOLDOUT).any()
        assert len(getattr(held, part)) == (~held_out(getattr(plain, part), HOLDOUT)).sum()
    assert len(held.test) == len(plain.test) and held_out(held.test, HOLDOUT).any()
    assert held.weights is None and held.windows == plain.windows


def test_replay_keeps_every_older_positive_and_a_weighted_share_of_negatives():
    table = frame()
    continual = ContinualSpec(replay=20, replay_negatives=0.25)
    rows, weights, span = training_rows(table, SPLIT, "t", "y", continual)
    plain = split_frame(table, SPLIT, "t", "y")
    older = rows[rows["t"] < plain.train["t"].min()]
    window_older = table[(table["t"] < plain.train["t"].min()) & (table["t"] >= pd.Timestamp("2024-01-13"))]
    assert span == ("2024-01-13", plain.windows["train"][1])  # 20 days before the window's first
    assert older["y"].sum() == window_older["y"].sum()  # every positive
    kept = (older["y"] == 0).sum() / (window_older["y"] == 0).sum()
    assert 0.2 < kept < 0.3
    replayed_negative = (rows["t"] < plain.train["t"].min()).to_numpy() & (rows["y"] == 0).to_numpy()
    assert np.allclose(weights[replayed_negative], 4.0) and np.allclose(weights[~replayed_negative], 1.0)
    splits = split_frame(table, SPLIT, "t", "y", continual=continual)
    assert splits.windows["train"] == span and splits.replayed == len(older)
    assert splits.recent_train.reset_index(drop=True).equals(plain.train)  # what monitoring profiles


def test_recency_halves_the_weight_every_half_life_back_from_the_newest_training_day():
    table = frame()
    rows, weights, _ = training_rows(table, SPLIT, "t", "y", ContinualSpec(half_life=3))
    days = (rows["t"].max().normalize() - rows["t"].dt.normalize()).dt.days.to_numpy()
    assert np.allclose(weights, 0.5 ** (days / 3))
    assert weights.max() == 1.0 and np.isclose(weights.min(), 0.5**3)  # 10 days: 9 back from the newest
    # replayed history weighs as the window's oldest day (times its sampling weight), not less
    both = ContinualSpec(half_life=3, replay=20, replay_negatives=0.5)
    rows, weights, _ = training_rows(table, SPLIT, "t", "y", both)
    older = (rows["t"] < pd.Timestamp("2024-02-02")).to_numpy()
    negative = (rows["y"] == 0).to_numpy()
    assert np.allclose(weights[older & ~negative], 0.5**3) and np.allclose(
        weights[older & negative], 2 * 0.5**3
    )


def test_a_refit_reaches_the_newest_label_and_leaves_the_holdout_out():
    table = frame()
    continual = ContinualSpec(refit=True, holdout=HOLDOUT)
    rows, weights, span = training_rows(table, SPLIT, "t", "y", continual, upto="test")
    assert span == (split_frame(table, SPLIT, "t", "y").windows["train"][0], "2024-02-29")
    assert rows["t"].max().normalize() == table["t"].max().normalize()
    assert not held_out(rows, HOLDOUT).any() and weights is None


def test_refit_uses_the_candidates_parameters_and_rounds_on_the_new_rows():
    table = frame()
    schema = Schema("binary", ("x", "noise"), "y", "t", ())
    model = ModelSpec(params={"max_depth": 2, "eta": 0.3}, num_boost_round=60, early_stopping_rounds=5)
    splits = split_frame(table, SPLIT, "t", "y")
    candidate = fit_candidate(splits, model, schema, dict(model.params), 0)
    rows, weights, _ = training_rows(table, SPLIT, "t", "y", ContinualSpec(refit=True), upto="test")
    refit = refit_candidate(candidate, rows, weights, model, schema)
    assert refit.booster.num_boosted_rounds() == candidate.best_iteration + 1
    assert refit.params == candidate.params and refit.curve == ()
    assert not np.allclose(
        refit.predict(splits.test), candidate.predict(splits.test)
    )  # other rows, other leaves


def test_earlier_windows_are_test_length_and_newest_first():
    assert earlier_windows(frame(), SPLIT, "t", 3) == [
        ("2024-02-16", "2024-02-22"),
        ("2024-02-09", "2024-02-15"),
        ("2024-02-02", "2024-02-08"),
    ]
    assert len(earlier_windows(frame(days=30), SPLIT, "t", 10)) == 3  # as many as the data holds


@pytest.mark.parametrize("honoured", [True, False])
def test_unseen_rows_are_outside_the_models_days_or_its_held_out_keys(honoured):
    from dataclasses import replace

    from tasks.compare import unseen
    from usecases.spec import UseCaseSpec

    table = frame()
    spec = replace(_spec(), continual=ContinualSpec(holdout=HOLDOUT))
    assert isinstance(spec, UseCaseSpec)
    mask = unseen(table, spec, [("2024-01-01", "2024-02-20")], honoured)
    late = (table["t"] >= pd.Timestamp("2024-02-21")).to_numpy()
    expected = late | held_out(table, HOLDOUT) if honoured else late
    assert (mask == expected).all()


def _spec():
    from usecases.fraud.spec import Params, build_spec

    return replace_time(build_spec(Params()))


def replace_time(spec):
    from dataclasses import replace

    return replace(spec, time_column="t", target="y")
