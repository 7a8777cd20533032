"""Tuning: an Optuna study over a use case's declared search space (`usecases.search_space.TuningSpec`).

- `space.py`: the parameters suggested from an Optuna trial, and which are the booster's and which the run's;
- `folds.py`: the walk-forward folds inside the training window (the label delay or horizon between fit and
  fold), never reaching the validation or test window; a fold's training rows (window length, replay,
  recency, held-out keys) from the same code as a run's;
- `objective.py`: a parameter set's value, the spec's primary metric averaged over the folds, with XGBoost
  pruning (optuna-integration's `XGBoostPruningCallback`) on the first fold;
- `study.py`: the study's storage (SQLite under MLOPS_HOME, or Postgres), sampler, pruner, and one trial;
- `records.py`: MLflow, one parent run per tuning run and a nested child run per trial;
- `budget.py`: trials started while the budget lasts, a progress line as each ends;
- `apply.py`: a trial's values as a use case's spec (`mlops run --params-from study:NAME`).

The flow that runs a study, trial by trial as Prefect task runs, is `flows/tuning.py`.
"""


class TuningError(ValueError):
    """A study that cannot be used as asked (unknown, tuned on other folds, without a finished trial): an
    input error."""
