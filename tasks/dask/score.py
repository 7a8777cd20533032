"""Batch scoring on the Dask executor (`mlops score --executor dask`): `tasks.score.score_file` with the
input spread over the workers.

The same checks (the scoring suites, partition by partition) and features (key shards or time chunks) as a
training run; each feature chunk scored on a worker by the one pinned version in a `score-chunk` task run,
put back in time order, and written here chunk by chunk into a file renamed at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.dask.cluster import DaskSettings, submit
from tasks.dask.features import featurize_distributed
from tasks.dask.ingest import profile_frame, read_frame
from tasks.dask.validate import validate_partitions
from tasks.score import VERSION_COLUMN, AtomicTableWriter, ScoringResult
from tasks.stage import stage
from tasks.validate import keep_report

if TYPE_CHECKING:
    from usecases.spec import UseCaseSpec


@stage(task_run_name="score-chunk")
def score_chunk(features: str, model, keep: list[str], score_column: str) -> pd.DataFrame:
    """On a worker: one chunk of features (a Parquet file): its `keep` columns (ids, time), its scores and the
    pinned version."""
    frame = pd.read_parquet(features)
    out = frame[keep].reset_index(drop=True)
    out[score_column] = model.predict(frame) if len(frame) else np.zeros(0)
    out[VERSION_COLUMN] = model.version
    return out


def score_distributed(
    spec: UseCaseSpec, model, input_path: str, output_path: str, runner, scratch: Path, settings: DaskSettings
):
    """`tasks.score.score_file` on a Dask cluster: the input (a file, directory or glob, in any order) read
    by the workers, checked partition by partition with the scoring suites, featurized with the use case's
    `build_features` (key shards or time chunks, written under `scratch`), each chunk scored by the one
    pinned version (sent to each worker once) in a `score-chunk` task run on the run's `DaskTaskRunner`, put
    in time order, and written here chunk by chunk into a temporary file renamed at the end (as
    `score_file`). Not a task itself: the chunks' task runs sit directly in the flow run (a task's context,
    sent along with each, would carry the runner)."""
    import dask.dataframe as dd  # why: Dask loads only when a run uses it

    client = runner.client
    started = time.perf_counter()
    # "model": the scoring tasks and putting their output in time order, on the workers
    seconds = dict.fromkeys(("read", "validate", "model", "write"), 0.0)
    raw_suite, feature_suite = spec.scoring_suites
    time_column, ids = spec.time_column, list(spec.id_columns)
    writer = AtomicTableWriter(output_path)
    try:
        t0 = time.perf_counter()
        with client.as_current():
            frame = read_frame(input_path, spec.time_column, settings.partition_rows)
        frame = profile_frame(frame, spec, str(input_path), client)
        rows_in = frame.attrs["rows"]
        seconds["read"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        keep_report(validate_partitions(frame, raw_suite, client), rows_in, None)
        table = featurize_distributed.fn(frame, spec, client, scratch, settings, labelled=False)
        keep_report(validate_partitions(table, feature_suite, client), rows_in, None)
        seconds["validate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with client.as_current():
            pinned = client.scatter(model, broadcast=True)  # one copy per worker, not one per chunk
        keep, score = [*ids, time_column], spec.score_column
        scored = [
            submit(runner, score_chunk, features=path, model=pinned, keep=keep, score_column=score)
            for path in table.attrs["files"]
        ]
        meta = pd.DataFrame(
            {c: pd.Series(dtype="int64") for c in ids}
            | {time_column: pd.Series(dtype="datetime64[ns]"), spec.score_column: pd.Series(dtype="float64")}
            | {VERSION_COLUMN: pd.Series(dtype="object")}
        )
        scores = dd.from_delayed(scored, meta=meta, verify_meta=False)
        if not table.attrs.get("ordered"):  # key shards: the thin score table sorted back into time order
            scores = scores.sort_values([time_column, *ids])
        with client.as_current():
            pieces = client.compute(scores.to_delayed())
        for future in pieces:  # in time order; this process holds one chunk's scores at a time
            part = future.result()
            t1 = time.perf_counter()
            writer.write(part.drop(columns=[time_column]).reset_index(drop=True))
            seconds["write"] += time.perf_counter() - t1
            future.release()
        seconds["model"] = time.perf_counter() - t0 - seconds["write"]
        writer.commit(meta.drop(columns=[time_column]))
    except BaseException:
        writer.abort()
        raise
    seconds["total"] = time.perf_counter() - started
    return ScoringResult(
        str(output_path), model.name, model.version, rows_in, writer.rows, len(scored), seconds
    )
