"""Ingest on the Dask executor: the input as a Dask DataFrame, profiled on the workers, and recorded.

Parquet or CSV — one file, a directory or a glob — in partitions of about `partition_rows` rows
(`cluster.DaskSettings`), profiled in one pass on the workers (rows, time span, labelled days, digest per
partition) and not persisted: each later pass reads its partitions again, so no process keeps the table.
`record_dataset` records that input on the MLflow run as the local path does, from the partitions' digests.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from champion.store import run_logger
from tasks import tracking
from tasks.dask.cluster import PARTITION_ROWS, PARTITIONS_PER_WORKER
from tasks.ingest import READERS, DataReadError, input_files
from tasks.stage import stage

if TYPE_CHECKING:
    import dask.dataframe as dd

    from tasks.split import Splits
    from usecases.params import TrainingParams
    from usecases.spec import UseCaseSpec

# A CSV block of `partition_rows` rows: the handbook's transactions take ~70 bytes a line.
CSV_BYTES_PER_ROW = 64


def read_frame(path: str | Path, time_column: str, partition_rows: int = PARTITION_ROWS) -> dd.DataFrame:
    """A Dask DataFrame over the input's files (not yet read), in partitions of about `partition_rows` rows
    (a Parquet file's row count from its footer; CSV in blocks of about that many short lines); the time
    column parsed if it is text."""
    # why: Dask loads only when a run uses it
    import dask.dataframe as dd

    files = input_files(path)
    kind = "csv" if READERS[files[0].suffix.lower()] is pd.read_csv else "parquet"
    names = [str(f) for f in files]
    try:
        if kind == "parquet":
            largest = max(parquet_rows(names))
            frame = dd.read_parquet(names)
            pieces = math.ceil(largest / partition_rows)
            if pieces > 1:  # each file's partition cut in `pieces` (a file is read whole, then cut)
                frame = frame.repartition(npartitions=frame.npartitions * pieces)
        else:
            frame = dd.read_csv(names, blocksize=partition_rows * CSV_BYTES_PER_ROW)
    except Exception as exc:  # any reader failure is an unreadable input
        raise DataReadError(f"{path}: cannot be read as {kind}: {exc}") from exc
    if time_column in frame.columns and not pd.api.types.is_datetime64_any_dtype(frame[time_column].dtype):
        # As the loaders do: unparseable timestamps become NaT, reported by the raw data check.
        frame[time_column] = dd.to_datetime(frame[time_column], errors="coerce")
    return frame


def parquet_rows(files: Sequence[str]) -> list[int]:
    """Each Parquet file's row count, from its footer."""
    import pyarrow.parquet as pq  # why: Arrow loads only when a run uses the Dask executor

    return [pq.ParquetFile(f).metadata.num_rows for f in files]


def _profile_partition(frame: pd.DataFrame, time_column: str, target: str) -> dict:
    """On a worker: what later stages need to know of a raw partition, from one read of it."""
    times = frame[time_column] if time_column in frame.columns else pd.Series([], dtype="datetime64[ns]")
    known = frame[target].notna().to_numpy() if target in frame.columns else np.zeros(len(frame), dtype=bool)
    return {
        "rows": len(frame),
        "span": (times.min(), times.max()) if len(frame) and times.notna().any() else (None, None),
        # The split's axis: days with a labelled row (the local path splits the table of those rows).
        "days": np.unique(times[known].dt.normalize().dropna().to_numpy()) if len(frame) else [],
        "digest": tracking.content_digest(frame),
    }


@stage
def ingest_distributed(
    client, spec: UseCaseSpec, params: TrainingParams, workers: int, partition_rows: int = PARTITION_ROWS
) -> dd.DataFrame:
    """The input as a Dask DataFrame over its files (or the embedded source's table spread over partitions),
    profiled in one pass on the workers: rows, time span, labelled days and a digest per partition. Not
    persisted: each later pass reads its partitions again, so no worker keeps the table."""
    # why: Dask loads only when a run uses it
    import dask.dataframe as dd

    log = run_logger()
    with client.as_current():
        if params.data:
            frame = read_frame(params.data, spec.time_column, partition_rows)
            source = str(params.data)
        else:  # the embedded default (a simulator): made in this process, then spread over partitions
            local = spec.load(params)
            source = local.attrs.get("source", "unknown")
            parts = max(workers * PARTITIONS_PER_WORKER, math.ceil(len(local) / partition_rows))
            frame = dd.from_pandas(local, npartitions=parts, sort=False)
            del local
        if frame.npartitions < workers * PARTITIONS_PER_WORKER:
            frame = frame.repartition(npartitions=workers * PARTITIONS_PER_WORKER)
    try:
        frame = profile_frame(frame, spec, source, client)
    except DataReadError:
        raise
    except Exception as exc:
        raise DataReadError(f"{source}: cannot be read: {type(exc).__name__}: {exc}") from exc
    log.info("ingest: %s rows in %d partitions (%s)", f"{frame.attrs['rows']:,}", frame.npartitions, source)
    return frame


def profile_frame(frame: dd.DataFrame, spec: UseCaseSpec, source: str, client) -> dd.DataFrame:
    """`frame` with what later stages need to know of it in `attrs`, from one read of every partition on the
    workers: rows (an empty table is refused), time spans, labelled days and a digest per partition."""
    from dask import delayed  # why: Dask loads only when a run uses it

    parts = [delayed(_profile_partition)(p, spec.time_column, spec.target) for p in frame.to_delayed()]
    with client.as_current():
        profiles = client.gather(client.compute(parts))
    rows = sum(p["rows"] for p in profiles)
    if not rows:
        raise DataReadError(f"{source}: the table has no rows")
    frame.attrs = {
        "source": source,
        "rows": rows,
        "lengths": [p["rows"] for p in profiles],
        "spans": [p["span"] for p in profiles],
        "days": np.unique(np.concatenate([np.asarray(p["days"], dtype="datetime64[ns]") for p in profiles])),
        "digests": [p["digest"] for p in profiles],
    }
    return frame


def record_dataset(run_id: str, spec: UseCaseSpec, raw: dd.DataFrame, splits: Splits, rows: dict) -> str:
    """As the local path: the input as an MLflow dataset (schema, source, a digest of every row — here of the
    partitions' digests, computed on the workers by ingest), the windows' bounds and true row counts."""
    digests = raw.attrs["digests"]  # per partition, from ingest's pass on the workers
    digest = hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]
    source = raw.attrs.get("source", "unknown")
    extra = {"dataset.rows": raw.attrs.get("rows"), "dataset.partitions": len(digests)}
    name = f"{spec.name}-raw"
    tracking.record_input(run_id, name, raw._meta, source, digest, splits.windows, rows, **extra)
    return digest
