"""Batch scoring: a use case's registered model (`@champion` unless told otherwise) on a file of raw records.

    resolve + load the model version → [per chunk: validate raw → features → validate features → score]
    → write id columns, the score and `model_version` (atomically) → Prefect artifact

Features come from the use case's own `build_features`, built with the parameters the model was trained with
(read from the version's training run), so training and scoring share one feature path. See
`tasks/score.py` for chunking and the output.
"""

from __future__ import annotations

from mlflow import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from champion.loading import ScoringModel, load_scoring_model
from tasks import tracking
from tasks.score import DEFAULT_CHUNK_ROWS, ScoringResult, score_file
from tasks.stage import mlflow_stage
from usecases import default_registered_model, spec_module


def training_params(module, run_id: str | None):
    """The use case's `Params` as the version's training run recorded them (`param.<name>`); defaults for
    anything not recorded."""
    if not run_id:
        return module.Params()
    try:
        recorded = MlflowClient().get_run(run_id).data.params
    except Exception:  # run deleted or unreachable: the use case's defaults
        return module.Params()
    values = {}
    for name in module.Params.model_fields:
        value = recorded.get(f"param.{name}")
        if value is not None and value != "None":
            values[name] = value
    try:
        return module.Params.model_validate(values)
    except Exception:
        return module.Params()


def spec_for(use_case: str, model: ScoringModel):
    """The use case's spec with the parameters `model` was trained with."""
    module = spec_module(use_case)
    params = training_params(module, model.run_id)
    return module.build_spec(params)


@mlflow_stage
def load_model(name: str, version: str | None, alias: str | None) -> ScoringModel:
    model = load_scoring_model(name, version, alias)
    tracking.run_logger().info(
        "scoring with %s v%s (%s; %s flavor)",
        name,
        model.version,
        f"@{alias or 'champion'}" if version is None else "pinned version",
        model.flavor,
    )
    return model


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
) -> ScoringResult:
    """Score `input` (Parquet or CSV) with `registered_model` (default: the use case's) at `version`, or at
    `alias` (default `champion`), into `output`."""
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    tracking.configure()
    name = registered_model or default_registered_model(use_case)
    model = load_model(name, version, alias)
    spec = spec_for(use_case, model)
    result = score_file(spec, model, input, output, chunk_rows, show_progress)
    s = result.seconds
    create_markdown_artifact(
        key=f"scoring-{use_case}",
        description=f"{name} v{result.model_version}: {result.rows_out:,} rows scored",
        markdown=(
            f"# Batch scoring: {name} v{result.model_version}\n\n"
            f"`{input}` → `{output}`: {result.rows_in:,} rows read, {result.rows_out:,} scored in "
            f"{result.chunks} chunk(s).\n\n| step | seconds |\n|---|---|\n"
            + "\n".join(f"| {k} | {v:.2f} |" for k, v in s.items())
            + f"\n\n{result.rows_per_second:,.0f} rows/s end to end; model step "
            f"{result.model_rows_per_second:,.0f} rows/s.\n"
        ),
    )
    return result
