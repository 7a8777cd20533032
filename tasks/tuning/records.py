"""The tuning run in MLflow: one parent run per tuning run, one nested child run per trial.

A child run holds the trial's parameters, its value (the primary metric, mean over folds, and per fold), its
state (complete, pruned, failed), why it was pruned, and its duration. The parent holds the study's name and
storage, the folds, the spec defaults' value on the same folds, the best trial's parameters and value, and
the optimisation history and parameter importances as plots (Optuna's matplotlib ones).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from champion import store
from usecases.vocabulary import TUNING_STATE_TAG, TUNING_STUDY_TAG, TUNING_TRIAL_TAG

if TYPE_CHECKING:
    import optuna

    from tasks.tuning.study import TrialResult


def start_parent(experiment_id: str, use_case: str, study: str, tags: dict[str, str]) -> str:
    run = MlflowClient().create_run(
        experiment_id,
        run_name=f"{use_case}-tuning-{study}",
        tags={
            "use_case": use_case,
            TUNING_STUDY_TAG: study,
            "mlflow.source.type": "JOB",
            "mlflow.source.name": "flows/tuning.py",
            "mlflow.user": store.user(),
            **tags,
        },
    )
    return run.info.run_id


def finish_parent(run_id: str, training, status: str) -> None:
    """End the tuning run; with the winner's gated run (`training`), name it and its decision."""
    client = MlflowClient()
    if training is not None:
        client.set_tag(run_id, "tuning.training_run", training.run_id)
        client.set_tag(run_id, "tuning.decision", training.decision.status)
    client.set_terminated(run_id, status)


def log_trial(parent_run_id: str, experiment_id: str, study: str, metric: str, result: TrialResult) -> str:
    """The trial as a child run of the tuning run (MLflow nests it under the parent)."""
    client = MlflowClient()
    run = client.create_run(
        experiment_id,
        start_time=int(result.started * 1000),
        run_name=f"trial-{result.number}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            TUNING_STUDY_TAG: study,
            TUNING_TRIAL_TAG: str(result.number),
        },
    )
    now = int(time.time() * 1000)
    metrics = [Metric("duration_seconds", result.seconds, now, 0)]
    if result.value is not None:
        metrics.append(Metric(metric, float(result.value), now, 0))
    metrics += [Metric(f"{metric}_fold_{k}", float(v), now, 0) for k, v in enumerate(result.fold_values)]
    metrics += [Metric(f"rounds_fold_{k}", float(r), now, 0) for k, r in enumerate(result.fold_rounds)]
    tags = [RunTag(TUNING_STATE_TAG, result.state.lower())]
    if result.note:
        tags.append(RunTag("tuning.note", result.note[:5000]))
    params = [Param(k, str(v)) for k, v in result.params.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
    client.set_terminated(run.info.run_id, "FAILED" if result.state == "FAIL" else "FINISHED")
    return run.info.run_id


def log_summary(run_id: str, study: optuna.Study, metric: str, summary: dict) -> None:
    """The parent's record: best parameters and value, the defaults' value, the counts, and the plots."""
    client = MlflowClient()
    now = int(time.time() * 1000)
    numbers = {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and v is not None}
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in numbers.items()],
        params=[Param(f"best.{k}", str(v)) for k, v in (summary.get("best_params") or {}).items()],
    )
    client.log_dict(run_id, summary, "tuning_summary.json")
    for name, figure in _plots(study, metric).items():
        client.log_figure(run_id, figure, f"plots/{name}.png")
        figure.clear()


def _plots(study: optuna.Study, metric: str) -> dict:
    """Optimisation history and parameter importances (matplotlib, no plotly needed); importances need two
    complete trials."""
    import matplotlib  # why: plotting loads only when a study is summarised

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    figures = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if complete:
        axes = optuna_plots.plot_optimization_history(study, target_name=metric)
        figures["optimization_history"] = axes.figure
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        try:
            axes = optuna_plots.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=metric
            )
            figures["param_importances"] = axes.figure
        except (RuntimeError, ValueError) as exc:  # e.g. every parameter constant: nothing to rank
            store.run_logger().info("no parameter importances: %s", exc)
    for figure in figures.values():
        figure.set_size_inches(9, 5)
        figure.tight_layout()
    plt.close("all")
    return figures
