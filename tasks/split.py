"""Split: train, validation and test windows taken by time from the end of the data.

    ... | train | gap | validation | gap | test |  <- end of data (or `end`)

The gap keeps labels that would not be known yet (fraud's label delay, a forecast's horizon) from leaking
from one window into the next. Windows are counted in calendar days or in distinct time steps (e.g. trading
days, so that a multi-ticker table splits on dates, never inside one date).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from champion.store import run_logger
from tasks.stage import stage
from usecases.spec import SplitSpec

if TYPE_CHECKING:
    from usecases.spec import ContinualSpec, Holdout, Schema, UseCaseSpec


class SplitError(ValueError):
    """The data cannot be split as configured (too short, or a window lacks a class it needs)."""


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    # Human-readable window bounds, logged as params: {"train": ("2018-07-25", "2018-07-31"), ...}
    windows: dict[str, tuple[str, str]]
    # One weight per training row (recency, replayed negatives); None: all the same.
    weights: np.ndarray | None = None
    # How many rows at the start of `train` are replayed older history (the rest: the training window).
    replayed: int = 0

    @property
    def recent_train(self) -> pd.DataFrame:
        """The training window's own rows, without the replayed history (what "normal" looks like now)."""
        return self.train.iloc[self.replayed :]


def held_out(frame: pd.DataFrame, holdout: Holdout | None) -> np.ndarray:
    """True for the rows of held-out keys: a salted hash of the key, so every run holds out the same ones."""
    if holdout is None:
        return np.zeros(len(frame), dtype=bool)
    values = frame[holdout.key]
    if pd.api.types.is_integer_dtype(values):
        values = values.astype("int64")  # int32 and int64 ids must hash alike
    # pandas hashes numbers without its hash key: the salt goes in by a second round of hashing.
    salt = np.uint64(int.from_bytes(hashlib.sha256(holdout.salt.encode()).digest()[:8], "little"))
    hashed = pd.util.hash_array(pd.util.hash_pandas_object(values, index=False).to_numpy() ^ salt)
    return (hashed % 1_000_000) < round(holdout.share * 1_000_000)


def training_rows(
    table: pd.DataFrame,
    spec: SplitSpec,
    time_column: str,
    target: str | None,
    continual: ContinualSpec,
    upto: Literal["train", "test"] = "train",
) -> tuple[pd.DataFrame, np.ndarray | None, tuple[str, str]]:
    """The rows a model is fitted on: from the training window's start to the end of the `upto` window (the
    candidate: its training window; a refit: the test window, i.e. the newest label), older history replayed
    before it and held-out keys left out; their weights (recency, replay); the (first, last) day fitted on."""
    keys, axis = _keys(table[time_column], spec.unit)
    positions = _positions(axis, spec)
    lo, through = positions["train"][0], positions[upto][1]
    replay_lo = 0 if continual.replay is None else max(0, lo - continual.replay)
    inside = (keys >= axis[replay_lo]) & (keys <= axis[through])
    rows = table[inside.to_numpy() & ~held_out(table, continual.holdout)]
    rows_keys = keys[rows.index]
    older = (rows_keys < axis[lo]).to_numpy()
    weights = np.ones(len(rows))
    if older.any() and continual.replay_negatives < 1 and target is not None:  # binary: sample negatives
        negative = older & (rows[target].to_numpy() == 0)
        dropped = negative & (np.random.default_rng(0).random(len(rows)) >= continual.replay_negatives)
        rows, rows_keys, weights = rows[~dropped], rows_keys[~dropped], weights[~dropped]
        weights[(negative[~dropped])] = 1 / continual.replay_negatives
    if continual.half_life is not None:
        # Replayed rows weigh as the window's oldest: recency favours the newest days without fading out the
        # history that replay keeps so that old patterns are not forgotten.
        age = through - np.maximum(np.searchsorted(axis, rows_keys.to_numpy()), lo)
        weights = weights * 0.5 ** (age / continual.half_life)
    same = continual.half_life is None and (weights == 1).all()
    first = axis[replay_lo] if older.any() else axis[lo]
    span = (str(pd.Timestamp(first).date()), str(pd.Timestamp(axis[through]).date()))
    return rows.reset_index(drop=True), None if same else weights, span


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
    continual: ContinualSpec | None = None,
) -> Splits:
    """Cut the windows; `test_filter(test, table)` may then drop test rows a use case must not score
    (e.g. cards already known to be compromised). Binary targets are checked for positives per window.
    `continual`: held-out keys leave the training and validation windows, older history is replayed into
    the training window and its rows weighted (`training_rows`)."""
    keys, axis = _keys(table[time_column], spec.unit)
    positions = _positions(axis, spec)
    bounds = {name: (axis[lo], axis[hi]) for name, (lo, hi) in positions.items()}
    # Held-out keys never train nor early-stop a model; the test window keeps them (all rows are scored).
    trained = ~held_out(table, continual.holdout) if continual else np.ones(len(table), dtype=bool)
    rows = {name: (keys >= lo) & (keys <= hi) for name, (lo, hi) in bounds.items()}
    parts = {
        name: table[inside & (trained if name != "test" else True)].reset_index(drop=True)
        for name, inside in rows.items()
        if continual is None or name != "train"  # with `continual`, `training_rows` cuts the training rows
    }
    weights, replayed = None, 0
    if continual is not None:  # replay and recency weights
        train, weights, span = training_rows(table, spec, time_column, target, continual)
        parts = {"train": train, **parts}
        replayed = int((train[time_column] < bounds["train"][0]).sum())  # older rows come first
        bounds["train"] = tuple(pd.Timestamp(day).to_datetime64() for day in span)  # replay reaches back
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
    return Splits(parts["train"], parts["validation"], parts["test"], windows, weights, replayed)


def earlier_windows(table: pd.DataFrame, spec: SplitSpec, time_column: str, k: int) -> list[tuple[str, str]]:
    """The `k` windows as long as the test window right before it, newest first, as (first, last) dates."""
    _, axis = _keys(table[time_column], spec.unit)
    test_lo = _positions(axis, spec)["test"][0]
    out = []
    for i in range(1, k + 1):
        lo, hi = test_lo - i * spec.test, test_lo - (i - 1) * spec.test - 1
        if lo < 0:
            break
        out.append((str(pd.Timestamp(axis[lo]).date()), str(pd.Timestamp(axis[hi]).date())))
    return out


def _positions(axis: np.ndarray, spec: SplitSpec) -> dict[str, tuple[int, int]]:
    """Each window's first and last position on the axis (inclusive), counted back from its end."""
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
    return {"train": (train_lo, train_hi - 1), "validation": (val_lo, val_hi - 1), "test": (test_lo, n - 1)}


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
    return split_frame(table, spec.split, spec.time_column, target, spec.test_filter, spec.continual)


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
def split(
    table: pd.DataFrame,
    spec: SplitSpec,
    schema: Schema,
    test_filter=None,
    continual: ContinualSpec | None = None,
) -> Splits:
    """Cut the windows; binary targets are checked for positives in each."""
    target = schema.target if schema.problem == "binary" else None
    splits = split_frame(table, spec, schema.time_column, target, test_filter, continual)
    run_logger().info(
        "windows: %s",
        ", ".join(
            f"{name} {lo} .. {hi} ({len(getattr(splits, name))} rows)"
            for name, (lo, hi) in splits.windows.items()
        ),
    )
    return splits
