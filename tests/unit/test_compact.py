"""Compact models on small synthetic data: distillation, cuts, depth pruning, the gates and the choice, the
compiled predictor against the booster, and the fall-back to the booster where the library cannot be used."""

import json
import shutil
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from conftest import needs
from mlflow.models import infer_signature
from sklearn.metrics import average_precision_score

from tasks import pyfunc_model
from tasks.compaction.booster import objective_of, predict_with, tree_stats
from tasks.compaction.candidates import Student, cut, distill, prune_depth, repack, teacher_margin
from tasks.compaction.compile import (
    COMPILED_DIR,
    PLATFORM_FILE,
    CompiledModel,
    compile_booster,
    platform_matches,
    platform_record,
)
from tasks.compaction.consumer import open_compact
from tasks.compaction.gates import judge, pick, quality_threshold, teacher_gate
from tasks.compaction.measure import Measured
from tasks.split import Splits
from usecases.spec import AbsoluteGate, CompactGates, Schema

FEATURES = tuple(f"f{i}" for i in range(6))
BINARY = {"features": list(FEATURES), "target_transform": "identity", "offset": None}


def frame(n: int, seed: int, regression: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    out = pd.DataFrame(x, columns=list(FEATURES))
    signal = x[:, 0] + 0.8 * x[:, 1] * x[:, 2] - 0.5 * (x[:, 3] > 0.5) + 0.3 * rng.normal(size=n)
    if regression:
        # a positive target whose log is a linear part (the offset) plus a non-linear correction
        out["target"] = np.exp(-2.0 + 0.3 * x[:, 4] + 0.2 * np.tanh(signal) + 0.05 * rng.normal(size=n))
    else:
        out["target"] = (signal > 1.2).astype(int)
    out["time"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="min")
    return out


def splits(regression: bool = False) -> Splits:
    return Splits(frame(3000, 1, regression), frame(1000, 2, regression), frame(1000, 3, regression), {})


def schema(problem: str) -> Schema:
    return Schema(problem, FEATURES, "target", "time", ())


@pytest.fixture(scope="module")
def binary():
    s = splits()
    teacher = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "seed": 0, "nthread": 1},
        xgb.DMatrix(s.train[list(FEATURES)], label=s.train["target"]),
        150,
    )
    return s, teacher


def ap(predictions, part) -> float:
    return average_precision_score(part["target"], predictions)


def depth_of(booster) -> int:
    return tree_stats(booster)["depth"]


# --- candidates -----------------------------------------------------------------------------------------


def test_distilled_student_is_small_shallow_and_close_to_its_teacher(binary):
    s, teacher = binary
    student = distill(teacher, s, BINARY, schema("binary"), Student(depth=2, max_trees=60))
    assert student.method == "distilled" and student.booster.num_boosted_rounds() <= 60
    assert depth_of(student.booster) <= 2
    teacher_ap, student_ap = (
        ap(predict_with(teacher, s.test, BINARY), s.test),
        ap(student.predict(s.test), s.test),
    )
    assert student_ap >= 0.85 * teacher_ap, (student_ap, teacher_ap)
    # it learned the teacher's log-odds, not the labels, and its output is still a probability
    margins = [teacher_margin(b, s.test, BINARY) for b in (student.booster, teacher)]
    assert np.corrcoef(*margins)[0, 1] > 0.9
    assert objective_of(student.booster) == "binary:logistic"
    assert len(student.booster.save_raw("ubj")) < len(teacher.save_raw("ubj")) / 4


def test_regression_student_mimics_a_transformed_teacher_with_a_base_margin():
    s = splits(regression=True)
    log_y = pyfunc_model.forward(s.train["target"].to_numpy(), "log")
    offset = {"features": ["f4"], "intercept": -2.0, "coef": [0.3]}
    config = {"features": list(FEATURES), "target_transform": "log", "offset": offset}
    dtrain = xgb.DMatrix(
        s.train[list(FEATURES)], label=log_y, base_margin=pyfunc_model.offset_margin(s.train, offset)
    )
    teacher = xgb.train(
        {"objective": "reg:absoluteerror", "max_depth": 4, "eta": 0.1, "nthread": 1}, dtrain, 200
    )
    student = distill(teacher, s, config, schema("regression"), Student(depth=3, max_trees=80))
    assert student.transformed and student.config["offset"] == offset
    ours, theirs = student.predict(s.test), pyfunc_model.predict(teacher, s.test, config)
    assert (ours > 0).all()  # target units, through the inverse transform
    assert np.median(np.abs(ours / theirs - 1)) < 0.02


def test_cut_keeps_the_first_trees(binary):
    s, teacher = binary
    candidate = cut(teacher, 30, BINARY)
    assert candidate.booster.num_boosted_rounds() == 30
    np.testing.assert_allclose(candidate.predict(s.test), predict_with(teacher[:30], s.test, BINARY))


def test_depth_pruning_cuts_deeper_splits_and_the_saved_model_shrinks(binary):
    s, teacher = binary
    data = xgb.DMatrix(s.train[list(FEATURES)], label=s.train["target"])
    candidate = prune_depth(teacher, 3, 0.1, data, BINARY, nthread=1)
    assert depth_of(teacher) == 6 and depth_of(candidate.booster) <= 3
    assert candidate.booster.num_boosted_rounds() == teacher.num_boosted_rounds()
    assert len(candidate.booster.save_raw("ubj")) < len(teacher.save_raw("ubj")) / 2
    assert ap(candidate.predict(s.test), s.test) > 0.7 * ap(predict_with(teacher, s.test, BINARY), s.test)


def test_a_pruned_split_becomes_the_leaf_a_shallower_tree_would_have_grown(binary):
    """A node cut to a leaf is worth eta x its weight: a depth-2 tree pruned to depth 1 is the stump that
    training with max_depth=1 grows (same first split), which only holds with the teacher's own eta."""
    s, _ = binary
    data = xgb.DMatrix(s.train[list(FEATURES)], label=s.train["target"])
    grow = {"objective": "binary:logistic", "eta": 0.3, "nthread": 1, "base_score": 0.5}
    deep, stump = (xgb.train({**grow, "max_depth": d}, data, 1) for d in (2, 1))
    pruned = prune_depth(deep, 1, 0.3, data, BINARY, nthread=1).booster
    x = s.test[list(FEATURES)].to_numpy(np.float32)
    np.testing.assert_allclose(pruned.inplace_predict(x), stump.inplace_predict(x), rtol=1e-6)
    wrong_eta = prune_depth(deep, 1, 1.0, data, BINARY, nthread=1).booster
    assert not np.allclose(wrong_eta.inplace_predict(x), stump.inplace_predict(x), rtol=1e-3)


def test_repack_drops_deleted_nodes_and_predicts_the_same(binary):
    s, teacher = binary
    data = xgb.DMatrix(s.train[list(FEATURES)], label=s.train["target"])
    pruned = xgb.train(
        {"process_type": "update", "updater": "prune", "max_depth": 2, "eta": 0.1, "nthread": 1},
        data,
        num_boost_round=teacher.num_boosted_rounds(),
        xgb_model=teacher.copy(),
    )
    trees = json.loads(pruned.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    assert sum(int(t["tree_param"]["num_deleted"]) for t in trees) > 0
    packed = repack(pruned)
    trees = json.loads(packed.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    assert all(int(t["tree_param"]["num_deleted"]) == 0 for t in trees)
    assert len(packed.save_raw("ubj")) < len(pruned.save_raw("ubj"))
    x = s.test[list(FEATURES)].to_numpy(np.float32)
    np.testing.assert_array_equal(packed.inplace_predict(x), pruned.inplace_predict(x))


# --- gates and choice -----------------------------------------------------------------------------------


def measured(
    label, primary, size_kb, p50=100.0, teacher=None, metric="average_precision", **extra
) -> Measured:
    ratio = primary / teacher.primary if teacher else 1.0
    metrics = {metric: primary, **extra}
    return Measured(label, "x", label, metrics, primary, ratio, size_kb, 10, 100, 3, p50, 2 * p50)


def test_quality_gate_is_direction_aware():
    assert quality_threshold(0.8, 0.98, greater_is_better=True) == pytest.approx(0.784)
    assert quality_threshold(0.01, 0.98, greater_is_better=False) == pytest.approx(0.01 / 0.98)
    teacher = measured("teacher", 0.010, 400, metric="mae")
    gates = CompactGates()
    slightly_worse = measured("a", 0.0101, 50, teacher=teacher, metric="mae")  # 1 % worse: inside 1/0.98
    much_worse = measured("b", 0.0110, 50, teacher=teacher, metric="mae")  # 10 % worse
    assert judge(gates, (), "mae", False, teacher, slightly_worse).registrable
    verdict = judge(gates, (), "mae", False, teacher, much_worse)
    assert not verdict.registrable
    assert verdict.refusals[0].name == "compact.quality.mae" and "not <=" in verdict.refusals[0].detail


def test_gates_hold_the_teachers_absolute_gates_size_and_optional_latency():
    teacher = measured("teacher", 0.80, 400, p50=300, roc_auc=0.9)
    ok = measured("ok", 0.79, 100, p50=200, teacher=teacher, roc_auc=0.9)
    gates = CompactGates()
    absolute = (AbsoluteGate("average_precision", 0.3), AbsoluteGate("roc_auc", 0.95))
    verdict = judge(gates, absolute, "average_precision", True, teacher, ok)
    assert [r.name for r in verdict.refusals] == ["absolute.roc_auc"]  # the teacher's own gate still holds
    bigger = measured("big", 0.80, 500, teacher=teacher, roc_auc=0.9)
    assert [r.name for r in judge(gates, (), "average_precision", True, teacher, bigger).refusals] == [
        "compact.size_kb"
    ]
    assert judge(gates, (), "average_precision", True, teacher, ok).registrable  # latency: reported only
    strict = CompactGates(max_latency_ratio=0.5)
    assert [r.name for r in judge(strict, (), "average_precision", True, teacher, ok).refusals] == [
        "compact.latency_p50_us"
    ]
    forced = CompactGates(min_ratio=1.5)
    assert not judge(forced, (), "average_precision", True, teacher, ok).registrable


def test_the_smallest_passing_candidate_is_chosen():
    teacher = measured("teacher", 0.80, 400)
    gates = CompactGates()
    candidates = [
        measured("tiny-but-bad", 0.50, 20, teacher=teacher),
        measured("medium", 0.80, 120, teacher=teacher),
        measured("small", 0.79, 60, teacher=teacher),
        measured("large", 0.81, 300, teacher=teacher),
    ]
    judged = [(m, judge(gates, (), "average_precision", True, teacher, m)) for m in candidates]
    assert judged[pick(judged)][0].label == "small"
    assert pick([(m, v) for m, v in judged if m.label == "tiny-but-bad"]) is None


def test_teacher_gate_refuses_promotion_when_the_teacher_is_not_champion():
    from types import SimpleNamespace

    teacher = SimpleNamespace(name="m", version="2")
    assert teacher_gate(teacher, "2").passed
    refused = teacher_gate(teacher, "3")
    assert not refused.passed and refused.kind == "champion" and "m@champion: 3" in refused.detail


# --- compiled predictor and its fall-back ---------------------------------------------------------------


def compiler_or_skip():
    pytest.importorskip("tl2cgen")
    if not (shutil.which("gcc") or shutil.which("clang")):
        needs("a C compiler", "TL2cgen builds the compiled predictor with gcc or clang")


def test_compiled_predictor_applies_offset_and_transform_like_the_pyfunc(tmp_path):
    compiler_or_skip()
    s = splits(regression=True)
    offset = {"features": ["f4"], "intercept": -2.0, "coef": [0.3]}
    config = {"features": list(FEATURES), "target_transform": "log", "offset": offset}
    dtrain = xgb.DMatrix(
        s.train[list(FEATURES)],
        label=np.log(s.train["target"]),
        base_margin=pyfunc_model.offset_margin(s.train, offset),
    )
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 3, "nthread": 1}, dtrain, 30)
    compiled = compile_booster(booster, config, tmp_path / "lib", check=s.test[list(FEATURES)].to_numpy())
    expected = pyfunc_model.predict(booster, s.test, config)
    np.testing.assert_allclose(CompiledModel(compiled).predict(s.test), expected, rtol=1e-5)


def logged_model(booster, part: pd.DataFrame, folder):
    """A model folder as `mlflow.xgboost.log_model(..., model_format="ubj")` writes it."""
    example = part[list(FEATURES)].head(5)
    signature = infer_signature(example, booster.inplace_predict(example.to_numpy(np.float32)))
    mlflow.xgboost.save_model(booster, str(folder), model_format="ubj", signature=signature)
    return folder


@pytest.fixture(scope="module")
def compiled_model(binary, tmp_path_factory):
    """A logged model folder with its booster compiled for this platform beside it (compiled once: gcc is
    the slow part)."""
    compiler_or_skip()
    s, teacher = binary
    folder = logged_model(teacher[:20], s.test, tmp_path_factory.mktemp("compact") / "model")
    x = s.test[list(FEATURES)].to_numpy(np.float32)
    compiled = compile_booster(teacher[:20], BINARY, folder / COMPILED_DIR, check=x)
    return folder, compiled, teacher[:20]


def test_compiled_predictor_equals_the_booster(binary, compiled_model):
    s, _ = binary
    _, compiled, booster = compiled_model
    assert compiled.meta["quantize"] == 1 and compiled.meta["max_abs_margin_diff"] < 1e-5
    assert platform_matches(compiled.meta)[0]
    ours = CompiledModel(compiled).predict(s.test)
    np.testing.assert_allclose(ours, predict_with(booster, s.test, BINARY), rtol=0, atol=1e-5)


def test_open_compact_uses_the_library_built_here(binary, compiled_model):
    s, _ = binary
    folder, _, booster = compiled_model
    opened = open_compact(folder)
    assert opened.backend == "compiled", opened.reason
    np.testing.assert_allclose(opened.predict(s.test), predict_with(booster, s.test, BINARY), atol=1e-5)


def test_a_library_built_for_another_platform_falls_back_to_the_booster(binary, tmp_path):
    s, teacher = binary
    folder = logged_model(teacher[:20], s.test, tmp_path / "model")
    (folder / COMPILED_DIR).mkdir()
    elsewhere = {**platform_record(), "machine": "riscv64", "library": "model.so", "sha256": "0"}
    (folder / COMPILED_DIR / PLATFORM_FILE).write_text(json.dumps(elsewhere))
    (folder / COMPILED_DIR / "model.so").write_bytes(b"not for this machine")
    opened = open_compact(folder)
    assert opened.backend == "booster" and "machine 'riscv64'" in opened.reason
    np.testing.assert_allclose(opened.predict(s.test), predict_with(teacher[:20], s.test, BINARY))


def test_without_tl2cgen_the_booster_is_used(binary, compiled_model, tmp_path, monkeypatch):
    s, teacher = binary
    folder, _, booster = compiled_model
    monkeypatch.setitem(sys.modules, "tl2cgen", None)  # as if not installed
    opened = open_compact(folder)
    assert opened.backend == "booster" and "not loadable" in opened.reason
    np.testing.assert_allclose(opened.predict(s.test), predict_with(booster, s.test, BINARY))
    assert open_compact(logged_model(teacher[:5], s.test, tmp_path / "plain")).reason == "no compiled library"
