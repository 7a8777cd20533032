"""Slices: per-group metrics for candidate, baselines and champion, support, disparity; and the fraud test
population the metrics and gates use (the handbook's known-compromised set, from the training window)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import ChampionScore, Evaluation, Scored
from tasks.gate import slice_gates
from tasks.slices import slice_report
from tasks.split import Splits
from usecases.spec import GateSpec, Metrics, Schema, Slice

SCHEMA = Schema("binary", ("x",), "y", "t", ("id",))


def _metrics() -> Metrics:
    from tasks.evaluate import binary_metrics

    return Metrics(
        compute=lambda frame, scores, context: binary_metrics(
            frame.y.to_numpy(), scores, context["threshold"]
        ),
        primary="average_precision",
        greater_is_better=True,
    )


@pytest.fixture
def data():
    """Two groups of 1,000 rows, 100 positives each; the candidate ranks group `b` at random, the champion
    ranks both groups perfectly."""
    rng = np.random.default_rng(0)
    n = 2000
    group = np.repeat(["a", "b"], n // 2)
    y = np.tile(np.r_[np.ones(100), np.zeros(900)], 2).astype(int)
    test = pd.DataFrame({"id": np.arange(n), "t": pd.Timestamp("2024-01-01"), "x": 0.0, "g": group, "y": y})
    perfect = np.where(y == 1, 0.9, 0.1) + rng.normal(0, 0.01, n)
    candidate = np.where(group == "a", perfect, rng.random(n))
    splits = Splits(test.head(10), test.head(10), test, {})
    evaluation = Evaluation(
        Scored({}, {"threshold": 0.5}, candidate),
        {"constant": Scored({}, {"threshold": 0.5}, np.full(n, 0.5))},
    )
    champion = ChampionScore("4", {}, scored=Scored({}, {"threshold": 0.5}, perfect))
    return splits, evaluation, champion


SLICES = (
    Slice("group", lambda frame, train: frame["g"].to_numpy()),
    Slice("single", lambda frame, train: np.full(len(frame), "all")),
)


def test_every_model_is_scored_per_group_with_its_support(data):
    splits, evaluation, champion = data
    report = slice_report(SLICES, splits, evaluation, champion, _metrics(), SCHEMA, GateSpec())

    assert set(report.groups) == {"group"} and "single" in report.skipped  # one group: nothing to compare
    a, b = report.groups["group"]["a"], report.groups["group"]["b"]
    assert a["support"] == {"rows": 1000, "positives": 100} == b["support"]
    assert a["candidate"]["average_precision"] == pytest.approx(1.0)
    assert b["candidate"]["average_precision"] < 0.3
    assert b["champion"]["average_precision"] == pytest.approx(1.0)
    assert b["baselines"]["constant"]["average_precision"] == pytest.approx(0.1)
    assert "tp" not in a["candidate"] and "threshold" not in a["candidate"]


def test_disparity_comes_from_fairlearn_between_groups(data):
    splits, evaluation, champion = data
    report = slice_report(SLICES, splits, evaluation, champion, _metrics(), SCHEMA, GateSpec())
    recall = report.disparity["group"]["recall"]
    y, p, g = splits.test.y.to_numpy(), evaluation.candidate.test_predictions, splits.test.g.to_numpy()
    by_group = {k: ((p >= 0.5) & (y == 1) & (g == k)).sum() / ((y == 1) & (g == k)).sum() for k in "ab"}
    assert recall["ratio"] == pytest.approx(min(by_group.values()) / max(by_group.values()))
    assert recall["min_group"] == "b" and recall["max_group"] == "a"
    assert "selection_rate" in report.disparity["group"]


def test_disparity_from_counts_equals_metricframe_on_every_row():
    """The disparity hands fairlearn (group, label, decision) counts as weights, not the rows: the values
    must be MetricFrame's on the rows themselves, three groups of unequal size and recall."""
    from fairlearn.metrics import MetricFrame, selection_rate
    from sklearn.metrics import recall_score

    rng = np.random.default_rng(3)
    n = 6000
    group = rng.choice(["p", "q", "r"], n, p=[0.5, 0.3, 0.2])
    y = (rng.random(n) < 0.1).astype(int)
    scores = np.clip(y * np.select([group == "p", group == "q"], [0.6, 0.3], 0.1) + rng.random(n) * 0.5, 0, 1)
    test = pd.DataFrame({"id": np.arange(n), "t": pd.Timestamp("2024-01-01"), "x": 0.0, "g": group, "y": y})
    evaluation = Evaluation(Scored({}, {"threshold": 0.5}, scores), {})
    report = slice_report(
        (Slice("group", lambda frame, train: frame["g"].to_numpy()),),
        Splits(test.head(10), test.head(10), test, {}),
        evaluation,
        None,
        _metrics(),
        SCHEMA,
        GateSpec(slice_min_rows=1, slice_min_positives=1),
    )
    reference = MetricFrame(
        metrics={
            "recall": lambda t, p: recall_score(t, p, zero_division=0),
            "selection_rate": selection_rate,
        },
        y_true=y,
        y_pred=(scores >= 0.5).astype(int),
        sensitive_features=group,
    )
    for metric in ("recall", "selection_rate"):
        got = report.disparity["group"][metric]
        assert got["ratio"] == pytest.approx(reference.ratio(method="between_groups")[metric])
        assert got["difference"] == pytest.approx(reference.difference(method="between_groups")[metric])
        assert got["groups"] == pytest.approx(reference.by_group[metric].to_dict())
    assert report.disparity["group"]["recall"]["min_group"] == "r"


def test_group_names_are_cleaned_once_and_merge_when_they_clean_alike(data):
    splits, evaluation, champion = data
    raw = np.where(splits.test.g.to_numpy() == "a", "east side", "east_side")  # both clean to east_side
    labels = (
        Slice("merged", lambda frame, train: raw),
        Slice("missing", lambda frame, train: np.where(frame.g == "a", None, "known").astype(object)),
    )
    report = slice_report(labels, splits, evaluation, champion, _metrics(), SCHEMA, GateSpec())
    assert report.skipped["merged"] == "one group only in the test window (east_side)"
    assert set(report.groups["missing"]) == {"nan", "known"}  # a missing label is a group of its own
    assert report.groups["missing"]["nan"]["support"] == {"rows": 1000, "positives": 100}


def test_each_group_gets_only_the_columns_the_metrics_read(data):
    splits, evaluation, champion = data
    seen = []

    def compute(frame, scores, context):
        seen.append(tuple(frame.columns))
        return {"positives": float(frame.y.sum()), "rows": float(len(scores))}

    metrics = Metrics(compute=compute, primary="positives", greater_is_better=True, reads=("y", "absent"))
    report = slice_report(SLICES, splits, evaluation, champion, metrics, SCHEMA, GateSpec())
    assert set(seen) == {("y",)}  # the declared column present, nothing else; a missing one is skipped
    assert len(seen) == 2 * 3  # two groups x (candidate, one baseline, champion)
    assert report.groups["group"]["b"]["champion"] == {"positives": 100.0, "rows": 1000.0}


def test_slice_gate_refuses_the_group_the_candidate_lost_and_passes_an_equal_one(data):
    splits, evaluation, champion = data
    spec = GateSpec(slice_margin=0.1, slice_min_rows=500, slice_min_positives=50)
    refused = slice_gates(
        spec,
        slice_report(SLICES, splits, evaluation, champion, _metrics(), SCHEMA, spec),
        "average_precision",
        True,
    )[0]
    assert not refused.passed and "group=b" in refused.detail and "1000 rows, 100 positives" in refused.detail

    same = ChampionScore("4", {}, scored=evaluation.candidate)  # the champion is the candidate
    passed = slice_gates(
        spec,
        slice_report(SLICES, splits, evaluation, same, _metrics(), SCHEMA, spec),
        "average_precision",
        True,
    )[0]
    assert passed.passed


def test_groups_below_the_support_are_not_gated(data):
    splits, evaluation, champion = data
    spec = GateSpec(slice_margin=0.1, slice_min_rows=500, slice_min_positives=101)  # 100 positives each
    report = slice_report(SLICES, splits, evaluation, champion, _metrics(), SCHEMA, spec)
    (result,) = [
        r for r in slice_gates(spec, report, "average_precision", True) if r.name.startswith("slice")
    ]
    assert result.passed and "no group with enough support" in result.detail
    assert report.disparity["group"] == {}  # disparity only over groups with enough support


def test_fraud_and_stock_specs_declare_their_slices():
    from usecases.fraud import spec as fraud
    from usecases.stock import spec as stock

    assert [s.name for s in fraud.build_spec(fraud.Params()).slices] == [
        "amount",
        "night",
        "weekend",
        "customer",
        "terminal_risk",
    ]
    assert [s.name for s in stock.build_spec(stock.Params()).slices] == ["regime", "ticker"]
    frame = pd.DataFrame({"Ticker": ["A"] * 6, "rv_22d": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    assert list(stock.regime(frame, frame)) == ["calm", "calm", "normal", "normal", "stressed", "stressed"]
    amounts = pd.DataFrame({"TX_AMOUNT": [5.0, 25.0, 80.0, 220.0, 500.0]})
    assert list(fraud.amount_band(amounts, None)) == ["lt25", "25_75", "75_220", "ge220", "ge220"]


# ------------------------------------------------------- metric fidelity: which known cards leave the test


def _transactions(rows):
    frame = pd.DataFrame(rows, columns=["CUSTOMER_ID", "day", "TX_FRAUD"])
    frame["TX_DATETIME"] = pd.Timestamp("2018-01-01") + pd.to_timedelta(frame.pop("day"), unit="D")
    frame["TRANSACTION_ID"] = np.arange(len(frame))
    return frame


def test_handbook_filter_remembers_frauds_from_the_training_window_and_marks_older_ones():
    from usecases.fraud.metrics import KNOWN_BEFORE_TRAINING, handbook_test_filter

    days = [(9, d, 0) for d in range(40)]  # a customer on every day: the day axis has no holes
    table = _transactions(
        [*days, (1, 2, 1), (2, 25, 1), (3, 37, 1), (1, 38, 0), (2, 38, 0), (3, 38, 0), (4, 38, 0)]
    )
    test = table[table.TX_DATETIME >= "2018-02-07"].loc[lambda f: f.CUSTOMER_ID != 9]  # day 37 on
    # history 20 days: the training window starts on day 17; delay 7: frauds before day 31 are known on day 38
    kept = handbook_test_filter(test, table, delay_days=7, history_days=20)

    by_customer = kept.set_index("CUSTOMER_ID")
    assert 2 not in by_customer.index  # defrauded on day 25, inside the training window: removed
    assert by_customer.loc[1, KNOWN_BEFORE_TRAINING].all()  # defrauded on day 2: only the whole-history rule
    assert not by_customer.loc[[3, 4], KNOWN_BEFORE_TRAINING].any()  # day 37 is not known yet; 4: no fraud
    assert list(kept.index) == sorted(kept.index)


def test_fraud_metrics_report_both_populations():
    from usecases.fraud.metrics import KNOWN_BEFORE_TRAINING
    from usecases.fraud.spec import compute_metrics

    frame = _transactions([(c, 38, int(c < 3)) for c in range(8)])
    frame[KNOWN_BEFORE_TRAINING] = frame.CUSTOMER_ID == 0
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.4, 0.5, 0.6])
    metrics = compute_metrics(frame, scores, {"threshold": 0.5})
    assert metrics["average_precision"] != metrics["average_precision_all_history"]
    assert "card_precision_at_100_all_history" in metrics
    assert "average_precision_all_history" not in compute_metrics(
        frame.drop(columns=KNOWN_BEFORE_TRAINING), scores, {"threshold": 0.5}
    )
