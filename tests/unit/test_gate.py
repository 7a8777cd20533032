import math

from tasks.evaluate import ChampionScore
from tasks.gate import evaluate_gates
from usecases.spec import AbsoluteGate, BaselineGate, GateSpec

SPEC = GateSpec(
    absolute=(AbsoluteGate("average_precision", 0.5), AbsoluteGate("mae", 0.1, greater_is_better=False)),
    baseline=(BaselineGate("average_precision", ("lr", "tree"), relative_margin=0.1),),
    champion_margin=0.02,
)
BASELINES = {"lr": {"average_precision": 0.6}, "tree": {"average_precision": 0.5}}


def verdict(metrics, champion=None, champion_error=None):
    score = ChampionScore("4", champion, error=champion_error)
    return evaluate_gates(SPEC, metrics, BASELINES, score, "average_precision", True)


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


# ------------------------------------------------------------------------- forgetting (backward transfer)


def _windows(*pairs):
    return [{"label": f"v{i} test w{i}", "candidate": c, "champion": h} for i, (c, h) in enumerate(pairs, 1)]


def test_forgetting_gate_passes_when_the_candidate_keeps_the_earlier_windows():
    from tasks.gate import forgetting_gate

    result = forgetting_gate(SPEC, _windows((0.70, 0.68), (0.60, 0.61)), "average_precision", True)
    assert result.passed and result.kind == "champion" and result.name == "forgetting.average_precision"
    assert math.isclose(result.value, (0.02 - 0.01) / 2)


def test_forgetting_gate_refuses_below_minus_margin_and_names_the_worst_window():
    from tasks.gate import forgetting_gate
    from usecases.spec import GateSpec

    spec = GateSpec(forgetting_margin=0.05)
    result = forgetting_gate(spec, _windows((0.69, 0.70), (0.40, 0.60)), "average_precision", True)
    assert not result.passed
    assert math.isclose(result.value, (-0.01 - 0.20) / 2)
    assert math.isclose(result.threshold, -0.05 * 0.65)
    assert "v2 test w2" in result.detail and "0.4" in result.detail and "0.6" in result.detail


def test_forgetting_gate_is_sign_adjusted_for_lower_is_better():
    from tasks.gate import forgetting_gate
    from usecases.spec import GateSpec

    spec = GateSpec(forgetting_margin=0.05)
    better = forgetting_gate(spec, _windows((0.9, 1.0)), "mae", False)  # lower MAE: a gain
    worse = forgetting_gate(spec, _windows((1.2, 1.0)), "mae", False)
    assert better.passed and better.value > 0
    assert not worse.passed and math.isclose(worse.value, -0.2)


def test_forgetting_gate_skipped_with_its_reason():
    from tasks.gate import forgetting_gate

    result = forgetting_gate(SPEC, [], "average_precision", True, skipped="no current champion")
    assert result.passed and math.isnan(result.value) and "skipped: no current champion" in result.detail


# ----------------------------------------------------------------------------------------------- slices


def _report(candidate: dict, champion: dict, support: dict, disparity=None):
    from tasks.slices import SliceReport

    groups = {
        "amount": {
            g: {
                "support": support[g],
                "candidate": {"average_precision": candidate[g]},
                "baselines": {},
                "champion": {"average_precision": champion[g]} if champion else None,
            }
            for g in candidate
        }
    }
    return SliceReport(groups, disparity or {}, "4" if champion else None)


def test_slice_gate_refuses_a_supported_group_worse_than_the_champion_and_names_it():
    from tasks.gate import slice_gates
    from usecases.spec import GateSpec

    spec = GateSpec(slice_margin=0.1, slice_min_rows=100, slice_min_positives=10)
    report = _report(
        {"small": 0.8, "large": 0.5},
        {"small": 0.8, "large": 0.7},
        {"small": {"rows": 500, "positives": 40}, "large": {"rows": 900, "positives": 60}},
    )
    (result,) = slice_gates(spec, report, "average_precision", True)
    assert not result.passed and result.name == "slice.amount"
    assert math.isclose(result.threshold, 0.7 * 0.9)
    assert "amount=large" in result.detail and "900 rows, 60 positives" in result.detail
    assert "champion v4 0.7" in result.detail


def test_slice_gate_ignores_groups_without_enough_support_and_passes_within_margin():
    from tasks.gate import slice_gates
    from usecases.spec import GateSpec

    spec = GateSpec(slice_margin=0.1, slice_min_rows=100, slice_min_positives=10)
    report = _report(
        {"rare": 0.1, "bulk": 0.66},
        {"rare": 0.9, "bulk": 0.7},
        {"rare": {"rows": 5000, "positives": 3}, "bulk": {"rows": 900, "positives": 60}},
    )
    (result,) = slice_gates(spec, report, "average_precision", True)
    assert result.passed and "bulk" in result.detail  # "rare" lost far more, but rests on 3 frauds


def test_slice_gate_without_champion_is_skipped():
    from tasks.gate import slice_gates

    report = _report({"a": 0.5, "b": 0.6}, {}, {"a": {"rows": 500}, "b": {"rows": 500}})
    (result,) = slice_gates(SPEC, report, "average_precision", True)
    assert result.passed and "skipped: no current champion" in result.detail


def test_disparity_is_reported_and_gated_only_when_asked():
    from tasks.gate import slice_gates
    from usecases.spec import GateSpec

    disparity = {
        "amount": {
            "recall": {"ratio": 0.5, "min": 0.4, "max": 0.8, "min_group": "small", "max_group": "large"}
        }
    }
    report = _report({"a": 0.5}, {}, {"a": {"rows": 500}}, disparity)
    reported = [
        r for r in slice_gates(GateSpec(), report, "average_precision", True) if r.name == "disparity"
    ]
    assert reported[0].passed and "not gated" in reported[0].detail
    gated = slice_gates(GateSpec(slice_min_ratio=0.8), report, "average_precision", True)
    (refused,) = [r for r in gated if r.name == "disparity"]
    assert not refused.passed and refused.kind == "absolute" and "small 0.4 vs large 0.8" in refused.detail
