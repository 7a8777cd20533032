"""Validate: run a Great Expectations suite against a frame and stop the run on failure.

Generic: the suite comes from the use case (`data_checks/`); nothing here knows about a dataset.
`validate_frame` is pure (an in-process, ephemeral GX context, nothing written anywhere) and returns a
`ValidationReport`: the full GX result as a JSON-able dict plus one human-readable line per expectation.
The `validate` stage keeps that result (MLflow artifact `validation/<suite>.json` on the run, Prefect
markdown artifact `validation-<suite>`) and then raises `DataValidationError` when the suite failed, so a
run stops before any feature, training or registry work.

GX 1.x notes (they shape the code below):
- results do not come back in suite order (they are grouped by metric dependency); the report restores it;
- an expectation on a missing column does not abort the suite: GX records the exception on that
  expectation (`exception_info`, either flat or keyed by metric id) and carries on. Type-list checks on a
  missing column fail with "list index out of range", so missing columns are detected from the frame;
- `expect_column_values_to_be_in_type_list` reports `dtype.type.__name__` ("int64" for both int64 and
  Int64), so the report shows the frame's real dtype instead;
- dataframe batches of one asset all share one batch id and one execution engine, so concurrent calls
  get a data source each (see `_frame_batch_definition`).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402  (the analytics switch must be set before the import)
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from champion.store import run_logger
from tasks.stage import stage  # noqa: E402

# BASIC: counts plus a short list of unexpected values per column-map expectation. It never collects
# unexpected indices or value counts, which cost time and memory on millions of rows.
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 20}
EXAMPLES_SHOWN = 5  # distinct unexpected values quoted per failure

_MISSING_COLUMN = re.compile(r'column "(?P<column>[^"]+)" in BatchData does not exist')


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation: its type, its column (None for table-level ones) and what was observed."""

    expectation: str
    column: str | None
    observed: str
    details: dict = field(default_factory=dict)  # kwargs, GX result and exception message, JSON-able


@dataclass(frozen=True)
class ExpectationOutcome:
    """One evaluated expectation, passed or not, for the report's table."""

    expectation: str
    column: str | None
    success: bool
    observed: str


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    success: bool
    evaluated: int
    failures: tuple[ExpectationFailure, ...]
    result: dict  # the full GX suite validation result, JSON-able
    outcomes: tuple[ExpectationOutcome, ...] = ()  # every expectation, in suite order

    def headline(self) -> str:
        """One line for tags and summaries, e.g. `passed 23/23 expectations (fraud_raw)`."""
        passed = self.evaluated - len(self.failures)
        return (
            f"{'passed' if self.success else 'failed'} {passed}/{self.evaluated} expectations ({self.suite})"
        )

    def summary(self) -> str:
        """One line per failure; a single line saying so when everything passed."""
        if not self.failures:
            return f"{self.suite}: all {self.evaluated} expectations passed"
        return "\n".join(
            f"{self.suite}: {_label(f.expectation, f.column)} failed — {f.observed}" for f in self.failures
        )

    def to_markdown(self) -> str:
        """Suite, verdict and a table of every expectation with its observed value."""
        verdict = "passed" if self.success else "FAILED"
        lines = [
            f"# Data validation: `{self.suite}` {verdict}",
            "",
            f"{self.evaluated - len(self.failures)} of {self.evaluated} expectations passed.",
            "",
        ]
        if self.failures:
            lines += ["## Failures", ""]
            lines += [
                f"- `{_label(f.expectation, f.column)}`: {_md_escape(f.observed)}" for f in self.failures
            ]
            lines.append("")
        lines += ["## Expectations", "", "| | expectation | column | observed |", "|---|---|---|---|"]
        for outcome in self.outcomes:
            mark = "✅" if outcome.success else "❌"
            lines.append(
                f"| {mark} | `{outcome.expectation}` | {outcome.column or '(table)'} | "
                f"{_md_escape(outcome.observed)} |"
            )
        return "\n".join(lines) + "\n"


class DataValidationError(ValueError):
    """A data check failed. `.report` holds the ValidationReport; str() lists every failure."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report)

    def __str__(self) -> str:
        report = self.report
        return (
            f"data validation failed: suite {report.suite} failed {len(report.failures)} of "
            f"{report.evaluated} expectations\n{report.summary()}"
        )

    def __reduce__(self):  # picklable with its report (Prefect may serialize a task's exception)
        return (type(self), (self.report,))


# ---------------------------------------------------------------------------------------------- GX context

_LOCK = threading.Lock()
_CONTEXT = None


def _context():
    """One ephemeral GX context per process (in-memory stores, no analytics, no progress bars)."""
    global _CONTEXT
    if _CONTEXT is None:
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),  # no tqdm bars in flow logs
        )
        _CONTEXT = gx.get_context(mode="ephemeral", project_config=config)
    return _CONTEXT


@contextmanager
def _frame_batch_definition():
    """A whole-dataframe batch definition on a data source of its own, removed afterwards.

    A GX data source keeps one execution engine, and every dataframe batch of one asset gets the same
    batch id, so two validations sharing a data source on two threads read each other's frames. A data
    source per call (~1 ms) keeps calls independent, and deleting it drops the engine's reference to the
    frame.
    """
    name = f"validate-{uuid.uuid4().hex}"
    with _LOCK:
        context = _context()
        asset = context.data_sources.add_pandas(name).add_dataframe_asset("frame")
        batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
    try:
        yield batch_definition
    finally:
        with _LOCK:
            context.data_sources.delete(name)


# ---------------------------------------------------------------------------------------------- validation


def validate_frame(frame: pd.DataFrame, suite: gx.ExpectationSuite) -> ValidationReport:
    """Run `suite` on `frame` and describe the outcome. Never raises for failed expectations."""
    with _frame_batch_definition() as batch_definition:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format=RESULT_FORMAT).to_json_dict()
    return report_from_result(result, suite, {str(name): str(dtype) for name, dtype in frame.dtypes.items()})


def report_from_result(
    result: dict, suite: gx.ExpectationSuite, dtypes: Mapping[str, str]
) -> ValidationReport:
    """Describe a GX suite result (one batch's, or partitions' merged by `tasks.dask.merge`): restore the
    suite order, one observed value per expectation; `dtypes` are the validated frame's column dtypes."""
    order = {_config_key(c.type, c.kwargs): i for i, c in enumerate(suite.expectation_configurations)}
    results = sorted(
        result["results"],
        key=lambda r: order.get(
            _config_key(r["expectation_config"]["type"], r["expectation_config"]["kwargs"]), len(order)
        ),
    )
    result["results"] = results

    outcomes, failures = [], []
    for item in results:
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        column = kwargs.get("column")
        success = bool(item.get("success"))
        error = _exception_message(item.get("exception_info") or {})
        observed = _observed(config["type"], column, kwargs, item.get("result") or {}, error, dtypes)
        if not success and config.get("description"):
            observed = f"{observed}; {config['description']}"
        outcomes.append(ExpectationOutcome(config["type"], column, success, observed))
        if not success:
            details = {"kwargs": kwargs, "result": item.get("result") or {}}
            if error:
                details["exception"] = error
            failures.append(ExpectationFailure(config["type"], column, observed, details))

    return ValidationReport(
        suite=suite.name,
        success=bool(result.get("success")),
        evaluated=len(results),
        failures=tuple(failures),
        result=result,
        outcomes=tuple(outcomes),
    )


@stage
def validate(
    frame: pd.DataFrame, suite_factory: Callable[[], gx.ExpectationSuite], run_id: str | None = None
) -> ValidationReport:
    """Validate `frame` with the suite `suite_factory()` builds; keep the result; raise if it failed.

    The JSON result goes to the MLflow run `run_id` (when given) as `validation/<suite>.json`, the
    markdown table to a Prefect artifact keyed `validation-<suite>`, both before raising, so a failed
    run still shows what was wrong.
    """
    report = validate_frame(frame, suite_factory())
    return keep_report(report, len(frame), run_id)


def keep_report(report: ValidationReport, rows: int, run_id: str | None) -> ValidationReport:
    """Log the report, keep it (MLflow artifact on `run_id`, Prefect markdown artifact); raise if failed."""
    suite_name = report.suite
    logger = run_logger()
    (logger.info if report.success else logger.error)(report.summary())

    if run_id is not None:
        import mlflow  # lazy: Dask workers import this module to validate partitions and never record

        mlflow.MlflowClient().log_dict(run_id, report.result, f"validation/{suite_name}.json")

    verdict = "passed" if report.success else f"FAILED ({len(report.failures)} failures)"
    create_markdown_artifact(
        markdown=report.to_markdown(),
        key=artifact_key(suite_name),
        description=f"Data validation {suite_name} on {rows:,} rows: {verdict}",
    )
    if not report.success:
        raise DataValidationError(report)
    return report


def artifact_key(suite_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", suite_name.lower()).strip("-")
    return f"validation-{slug}"


# ---------------------------------------------------------------------------------------------- formatting


def _label(expectation: str, column: str | None) -> str:
    return f"{expectation}({column})" if column else expectation


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _config_key(kind: str, kwargs: Mapping[str, Any]) -> str:
    plain = {k: v for k, v in kwargs.items() if k != "batch_id"}
    return kind + json.dumps(plain, sort_keys=True, default=str)


def _exception_message(info: Mapping[str, Any]) -> str | None:
    """GX gives either one flat exception record or a dict of them keyed by metric id."""
    records = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = []
    for record in records:
        if record.get("raised_exception") and record.get("exception_message"):
            message = str(record["exception_message"]).strip()
            if message not in messages:
                messages.append(message)
    return "; ".join(messages) or None


def _value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        text = f"{value:.6g}"
        return text if any(c in text for c in ".einf") else f"{text}.0"  # -5.0 reads as a float
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "None" if value is None else str(value)


def _expected(kwargs: Mapping[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if "value_set" in kwargs:
        return f"expected in {_value(list(kwargs['value_set']))}"
    if "type_list" in kwargs:
        return "expected one of " + ", ".join(map(str, kwargs["type_list"]))
    if low is not None and high is not None:
        return f"expected between {_value(low)} and {_value(high)}"
    if low is not None:
        return f"expected >= {_value(low)}"
    if high is not None:
        return f"expected <= {_value(high)}"
    return ""


def _examples(values: Iterable[Any]) -> str:
    distinct: list[str] = []
    for value in values:
        text = _value(value)
        if text not in distinct:
            distinct.append(text)
        if len(distinct) == EXAMPLES_SHOWN:
            break
    return "[" + ", ".join(distinct) + "]"


def _observed(
    kind: str,
    column: str | None,
    kwargs: Mapping[str, Any],
    result: Mapping[str, Any],
    error: str | None,
    dtypes: Mapping[str, str],
) -> str:
    expected = _expected(kwargs)
    suffix = f" ({expected})" if expected else ""
    if column is not None and column not in dtypes:
        return f"column {column} missing"
    if error:
        missing = _MISSING_COLUMN.search(error)
        return f"column {missing['column']} missing" if missing else f"error: {error}"
    if kind == "expect_column_to_exist":
        return "column present"
    if kind == "expect_column_values_to_be_in_type_list" and column is not None:
        return f"dtype {dtypes[column]}{suffix}"
    if "unexpected_count" in result:
        count = result["unexpected_count"] or 0
        if count == 0:
            return f"0 unexpected values of {result.get('element_count', 0):,}"
        percent = result.get("unexpected_percent")
        share = f" ({percent:.3g} %)" if isinstance(percent, int | float) else ""
        text = f"{count:,} unexpected value{'' if count == 1 else 's'}{share}"
        if kind != "expect_column_values_to_not_be_null":  # the examples would only be nulls
            text += f", e.g. {_examples(result.get('partial_unexpected_list') or [])}"
        return text + suffix
    if "observed_value" in result:
        return f"observed {_value(result['observed_value'])}{suffix}"
    return "no observed value"
