"""Profile: the reference a version is monitored against, recorded with its training run.

At training (`record_profile`), after evaluation: per feature the training window's distribution, the
model's scores on validation and test, the calibration map (binary) or error model (regression) learned on
validation, the test metrics and the context the metrics were computed with (e.g. the decision threshold).
It is the MLflow artifact `monitoring/profile.json` of the version's run (statistics in `tasks/monitor.py`).

At monitoring (`reference_profile`), for a version registered before profiles existed, the profile is rebuilt
from the run's recorded data source with the same feature path and windows, and said so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks import monitor
from tasks.stage import mlflow_stage
from tasks.tracking import run_logger

if TYPE_CHECKING:
    from champion.loading import ScoringModel
    from tasks.evaluate import Evaluation
    from tasks.split import Splits
    from usecases.spec import TrainingParams, UseCaseSpec

PROFILE_PATH = "monitoring/profile.json"


class ProfileUnavailable(LookupError):
    """No profile recorded for the version and none could be rebuilt."""


def build(spec: UseCaseSpec, splits: Splits, evaluation: Evaluation) -> dict:
    scored = evaluation.candidate
    profile = monitor.build_profile(
        splits.train,
        spec.features,
        spec.problem,
        spec.target,
        splits.validation,
        scored.validation_predictions,
        scored.test_predictions,
        scored.metrics,
        spec.metrics.primary,
        spec.metrics.greater_is_better,
    )
    profile["metric_context"] = {k: float(v) for k, v in scored.context.items()}
    profile["windows"] = {k: list(v) for k, v in splits.windows.items()}
    return profile


@mlflow_stage
def record_profile(spec: UseCaseSpec, splits: Splits, evaluation: Evaluation, run_id: str) -> dict:
    """Build the reference profile and log it to the training run."""
    from mlflow import MlflowClient

    profile = build(spec, splits, evaluation)
    MlflowClient().log_text(run_id, monitor.profile_to_json(profile), PROFILE_PATH)
    return profile


@mlflow_stage
def reference_profile(model: ScoringModel, spec: UseCaseSpec, params: TrainingParams) -> tuple[dict, str]:
    """The version's profile and where it came from: "recorded", or "rebuilt" from the run's data source.

    `spec` and `params` are the ones the version was trained with (read from its run), so a rebuild cuts the
    same windows from the same data (a file, or the seeded simulator) and scores them with the version."""
    import mlflow

    if model.run_id:
        try:
            text = mlflow.artifacts.load_text(f"runs:/{model.run_id}/{PROFILE_PATH}")
            return monitor.profile_from_json(text), "recorded"
        except Exception as exc:  # a version from before profiles, or an unreadable artifact
            run_logger().warning(
                "%s v%s has no monitoring profile (%s): rebuilding it from its training data",
                model.name,
                model.version,
                type(exc).__name__,
            )
    try:
        return _rebuild(model, spec, params), "rebuilt"
    except Exception as exc:
        raise ProfileUnavailable(
            f"{model.name} v{model.version} has no monitoring profile, and rebuilding it from its training "
            f"data ({getattr(params, 'data', None) or 'the embedded default'}) failed: {exc}"
        ) from exc


def _rebuild(model: ScoringModel, spec: UseCaseSpec, params: TrainingParams) -> dict:
    from tasks.evaluate import Evaluation, score_model
    from tasks.split import cut_again

    splits = cut_again(spec, spec.load(params))
    scored = score_model(model.predict, splits, spec.metrics)
    return build(spec, splits, Evaluation(scored, {}))
