import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tasks.evaluate import Scored
from tasks.monitoring.drift import (
    drifted_share,
    feature_drift,
    ks_statistic,
    psi,
    scaled_wasserstein,
    score_drift,
)
from tasks.monitoring.estimate import calibrate, estimate_performance
from tasks.monitoring.reference import build_profile, profile_from_json, profile_to_json
from tasks.monitoring.report import render_report
from tasks.monitoring.verdict import Assessment, verdict
from tasks.split import Splits
from usecases.spec import Metrics, MonitorThresholds, Schema

DEFAULTS = MonitorThresholds()

FEATURES = ["amount", "hour", "flag", "count"]


def features(rng, n, amount_scale=1.0, p_flag=0.2):
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0, 1.0, n) * amount_scale,
            "hour": rng.normal(12.0, 4.0, n),
            "flag": (rng.random(n) < p_flag).astype(int),
            "count": rng.poisson(3.0, n).clip(0, 8),
        }
    )


def latent(frame):
    return -2.0 + 0.9 * (np.log(frame.amount) - 3.0) + 0.8 * frame.flag + 0.1 * (frame["count"] - 3)


def model_score(frame):
    """The model's (miscalibrated) score."""
    return 1.0 / (1.0 + np.exp(-latent(frame).to_numpy()))


def true_probability(frame):
    """How labels are really drawn: a monotone function of the score, but not the score itself."""
    return 1.0 / (1.0 + np.exp(-2.0 * latent(frame).to_numpy()))


def labelled(rng, frame):
    return frame.assign(fraud=(rng.random(len(frame)) < true_probability(frame)).astype(int))


def profile_of(problem, columns, target, frames, predictions, metrics, primary, greater_is_better):
    """`build_profile` on plain frames: (train, validation, test) and (validation, test) predictions."""
    schema = Schema(problem, tuple(columns), target, "time", ())
    compute = Metrics(lambda *_: {}, primary, greater_is_better)
    scored = Scored(metrics, {}, predictions[1], predictions[0])
    return build_profile(schema, compute, Splits(*frames, windows={}), scored)


def binary_profile(seed, n=20_000):
    rng = np.random.default_rng(seed)
    train = features(rng, n)
    validation = labelled(rng, features(rng, n))
    test = labelled(rng, features(rng, n))
    test_scores = model_score(test)
    metrics = {
        "average_precision": average_precision_score(test.fraud, test_scores),
        "roc_auc": roc_auc_score(test.fraud, test_scores),
    }
    profile = profile_of(
        "binary",
        FEATURES,
        "fraud",
        (train, validation, test),
        (model_score(validation), test_scores),
        metrics,
        "average_precision",
        True,
    )
    return profile, rng


def realised(frame, scores):
    return {"average_precision": average_precision_score(frame.fraud, scores)}


def check(profile, current, realised_metrics=None, thresholds=DEFAULTS):
    drifts = feature_drift(profile, current, thresholds)
    scores = model_score(current)
    score_psi = score_drift(profile, scores)
    estimated = estimate_performance(profile, scores)
    v = verdict(profile, drifts, drifted_share(drifts), score_psi, estimated, realised_metrics, thresholds)
    return drifts, score_psi, estimated, v


# --- drift ----------------------------------------------------------------------------------------------


def test_psi_is_zero_on_the_reference_and_finite_for_empty_bins():
    values = np.arange(100.0)
    edges = [24.5, 49.5, 74.5]
    assert psi(edges, [0.25] * 4, values) == pytest.approx(0.0, abs=1e-12)
    moved = psi(edges, [0.25] * 4, np.full(100, 10.0))  # all mass in one bin, three empty bins
    assert math.isfinite(moved) and moved > 2.0
    # nulls count as a bin of their own when the reference's null share is given
    with_nulls = np.r_[values, np.full(100, np.nan)]
    assert psi(edges, [0.25] * 4, with_nulls) == pytest.approx(0.0, abs=1e-12)
    assert psi(edges, [0.25] * 4, with_nulls, ref_null_share=0.0) > 1.0


def test_ks_from_stored_percentiles_matches_the_exact_shift():
    rng = np.random.default_rng(1)
    quantiles = np.quantile(rng.normal(size=50_000), np.linspace(0, 1, 101))
    assert ks_statistic(quantiles, rng.normal(size=20_000)) < 0.03
    # N(0,1) vs N(0.5,1): sup |F - G| = 2 * Phi(0.25) - 1 = 0.197
    assert ks_statistic(quantiles, rng.normal(0.5, 1.0, size=20_000)) == pytest.approx(0.197, abs=0.02)
    # a point mass (many zeros) in the reference is a jump, not a slope
    zeros = np.r_[np.zeros(6000), rng.exponential(size=4000)]
    zq = np.quantile(zeros, np.linspace(0, 1, 101))
    assert ks_statistic(zq, np.r_[np.zeros(600), rng.exponential(size=400)]) < 0.05
    assert ks_statistic(zq, np.r_[np.zeros(300), rng.exponential(size=700)]) == pytest.approx(0.3, abs=0.05)


def test_scaled_wasserstein_measures_how_far_mass_moved():
    values, fractions = [0.0, 1.0, 2.0], [0.5, 0.3, 0.2]
    same = np.repeat(values, [500, 300, 200])
    assert scaled_wasserstein(values, fractions, same) == pytest.approx(0.0, abs=1e-12)
    spread = math.sqrt(0.5 * 0.7**2 + 0.3 * 0.3**2 + 0.2 * 1.3**2)
    shifted = same + 1.0  # every unit of mass moved by one
    assert scaled_wasserstein(values, fractions, shifted) == pytest.approx(1.0 / spread)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_same_distribution_raises_no_alarm(seed):
    profile, rng = binary_profile(seed)
    current = labelled(rng, features(rng, 20_000))  # realised AP on fewer rows varies by ~5 % (seeded here)
    drifts, score_psi, estimated, v = check(profile, current, realised(current, model_score(current)))
    assert not any(d.drifted for d in drifts), [d.reason for d in drifts]
    assert max(d.psi for d in drifts) < 0.05
    assert max(d.statistic for d in drifts) < 0.05
    assert score_psi < 0.05
    assert v.status == "healthy", v.reasons


def test_shifted_feature_is_flagged_and_named_first():
    profile, rng = binary_profile(10)
    current = labelled(rng, features(rng, 5000, amount_scale=1.5))
    drifts, _, _, v = check(profile, current)
    first = drifts[0]
    assert first.feature == "amount" and first.drifted and first.test == "ks"
    assert first.statistic > 0.1
    assert [d.feature for d in drifts if d.drifted] == ["amount"]
    assert drifted_share(drifts) == 0.25  # one of four: below the 30 % drift share
    assert v.status == "healthy"
    assert any("amount" in r for r in v.reasons)  # still named, as a note


def test_discrete_share_change_is_flagged_by_wasserstein():
    profile, rng = binary_profile(11)
    assert profile["features"]["flag"]["kind"] == "discrete"
    assert profile["features"]["count"]["kind"] == "discrete"
    assert profile["features"]["amount"]["kind"] == "continuous"
    current = features(rng, 5000, p_flag=0.35)
    flag = next(d for d in feature_drift(profile, current, DEFAULTS) if d.feature == "flag")
    assert flag.test == "wasserstein" and flag.drifted
    assert flag.psi < 0.2  # PSI alone would have missed it
    assert flag.statistic == pytest.approx(0.15 / 0.4, abs=0.04)  # share moved / reference std


# --- performance estimation -----------------------------------------------------------------------------


def test_calibration_map_fixes_a_miscalibrated_score():
    profile, rng = binary_profile(20)
    current = features(rng, 20_000)
    scores = model_score(current)
    truth = true_probability(current)
    p = calibrate(profile, scores)
    inner = (scores > np.quantile(scores, 0.05)) & (scores < np.quantile(scores, 0.95))
    assert np.max(np.abs(p[inner] - truth[inner])) < 0.06
    assert np.max(np.abs(scores[inner] - truth[inner])) > 0.1  # the raw score is far off
    assert abs(p.mean() - truth.mean()) < 0.01
    assert abs(scores.mean() - truth.mean()) > 0.03


@pytest.mark.parametrize("seed", [30, 31])
def test_cbpe_average_precision_is_close_to_realised(seed):
    profile, rng = binary_profile(seed)
    current = labelled(rng, features(rng, 20_000, amount_scale=1.3))  # drifted inputs, same concept
    scores = model_score(current)
    estimated = estimate_performance(profile, scores, k=100)
    assert estimated["rows"] == 20_000
    assert estimated["average_precision"] == pytest.approx(
        average_precision_score(current.fraud, scores), abs=0.05
    )
    assert estimated["roc_auc"] == pytest.approx(roc_auc_score(current.fraud, scores), abs=0.03)
    top = np.argsort(-scores, kind="stable")[:100]
    assert estimated["precision_at_100"] == pytest.approx(current.fraud.to_numpy()[top].mean(), abs=0.15)
    assert estimated["positive_rate"] == pytest.approx(current.fraud.mean(), abs=0.01)
    # without calibration (raw scores as probabilities) the estimates are off
    raw = estimate_performance({**profile, "calibration": None}, scores)
    assert abs(raw["positive_rate"] - current.fraud.mean()) > 0.05
    assert abs(raw["average_precision"] - average_precision_score(current.fraud, scores)) > 0.05


def regression_profile(seed):
    rng = np.random.default_rng(seed)

    def frame(n, low=0.0, high=2.0):
        x = rng.uniform(low, high, n)
        return pd.DataFrame({"x": x, "y": x + rng.normal(size=n) * (0.1 + 0.5 * x)})

    train, validation, test = frame(10_000), frame(10_000), frame(5000)
    test_mae = float(np.mean(np.abs(test.x - test.y)))
    profile = profile_of(
        "regression", ["x"], "y", (train, validation, test), (validation.x.to_numpy(), test.x.to_numpy()),
        {"mae": test_mae, "rmse": float(np.sqrt(np.mean((test.x - test.y) ** 2)))}, "mae", False,
    )  # fmt: skip
    return profile, frame


def test_expected_mae_is_close_to_realised_and_follows_the_prediction_level():
    profile, frame = regression_profile(40)
    current = frame(10_000)
    estimated = estimate_performance(profile, current.x.to_numpy())
    realised_mae = float(np.mean(np.abs(current.x - current.y)))
    assert estimated["mae"] == pytest.approx(realised_mae, rel=0.05)
    # larger predictions carry larger errors: the estimate follows them
    high = frame(10_000, 1.5, 2.0)
    assert estimate_performance(profile, high.x.to_numpy())["mae"] > 1.5 * estimated["mae"]


# --- verdict --------------------------------------------------------------------------------------------


def test_verdict_degraded_when_realised_metric_drops_past_the_margin():
    profile, rng = binary_profile(50)
    current = labelled(rng, features(rng, 5000))
    test_ap = profile["test_metrics"]["average_precision"]
    _, _, _, v = check(profile, current, {"average_precision": test_ap * 0.85})
    assert v.status == "degraded"
    assert "realised average_precision" in v.reasons[0] and "15.0% worse" in v.reasons[0]
    _, _, _, fine = check(profile, current, {"average_precision": test_ap * 0.95})
    assert fine.status == "healthy"
    floor = MonitorThresholds(absolute_minimum=test_ap * 0.97)
    assert check(profile, current, {"average_precision": test_ap * 0.95}, floor)[3].status == "degraded"


def test_verdict_drift_when_only_inputs_move():
    profile, rng = binary_profile(51)
    current = labelled(rng, features(rng, 5000, amount_scale=1.5, p_flag=0.35))
    test_ap = profile["test_metrics"]["average_precision"]
    drifts, score_psi, _, v = check(profile, current, {"average_precision": test_ap})
    assert drifted_share(drifts) == 0.5
    assert v.status == "drift", v.reasons
    assert v.reasons[0].startswith("2/4 features drifted") and "amount" in v.reasons[0]
    # worst first, by statistic / threshold: flag (W1 ~0.37 vs 0.1) before amount (KS ~0.16 vs 0.1)
    assert [d.feature for d in drifts[:2]] == ["flag", "amount"]
    assert v.reasons[0].index("flag") < v.reasons[0].index("amount")


def test_verdict_is_direction_aware_and_distrusts_small_samples():
    profile, _ = regression_profile(52)
    test_mae = profile["test_metrics"]["mae"]

    def judge(estimated, score_psi=0.0):  # no feature drift, no labels
        return verdict(profile, [], 0.0, score_psi, estimated, None, DEFAULTS)

    worse = judge({"rows": 5000, "mae": test_mae * 1.2})
    assert worse.status == "degraded" and "estimated mae" in worse.reasons[0]
    better = judge({"rows": 5000, "mae": test_mae * 0.7})
    assert better.status == "healthy"
    few = judge({"rows": 100, "mae": test_mae * 1.2})
    assert few.status == "healthy"
    assert any("not trusted" in r for r in few.reasons)
    assert judge({"rows": 5000}, score_psi=0.5).status == "drift"  # score PSI alone


# --- profile and report ---------------------------------------------------------------------------------


def test_profile_round_trips_through_json():
    profile, _ = binary_profile(60, n=3000)
    assert json.loads(json.dumps(profile, allow_nan=False)) == profile
    assert profile_from_json(profile_to_json(profile)) == profile
    assert len(profile["features"]["amount"]["quantiles"]) == 101
    assert len(profile["calibration"]["x"]) == len(profile["calibration"]["y"]) >= 2
    with pytest.raises(ValueError, match="format"):
        profile_from_json(json.dumps({**profile, "format_version": 999}))
    regression, _ = regression_profile(61)
    assert json.loads(json.dumps(regression, allow_nan=False)) == regression


def test_report_is_self_contained_html():
    profile, rng = binary_profile(70, n=3000)
    current = labelled(rng, features(rng, 2000, amount_scale=1.5))
    scores = model_score(current)
    realised_metrics = realised(current, scores)
    drifts, score_psi, estimated, v = check(profile, current, realised_metrics)
    history = [
        {"period": "2024-01", "estimated": 0.5, "realised": 0.48},
        {"period": "2024-02", "estimated": 0.45, "realised": None},
    ]
    assessment = Assessment(
        v, drifts, drifted_share(drifts), score_psi, estimated, realised_metrics, len(current), len(current),
        history, scores,
    )  # fmt: skip
    page = render_report(profile, assessment, current, "fraud <v3>")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for name in FEATURES:
        assert name in page
    assert page.count("<img") == len(FEATURES) + 2  # features, scores, history
    assert "fraud &lt;v3&gt;" in page and "fraud <v3>" not in page
    assert v.status.upper() in page


def test_one_strongly_moved_feature_is_drift_on_its_own_and_an_exempt_one_never_is():
    from dataclasses import replace

    profile, rng = binary_profile(seed=5)
    current = features(rng, 20_000)
    current["hour"] = current["hour"] + 6.0  # one feature of four moves far; the share stays at 25 %
    strict = replace(DEFAULTS, drift_share=0.5)
    drifts, _, _, v = check(profile, current, thresholds=strict)
    assert [d.feature for d in drifts if d.drifted] == ["hour"]
    assert v.status == "drift" and "past 2x a threshold" in v.reasons[0]

    mild = replace(strict, feature_severity=1e9)  # without the single-feature rule the share decides
    assert check(profile, current, thresholds=mild)[3].status == "healthy"
    exempt = replace(strict, exempt=("hour",))
    drifts, _, _, v = check(profile, current, thresholds=exempt)
    assert v.status == "healthy" and not any(d.drifted for d in drifts)
    assert next(d for d in drifts if d.feature == "hour").reason.startswith("exempt")
