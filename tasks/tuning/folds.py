"""The walk-forward folds a tuning trial is scored on, inside the run's training window.

The tuning span is every row up to the last day of the run's training window: the validation window (early
stopping of the model that is finally trained) and the test window (the gates') are never read. Inside it,
`tasks.split.rolling_origin_folds` cuts the last `folds` blocks in turn, each after a `gap` (the label delay,
a forecast's horizon) behind everything before it. A trial's training rows on a fold are cut from that
expanding part the way a run cuts its own (`tasks.split.training_rows`): the trial's training-window length,
older history replayed, recency weights and held-out keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.split import held_out, rolling_origin_folds, split_frame, training_rows
from usecases.spec import SplitSpec

if TYPE_CHECKING:
    from usecases.spec import UseCaseSpec


@dataclass(frozen=True)
class Fold:
    fit: pd.DataFrame  # everything before the block, minus the gap (a trial cuts its training rows from it)
    block: pd.DataFrame  # the fold's validation block: early stopping and the score


@dataclass(frozen=True)
class TuningFolds:
    folds: tuple[Fold, ...]
    # The run's windows as split for training: the folds end before the validation window starts.
    windows: dict[str, tuple[str, str]]
    time_column: str

    def describe(self) -> list[dict[str, list]]:
        """Each fold's fit part and block as [first day, last day, rows]: a study is tied to these."""
        t = self.time_column

        def span(frame: pd.DataFrame) -> list:
            return [str(frame[t].min().date()), str(frame[t].max().date()), len(frame)]

        return [{"fit": span(f.fit), "block": span(f.block)} for f in self.folds]

    @property
    def last_day(self) -> pd.Timestamp:
        return max(f.block[self.time_column].max() for f in self.folds)


def tuning_folds(table: pd.DataFrame, spec: UseCaseSpec, folds: int) -> TuningFolds:
    """The folds inside the training window of `spec`'s split of `table` (rows with a known target). Raises
    `tasks.split.SplitError` when the data is too short for the split or for the folds."""
    time = spec.time_column
    windows = split_frame(table, spec.split, time).windows  # the run's windows, as training cuts them
    train_end = pd.Timestamp(windows["train"][1])
    span = table[table[time].dt.normalize() <= train_end].reset_index(drop=True)
    cut = rolling_origin_folds(span, time, folds, spec.split.gap, spec.split.unit)
    return TuningFolds(tuple(Fold(fit, block) for fit, block in cut), windows, time)


def fold_training(fold: Fold, spec: UseCaseSpec) -> tuple[pd.DataFrame, np.ndarray | None, pd.DataFrame]:
    """A trial's training rows and weights on `fold` (its spec's window length, replay, recency and held-out
    keys, as `training_rows` cuts a run's), and the fold's block without the held-out keys."""
    steps = fold.fit[spec.time_column]
    available = (steps.dt.normalize() if spec.split.unit == "days" else steps).nunique()
    window = spec.split.train if spec.split.train is None else min(spec.split.train, available)
    # The fit part ends where the training window would: a split with nothing after the window cuts it.
    only_train = SplitSpec(test=0, validation=0, gap=0, train=window, unit=spec.split.unit, min_positives=0)
    continual = spec.continual
    target = spec.target if spec.problem == "binary" else None
    rows, weights, _ = training_rows(fold.fit, only_train, spec.time_column, target, continual)
    block = fold.block[~held_out(fold.block, continual.holdout)].reset_index(drop=True)
    return rows, weights, block
