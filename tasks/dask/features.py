"""Features on the Dask executor: the use case's own `build_features` (the one training, scoring and serving
use) on the workers, a task holding about `partition_rows` rows.

On key shards when the spec declares `feature_keys` (fraud: the rows shuffled by CUSTOMER_ID, built, the
customer features kept; then shuffled by TERMINAL_ID, built, the terminal features kept): a shard holds every
row of its keys, so the features equal the one-piece ones bit for bit. Otherwise on time chunks, each with the
`feature_history` before it, as `tasks/score.py` scores a long file. Computed once and written to Parquet in
the run's scratch folder, which the stages after it read.
"""

from __future__ import annotations

import math
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from champion.store import run_logger
from tasks.dask.cluster import PARTITIONS_PER_WORKER, DaskSettings
from tasks.dask.ingest import parquet_rows
from tasks.ingest import DataReadError
from tasks.stage import stage

if TYPE_CHECKING:
    import dask.dataframe as dd

    from usecases.spec import UseCaseSpec


def _rows_between(frame: pd.DataFrame, time_column: str, lo, hi) -> pd.DataFrame:
    times = frame[time_column]
    return frame.loc[((times >= lo) & (times < hi)).to_numpy()]


def _chunk_features(build: Callable, time_column: str, target: str | None, lo, hi, *pieces) -> pd.DataFrame:
    """On a worker: features of the rows in [lo, hi), computed with the history before `lo` in `pieces`."""
    frame = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0].reset_index(drop=True)
    table = build(frame)
    times = table[time_column]
    own = table.loc[((times >= lo) & (times < hi)).to_numpy()]
    if target is not None and target in own.columns:  # as `tasks.split.with_known_target`: training only
        own = own.loc[own[target].notna().to_numpy()]
    return own.reset_index(drop=True)


def chunk_edges(first: pd.Timestamp, last: pd.Timestamp, chunk: pd.Timedelta) -> list[pd.Timestamp]:
    """Chunk bounds from the first day to past the last row, `chunk` apart."""
    start = first.normalize()
    count = int((last - start) // chunk) + 1
    return [start + i * chunk for i in range(count + 1)]


def _key_shard(
    part: pd.DataFrame,
    build: Callable,
    raw_columns: Sequence[str],
    id_columns: Sequence[str],
    carried: Sequence[str],
    keep: Sequence[str],
    target: str | None,
) -> pd.DataFrame:
    """On a worker: `build` on one key shard (every row of its keys, over the whole time span). The features
    of that key come out right; those of keys sharded earlier (`carried`, missing the rows of other shards
    here) are taken from the input, aligned by id; `keep`: the columns the next shard (or the table) gets."""
    fresh = build(part[list(raw_columns)])
    pending = [c for c in keep if c not in fresh.columns or c in carried]
    if pending:
        where = _ids(part, id_columns).get_indexer(_ids(fresh, id_columns))
        for column in pending:
            fresh[column] = part[column].to_numpy()[where]
    if target is not None and target in fresh.columns:  # as `tasks.split.with_known_target`: training only
        fresh = fresh.loc[fresh[target].notna().to_numpy()]
    return fresh[list(keep)].reset_index(drop=True)


def _ids(frame: pd.DataFrame, id_columns: Sequence[str]) -> pd.Index:
    ids = list(id_columns)
    return pd.MultiIndex.from_frame(frame[ids]) if len(ids) > 1 else pd.Index(frame[ids[0]])


def features_on_key_shards(
    raw: dd.DataFrame, spec: UseCaseSpec, meta: pd.DataFrame, shards: int, labelled: bool
) -> dd.DataFrame:
    """The spec's `build_features` on key shards, one key after another (`UseCaseSpec.feature_keys`): the
    rows shuffled by the key into `shards` partitions, each built whole, keeping that key's features (and
    the row-local ones); then shuffled by the next key. Lazy; a task holds about 1/`shards` of the rows."""
    raw_columns = list(raw.columns)
    passthrough = [c for c in raw_columns if c not in meta.columns]  # what the next shard's build reads
    table, carried = raw, []
    keys = list(spec.feature_keys)
    for k, key in enumerate(keys):
        last = k == len(keys) - 1
        keep = list(meta.columns) + ([] if last else passthrough)
        stage_meta = meta if last else pd.concat([meta, raw._meta[passthrough]], axis=1)
        table = table.shuffle(key, npartitions=shards).map_partitions(
            _key_shard,
            spec.build_features,
            raw_columns,
            spec.id_columns,
            tuple(carried),
            tuple(keep),
            spec.target if labelled and last else None,  # scoring keeps rows whose label is not known yet
            meta=stage_meta,
            enforce_metadata=False,
            token=f"features-shard-{key}",
        )
        carried += spec.feature_keys[key]
    return table


def features_on_time_chunks(
    raw: dd.DataFrame,
    spec: UseCaseSpec,
    meta: pd.DataFrame,
    chunk: pd.Timedelta | None,
    labelled: bool,
    client,
) -> tuple[dd.DataFrame, int]:
    """The spec's `build_features` on time chunks, each with `feature_history` before it (one partition per
    chunk, in time order), and the number of chunks. Lazy."""
    # why: Dask loads only when a run uses it
    import dask.dataframe as dd
    from dask import delayed

    history = pd.Timedelta(spec.feature_history)
    # A chunk as long as the history: computing it reads at most twice its rows, whatever the table's size.
    chunk = pd.Timedelta(chunk) if chunk is not None else max(history, pd.Timedelta(days=1))
    time_column = spec.time_column
    attrs = getattr(raw, "attrs", {})
    parts = raw.to_delayed()
    spans = attrs.get("spans")
    if spans is None:  # a frame not from ingest_distributed (tests): one pass for the partitions' spans
        with client.as_current():
            spans = client.gather(client.compute([delayed(_span)(p, time_column) for p in parts]))
    present = [(p, lo, hi) for p, (lo, hi) in zip(parts, spans, strict=True) if lo is not None]
    if not present:
        raise DataReadError(f"{attrs.get('source', 'the input')}: no row has a {time_column}")
    edges = chunk_edges(min(lo for _, lo, _ in present), max(hi for _, _, hi in present), chunk)
    token = uuid.uuid4().hex[:8]
    outputs = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if not any(p_lo < hi and p_hi >= lo for _, p_lo, p_hi in present):
            continue  # no row of its own
        start = lo - history
        pieces = [
            delayed(_rows_between)(p, time_column, start, hi, dask_key_name=f"feature-input-{k}-{i}-{token}")
            for i, (p, p_lo, p_hi) in enumerate(present)
            if p_lo < hi and p_hi >= start
        ]
        outputs.append(
            delayed(_chunk_features)(
                spec.build_features,
                time_column,
                spec.target if labelled else None,  # scoring keeps rows whose label is not known yet
                lo,
                hi,
                *pieces,
                dask_key_name=f"features-chunk-{k}-{token}",
            )
        )
    return dd.from_delayed(outputs, meta=meta, verify_meta=False), len(outputs)


@stage
def featurize_distributed(
    raw: dd.DataFrame, spec: UseCaseSpec, client, scratch: Path, settings: DaskSettings, labelled: bool = True
) -> dd.DataFrame:
    """The spec's `build_features` on the workers: on key shards when the spec declares `feature_keys` (about
    `settings.partition_rows` rows a task), else on time chunks with `feature_history` (`settings.chunk`
    long). Computed once and written to Parquet under `scratch`, which the stages after it read (each would
    otherwise compute the features, shuffles and all, again)."""
    # why: Dask loads only when a run uses it
    import dask.dataframe as dd
    from dask import delayed

    log = run_logger()
    attrs = getattr(raw, "attrs", {})
    with client.as_current():
        sample = raw.partitions[0].head(2_000, compute=False)
        meta = client.compute(delayed(spec.build_features)(sample)).result().iloc[:0]
    if spec.feature_keys:
        rows = attrs.get("rows")
        if rows is None:  # a frame not from ingest_distributed (tests): one pass for its length
            with client.as_current():
                rows = int(client.compute(raw.map_partitions(len).sum()).result())
        workers = max(len(client.scheduler_info()["workers"]), 1)
        shards = max(PARTITIONS_PER_WORKER * workers, math.ceil(rows / settings.partition_rows))
        table = features_on_key_shards(raw, spec, meta, shards, labelled)
        layout = {"shards": shards, "ordered": False}
        how = f"{shards} key shards by {', '.join(spec.feature_keys)} in turn (~{rows // shards:,} rows each)"
    else:
        table, chunks = features_on_time_chunks(raw, spec, meta, settings.chunk, labelled, client)
        layout = {"chunks": chunks, "ordered": True}
        how = f"{chunks} time chunks, each with the {pd.Timedelta(spec.feature_history)} before it"
    folder = Path(tempfile.mkdtemp(prefix="features-", dir=scratch))
    with client.as_current():
        client.compute(
            table.to_parquet(folder, write_index=False, compute=False, name_function=_part_name)
        ).result()
    files = sorted(str(f) for f in folder.glob("part-*.parquet"))  # partition order (time chunks: time order)
    written = dd.read_parquet(files)
    written.attrs = {**attrs, "lengths": parquet_rows(files), "files": files, **layout}
    log.info("features: %s, on the workers; written once to %s", how, folder)
    return written


def _part_name(i: int) -> str:
    return f"part-{i:06d}.parquet"  # zero-padded, so the names sort in partition order


def _span(frame: pd.DataFrame, time_column: str):
    times = frame[time_column]
    return (times.min(), times.max()) if len(frame) and times.notna().any() else (None, None)
