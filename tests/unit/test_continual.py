"""Fine-tuning from a registered model: continue and refresh grow or keep the right trees, pyfunc parents keep
their offset and transform, the parent is loaded from the registry (UBJ + JSON) and must share the
features."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.lineage import Parent, ParentMismatchError, format_ranges, parse_ranges, parse_windows
from tasks.split import Splits
from usecases.spec import ModelSpec, Schema, SplitSpec

FEATURES = ("x1", "x2", "noise")
SCHEMA = Schema("binary", FEATURES, "y", "t", ("id",))
SPLIT = SplitSpec(test=10, validation=10, gap=0)
WINDOWS = {"train": ("2024-01-01", "2024-01-03"), "validation": ("b", "c"), "test": ("d", "e")}


def _frame(n: int, seed: int, start: str, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, noise = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    logit = 2.0 * x1 - (1.5 + shift) * x2 - 2.0 + shift * noise
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    t = pd.date_range(start, periods=n, freq="min")
    return pd.DataFrame({"id": np.arange(n), "t": t, "x1": x1, "x2": x2, "noise": noise, "y": y})


def _splits(seed: int, shift: float = 0.0) -> Splits:
    return Splits(
        _frame(3000, seed, "2024-01-01", shift),
        _frame(1000, seed + 1, "2024-02-01", shift),
        _frame(1000, seed + 2, "2024-03-01", shift),
        WINDOWS,
    )


def _model(**kw) -> ModelSpec:
    return ModelSpec(params={"max_depth": 3, "eta": 0.1, "nthread": 1}, num_boost_round=300, **kw)


def _parent(candidate, mode="continue", update_rounds=None) -> Parent:
    return Parent(
        uri="models:/m/1",
        requested="champion",
        mode=mode,
        booster=candidate.booster,
        features=candidate.features,
        config=candidate.config,
        params={k: str(v) for k, v in candidate.params.items()},  # as MLflow logged them
        update_rounds=update_rounds,
        trained_on=(("2023-12-01", "2023-12-20"),),
    )


@pytest.fixture(scope="module")
def parent_candidate():
    from tasks.train import train

    return train.fn(_splits(0), _model(early_stopping_rounds=10), SCHEMA, SPLIT, seed=1)


def test_continue_adds_at_most_update_rounds_trees_on_top_of_the_parent(parent_candidate):
    from tasks.train import train

    trees = parent_candidate.booster.num_boosted_rounds()
    new = _splits(10, shift=1.0)
    capped = train.fn(
        new,
        _model(early_stopping_rounds=300),
        SCHEMA,
        SPLIT,
        1,
        None,
        _parent(parent_candidate, update_rounds=7),
    )
    assert capped.parent_trees == trees and capped.update == "continue"
    assert capped.rounds_trained == trees + 7  # early stopping could not fire: the cap ends it
    assert trees < capped.booster.num_boosted_rounds() <= trees + 7
    assert capped.booster.num_boosted_rounds() == capped.best_iteration + 1  # cut back, counted from tree 0
    # the parent's trees are unchanged: the first `trees` of the new model predict what the parent did
    head = capped.booster[:trees]
    matrix = __import__("xgboost").DMatrix(new.test[list(FEATURES)])
    np.testing.assert_allclose(head.predict(matrix), parent_candidate.booster.predict(matrix), rtol=1e-6)
    assert parent_candidate.booster.num_boosted_rounds() == trees  # the parent itself was not grown
    assert capped.trained_on == (("2023-12-01", "2023-12-20"), WINDOWS["train"])


def test_refresh_keeps_every_tree_and_refits_the_leaves_with_the_parents_eta(parent_candidate):
    import xgboost as xgb

    from tasks.train import train

    trees = parent_candidate.booster.num_boosted_rounds()
    new = _splits(20, shift=1.0)
    refreshed = train.fn(new, _model(), SCHEMA, SPLIT, 1, None, _parent(parent_candidate, "refresh"))
    assert refreshed.booster.num_boosted_rounds() == trees == refreshed.parent_trees
    assert refreshed.params["eta"] == pytest.approx(0.1) and refreshed.params["updater"] == "refresh"

    def structure(booster):  # split features and thresholds, leaf values dropped
        dump = booster.trees_to_dataframe()
        return dump.loc[dump.Feature != "Leaf", ["Tree", "Feature", "Split"]].reset_index(drop=True)

    pd.testing.assert_frame_equal(structure(refreshed.booster), structure(parent_candidate.booster))
    matrix = xgb.DMatrix(new.test[list(FEATURES)])
    assert not np.allclose(refreshed.booster.predict(matrix), parent_candidate.booster.predict(matrix))


def _pyfunc_parent():
    """A regression candidate on log(target) with a linear base margin: registered as a pyfunc."""
    from tasks.train import train

    rng = np.random.default_rng(3)

    def frame(n, start):
        x1, x2, base = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
        y = np.exp(-3 + 0.5 * base + 0.2 * x1 + 0.1 * rng.normal(size=n))
        t = pd.date_range(start, periods=n, freq="D")
        return pd.DataFrame({"id": np.arange(n), "t": t, "x1": x1, "x2": x2, "noise": base, "y": y})

    splits = Splits(frame(1500, "2000-01-01"), frame(500, "2005-01-01"), frame(500, "2007-01-01"), WINDOWS)
    schema = Schema("regression", FEATURES, "y", "t", ("id",))
    model = ModelSpec(
        params={
            "max_depth": 2,
            "eta": 0.1,
            "nthread": 1,
            "objective": "reg:absoluteerror",
            "eval_metric": "mae",
        },
        num_boost_round=100,
        early_stopping_rounds=10,
        target_transform="log",
        offset_features=("noise",),
    )
    return train.fn(splits, model, schema, SPLIT, seed=1), splits, model, schema


def test_a_pyfunc_parent_keeps_its_offset_and_transform():
    from tasks.train import train

    parent, splits, model, schema = _pyfunc_parent()
    for mode in ("continue", "refresh"):
        child = train.fn(_splits_like(splits), model, schema, SPLIT, 1, None, _parent(parent, mode))
        assert child.config == parent.config  # the parent's offset coefficients, not refitted ones
        assert child.transformed and child.predict(splits.test).min() > 0  # target units (exp)
        assert child.params["objective"] == "reg:absoluteerror"


def _splits_like(splits: Splits) -> Splits:
    """The same columns on a later stretch: the test window moved to training."""
    return Splits(splits.test, splits.validation, splits.test, WINDOWS)


def test_windows_and_trained_on_tags_round_trip():
    assert parse_windows(str({"train": ("2018-06-13", "2018-07-03")})) == {
        "train": ("2018-06-13", "2018-07-03")
    }
    assert parse_windows("garbage") == {} and parse_windows(None) == {}
    ranges = (("2018-06-13", "2018-07-03"), ("2018-07-14", "2018-08-03"), ("2018-06-13", "2018-07-03"))
    assert parse_ranges(format_ranges(ranges)) == ranges[:2]  # deduplicated, in order


# ----------------------------------------------------------------------- loading the parent from the registry


@pytest.fixture
def registered(tmp_path, monkeypatch, parent_candidate):
    """`parent_candidate` logged and registered as `continual-model` v1 in a temporary SQLite store."""
    import mlflow
    from mlflow import MlflowClient

    from champion import store
    from tasks.register import log_candidate, register
    from usecases.vocabulary import FINGERPRINT_TAG

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store.configure()
    run_id = MlflowClient().create_run(store.experiment_id("continual")).info.run_id
    logged = log_candidate.fn(parent_candidate, _splits(0).test.head(5), run_id)
    tags = {FINGERPRINT_TAG: "fp", "lineage.windows": str({**WINDOWS, "train": ("2024-01-01", "2024-01-03")})}
    register.fn(logged, "continual-model", "test", "card", tags, run_id)
    yield "continual-model"
    mlflow.set_tracking_uri(None)


def test_resolve_parent_loads_the_ubj_booster_its_params_and_windows(registered, parent_candidate):
    from tasks.lineage import resolve_parent

    parent = resolve_parent.fn("models:/continual-model/1", "other-model", FEATURES, "refresh", None)
    assert parent.uri == "models:/continual-model/1" and parent.mode == "refresh"
    assert parent.trees == parent_candidate.booster.num_boosted_rounds()
    assert float(parent.params["eta"]) == pytest.approx(0.1)
    assert parent.trained_on == (("2024-01-01", "2024-01-03"),)
    assert json.loads(json.dumps(parent.config))["target_transform"] == "identity"


def test_resolve_parent_refuses_other_features_and_handles_no_champion(registered):
    from champion.loading import ModelNotFoundError
    from tasks.lineage import resolve_parent

    with pytest.raises(ParentMismatchError, match="other features.*missing there: \\['x3'\\]"):
        resolve_parent.fn("models:/continual-model/1", "x", ("x1", "x2", "noise", "x3"), "continue", None)
    with pytest.raises(ParentMismatchError, match="other order"):
        resolve_parent.fn("models:/continual-model/1", "x", ("x2", "x1", "noise"), "continue", None)
    with pytest.raises(ModelNotFoundError):
        resolve_parent.fn("models:/continual-model/9", "x", FEATURES, "continue", None)
    assert resolve_parent.fn("champion", "continual-model", FEATURES, "continue", None) is None  # no champion
    assert resolve_parent.fn("scratch", "continual-model", FEATURES, "continue", None) is None


def test_a_pyfunc_parent_is_read_back_from_its_ubj_booster_and_json_config(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from champion import store
    from tasks.lineage import resolve_parent
    from tasks.register import log_candidate, register
    from usecases.vocabulary import FINGERPRINT_TAG

    candidate, splits, _, _ = _pyfunc_parent()
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store.configure()
    try:
        run_id = MlflowClient().create_run(store.experiment_id("continual")).info.run_id
        logged = log_candidate.fn(candidate, splits.test.head(5), run_id)
        register.fn(logged, "pyfunc-model", "test", "card", {FINGERPRINT_TAG: "fp"}, run_id)
        parent = resolve_parent.fn("models:/pyfunc-model/1", "x", FEATURES, "refresh", None)
    finally:
        mlflow.set_tracking_uri(None)
    assert parent.config == candidate.config  # offset coefficients and transform, as trained
    assert parent.trees == candidate.booster.num_boosted_rounds()
    np.testing.assert_allclose(
        parent.booster.predict(__import__("xgboost").DMatrix(splits.test[list(FEATURES)])),
        candidate.booster.predict(__import__("xgboost").DMatrix(splits.test[list(FEATURES)])),
        rtol=1e-6,
    )
