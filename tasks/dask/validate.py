"""Validate on the Dask executor: the use case's GX suite on every partition in parallel, merged into one.

Each partition runs the suite on a worker (`tasks.validate.validate_frame`) and computes what merging
needs beside it (`merge.MergePlan`: statistics' partials, each uniqueness column's range and repeats);
`merge.merge_suite` turns those into the whole table's result. Uniqueness across partitions: ids usually
grow with time, so the partitions' ranges do not overlap and each partition's own repeats are all there are;
otherwise a hash-partitioned `value_counts` over all partitions finds a duplicate split across two files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from tasks.dask.merge import MergePlan, merge_plan, merge_suite, partials
from tasks.stage import stage
from tasks.validate import keep_report, report_from_result, validate_frame

if TYPE_CHECKING:
    import dask.dataframe as dd


@dataclass(frozen=True)
class PartitionCheck:
    """One partition's suite result and what merging needs of it."""

    result: dict  # the GX suite result, JSON-able
    rows: int
    partials: dict  # merge.partials
    unique: dict  # per uniqueness column: `_unique_side`


def _check(frame: pd.DataFrame, suite_factory: Callable, plan: MergePlan) -> PartitionCheck:
    report = validate_frame(frame, suite_factory())
    unique = {c: _unique_side(frame[c]) for c in plan.unique_columns}
    return PartitionCheck(report.result, len(frame), partials(frame, plan), unique)


def _check_partition(frame: pd.DataFrame, suite_factory: Callable, plan: MergePlan) -> PartitionCheck | None:
    """On a worker: the suite on one partition, with what merging needs; None when the partition is empty."""
    return _check(frame, suite_factory, plan) if len(frame) else None


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


def duplicates_across(frame: dd.DataFrame, checks: Sequence[PartitionCheck], columns: Sequence[str], client):
    """Per uniqueness column: the values repeated anywhere in the table with their counts, and how that was
    found (for the result's `meta.uniqueness`)."""
    duplicates, method = {}, {}
    for column in columns:
        sides = [check.unique[column] for check in checks]
        if _disjoint([side["range"] for side in sides]):
            repeats = [side["repeated"] for side in sides if len(side["repeated"])]
            duplicates[column] = pd.concat(repeats) if repeats else pd.Series([], dtype="int64")
            method[column] = "partition ranges disjoint"
    # The shuffle comes after the checks (its buffers were the workers' largest allocation in this stage):
    # submitted together, every partition read would wait in memory for the shuffle to take it.
    shuffled = [c for c in columns if c not in duplicates]
    with client.as_current():
        counts = client.gather(client.compute([_repeated(frame, c) for c in shuffled]))
    duplicates.update(zip(shuffled, counts, strict=True))
    method.update(dict.fromkeys(shuffled, "hash shuffle of the counts"))
    return duplicates, method


def validate_partitions(frame: dd.DataFrame, suite_factory: Callable, client):
    """Run the suite on every non-empty partition (on the workers) and merge into one `ValidationReport`."""
    from dask import delayed  # why: Dask loads only when a run uses it

    suite = suite_factory()
    plan = merge_plan(suite, frame.columns)
    lengths = getattr(frame, "attrs", {}).get("lengths")
    parts = frame.to_delayed()
    if lengths is not None:
        parts = [p for p, n in zip(parts, lengths, strict=True) if n] or parts[:1]
    tasks = [delayed(_check_partition)(p, suite_factory, plan) for p in parts]
    with client.as_current():
        checks = [c for c in client.gather(client.compute(tasks)) if c is not None]
    if not checks:  # every partition empty: the suite on the empty table says what that fails
        checks = [_check(frame._meta, suite_factory, plan)]
    duplicates, method = duplicates_across(frame, checks, plan.unique_columns, client)
    results, pieces = [c.result for c in checks], [c.partials for c in checks]
    merged = merge_suite(suite, results, pieces, duplicates, frame._meta)
    merged["meta"] = {
        **(merged.get("meta") or {}),
        "partitions": len(parts),
        "rows": sum(c.rows for c in checks),
        "uniqueness": method,  # how each uniqueness column was checked across partitions
    }
    dtypes = {str(name): str(dtype) for name, dtype in frame.dtypes.items()}
    return report_from_result(merged, suite, dtypes)


@stage
def validate_distributed(frame: dd.DataFrame, suite_factory: Callable, run_id: str | None, client):
    """`tasks.validate.validate` for a Dask DataFrame: partition results merged, kept, raised on failure."""
    report = validate_partitions(frame, suite_factory, client)
    return keep_report(report, report.result["meta"]["rows"], run_id)
