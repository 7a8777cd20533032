"""Score: a registered model on a table of raw records, with the use case's own checks and features.

One feature path: the input is validated with the use case's raw suite (or its `score_suite`, when the raw
suite also demands what only training needs), turned into features by the same
`build_features` training used (with the parameters the model was trained with, read from its training run),
validated with the feature suite, and scored by the model pinned to one registry version for the whole input.

Inputs larger than memory are read in chunks (Parquet record batches, CSV `chunksize`). Features look back in
time (fraud: 30-day windows behind a 7-day label delay, the spec's `feature_history`), so each chunk is scored
together with that much history from the rows before it, and only the chunk's own rows are written. Rows
that share the chunk's last timestamp wait for the next chunk, so ties are ordered exactly as in one piece.
Chunking needs the input in time order (it checks and says so otherwise); `chunk_rows=None` scores it in
one piece.

With `explain` K > 0 each row also gets its K strongest reason codes (tasks/explain.py): `reason_{i}` (the
use case's sentence), `reason_{i}_feature` and `reason_{i}_contribution` (to the margin), i = 1..K.

The output (id columns, score column, `model_version`, any reason columns) is written to a temporary file
beside the target and renamed into place at the end: a failure at any chunk leaves no output, not a partial
one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect.artifacts import create_markdown_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from champion.loading import ScoringModel, load_scoring_model
from champion.store import run_logger
from tasks.explain import explainable, reason_column_names, reason_columns
from tasks.ingest import READERS, DataReadError, read_table
from tasks.stage import mlflow_stage, stage

DEFAULT_CHUNK_ROWS = 1_000_000
VERSION_COLUMN = "model_version"


class InputOrderError(ValueError):
    """A chunked input is not in time order, so a chunk's history would be incomplete."""


# --------------------------------------------------------------------------------------------- reading


def iter_input(path: str | Path, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """The input table, whole (`chunk_rows` None or 0) or in chunks of about `chunk_rows` rows."""
    path = Path(path)
    if not chunk_rows:
        yield read_table(path)
        return
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataReadError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .csv")
    if not path.is_file():
        raise DataReadError(f"{path}: no such file")
    try:
        if suffix == ".csv":
            batches = pd.read_csv(path, chunksize=chunk_rows)
        else:
            parquet = pq.ParquetFile(path)
            batches = (b.to_pandas() for b in parquet.iter_batches(batch_size=chunk_rows))
        seen = 0
        for batch in batches:
            seen += len(batch)
            if len(batch):
                yield batch
    except Exception as exc:  # any parser failure is an unreadable input
        raise DataReadError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from exc
    if not seen:
        raise DataReadError(f"{path}: the table has no rows")


def count_rows(path: str | Path) -> int | None:
    """Rows in the input when cheap to know (Parquet metadata), else None."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq") and path.is_file():
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:
            return None
    return None


def _with_last(items):
    """(item, is_last) pairs: the reader runs one chunk ahead so the last chunk is known."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


# --------------------------------------------------------------------------------------------- writing


class AtomicTableWriter:
    """Appends frames to `<dir>/.<name>.<pid>.tmp`, renamed to `path` on `commit()`, deleted on `abort()`."""

    SUFFIXES = (".parquet", ".pq", ".csv")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() not in self.SUFFIXES:
            raise DataReadError(f"{self.path}: output must end in .parquet or .csv")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.csv = self.path.suffix.lower() == ".csv"
        self._writer = None
        self._started = False
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.csv:
            frame.to_csv(self.tmp, mode="a" if self._started else "w", header=not self._started, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        self._started = True
        self.rows += len(frame)

    def commit(self, empty: pd.DataFrame) -> None:
        if not self._started:
            self.write(empty)
        if self._writer is not None:
            self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoringResult:
    output: str
    registered_model: str
    model_version: str
    rows_in: int
    rows_out: int
    chunks: int
    seconds: dict[str, float]  # read, validate, features, model, [explain,] write, total

    @property
    def rows_per_second(self) -> float:
        return self.rows_out / max(self.seconds["total"], 1e-9)

    @property
    def model_rows_per_second(self) -> float:
        return self.rows_out / max(self.seconds["model"], 1e-9)


def parse_times(chunk: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """As the loaders do: a time column read as text becomes datetime (unparseable -> NaT, which the raw
    suite reports)."""
    if time_column in chunk.columns and not pd.api.types.is_datetime64_any_dtype(chunk[time_column]):
        chunk[time_column] = pd.to_datetime(chunk[time_column], errors="coerce")
    return chunk


def check_frame(frame: pd.DataFrame, suite_factory, what: str, log) -> float:
    # lazy: GX (seconds to import) only once a file is checked, so a missing model or file fails fast
    from tasks.validate import DataValidationError, artifact_key, validate_frame

    started = time.perf_counter()
    report = validate_frame(frame, suite_factory())
    if not report.success:
        log.error(report.summary())
        create_markdown_artifact(
            markdown=report.to_markdown(),
            key=artifact_key(report.suite),
            description=f"Batch scoring input check ({what}) on {len(frame):,} rows: FAILED",
        )
        raise DataValidationError(report)
    return time.perf_counter() - started


def _progress(total: int | None, enabled: bool):
    if not enabled:
        return None
    progress = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        transient=False,
    )
    progress.start()
    progress.add_task("score", total=total)
    return progress


class _ChunkedScoring:
    """One input scored chunk by chunk: each chunk with the history its features need before it, the rows
    sharing its last timestamp held for the next chunk, the time spent per step."""

    def __init__(self, spec, model: ScoringModel, writer: AtomicTableWriter, log, explain: int = 0):
        self.spec, self.model, self.writer, self.log = spec, model, writer, log
        self.explain = explain
        self.raw_suite, self.feature_suite = spec.scoring_suites
        steps = ("read", "validate", "features", "model", *(("explain",) if explain else ()), "write")
        self.seconds = dict.fromkeys(steps, 0.0)
        self.context = self.pending = None  # already-scored rows kept as history; rows waiting for the next
        self.emitted_upto = None  # every row before this time has been written
        self.rows_in = self.chunks = 0

    def take(self, chunk: pd.DataFrame, last: bool, input_path: str) -> bool:
        """Validate, featurize and score one chunk; False when its rows only wait for the next one."""
        spec, time_column, seconds = self.spec, self.spec.time_column, self.seconds
        self.chunks += 1
        self.rows_in += len(chunk)
        chunk = parse_times(chunk, time_column)
        new = chunk if self.pending is None else pd.concat([self.pending, chunk], ignore_index=True)
        frame = new if self.context is None else pd.concat([self.context, new], ignore_index=True)
        view = spec.raw_check_view(frame) if getattr(spec, "raw_check_view", None) else frame
        seconds["validate"] += check_frame(view, self.raw_suite, f"raw, chunk {self.chunks}", self.log)
        upto = self.emitted_upto
        if upto is not None and chunk[time_column].min() < upto:
            raise InputOrderError(
                f"{input_path}: chunk {self.chunks} has rows at {chunk[time_column].min()}, before rows at "
                f"{upto} already scored: chunked scoring needs the input sorted by {time_column} "
                "(sort it, or score it in one piece with --chunk-rows 0)"
            )
        cutoff = None if last else new[time_column].max()
        if cutoff is not None and not (new[time_column] < cutoff).any():
            self.pending = new  # every new row shares one timestamp: wait for the next chunk
            return False
        t0 = time.perf_counter()
        features = spec.build_features(frame)
        seconds["features"] += time.perf_counter() - t0
        what = f"features, chunk {self.chunks}"
        seconds["validate"] += check_frame(features, self.feature_suite, what, self.log)
        self._write(features, self.emitted_upto, cutoff)
        if cutoff is not None:
            self.emitted_upto = cutoff
            times = frame[time_column]
            self.pending = frame.loc[times >= cutoff]
            history = pd.Timedelta(spec.feature_history)
            self.context = frame.loc[(times >= cutoff - history) & (times < cutoff)]
        return True

    def _write(self, features: pd.DataFrame, lower, upper) -> None:
        """Score and write the rows of `features` in [lower, upper) (None: unbounded)."""
        spec, model = self.spec, self.model
        times = features[spec.time_column]
        mask = np.ones(len(features), dtype=bool)
        if lower is not None:
            mask &= (times >= lower).to_numpy()
        if upper is not None:
            mask &= (times < upper).to_numpy()
        own = features.loc[mask]
        missing = [c for c in spec.id_columns if c not in own.columns]
        if missing:
            raise ValueError(f"{spec.name}: build_features output lacks the id columns {missing}")
        t0 = time.perf_counter()
        scores = model.predict(own)
        t1 = time.perf_counter()
        out = own[list(spec.id_columns)].reset_index(drop=True)
        out[spec.score_column] = scores
        out[VERSION_COLUMN] = model.version
        if self.explain:
            matrix = own[list(model.columns)].to_numpy(np.float32)
            for column, values in reason_columns(model, matrix, self.explain, spec.reason).items():
                out[column] = values
        t2 = time.perf_counter()
        self.writer.write(out)
        self.seconds["model"] += t1 - t0
        if self.explain:
            self.seconds["explain"] += t2 - t1
        self.seconds["write"] += time.perf_counter() - t2


@stage
def score_file(
    spec,
    model: ScoringModel,
    input_path: str,
    output_path: str,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
    explain: int = 0,
) -> ScoringResult:
    """Validate, featurize and score `input_path` chunk by chunk into `output_path` (atomically); with
    `explain` K > 0, each row's K strongest reason codes beside its score."""
    log = run_logger()
    started = time.perf_counter()
    if chunk_rows and spec.feature_history is None:
        log.info("use case %s declares no feature_history: scoring the input in one piece", spec.name)
        chunk_rows = None
    if explain:
        explainable(model)  # ExplainUnsupported before anything is read or written
    outputs = [*spec.id_columns, spec.score_column, VERSION_COLUMN, *reason_column_names(explain)]
    run = _ChunkedScoring(spec, model, AtomicTableWriter(output_path), log, explain)
    writer, seconds = run.writer, run.seconds
    progress = _progress(count_rows(input_path), show_progress and sys.stderr.isatty())
    try:
        t_read = time.perf_counter()
        for chunk, last in _with_last(iter_input(input_path, chunk_rows)):
            seconds["read"] += time.perf_counter() - t_read
            if run.take(chunk, last, input_path):
                elapsed = time.perf_counter() - started
                log.info(
                    "chunk %d: %s rows read, %s scored so far (%.0f rows/s)",
                    run.chunks,
                    f"{run.rows_in:,}",
                    f"{writer.rows:,}",
                    writer.rows / max(elapsed, 1e-9),
                )
                if progress is not None:
                    progress.update(progress.task_ids[0], completed=writer.rows)
            t_read = time.perf_counter()
        t0 = time.perf_counter()
        writer.commit(pd.DataFrame({c: [] for c in outputs}))
        seconds["write"] += time.perf_counter() - t0
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress is not None:
            progress.stop()
    seconds["total"] = time.perf_counter() - started
    result = ScoringResult(
        str(Path(output_path)), model.name, model.version, run.rows_in, writer.rows, run.chunks, seconds
    )
    log.info(
        "scored %s of %s rows with %s v%s into %s in %.1f s (%.0f rows/s end to end; model step %.0f rows/s)",
        f"{result.rows_out:,}",
        f"{run.rows_in:,}",
        model.name,
        model.version,
        output_path,
        seconds["total"],
        result.rows_per_second,
        result.model_rows_per_second,
    )
    return result


@mlflow_stage
def load_model(name: str, version: str | None, alias: str | None) -> ScoringModel:
    model = load_scoring_model(name, version, alias)
    run_logger().info(
        "scoring with %s v%s (%s; %s flavor)",
        name,
        model.version,
        f"@{alias or 'champion'}" if version is None else "pinned version",
        model.flavor,
    )
    return model
