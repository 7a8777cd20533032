"""One Great Expectations result for a table whose partitions were checked one by one on the workers.

No rule here is an expectation's: GX itself computes each merged result with the expectation's own
`_validate` (the step GX runs once it has an expectation's metrics), from the whole table's metrics, which
are rebuilt by kind:
- map expectations (the results that carry `unexpected_count`: values between, in set, not null, column
  pairs, ...): the counts summed (`element_count`, `missing_count`, `unexpected_count`) and the unexpected
  examples joined in partition order, so `mostly` and the percentages come out as on the whole table.
  Uniqueness is not row-wise: its count and examples are the whole table's repeated values (`validate.py`
  finds them); other cross-row maps (`CROSS_ROW`) have no merge;
- the metrics an expectation declares (`metric_dependencies`: row count, column min/max/mean/sum): combined
  from partials every partition computes beside the suite (`STATISTICS`);
- schema metrics (`table.columns`, `table.column_types`): the Dask frame's own, alike on every partition.
An expectation that needs anything else is refused before any work (`ExecutorError`, naming it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.util import convert_to_json_serializable

from tasks.dask.cluster import ExecutorError
from tasks.validate import RESULT_FORMAT

if TYPE_CHECKING:
    import great_expectations as gx

UNIQUE = "column_values.unique"
# Map metrics that compare rows with other rows: a partition's counts say nothing of the table's.
CROSS_ROW = frozenset(
    {
        "compound_columns.unique",
        "column_values.increasing",
        "column_values.decreasing",
        "column_values.z_score.under_threshold",
    }
)
SCHEMA_METRICS = ("table.columns", "table.column_types")
EXAMPLES = RESULT_FORMAT["partial_unexpected_count"]


def _present(value):
    """None for a missing value (an empty or all-null partition's min or max)."""
    return None if value is None or pd.isna(value) else value


def _extreme(pick: Callable) -> Callable[[list], Any]:
    def combine(values: list):
        present = [v for v in values if v is not None]
        return pick(present) if present else None

    return combine


def _mean(partials: list[tuple[float, int]]):
    count = sum(n for _, n in partials)
    return sum(total for total, _ in partials) / count if count else None


@dataclass(frozen=True)
class Statistic:
    """A whole-table metric from the partitions: `partial` on a worker, of one partition (and the
    expectation's column, None for a table metric); `combine` here, over every partition's partial."""

    partial: Callable[[pd.DataFrame, str | None], Any]
    combine: Callable[[list], Any]


STATISTICS = {
    "table.row_count": Statistic(lambda frame, _: len(frame), sum),
    "column.min": Statistic(lambda frame, column: _present(frame[column].min()), _extreme(min)),
    "column.max": Statistic(lambda frame, column: _present(frame[column].max()), _extreme(max)),
    "column.sum": Statistic(lambda frame, column: frame[column].sum(), sum),
    "column.mean": Statistic(lambda frame, column: (frame[column].sum(), int(frame[column].count())), _mean),
}


@dataclass(frozen=True)
class MergePlan:
    """What each partition computes beside the suite's results, for the merge."""

    statistics: tuple[tuple[str, str | None], ...]  # (metric, column): a partial each
    unique_columns: tuple[str, ...]  # whose repeated values are counted across partitions


def merge_plan(suite: gx.ExpectationSuite, columns: Iterable[str]) -> MergePlan:
    """The partials and uniqueness columns `suite` needs on a frame of `columns`; an expectation with no
    merge is refused here, before any work."""
    columns = set(columns)
    statistics, unique = [], set()
    for expectation in suite.expectations:
        kind, column = expectation.configuration.type, expectation.configuration.kwargs.get("column")
        metric = getattr(expectation, "map_metric", None)
        known = (*STATISTICS, *SCHEMA_METRICS)
        unknown = [m for m in expectation.metric_dependencies if m not in known]
        if metric in CROSS_ROW or unknown:
            raise ExecutorError(
                f"expectation {kind} has no merge across partitions on the Dask executor "
                f"({metric or ', '.join(unknown)}); run with --executor local"
            )
        if column is not None and column not in columns:
            continue  # every partition reports the missing column itself
        if metric == UNIQUE:
            unique.add(column)
        statistics += [(m, column) for m in expectation.metric_dependencies if m in STATISTICS]
    return MergePlan(tuple(dict.fromkeys(statistics)), tuple(sorted(unique)))


def partials(frame: pd.DataFrame, plan: MergePlan) -> dict:
    """On a worker: one partition's partial of every statistic in `plan`."""
    return {(metric, column): STATISTICS[metric].partial(frame, column) for metric, column in plan.statistics}


@dataclass(frozen=True)
class WholeTable:
    """The table's metrics, as far as the partitions tell them."""

    metrics: Mapping[tuple[str, str | None], Any]  # STATISTICS, combined
    schema: Mapping[str, Any]  # SCHEMA_METRICS, from the frame's meta
    duplicates: Mapping[str, pd.Series]  # per uniqueness column: the repeated values and their counts


def merge_suite(
    suite: gx.ExpectationSuite,
    results: Sequence[dict],
    partition_partials: Sequence[dict],
    duplicates: Mapping[str, pd.Series],
    meta: pd.DataFrame,
) -> dict:
    """The suite's result on the whole table, from each partition's GX result and partials; `duplicates`:
    the uniqueness columns' repeated values; `meta`: the frame's empty head (its columns and dtypes)."""
    keys = (_key(c.type, c.kwargs) for c in suite.expectation_configurations)
    expectations = dict(zip(keys, suite.expectations, strict=True))
    metrics = {
        key: STATISTICS[key[0]].combine([p[key] for p in partition_partials]) for key in partition_partials[0]
    }
    schema = {
        "table.columns": list(meta.columns),
        "table.column_types": [{"name": n, "type": t} for n, t in meta.dtypes.items()],
    }
    table = WholeTable(metrics, schema, duplicates)
    by_key = [{_key_of(item): item for item in result["results"]} for result in results]
    merged = [  # GX's own order; the report restores the suite's
        merge_expectation(expectations[key], [partition[key] for partition in by_key], table)
        for key in by_key[0]
    ]
    passed = sum(bool(r.get("success")) for r in merged)
    return {
        **{k: v for k, v in results[0].items() if k not in ("results", "statistics", "success")},
        "success": passed == len(merged),
        "results": merged,
        "statistics": {
            "evaluated_expectations": len(merged),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(merged) - passed,
            "success_percent": 100 * passed / len(merged) if merged else 100.0,
        },
    }


def merge_expectation(expectation: gx.expectations.Expectation, items: list[dict], table: WholeTable) -> dict:
    """One expectation's partition results as one, computed by GX from the whole table's metrics."""
    errors = [i for i in items if _raised(i.get("exception_info") or {})]
    if errors:  # a missing column or a GX failure: report it as the partition did
        return {**errors[0], "success": False}
    column = expectation.configuration.kwargs.get("column")
    metrics = dict(table.schema)
    metrics |= {m: table.metrics[(m, column)] for m in expectation.metric_dependencies if m in STATISTICS}
    if all("unexpected_count" in (i.get("result") or {}) for i in items):
        metrics |= _map_metrics(expectation, items, table.duplicates)
    runtime = {"result_format": RESULT_FORMAT}
    try:
        outcome = expectation._validate(metrics, runtime_configuration=runtime, execution_engine=_engine())
    except Exception as exc:  # it wanted a metric the partitions do not give
        kind = expectation.configuration.type
        raise ExecutorError(
            f"expectation {kind} has no merge across partitions on the Dask executor ({exc!r}); "
            "run with --executor local"
        ) from exc
    if not isinstance(outcome, dict):  # some expectations return an ExpectationValidationResult
        outcome = outcome.to_json_dict()
    result = convert_to_json_serializable(outcome.get("result") or items[0].get("result") or {})
    return {**items[0], "success": bool(outcome["success"]), "result": result}


def _map_metrics(expectation, items: list[dict], duplicates: Mapping[str, pd.Series]) -> dict:
    """A map expectation's metrics on the whole table: the partitions' counts summed, their examples joined
    (uniqueness: the whole table's repeated values)."""
    metric = expectation.map_metric
    results = [i.get("result") or {} for i in items]
    elements = sum(int(r.get("element_count") or 0) for r in results)
    missing = sum(int(r.get("missing_count") or 0) for r in results)
    if metric == UNIQUE:
        repeated = duplicates[expectation.configuration.kwargs["column"]]
        unexpected = int(repeated.sum())  # every row whose value occurs more than once, as GX counts
        examples = [_plain(v) for v in repeated.index[:EXAMPLES]]
    else:
        unexpected = sum(int(r.get("unexpected_count") or 0) for r in results)
        examples = [v for r in results for v in (r.get("partial_unexpected_list") or [])][:EXAMPLES]
    return {
        "table.row_count": elements,
        "column_values.nonnull.unexpected_count": missing,  # the nulls a column map leaves out
        f"{metric}.unexpected_count": unexpected,
        f"{metric}.unexpected_values": examples,
        f"{metric}.filtered_row_count": elements - missing,  # the rows a pair or multicolumn map considers
    }


@functools.cache
def _engine():
    """A pandas execution engine, for the expectations whose verdict depends on the engine (dtype checks)."""
    return PandasExecutionEngine()


def _key(kind: str, kwargs: Mapping[str, Any]) -> str:
    plain = {k: v for k, v in kwargs.items() if k != "batch_id"}
    return kind + json.dumps(plain, sort_keys=True, default=str)


def _key_of(item: dict) -> str:
    config = item["expectation_config"]
    return _key(config["type"], config["kwargs"])


def _raised(info: dict) -> bool:
    """GX gives either one flat exception record or a dict of them keyed by metric id."""
    records = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    return any(r.get("raised_exception") for r in records)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
