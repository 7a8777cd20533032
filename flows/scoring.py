"""Batch scoring: a use case's registered model (`@champion` unless told otherwise) on a file of raw records.

    resolve + load the model version → [per chunk: validate raw → features → validate features → score]
    → [the top-K reason codes (`explain`)] → write id columns, the score and `model_version` (atomically)
    → Prefect artifact

Features come from the use case's own `build_features`, built with the parameters the model was trained with
(read from the version's training run), so training and scoring share one feature path. See
`tasks/score.py` for chunking and the output.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from champion import store
from champion.loading import spec_for
from tasks.dask.cluster import DaskSettings, ExecutorError, dask_runner, resolve_executor, scratch_folder
from tasks.score import DEFAULT_CHUNK_ROWS, ScoringResult, load_model, score_file
from usecases import default_registered_model


@flow(name="batch-scoring", validate_parameters=False, log_prints=True)
def batch_scoring(
    use_case: str,
    input: str,
    output: str,
    version: str | None = None,
    alias: str | None = None,
    registered_model: str | None = None,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
    executor: str | None = None,
    explain: int = 0,
) -> ScoringResult:
    """Score `input` (Parquet or CSV) with `registered_model` (default: the use case's) at `version`, or at
    `alias` (default `champion`), into `output`; with `explain` K > 0, each row's K strongest reasons."""
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    if explain < 0:
        raise ValueError(f"explain must be 0 (off) or a number of reasons per row, got {explain}")
    kind = resolve_executor(executor)
    if kind == "dask" and explain:
        raise ExecutorError(
            "reason codes (--explain) are not available on the dask executor: score with --executor local"
        )
    store.configure()
    name = registered_model or default_registered_model(use_case)
    model = load_model(name, version, alias)
    spec = spec_for(use_case, model)
    if kind == "dask":  # workers read, check, featurize, score (tasks/dask/score.py)
        from tasks.dask.score import score_distributed  # lazy: dask.dataframe only for the Dask executor

        settings = DaskSettings.from_env()
        with dask_runner(settings) as runner, scratch_folder(settings) as scratch:
            result = score_distributed(spec, model, input, output, runner, scratch, settings)
    else:
        result = score_file(spec, model, input, output, chunk_rows, show_progress, explain)
    s = result.seconds
    create_markdown_artifact(
        key=f"scoring-{use_case}",
        description=f"{name} v{result.model_version}: {result.rows_out:,} rows scored",
        markdown=(
            f"# Batch scoring: {name} v{result.model_version}\n\n"
            f"`{input}` → `{output}`: {result.rows_in:,} rows read, {result.rows_out:,} scored in "
            f"{result.chunks} chunk(s)"
            + (f", each row with its {explain} strongest reason codes" if explain else "")
            + ".\n\n| step | seconds |\n|---|---|\n"
            + "\n".join(f"| {k} | {v:.2f} |" for k, v in s.items())
            + f"\n\n{result.rows_per_second:,.0f} rows/s end to end; model step "
            f"{result.model_rows_per_second:,.0f} rows/s.\n"
        ),
    )
    return result
