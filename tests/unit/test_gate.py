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


def _comparison(earlier, newest=None):
    """`earlier`/`newest`: (candidate, champion) on the pooled earlier windows and the newest window."""
    from tasks.compare import Comparison, Window

    def window(label, pair):
        return Window(label, ("2018-09-01", "2018-09-07"), 900, 40, *pair, "held-out keys")

    return Comparison(
        newest=window("newest", newest) if newest else None,
        pooled=window("earlier pooled", earlier) if earlier else None,
    )


def test_forgetting_gate_passes_within_tolerance_on_the_earlier_windows():
    from tasks.gate import forgetting_gate

    result = forgetting_gate(SPEC, _comparison((0.66, 0.68), (0.7, 0.6)), "average_precision", True)
    assert result.passed and not result.needs_approval and result.name == "forgetting.average_precision"
    assert math.isclose(result.value, -0.02 / 0.68) and math.isclose(result.threshold, -0.05)
    assert result.detail.startswith("kept:")


def test_forgetting_without_adapting_is_refused():
    from tasks.gate import forgetting_gate

    # 10 % worse on the earlier windows, 2 % better on the newest: below the 10 % adapt margin.
    result = forgetting_gate(SPEC, _comparison((0.54, 0.60), (0.612, 0.60)), "average_precision", True)
    assert not result.passed and not result.needs_approval
    assert "forgot without adapting" in result.detail and "+2.0%" in result.detail


def test_forgetting_for_adapting_is_a_trade_off_for_a_person():
    from tasks.gate import GateVerdict, forgetting_gate

    result = forgetting_gate(SPEC, _comparison((0.54, 0.60), (0.80, 0.30)), "average_precision", True)
    assert not result.passed and result.needs_approval and "trade-off" in result.detail
    verdict = GateVerdict((*verdict_results(), result))
    assert verdict.registrable and not verdict.promotable and verdict.awaiting_approval
    approved = verdict.decided(True, "Prefect UI form", "card testing is the bigger loss")
    assert approved.promotable and not approved.awaiting_approval
    assert "approved by Prefect UI form: card testing" in approved.results[-1].detail
    rejected = verdict.decided(False, "timeout", "no answer within 24 h")
    assert not rejected.promotable and not rejected.awaiting_approval
    assert "rejected by timeout" in rejected.refusals[0].detail


def test_a_trade_off_beside_another_refusal_is_not_sent_to_a_person():
    from tasks.gate import GateVerdict, forgetting_gate

    trade_off = forgetting_gate(SPEC, _comparison((0.54, 0.60), (0.80, 0.30)), "average_precision", True)
    worse = verdict({"average_precision": 0.7, "mae": 0.05}, champion={"average_precision": 0.9})
    assert not GateVerdict((*worse.results, trade_off)).awaiting_approval


def verdict_results():
    return verdict({"average_precision": 0.7, "mae": 0.05}).results


def test_forgetting_gate_is_sign_adjusted_for_lower_is_better():
    from tasks.gate import forgetting_gate

    better = forgetting_gate(SPEC, _comparison((0.9, 1.0)), "mae", False)  # lower MAE: a gain
    worse = forgetting_gate(SPEC, _comparison((1.2, 1.0)), "mae", False)
    assert better.passed and better.value > 0
    assert not worse.passed and math.isclose(worse.value, -0.2)
    assert "no newest window to weigh it against" in worse.detail


def test_forgetting_gate_skipped_with_its_reason():
    from tasks.compare import Comparison
    from tasks.gate import forgetting_gate

    result = forgetting_gate(SPEC, Comparison(skipped="no current champion"), "average_precision", True)
    assert result.passed and math.isnan(result.value) and "skipped: no current champion" in result.detail


def test_champion_gate_compares_on_the_newest_windows_unseen_rows_when_given():
    from tasks.gate import champion_gate

    champion = ChampionScore("4", {"average_precision": 0.9})
    newest = _comparison(None, (0.75, 0.70)).newest
    on_test = champion_gate(SPEC, {"average_precision": 0.8}, champion, "average_precision", True)
    on_unseen = champion_gate(SPEC, {"average_precision": 0.8}, champion, "average_precision", True, newest)
    assert not on_test.passed and on_unseen.passed  # 0.8 < 0.9 on test; 0.75 >= 0.70 * 0.98 unseen
    assert "held-out keys" in on_unseen.detail and "900 rows" in on_unseen.detail


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
