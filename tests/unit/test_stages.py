"""The stages train, evaluate, register and promote, called directly (no flow, no Prefect server) against a
real SQLite MLflow store in a temporary folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.gate import evaluate_gates
from tasks.split import Splits
from usecases.spec import AbsoluteGate, Baseline, GateSpec, Metrics, ModelSpec, Schema, SplitSpec

FEATURES = ("x1", "x2", "noise")
SCHEMA = Schema("binary", FEATURES, "y", "t", ("id",))
SPLIT = SplitSpec(test=10, validation=10, gap=0)


def _frame(n: int, seed: int, start: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, noise = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    logit = 2.0 * x1 - 1.5 * x2 - 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "t": pd.date_range(start, periods=n, freq="min"),
            "x1": x1,
            "x2": x2,
            "noise": noise,
            "y": y,
        }
    )


@pytest.fixture(scope="module")
def splits() -> Splits:
    return Splits(
        _frame(4000, 0, "2024-01-01"),
        _frame(1500, 1, "2024-02-01"),
        _frame(1500, 2, "2024-03-01"),
        {
            "train": ("2024-01-01", "2024-01-03"),
            "validation": ("2024-02-01", "2024-02-02"),
            "test": ("a", "b"),
        },
    )


def _metrics() -> Metrics:
    from tasks.evaluate import best_f1_threshold, binary_metrics

    return Metrics(
        compute=lambda frame, scores, context: binary_metrics(
            frame.y.to_numpy(), scores, context["threshold"]
        ),
        primary="average_precision",
        greater_is_better=True,
        calibrate=lambda frame, scores: best_f1_threshold(frame, scores, "y"),
    )


def _model(**params) -> ModelSpec:
    return ModelSpec(
        params={"max_depth": 3, "eta": 0.3, "nthread": 1, **params},
        num_boost_round=200,
        early_stopping_rounds=10,
    )


@pytest.fixture
def run_id(tmp_path, monkeypatch):
    import mlflow

    from champion import store

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store.configure()
    run = mlflow.MlflowClient().create_run(store.experiment_id("stages"))
    yield run.info.run_id
    mlflow.set_tracking_uri(None)


# -------------------------------------------------------------------------------------------------- train


def test_train_stops_early_cuts_back_to_the_best_round_and_is_seeded(splits):
    from tasks.train import train

    candidate = train.fn(splits, _model(), SCHEMA, SPLIT, seed=7)
    again = train.fn(splits, _model(), SCHEMA, SPLIT, seed=7)

    assert candidate.rounds_trained < 200  # early stopping fired
    assert candidate.booster.num_boosted_rounds() == candidate.best_iteration + 1  # cut back to the best
    assert candidate.features == FEATURES
    predictions = candidate.predict(splits.test)
    assert predictions.shape == (len(splits.test),) and ((predictions > 0) & (predictions < 1)).all()
    np.testing.assert_array_equal(predictions, again.predict(splits.test))
    # the signal is in x1 and x2, not in the noise column
    gain = candidate.booster.get_score(importance_type="total_gain")
    assert gain["x1"] > gain.get("noise", 0) and gain["x2"] > gain.get("noise", 0)


def test_train_logs_the_validation_curve_per_round(splits, run_id):
    from mlflow import MlflowClient

    from tasks.train import train

    candidate = train.fn(splits, _model(), SCHEMA, SPLIT, seed=7, run_id=run_id)
    history = MlflowClient().get_metric_history(run_id, "validation_aucpr")
    # every round trained, past the best one, so the curve shows where early stopping looked
    assert [m.step for m in history] == list(range(candidate.rounds_trained))
    assert max(m.value for m in history) == pytest.approx(candidate.validation_score)
    best = MlflowClient().get_run(run_id).data.metrics["best_iteration"]
    assert best == candidate.best_iteration == max(history, key=lambda m: m.value).step


def test_train_balances_classes_only_when_asked(splits):
    from tasks.train import train

    plain = train.fn(splits, _model(), SCHEMA, SPLIT, seed=1)
    balanced = train.fn(
        splits, ModelSpec(params=_model().params, balance_classes=True), SCHEMA, SPLIT, seed=1
    )
    positives = splits.train.y.sum()
    assert "scale_pos_weight" not in plain.params
    assert balanced.params["scale_pos_weight"] == pytest.approx((len(splits.train) - positives) / positives)


def test_baselines_are_fitted_on_the_training_window(splits):
    from tasks.train import fit_baseline

    seen = {}

    def fit(train, features, target):
        seen.update(rows=len(train), features=features, target=target)
        rate = train[target].mean()
        return lambda frame: np.full(len(frame), rate)

    fitted = fit_baseline.fn(Baseline("rate", fit, "the training positive rate"), splits.train, SCHEMA)
    assert seen == {"rows": len(splits.train), "features": list(FEATURES), "target": "y"}
    assert fitted.predict(splits.test)[0] == pytest.approx(splits.train.y.mean())


# ----------------------------------------------------------------------------------------------- evaluate


def test_evaluate_scores_candidate_and_baselines_on_the_same_window_and_logs_them(splits, run_id):
    from mlflow import MlflowClient

    from tasks.evaluate import evaluate
    from tasks.train import FittedBaseline, train

    candidate = train.fn(splits, _model(), SCHEMA, SPLIT, seed=3)
    constant = FittedBaseline("constant", "", lambda frame: np.full(len(frame), 0.5))
    evaluation = evaluate.fn(candidate, [constant], splits, _metrics(), SCHEMA, run_id)

    assert evaluation.candidate.metrics["average_precision"] > 0.6
    # a constant score ranks nothing: its AP is the positive rate of the test window
    assert evaluation.baseline_metrics["constant"]["average_precision"] == pytest.approx(splits.test.y.mean())
    assert len(evaluation.candidate.validation_predictions) == len(splits.validation)
    logged = MlflowClient().get_run(run_id).data.metrics
    assert logged["test_average_precision"] == pytest.approx(
        evaluation.candidate.metrics["average_precision"]
    )
    assert "constant_test_average_precision" in logged
    plots = {a.path for a in MlflowClient().list_artifacts(run_id, "plots")}
    assert {"plots/roc.png", "plots/feature_importance.png"} <= plots or len(plots) >= 3


# ------------------------------------------------------------------------------------ register, promote


def _register(splits, run_id, fingerprint: str):
    from tasks.card import gates_summary
    from tasks.register import log_candidate, register
    from tasks.train import train
    from usecases.vocabulary import FINGERPRINT_TAG, GATES_TAG

    candidate = train.fn(splits, _model(), SCHEMA, SPLIT, seed=5)
    logged = log_candidate.fn(candidate, splits.test.head(5), run_id)
    verdict = evaluate_gates(GateSpec((AbsoluteGate("auc", 0.5),)), {"auc": 0.9}, {}, None, "auc", True)
    tags = {FINGERPRINT_TAG: fingerprint, "use_case": "stages", GATES_TAG: gates_summary(verdict)}
    return register.fn(logged, "stages-model", "a test model", "card", tags, run_id)


@pytest.mark.parametrize("threshold", [0.5, 2.0, -1.0])  # some positives, none predicted, all predicted
def test_binary_metrics_at_the_threshold_match_sklearn_zero_division_included(threshold):
    from sklearn import metrics as skm

    from tasks.evaluate import binary_metrics

    rng = np.random.default_rng(5)
    y = (rng.random(500) < 0.2).astype(int)
    scores = np.clip(y * 0.4 + rng.random(500) * 0.7, 0, 1)
    got = binary_metrics(y, scores, threshold)
    predicted = (scores >= threshold).astype(int)
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert got[name] == pytest.approx(fn(y, predicted, zero_division=0)), name
    assert got["tp"] + got["fp"] == predicted.sum() and got["tp"] + got["fn"] == y.sum()


def test_register_creates_a_version_with_its_tags_and_reuses_an_identical_one(splits, run_id):
    from mlflow import MlflowClient

    first = _register(splits, run_id, "fp-1")
    same = _register(splits, run_id, "fp-1")
    other = _register(splits, run_id, "fp-2")

    assert (first.version, first.deduplicated) == ("1", False)
    assert (same.version, same.deduplicated) == ("1", True)
    assert (other.version, other.deduplicated) == ("2", False)
    version = MlflowClient().get_model_version("stages-model", "1")
    assert version.tags["lineage.fingerprint"] == "fp-1"
    assert version.tags["gates"] == "passed 2/2"  # the absolute gate and "no champion yet"
    assert version.description == "card"
    assert not MlflowClient().get_registered_model("stages-model").aliases  # registration sets no alias


def test_register_makes_a_new_version_when_the_data_the_code_or_the_parameters_change(splits, run_id):
    """Dedupe the other way round: only an identical fingerprint (data digest, code version, parameters, as
    the training flow computes it) reuses a version; one changed value in the data or another commit does
    not."""
    from tasks.register import fingerprint
    from tasks.tracking import content_digest

    data = content_digest(splits.train)
    edited = splits.train.copy()
    edited.loc[edited.index[17], "x1"] += 1e-9  # one value in 4,000 rows
    edited_data = content_digest(edited)
    assert edited_data != data
    params = {"seed": 5, "max_depth": 3, "rounds": 200}

    def fp(data=data, code="0f3c2ab", params=params):
        return fingerprint(use_case="stages", data=data, code=code, params=params)

    first = _register(splits, run_id, fp())
    same = _register(splits, run_id, fp(params=dict(reversed(params.items()))))  # key order does not count
    new_data = _register(splits, run_id, fp(data=edited_data))
    new_code = _register(splits, run_id, fp(code="9d41e07"))
    dirty_code = _register(splits, run_id, fp(code="0f3c2ab-dirty"))
    new_params = _register(splits, run_id, fp(params={**params, "max_depth": 4}))
    new_data_again = _register(splits, run_id, fp(data=edited_data))

    assert (first.version, first.deduplicated) == ("1", False)
    assert (same.version, same.deduplicated) == ("1", True)
    assert [(r.version, r.deduplicated) for r in (new_data, new_code, dirty_code, new_params)] == [
        ("2", False),
        ("3", False),
        ("4", False),
        ("5", False),
    ]
    assert (new_data_again.version, new_data_again.deduplicated) == ("2", True)


def test_promote_is_a_compare_and_set_with_history(splits, run_id):
    from mlflow import MlflowClient

    from champion.promotion import StaleChampionError, current_champion, promote, read_history

    _register(splits, run_id, "fp-1")
    _register(splits, run_id, "fp-2")
    client = MlflowClient()

    first = promote("stages-model", "1", compared_with=None, run_id="run-a")
    assert (first.moved, first.previous) == (True, None)
    with pytest.raises(StaleChampionError, match="compared against no champion"):
        promote("stages-model", "2", compared_with=None, run_id="run-b")  # v1 became champion meanwhile
    assert current_champion(client, "stages-model") == "1"

    second = promote("stages-model", "2", compared_with="1", run_id="run-b")
    assert (second.moved, second.previous) == (True, "1")
    assert current_champion(client, "stages-model") == "2"
    assert client.get_model_version("stages-model", "2").tags["previous_champion"] == "1"
    history = read_history(client, "stages-model")
    assert [(h["version"], h["previous"]) for h in history] == [("1", ""), ("2", "1")]
    # people read the moves on the model's page: its description keeps its text and gains the table
    description = client.get_registered_model("stages-model").description
    assert description.startswith("a test model\n\n## Champion history (latest first)")
    rows = [line for line in description.splitlines() if line.startswith("| 2 ") or line.startswith("| 1 ")]
    assert rows[0].startswith("| 2 |") and "| v2 | v1 | run-b |" in rows[0] and "| v1 | none |" in rows[1]


def test_an_alias_write_that_lands_and_then_raises_is_the_move_it_was(splits, run_id, monkeypatch):
    """The alias write lands but the call raises (a timeout on the way back): the move happened, so it is
    reported as a move, with the previous champion on record so a rollback can find it, and the version is
    never tagged `promotion: failed`."""
    from mlflow import MlflowClient

    from champion.lifecycle import rollback
    from champion.promotion import current_champion, promote

    _register(splits, run_id, "fp-1")
    _register(splits, run_id, "fp-2")
    client = MlflowClient()
    promote("stages-model", "1", compared_with=None, run_id="run-a")

    real = MlflowClient.set_registered_model_alias
    raised = []

    def lands_then_fails(self, name, alias, version):
        real(self, name, alias, version)
        raised.append(version)
        raise ConnectionError("response lost after the write")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", lands_then_fails)
    moved = promote("stages-model", "2", compared_with="1", run_id="run-b")
    again = promote("stages-model", "2", compared_with="1", run_id="run-b")  # what a retry of the stage does

    assert raised == ["2"]  # the write raised once, and the retry did not write again
    assert (moved.moved, moved.previous) == (True, "1") == (again.moved, again.previous)
    assert current_champion(client, "stages-model") == "2"
    tags = client.get_model_version("stages-model", "2").tags
    assert tags["previous_champion"] == "1" and tags["promotion"].startswith("promoted ")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    done = rollback("stages-model", reason="test")
    assert (done.version, done.previous) == ("1", "2")


def test_an_alias_write_that_fails_leaves_the_champion_and_takes_the_record_back(splits, run_id, monkeypatch):
    from mlflow import MlflowClient

    from champion.promotion import current_champion, mark_not_promoted, promote, read_history

    _register(splits, run_id, "fp-1")
    _register(splits, run_id, "fp-2")
    client = MlflowClient()
    promote("stages-model", "1", compared_with=None, run_id="run-a")

    def refused(self, name, alias, version):
        raise ConnectionError("the server went away before the write")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refused)
    with pytest.raises(ConnectionError):
        promote("stages-model", "2", compared_with="1", run_id="run-b")
    mark_not_promoted("stages-model", "2", "failed", "ConnectionError")  # what tasks.promote does then

    assert current_champion(client, "stages-model") == "1"
    assert [e["version"] for e in read_history(client, "stages-model")] == ["1"]
    tags = client.get_model_version("stages-model", "2").tags
    assert "previous_champion" not in tags and tags["promotion"].startswith("failed ")


def test_training_params_of_a_version_are_read_back_or_an_error_names_the_version(run_id):
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from champion.loading import TrainingParamsUnreadable, training_params
    from usecases import spec_module
    from usecases.vocabulary import param_keys

    module = spec_module("fraud")
    client = MlflowClient()
    recorded = param_keys({**module.Params().model_dump(), "delay_days": 5})
    client.log_batch(run_id, params=[Param(k, v) for k, v in recorded.items()])
    assert training_params(module, "m", "3", run_id).delay_days == 5

    empty = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    with pytest.raises(TrainingParamsUnreadable, match="m v4: its training run .* records no training"):
        training_params(module, "m", "4", empty)
    with pytest.raises(TrainingParamsUnreadable, match="m v5: its training run nope cannot be read"):
        training_params(module, "m", "5", "nope")
    with pytest.raises(TrainingParamsUnreadable, match="m v6 names no training run"):
        training_params(module, "m", "6", None)
    client.log_param(empty, "param.delay_days", "-3")
    with pytest.raises(TrainingParamsUnreadable, match="m v7: .* refuses .*delay_days"):
        training_params(module, "m", "7", empty)
