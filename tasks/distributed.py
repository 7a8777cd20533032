"""The data stages on a Dask cluster (`--executor dask`): the same checks, features, windows and model, with
the table spread over the workers instead of held by one process. Every task holds about `partition_rows`
rows (`tasks.cluster.DaskSettings`), so a worker's memory follows that, not the table's size.

- ingest: Parquet or CSV — one file, a directory or a glob — as a Dask DataFrame in partitions of about
  `partition_rows`, profiled in one pass on the workers (rows, time span, labelled days, digest per
  partition) and not persisted: each later pass reads its partitions again, so no process keeps the table;
- validate: the use case's GX suite runs on every partition in parallel (`tasks.validate.validate_frame`, on
  the workers) and the partition results are merged into one: counts and unexpected values summed, table-level
  expectations recomputed across partitions (row count, mean, min/max; uniqueness from a hashed
  `value_counts` over all partitions, so a duplicate split across two files is found);
- features: the use case's own `build_features`, the one training, scoring and serving use. On key shards
  when the spec declares `feature_keys` (fraud: the rows shuffled by CUSTOMER_ID, built, the customer
  features kept; then shuffled by TERMINAL_ID, built, the terminal features kept): a shard holds every row
  of its keys, so the features equal the one-piece ones bit for bit. Otherwise on time chunks, each with the
  `feature_history` before it, as `tasks/score.py` scores a long file. Computed once and written to Parquet
  in the run's scratch folder, which the stages after it read;
- split: the same windows (`tasks.split.split_frame` on the labelled days); test and the rows a test filter
  reads are collected, the training and validation windows stay on the workers, hashed over them;
- train: `xgboost.dask` (`DaskQuantileDMatrix`, `xgb.dask.train`) with the spec's parameters, seed and early
  stopping on the validation window; baselines that do not scale (logistic regression) fit on a stratified
  sample of the training window, recorded on the MLflow run (`baselines.training_rows`), which also feeds the
  monitoring profile's training distribution; each baseline is a task run on a worker
  (`tasks.train.train_baselines` through the run's `DaskTaskRunner`);
- scoring (`score_distributed`): the same checks and features, each feature chunk scored on a worker by one
  pinned version in a `score-chunk` task run, put back in time order, written here chunk by chunk into a
  file renamed at the end.

Supported for use cases whose features declare `feature_keys` or a `feature_history`, split by calendar
days, with no raw check view, model selection, target transform or offset, trained from scratch: anything
else is refused before any work with a message naming what (run it with `--executor local`).
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.cluster import PARTITION_ROWS, DaskSettings, ExecutorError
from tasks.ingest import READERS, DataReadError, input_files
from tasks.stage import stage
from tasks.tracking import run_logger

if TYPE_CHECKING:
    import dask.dataframe as dd

    from tasks.split import Splits
    from usecases.spec import TrainingParams, UseCaseSpec

# Baselines (and the monitoring profile's training distribution) see at most this many training rows.
BASELINE_ROWS = 250_000
# Partitions per worker for the raw table, so validation runs in parallel even from one file.
PARTITIONS_PER_WORKER = 2
# A CSV block of `partition_rows` rows: the handbook's transactions take ~70 bytes a line.
CSV_BYTES_PER_ROW = 64
# Expectations a table passes when every partition does (schema and types).
PER_PARTITION = (
    "expect_column_to_exist",
    "expect_column_values_to_be_in_type_list",
    "expect_column_values_to_be_of_type",
)


def unsupported(spec: UseCaseSpec, params: TrainingParams) -> list[str]:
    """What keeps this run off the Dask executor (empty: nothing)."""
    reasons = []
    if spec.feature_history is None and not spec.feature_keys:
        reasons.append(
            "its features declare neither feature_keys nor a feature_history (they cannot be computed in "
            "key shards or in time chunks)"
        )
    if spec.feature_keys and not spec.id_columns:
        reasons.append("it declares feature_keys but no id_columns to put key shards' features back together")
    if spec.split.unit != "days":
        reasons.append(f"it splits by {spec.split.unit}, not calendar days")
    if spec.raw_check_view is not None:
        reasons.append("its raw checks need a cross-row view of the whole table")
    if spec.model.search and spec.model.folds > 0:
        reasons.append("it selects its model by walk-forward folds")
    if spec.model.target_transform != "identity" or spec.model.offset_features:
        reasons.append("its model learns a transformed target or a base margin")
    if getattr(params, "init", "scratch") != "scratch":
        reasons.append(f"--init {params.init} (fine-tuning runs on the local executor)")
    return reasons


# ---------------------------------------------------------------------------------------------- ingest


def read_frame(path: str | Path, time_column: str, partition_rows: int = PARTITION_ROWS) -> dd.DataFrame:
    """A Dask DataFrame over the input's files (not yet read), in partitions of about `partition_rows` rows
    (a Parquet file's row count from its footer; CSV in blocks of about that many short lines); the time
    column parsed if it is text."""
    import math

    import dask.dataframe as dd

    files = input_files(path)
    kind = "csv" if READERS[files[0].suffix.lower()] is pd.read_csv else "parquet"
    names = [str(f) for f in files]
    try:
        if kind == "parquet":
            largest = max(_parquet_rows(names))
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


def _profile_partition(frame: pd.DataFrame, time_column: str, target: str) -> dict:
    """On a worker: what later stages need to know of a raw partition, from one read of it."""
    from tasks.tracking import content_digest

    times = frame[time_column] if time_column in frame.columns else pd.Series([], dtype="datetime64[ns]")
    known = frame[target].notna().to_numpy() if target in frame.columns else np.zeros(len(frame), dtype=bool)
    return {
        "rows": len(frame),
        "span": (times.min(), times.max()) if len(frame) and times.notna().any() else (None, None),
        # The split's axis: days with a labelled row (the local path splits the table of those rows).
        "days": np.unique(times[known].dt.normalize().dropna().to_numpy()) if len(frame) else [],
        "digest": content_digest(frame),
    }


@stage
def ingest_distributed(
    client, spec: UseCaseSpec, params: TrainingParams, workers: int, partition_rows: int = PARTITION_ROWS
) -> dd.DataFrame:
    """The input as a Dask DataFrame over its files (or the embedded source's table spread over partitions),
    profiled in one pass on the workers: rows, time span, labelled days and a digest per partition. Not
    persisted: each later pass reads its partitions again, so no worker keeps the table."""
    import math

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
    from dask import delayed

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


# ---------------------------------------------------------------------------------------------- validate


def _check_partition(frame: pd.DataFrame, suite_factory: Callable, unique_columns: Sequence[str] = ()):
    """On a worker: the suite on one partition, with what merging needs (rows, non-null counts, each
    uniqueness column's range and in-partition repeats); None when the partition is empty."""
    from tasks.validate import validate_frame

    if not len(frame):
        return None
    report = validate_frame(frame, suite_factory())
    counts = {str(c): int(frame[c].notna().sum()) for c in frame.columns}
    unique = {c: _unique_side(frame[c]) for c in unique_columns}
    return report.result, {"rows": len(frame), "nonnull": counts, "unique": unique}


def _unique_side(values: pd.Series) -> dict:
    """A partition's side of a uniqueness check: its value range and the values it repeats itself."""
    present = values.dropna()
    counts = present.value_counts()
    return {"range": (present.min(), present.max()) if len(present) else None, "repeated": counts[counts > 1]}


def _disjoint(ranges: Sequence[tuple | None]) -> bool:
    """Whether no two partitions' [min, max] ranges can share a value: then no value repeats across them."""
    try:
        spans = sorted(r for r in ranges if r is not None)
        return all(earlier[1] < later[0] for earlier, later in zip(spans, spans[1:], strict=False))
    except TypeError:  # values that do not order: cannot tell
        return False


def _repeated(frame: dd.DataFrame, column: str):
    """Values of `column` seen more than once across all partitions, from hash-partitioned counts (no
    process holds every value)."""
    counts = frame[column].value_counts(split_out=max(frame.npartitions, 1))
    return counts[counts > 1]


def _key(item: dict) -> str:
    import json

    config = item["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    return config["type"] + json.dumps(kwargs, sort_keys=True, default=str)


def _mostly_success(unexpected: int, total: int, kwargs: dict) -> bool:
    if total == 0:
        return True
    return 1 - unexpected / total >= float(kwargs.get("mostly") or 1.0)


def _bounds_success(value, kwargs: dict) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and (value <= low if kwargs.get("strict_min") else value < low):
        return False
    return not (high is not None and (value >= high if kwargs.get("strict_max") else value > high))


def _merge_map(items: list[dict], kwargs: dict) -> tuple[bool, dict]:
    """Column-map expectations (not null, between, in set, unique within a partition): counts summed."""
    results = [i.get("result") or {} for i in items]
    merged: dict = {}
    for key in ("element_count", "missing_count", "unexpected_count"):
        if any(key in r for r in results):
            merged[key] = int(sum(r.get(key) or 0 for r in results))
    examples = [v for r in results for v in (r.get("partial_unexpected_list") or [])]
    merged["partial_unexpected_list"] = examples[:20]
    elements, missing = merged.get("element_count", 0), merged.get("missing_count")
    unexpected = merged.get("unexpected_count", 0)
    if missing is None:  # not-null: a missing value is the unexpected one
        merged["unexpected_percent"] = 100 * unexpected / elements if elements else 0.0
        return unexpected == 0, merged
    nonmissing = elements - missing
    merged["missing_percent"] = 100 * missing / elements if elements else None
    merged["unexpected_percent"] = 100 * unexpected / nonmissing if nonmissing else None
    merged["unexpected_percent_total"] = 100 * unexpected / elements if elements else None
    merged["unexpected_percent_nonmissing"] = merged["unexpected_percent"]
    return _mostly_success(unexpected, nonmissing, kwargs), merged


def _merge_expectation(kind: str, kwargs: dict, items: list[dict], stats: list[dict], duplicates) -> dict:
    """One expectation's partition results as one result, as GX would report it on the whole table."""
    first = dict(items[0])
    errors = [i for i in items if i.get("exception_info") and _raised(i["exception_info"])]
    if errors:  # a missing column or a GX failure: report it as the partition did
        return {**errors[0], "success": False}
    column = kwargs.get("column")
    observed: dict
    if kind == "expect_table_row_count_to_be_between":
        rows = sum(s["rows"] for s in stats)
        return {**first, "success": _bounds_success(rows, kwargs), "result": {"observed_value": rows}}
    if kind == "expect_column_mean_to_be_between":
        weights = [s["nonnull"].get(column, 0) for s in stats]
        values = [(i.get("result") or {}).get("observed_value") for i in items]
        pairs = [(v, w) for v, w in zip(values, weights, strict=True) if w and v is not None]
        mean = sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else None
        observed = {"observed_value": mean}
        return {**first, "success": _bounds_success(mean, kwargs), "result": observed}
    if kind in ("expect_column_min_to_be_between", "expect_column_max_to_be_between"):
        values = [(i.get("result") or {}).get("observed_value") for i in items]
        values = [v for v in values if v is not None]
        pick = min if kind == "expect_column_min_to_be_between" else max
        value = pick(values) if values else None
        return {**first, "success": _bounds_success(value, kwargs), "result": {"observed_value": value}}
    if kind in PER_PARTITION:
        failed = [i for i in items if not i.get("success")]
        return {**(failed[0] if failed else first), "success": not failed}
    if kind == "expect_column_values_to_be_unique":
        success, merged = _merge_map(items, kwargs)
        repeated = duplicates[column]
        unexpected = int(repeated.sum())  # every row whose value occurs more than once, as GX counts
        nonmissing = merged.get("element_count", 0) - merged.get("missing_count", 0)
        merged["unexpected_count"] = unexpected
        merged["partial_unexpected_list"] = [_plain(v) for v in repeated.index[:20]]
        merged["unexpected_percent"] = 100 * unexpected / nonmissing if nonmissing else None
        merged["unexpected_percent_nonmissing"] = merged["unexpected_percent"]
        elements = merged.get("element_count", 0)
        merged["unexpected_percent_total"] = 100 * unexpected / elements if elements else None
        return {**first, "success": _mostly_success(unexpected, nonmissing, kwargs), "result": merged}
    if all("unexpected_count" in (i.get("result") or {}) for i in items):
        success, merged = _merge_map(items, kwargs)
        return {**first, "success": success, "result": merged}
    raise ExecutorError(
        f"expectation {kind} has no merge across partitions on the Dask executor; run with --executor local"
    )


def _raised(info: dict) -> bool:
    records = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    return any(r.get("raised_exception") for r in records)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def validate_partitions(frame: dd.DataFrame, suite_factory: Callable, client):
    """Run the suite on every non-empty partition (on the workers) and merge into one `ValidationReport`."""
    from dask import delayed

    from tasks.validate import report_from_result

    suite = suite_factory()
    unique_columns = sorted(
        {
            c.kwargs["column"]
            for c in suite.expectation_configurations
            if c.type == "expect_column_values_to_be_unique" and c.kwargs.get("column") in frame.columns
        }
    )
    lengths = getattr(frame, "attrs", {}).get("lengths")
    parts = frame.to_delayed()
    if lengths is not None:
        parts = [p for p, n in zip(parts, lengths, strict=True) if n] or parts[:1]
    checks = [delayed(_check_partition)(p, suite_factory, unique_columns) for p in parts]
    with client.as_current():
        outputs = [o for o in client.gather(client.compute(checks)) if o is not None]
    # Uniqueness across partitions. Ids usually grow with time, so the partitions' ranges do not overlap and
    # each partition's own repeats are all there are; otherwise a hash shuffle of the counts (its buffers
    # were the workers' largest allocation in this stage), after the checks: submitted together, every
    # partition read would wait in memory for the shuffle to take it.
    duplicates, method = {}, {}
    for column in unique_columns:
        sides = [stats["unique"][column] for _, stats in outputs]
        if _disjoint([side["range"] for side in sides]):
            repeats = [side["repeated"] for side in sides if len(side["repeated"])]
            duplicates[column] = pd.concat(repeats) if repeats else pd.Series([], dtype="int64")
            method[column] = "partition ranges disjoint"
    shuffled = [c for c in unique_columns if c not in duplicates]
    with client.as_current():
        counts = client.gather(client.compute([_repeated(frame, c) for c in shuffled]))
    duplicates.update(zip(shuffled, counts, strict=True))
    method.update(dict.fromkeys(shuffled, "hash shuffle of the counts"))
    if not outputs:  # every partition empty: the suite on the empty table says what that fails
        from tasks.validate import validate_frame

        outputs = [(validate_frame(frame._meta, suite_factory()).result, {"rows": 0, "nonnull": {}})]
    results = [{_key(item): item for item in r["results"]} for r, _ in outputs]
    stats = [s for _, s in outputs]
    merged_results = []
    for key, item in results[0].items():  # GX's own order; the report restores the suite's
        config = item["expectation_config"]
        items = [r[key] for r in results]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        merged_results.append(_merge_expectation(config["type"], kwargs, items, stats, duplicates))
    passed = sum(bool(r.get("success")) for r in merged_results)
    merged = {
        **{k: v for k, v in outputs[0][0].items() if k not in ("results", "statistics", "success")},
        "success": passed == len(merged_results),
        "results": merged_results,
        "statistics": {
            "evaluated_expectations": len(merged_results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(merged_results) - passed,
            "success_percent": 100 * passed / len(merged_results) if merged_results else 100.0,
        },
    }
    rows = sum(s["rows"] for s in stats)
    merged["meta"] = {
        **(merged.get("meta") or {}),
        "partitions": len(parts),
        "rows": rows,
        "uniqueness": method,  # how each uniqueness column was checked across partitions
    }
    dtypes = {str(name): str(dtype) for name, dtype in frame.dtypes.items()}
    return report_from_result(merged, suite, dtypes)


@stage
def validate_distributed(frame: dd.DataFrame, suite_factory: Callable, run_id: str | None, client):
    """`tasks.validate.validate` for a Dask DataFrame: partition results merged, kept, raised on failure."""
    from tasks.validate import keep_report

    report = validate_partitions(frame, suite_factory, client)
    return keep_report(report, report.result["meta"]["rows"], run_id)


# ---------------------------------------------------------------------------------------------- features


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
    import math

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
    written.attrs = {**attrs, "lengths": _parquet_rows(files), "files": files, **layout}
    log.info("features: %s, on the workers; written once to %s", how, folder)
    return written


def _part_name(i: int) -> str:
    return f"part-{i:06d}.parquet"  # zero-padded, so the names sort in partition order


def _parquet_rows(files: Sequence[str]) -> list[int]:
    import pyarrow.parquet as pq

    return [pq.ParquetFile(f).metadata.num_rows for f in files]


def _span(frame: pd.DataFrame, time_column: str):
    times = frame[time_column]
    return (times.min(), times.max()) if len(frame) and times.notna().any() else (None, None)


# ---------------------------------------------------------------------------------------------- split


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
    from distributed import wait

    from tasks.split import SplitError, Splits, split_frame

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
        from mlflow import MlflowClient

        MlflowClient().log_param(run_id, "baselines.training_rows", note)
    splits = Splits(sample, validation, test, windows)
    return splits, DistributedWindows(train, validation_dd, rows, positives, support, note)


def _spread(frame: dd.DataFrame, client, on: str) -> dd.DataFrame:
    """The window's rows hashed by `on` into two partitions per worker: a shuffle places its output
    partitions across the workers, so each trains on a share (pieces of a persisted partition would all stay
    on the worker that holds it, and one with no rows sits out)."""
    from distributed import wait

    workers = max(len(client.scheduler_info()["workers"]), 1)
    with client.as_current():
        frame = client.persist(frame.shuffle(on, npartitions=2 * workers))
        wait(frame)
    return frame


def in_memory_table(windows: DistributedWindows, table: dd.DataFrame, spec: UseCaseSpec, k: int, client):
    """What `tasks.evaluate.evaluate_earlier` reads of the table: the support rows plus every row of the last
    `k` promoted versions' test windows (read inside the champion lock, like the windows themselves)."""
    from tasks.lineage import promoted_windows

    promoted = promoted_windows(spec.registered_model, k) if k > 0 else []
    if not promoted:
        return windows.support
    time_column, day = spec.time_column, pd.Timedelta(days=1)
    pieces = [
        table[(table[time_column] >= pd.Timestamp(lo)) & (table[time_column] < pd.Timestamp(hi) + day)]
        for lo, hi in (entry["test"] for entry in promoted)
    ]
    with client.as_current():  # the feature chunks covering those windows, computed again on the workers
        frames = client.gather(client.compute(pieces))
    rows = pd.concat([windows.support, *frames], ignore_index=True)
    rows = rows.drop_duplicates(subset=list(spec.id_columns)) if spec.id_columns else rows
    return rows.sort_values([time_column, *spec.id_columns], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- train


@stage
def train_distributed(splits: Splits, windows: DistributedWindows, spec: UseCaseSpec, seed: int, client):
    """The candidate with `xgboost.dask`: the spec's parameters, seed and early stopping on validation; cut
    back to its best iteration like the local candidate."""
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (explicitly: the Dask interface is a submodule)

    from tasks.train import OBJECTIVES, Candidate

    log = run_logger()
    model, features, target = spec.model, list(spec.features), spec.target
    # Each worker trains with its own threads (nthread in the spec is sized for one process).
    params = {k: v for k, v in model.params.items() if k != "nthread"}
    full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[spec.problem], **params}
    if spec.problem == "binary" and model.balance_classes:
        positives = max(windows.positives["train"], 1)
        full_params.setdefault("scale_pos_weight", (windows.rows["train"] - positives) / positives)
    train, validation = windows.train, windows.validation
    log.info(
        "training XGBoost on the workers (xgboost.dask): %s rows in %d partitions, %d features",
        f"{windows.rows['train']:,}",
        train.npartitions,
        len(features),
    )
    with client.as_current():
        # Quantised as they are read (the hist method's bins): no float copy of the workers' share beside it.
        dtrain = xgb.dask.DaskQuantileDMatrix(client, train[features], train[target])
        dval = xgb.dask.DaskQuantileDMatrix(client, validation[features], validation[target], ref=dtrain)
        output = xgb.dask.train(
            client,
            full_params,
            dtrain,
            num_boost_round=model.num_boost_round,
            evals=[(dval, "validation")],
            early_stopping_rounds=model.early_stopping_rounds,
            verbose_eval=False,
        )
    booster = output["booster"]
    rounds, best = booster.num_boosted_rounds(), booster.best_iteration
    score = float(booster.best_score)
    booster = booster[: best + 1]
    log.info("best iteration %d of %d trained", best, rounds)
    lo, hi = splits.windows["train"]
    return Candidate(
        booster,
        tuple(features),
        full_params,
        best,
        rounds,
        validation_score=score,
        trained_on=((str(lo), str(hi)),),
    )


# ---------------------------------------------------------------------------------------------- datasets


def log_datasets(run_id: str, spec: UseCaseSpec, raw: dd.DataFrame, splits: Splits, windows, client) -> str:
    """As the local path: the input as an MLflow dataset (schema, source, a digest of every row — here of the
    partitions' digests, computed on the workers), the windows' bounds and true row counts."""
    from tasks import tracking

    digests = raw.attrs["digests"]  # per partition, from ingest's pass on the workers
    digest = hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]
    source = raw.attrs.get("source", "unknown")
    extra = {"dataset.rows": raw.attrs.get("rows"), "dataset.partitions": len(digests)}
    name = f"{spec.name}-raw"
    tracking.record_input(run_id, name, raw._meta, source, digest, splits.windows, windows.rows, **extra)
    return digest


# ---------------------------------------------------------------------------------------------- scoring


@stage(task_run_name="score-chunk")
def score_chunk(features: str, model, keep: list[str], score_column: str) -> pd.DataFrame:
    """On a worker: one chunk of features (a Parquet file): its `keep` columns (ids, time), its scores and the
    pinned version."""
    from tasks.score import VERSION_COLUMN

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
    import time

    import dask.dataframe as dd

    from tasks.cluster import submit
    from tasks.score import VERSION_COLUMN, AtomicTableWriter, ScoringResult
    from tasks.validate import keep_report

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
