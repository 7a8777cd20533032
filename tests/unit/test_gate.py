import math

from tasks.gate import AbsoluteGate, BaselineGate, GateSpec, evaluate_gates

SPEC = GateSpec(
    absolute=(AbsoluteGate("average_precision", 0.5), AbsoluteGate("mae", 0.1, greater_is_better=False)),
    baseline=(BaselineGate("average_precision", ("lr", "tree"), relative_margin=0.1),),
    champion_margin=0.02,
)
BASELINES = {"lr": {"average_precision": 0.6}, "tree": {"average_precision": 0.5}}


def verdict(metrics, champion=None, **kw):
    return evaluate_gates(SPEC, metrics, BASELINES, champion, "average_precision", True, "4", **kw)


def test_all_pass_without_champion_is_promotable():
    v = verdict({"average_precision": 0.7, "mae": 0.05})
    assert v.registrable and v.promotable
    assert [r.name for r in v.results] == [
        "absolute.average_precision",
        "absolute.mae",
        "baseline.average_precision.lr",
        "baseline.average_precision.tree",
        "champion",
    ]


def test_baseline_margin_is_relative_and_strict():
    # 0.6 * 1.1 = 0.66 needed to beat "lr" by 10 %
    v = verdict({"average_precision": 0.65, "mae": 0.05})
    refused = {r.name: r for r in v.refusals}
    assert set(refused) == {"baseline.average_precision.lr"}
    assert math.isclose(refused["baseline.average_precision.lr"].threshold, 0.66)
    assert not v.registrable and not v.promotable


def test_lower_is_better_absolute_gate():
    v = verdict({"average_precision": 0.9, "mae": 0.2})
    assert [r.name for r in v.refusals] == ["absolute.mae"]
    assert "not <=" in v.refusals[0].detail


def test_champion_gate_blocks_promotion_but_not_registration():
    v = verdict({"average_precision": 0.7, "mae": 0.05}, champion={"average_precision": 0.75})
    assert v.registrable and not v.promotable
    (champion,) = v.refusals
    assert champion.kind == "champion"
    assert math.isclose(champion.threshold, 0.75 * 0.98)
    assert "champion v4" in champion.detail


def test_champion_within_margin_passes():
    v = verdict({"average_precision": 0.74, "mae": 0.05}, champion={"average_precision": 0.75})
    assert v.promotable


def test_unscorable_champion_refuses_promotion():
    v = verdict({"average_precision": 0.9, "mae": 0.05}, champion_error="KeyError: 'x'")
    assert v.registrable and not v.promotable
    assert "could not be re-scored" in v.refusals[0].detail


def test_nan_metric_never_passes():
    v = verdict({"average_precision": float("nan"), "mae": 0.05})
    assert not v.registrable
