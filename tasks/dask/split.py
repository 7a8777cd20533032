"""Split on the Dask executor: the local path's windows, with the table spread over the workers.

The windows come from `tasks.split.split_frame` on the labelled days alone; test and the rows a test filter
reads (`support_rows`) are collected here, the training and validation windows stay on the workers, hashed
over them, for `xgboost.dask`. Baselines (and the monitoring profile's training distribution) see a
stratified sample of the training window (`BASELINE_ROWS`), recorded on the MLflow run.
`in_memory_table` gives `tasks.compare.compare` what it reads of the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from champion.store import run_logger
from tasks.split import SplitError, Splits, earlier_windows, split_frame
from tasks.stage import stage

if TYPE_CHECKING:
    import dask.dataframe as dd

    from usecases.spec import UseCaseSpec

# Baselines (and the monitoring profile's training distribution) see at most this many training rows.
BASELINE_ROWS = 250_000


@dataclass(frozen=True)
class DistributedWindows:
    """The windows' rows on the workers and their sizes, next to the collected `Splits` the flow uses."""

    train: dd.DataFrame
    validation: dd.DataFrame
    rows: dict[str, int]
    positives: dict[str, int]
    # What stands in for the whole table where the flow reads it (test filter, earlier windows).
    support: pd.DataFrame
    sample_note: str


def _first_of_day(part: pd.DataFrame, time_column: str) -> pd.DataFrame:
    return part.loc[~part[time_column].dt.normalize().duplicated().to_numpy()]


def support_rows(frames: Sequence[pd.DataFrame], spec: UseCaseSpec) -> pd.DataFrame:
    """The table's positive rows (binary problems) and the first row of every day: what a test filter that
    remembers earlier positives (fraud: cards known compromised) reads of the table, and its days."""
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.drop_duplicates(subset=list(spec.id_columns)) if spec.id_columns else rows
    return rows.sort_values([spec.time_column, *spec.id_columns], kind="stable").reset_index(drop=True)


def stratified_sample(frame: dd.DataFrame, target: str, problem: str, limit: int, seed: int, client):
    """At most about `limit` rows, the same share of each class (binary), as one pandas frame."""
    with client.as_current():
        rows = int(client.compute(frame.map_partitions(len).sum()).result())
        if rows <= limit:
            return client.compute(frame).result().reset_index(drop=True), f"all {rows:,} training rows"
        share = limit / rows
        if problem == "binary":
            parts = [frame[frame[target] == c].sample(frac=share, random_state=seed) for c in (0, 1)]
            sample = pd.concat(client.gather(client.compute(parts)), ignore_index=True)
            how = f"a stratified sample: {share:.1%} of each class"
        else:
            sample = client.compute(frame.sample(frac=share, random_state=seed)).result()
            sample = sample.reset_index(drop=True)
            how = f"a random sample: {share:.1%}"
    return sample, f"{how}, {len(sample):,} of {rows:,} training rows (seed {seed})"


@stage
def split_distributed(table: dd.DataFrame, spec: UseCaseSpec, seed: int, run_id: str | None, client):
    """The flow's `Splits` (validation and test collected; train: the baselines' sample) and the windows on
    the workers for `xgboost.dask`."""
    from distributed import wait  # why: Dask loads only when a run uses it

    time_column, target = spec.time_column, spec.target
    days = getattr(table, "attrs", {}).get("days")
    if days is None:  # a table not from featurize_distributed (tests): one pass for its days
        with client.as_current():
            days = client.compute(table[time_column].dt.normalize().unique()).result().to_numpy()
    axis = pd.DataFrame({time_column: np.sort(pd.to_datetime(np.asarray(days)))})
    windows = split_frame(axis, spec.split, time_column).windows  # the local path's arithmetic, on the days
    day = pd.Timedelta(days=1)
    parts = {
        name: table[(table[time_column] >= pd.Timestamp(lo)) & (table[time_column] < pd.Timestamp(hi) + day)]
        for name, (lo, hi) in windows.items()
    }
    wanted = [parts["test"], table.map_partitions(_first_of_day, time_column)]
    if spec.problem == "binary":
        wanted.append(table[table[target] == 1])
    with client.as_current():
        # One submission: each feature chunk is computed once for every window and the support rows. The
        # training and validation windows stay on the workers (for xgboost.dask); test and support come here.
        train, validation_dd = client.persist(parts["train"]), client.persist(parts["validation"])
        test, *support = client.gather(client.compute(wanted))
        wait([train, validation_dd])
        validation = client.compute(validation_dd).result()  # a copy here, for evaluation
    support = support_rows(support, spec)
    key = spec.id_columns[0] if spec.id_columns else time_column
    train, validation_dd = _spread(train, client, key), _spread(validation_dd, client, key)
    with client.as_current():
        train_rows = int(client.compute(train.map_partitions(len).sum()).result())
        train_positives = int(client.compute(train[target].sum()).result()) if spec.problem == "binary" else 0
    validation, test = validation.reset_index(drop=True), test.reset_index(drop=True)
    if spec.test_filter is not None:
        test = spec.test_filter(test, support).reset_index(drop=True)
    positives = {"train": train_positives}
    if spec.problem == "binary":
        positives |= {"validation": int(validation[target].sum()), "test": int(test[target].sum())}
        for name, count in positives.items():
            if count < spec.split.min_positives:
                lo, hi = windows[name]
                raise SplitError(
                    f"the {name} window {lo} .. {hi} has {count} positive '{target}' rows; at least "
                    f"{spec.split.min_positives} needed"
                )
    sample, note = stratified_sample(train, target, spec.problem, BASELINE_ROWS, seed, client)
    rows = {"train": train_rows, "validation": len(validation), "test": len(test)}
    run_logger().info(
        "windows: %s; baselines and the profile on %s",
        ", ".join(f"{n} {lo} .. {hi} ({rows[n]} rows)" for n, (lo, hi) in windows.items()),
        note,
    )
    if run_id is not None:
        MlflowClient().log_param(run_id, "baselines.training_rows", note)
    splits = Splits(sample, validation, test, windows)
    return splits, DistributedWindows(train, validation_dd, rows, positives, support, note)


def _spread(frame: dd.DataFrame, client, on: str) -> dd.DataFrame:
    """The window's rows hashed by `on` into two partitions per worker: a shuffle places its output
    partitions across the workers, so each trains on a share (pieces of a persisted partition would all stay
    on the worker that holds it, and one with no rows sits out)."""
    from distributed import wait  # why: Dask loads only when a run uses it

    workers = max(len(client.scheduler_info()["workers"]), 1)
    with client.as_current():
        frame = client.persist(frame.shuffle(on, npartitions=2 * workers))
        wait(frame)
    return frame


def in_memory_table(windows: DistributedWindows, table: dd.DataFrame, spec: UseCaseSpec, k: int, client):
    """What `tasks.compare.compare` reads of the table: the support rows plus every row of the test window
    and of the `k` windows of its length before it."""
    time_column, day = spec.time_column, pd.Timedelta(days=1)
    spans = [split_frame(windows.support, spec.split, time_column).windows["test"]]
    spans += earlier_windows(windows.support, spec.split, time_column, k)  # the support holds every day
    pieces = [
        table[(table[time_column] >= pd.Timestamp(lo)) & (table[time_column] < pd.Timestamp(hi) + day)]
        for lo, hi in spans
    ]
    with client.as_current():  # the feature chunks covering those windows, computed again on the workers
        frames = client.gather(client.compute(pieces))
    rows = pd.concat([windows.support, *frames], ignore_index=True)
    rows = rows.drop_duplicates(subset=list(spec.id_columns)) if spec.id_columns else rows
    return rows.sort_values([time_column, *spec.id_columns], kind="stable").reset_index(drop=True)
