"""Tuning's parts without a flow: the search space as data, suggestions, the folds, the study's storage."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from tasks.split import with_known_target
from tasks.tuning import TuningError
from tasks.tuning.apply import parse_params_from, tuned_spec
from tasks.tuning.folds import fold_training, tuning_folds
from tasks.tuning.space import split_values, suggest
from tasks.tuning.study import create_or_continue, load, open_storage, run_one
from usecases.fraud import spec as fraud
from usecases.search_space import SearchSpaceError, Tuned, TuningSpec, choice, float_range, int_range


@pytest.mark.parametrize(
    ("make", "named", "says"),
    [
        (lambda: float_range("eta", 0.3, 0.01), "eta", "low 0.3 > high 0.01"),
        (lambda: int_range("max_depth", 4, 4), "max_depth", "empty range"),
        (lambda: choice("imbalance", target="run"), "imbalance", "no choices"),
        (lambda: float_range("eta", 0.0, 0.3, log=True), "eta", "log range must be positive"),
        (lambda: float_range("learning_rat", 0.01, 0.3), "learning_rat", "not an XGBoost booster parameter"),
        (lambda: Tuned("eta", "uniform", 0.1, 0.2), "eta", "unknown kind"),
        (lambda: TuningSpec((float_range("eta", 0.01, 0.3), float_range("eta", 0.1, 0.2))), "eta", "twice"),
    ],
)
def test_a_bad_search_space_names_the_parameter(make, named, says):
    with pytest.raises(SearchSpaceError) as raised:
        make()
    assert repr(named) in str(raised.value) and says in str(raised.value)


def test_run_parameters_must_be_fields_of_the_use_cases_params():
    space = TuningSpec((int_range("train_dayz", 7, 42, target="run"),))
    with pytest.raises(SearchSpaceError, match="'train_dayz': not a field"):
        space.check_run_fields(fraud.Params.model_fields)
    fraud.TUNING.check_run_fields(fraud.Params.model_fields)  # the declared one is sound


def test_suggestions_stay_in_their_ranges_and_split_by_target():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), fraud.TUNING.space)
        assert 0.01 <= values["eta"] <= 0.3 and 2 <= values["max_depth"] <= 10
        assert values["train_days"] % 7 == 0 and values["replay"] % 14 == 0
        assert values["imbalance"] in ("max_delta_step", "scale_pos_weight")
        booster, run = split_values(fraud.TUNING.space, values)
        assert set(run) == {"imbalance", "train_days", "replay", "half_life"}
        assert "eta" in booster and not set(booster) & set(run)
    with pytest.raises(SearchSpaceError, match="'depth' is not in"):
        split_values(fraud.TUNING.space, {"depth": 3})


def test_tuned_values_reach_the_spec_and_may_not_move_the_windows():
    params = fraud.Params()
    values = {
        "eta": 0.05,
        "max_depth": 3,
        "train_days": 14,
        "imbalance": "scale_pos_weight",
        "half_life": 5.0,
    }
    spec = tuned_spec(fraud.build_spec, params, fraud.TUNING.space, values, ("s", 7))
    assert spec.model.params["eta"] == 0.05 and spec.model.params["max_depth"] == 3
    assert "max_delta_step" not in spec.model.params and spec.model.balance_classes
    assert spec.split.train == 14 and spec.continual.half_life == 5.0
    assert spec.tags["tuning.study"] == "s" and spec.tags["tuning.trial"] == "7"
    moving = (int_range("delay_days", 3, 9, target="run"),)
    with pytest.raises(SearchSpaceError, match="move the split's gap"):
        tuned_spec(fraud.build_spec, params, moving, {"delay_days": 3})
    assert parse_params_from("study:fraud-1#12") == ("fraud-1", 12)
    assert parse_params_from("study:fraud-1") == ("fraud-1", None)


@pytest.fixture(scope="module")
def small_table():
    from usecases.fraud.simulator import simulate_transactions

    params = fraud.Params(customers=150, terminals=300, days=63)
    spec = fraud.build_spec(params)
    raw = simulate_transactions(n_customers=150, n_terminals=300, n_days=63, seed=1)
    return spec, with_known_target(spec.build_features(raw), spec.target)


def test_folds_stay_inside_the_training_window_behind_the_gap(small_table):
    spec, table = small_table
    data = tuning_folds(table, spec, folds=3)
    validation_start = pd.Timestamp(data.windows["validation"][0])
    test_start = pd.Timestamp(data.windows["test"][0])
    assert data.last_day < validation_start - pd.Timedelta(days=spec.split.gap) + pd.Timedelta(days=1)
    assert data.last_day < test_start
    time = spec.time_column
    for fold in data.folds:
        gap = fold.block[time].min().normalize() - fold.fit[time].max().normalize()
        assert gap > pd.Timedelta(days=spec.split.gap)  # the label delay between fit and block
        rows, weights, block = fold_training(fold, spec)
        assert rows[time].max() <= fold.fit[time].max() and len(block) > 0
        assert weights is not None  # fraud's recency and replay weights, as a run has them
    shorter = tuned_spec(fraud.build_spec, fraud.Params(), fraud.TUNING.space, {"train_days": 7, "replay": 0})
    rows, _, _ = fold_training(data.folds[-1], shorter)
    assert rows[time].dt.normalize().nunique() == 7


def test_a_study_resumes_on_the_same_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    attrs = {"use_case": "fraud", "folds": [[1, 2]]}
    study, new = create_or_continue("s", open_storage(url), True, attrs, seed=3, warmup=0)
    assert new

    class Scored:
        def __init__(self, value):
            self.value, self.fold_values, self.fold_rounds = value, (value,), (1,)

    def objective(trial):
        return Scored(trial.suggest_float("x", 0, 1))

    first = [run_one(study, objective, 3) for _ in range(3)]
    again, new = create_or_continue("s", open_storage(url), True, attrs, seed=3, warmup=0)
    assert not new and len(again.trials) == 3
    later = [run_one(again, objective, 3) for _ in range(2)]
    assert [r.number for r in first + later] == [0, 1, 2, 3, 4]
    assert len({r.params["x"] for r in first + later}) == 5  # a resumed study does not redraw its trials
    with pytest.raises(TuningError, match="tuned with folds"):
        create_or_continue("s", open_storage(url), True, {**attrs, "folds": [[9]]}, seed=3, warmup=0)
    with pytest.raises(TuningError, match="unknown study 'nope'.*studies there: s"):
        load("nope", open_storage(url))
