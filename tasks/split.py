"""Split: train, validation and test windows taken by time from the end of the data.

    ... | train | gap | validation | gap | test |  <- end of data (or `end`)

The gap keeps labels that would not be known yet (fraud's label delay, a forecast's horizon) from leaking
from one window into the next. Windows are counted in calendar days or in distinct time steps (e.g. trading
days, so that a multi-ticker table splits on dates, never inside one date).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from champion.store import run_logger
from tasks.stage import stage
from usecases.spec import SplitSpec

if TYPE_CHECKING:
    from usecases.spec import Schema, UseCaseSpec


class SplitError(ValueError):
    """The data cannot be split as configured (too short, or a window lacks a class it needs)."""


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    # Human-readable window bounds, logged as params: {"train": ("2018-07-25", "2018-07-31"), ...}
    windows: dict[str, tuple[str, str]]


def _keys(times: pd.Series, unit: str) -> tuple[pd.Series, np.ndarray]:
    """Map each row to a position on the split axis: its day or its time step."""
    keys = times.dt.normalize() if unit == "days" else times
    return keys, np.sort(keys.unique())


def split_frame(
    table: pd.DataFrame,
    spec: SplitSpec,
    time_column: str,
    target: str | None = None,
    test_filter: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame] | None = None,
) -> Splits:
    """Cut the windows; `test_filter(test, table)` may then drop test rows a use case must not score
    (e.g. cards already known to be compromised). Binary targets are checked for positives per window."""
    keys, axis = _keys(table[time_column], spec.unit)
    if spec.end is not None:
        axis = axis[axis <= pd.Timestamp(spec.end).to_datetime64()]
    n = len(axis)
    need = spec.test + spec.validation + 2 * spec.gap + (spec.train or 1)
    if n < need:
        raise SplitError(
            f"not enough history to split: {n} {spec.unit} available, {need} needed "
            f"(train {spec.train or '>=1'}, validation {spec.validation}, test {spec.test}, "
            f"2 gaps of {spec.gap})"
        )
    test_lo = n - spec.test
    val_hi = test_lo - spec.gap
    val_lo = val_hi - spec.validation
    train_hi = val_lo - spec.gap
    train_lo = 0 if spec.train is None else train_hi - spec.train
    bounds = {
        "train": (axis[train_lo], axis[train_hi - 1]),
        "validation": (axis[val_lo], axis[val_hi - 1]),
        "test": (axis[test_lo], axis[n - 1]),
    }
    parts = {
        name: table[(keys >= lo) & (keys <= hi)].reset_index(drop=True) for name, (lo, hi) in bounds.items()
    }
    if test_filter is not None:
        parts["test"] = test_filter(parts["test"], table).reset_index(drop=True)
    if target is not None and spec.min_positives > 0:
        for name, part in parts.items():
            positives = int(part[target].sum())
            if positives < spec.min_positives:
                raise SplitError(
                    f"the {name} window {pd.Timestamp(bounds[name][0]).date()} .. "
                    f"{pd.Timestamp(bounds[name][1]).date()} has {positives} positive "
                    f"'{target}' rows; at least {spec.min_positives} needed"
                )
    windows = {
        name: (str(pd.Timestamp(lo).date()), str(pd.Timestamp(hi).date()))
        for name, (lo, hi) in bounds.items()
    }
    return Splits(parts["train"], parts["validation"], parts["test"], windows)


def with_known_target(table: pd.DataFrame, target: str) -> pd.DataFrame:
    """The rows whose target is known. A forecast's last `horizon` rows (or transactions not yet labelled) can
    neither train nor test: batch scoring forecasts from them, training drops them."""
    unknown = table[target].isna()
    return table[~unknown].reset_index(drop=True) if unknown.any() else table


def cut_again(spec: UseCaseSpec, raw: pd.DataFrame) -> Splits:
    """A version's windows cut again from its raw data, as training cut them: the same features, the rows with
    a known target, the same split and test filter (monitoring profiles, compaction teachers)."""
    table = with_known_target(spec.build_features(raw), spec.target)
    target = spec.target if spec.problem == "binary" else None
    return split_frame(table, spec.split, spec.time_column, target, spec.test_filter)


def rolling_origin_folds(
    frame: pd.DataFrame, time_column: str, folds: int, gap: int, unit: str = "days"
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Walk-forward (rolling-origin) folds inside one window, for model selection.

    The window's last `folds` blocks of equal length are validation blocks in turn; each fold trains on
    everything before its block minus `gap` (an expanding window), so every fold looks forward like the
    real split does. Blocks are `n // (folds + 2)` days/steps long, so the first fold trains on at least
    two blocks' worth.
    """
    keys, axis = _keys(frame[time_column], unit)
    n = len(axis)
    block = n // (folds + 2) if folds > 0 else 0
    if block < 1 or n - folds * block - gap < 1:
        raise SplitError(
            f"not enough history for {folds} walk-forward folds: {n} {unit} in the training window "
            f"(gap {gap})"
        )
    out = []
    for k in range(folds):
        val_lo = n - (folds - k) * block
        fit_hi = val_lo - gap  # exclusive
        fit = frame[keys <= axis[fit_hi - 1]].reset_index(drop=True)
        validation = frame[(keys >= axis[val_lo]) & (keys <= axis[val_lo + block - 1])].reset_index(drop=True)
        out.append((fit, validation))
    return out


@stage
def split(table: pd.DataFrame, spec: SplitSpec, schema: Schema, test_filter=None) -> Splits:
    """Cut the windows; binary targets are checked for positives in each."""
    target = schema.target if schema.problem == "binary" else None
    splits = split_frame(table, spec, schema.time_column, target, test_filter)
    run_logger().info(
        "windows: %s",
        ", ".join(
            f"{name} {lo} .. {hi} ({len(getattr(splits, name))} rows)"
            for name, (lo, hi) in splits.windows.items()
        ),
    )
    return splits
