"""Where MLflow records go and where log lines go: the store every stage and the champion protocol share.

Embedded default: one project-local folder (`MLOPS_HOME`, default `./.mlops`) holding a SQLite tracking and
registry store (`mlflow.db`) and the artifacts (`artifacts/`). `MLFLOW_TRACKING_URI`, when set, wins (e.g. an
MLflow server on Postgres); the registry follows the tracking URI unless `MLFLOW_REGISTRY_URI` is set.
It sits below the stages (`tasks/`) so the champion protocol can use it without importing a stage.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
import warnings
from pathlib import Path

DEFAULT_HOME = ".mlops"


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run (its lines show in the UI), else `mlops`'s own.

    Stages and the champion protocol log through this, so they also run outside Prefect (unit tests, the
    lifecycle commands) and never import Prefect just to log.
    """
    if "prefect" in sys.modules:
        # lazy: Prefect only when this process already loaded it (inside a run); never imported just to log
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() or FlowRunContext.get():
            from prefect import get_run_logger  # lazy: as above

            return get_run_logger()
    return logging.getLogger("mlops")


def mlops_home() -> Path:
    return Path(os.environ.get("MLOPS_HOME", DEFAULT_HOME)).resolve()


_DERIVED: set[str] = set()  # store URIs this process derived from MLOPS_HOME


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when the user set it, else the SQLite store under MLOPS_HOME.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into the environment; a value this process put
    there itself is not taken as the user's choice, so a later MLOPS_HOME (tests, benchmarks) still counts.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri not in _DERIVED:
        return uri
    derived = f"sqlite:///{mlops_home() / 'mlflow.db'}"
    _DERIVED.add(derived)
    return derived


def configure() -> str:
    """Point MLflow at the configured store, creating the local folder when embedded."""
    # Known-noisy MLflow hints that say nothing about this pipeline: a dataset source registered twice
    # under one name, and the generic "integer columns cannot hold missing values" hint (features are
    # validated non-null before a model sees them).
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
    import mlflow  # lazy: mlops_home() callers (the Prefect server commands) do not load MLflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        mlops_home().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


# MLflow's UI opens an experiment as GenAI (traces, token usage) unless told it holds model development.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_description(name: str) -> str:
    if name.endswith("-monitoring"):
        use_case = name.removesuffix("-monitoring")
        return (
            f"Monitoring of the {use_case} models: one run per `mlops monitor` run, tagged with the model "
            "version and verdict; drift per feature, estimated and realised metrics, the HTML report."
        )
    if name.endswith("-challenger"):
        use_case = name.removesuffix("-challenger")
        return (
            f"Champion against challenger for the {use_case} models: one run per comparison (`mlops "
            f"compare`, the {use_case}-challenger deployment), tagged with both versions and the decision; "
            "both models' metrics on the same labelled live pairs, the paired bootstrap and McNemar, the "
            "HTML report."
        )
    return (
        f"Gated training of the {name} use case: one run per training flow run, with its parameters, "
        "dataset, metrics, plots, validation results, gate report and decision (tag `decision`)."
    )


def experiment_id(name: str) -> str:
    """The experiment for a use case (marked as model development, with a description); embedded stores keep
    its artifacts under MLOPS_HOME."""
    # lazy: MLflow only when the store is used, as in configure()
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if "mlflow.experimentKind" not in found.tags:  # created before the kind was set
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:///"):
        location = (mlops_home() / "artifacts").as_uri()
    tags = {**EXPERIMENT_KIND, "mlflow.note.content": experiment_description(name)}
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except mlflow.exceptions.MlflowException:
        # Created by a concurrent run between our lookup and create.
        return client.get_experiment_by_name(name).experiment_id


def user() -> str:
    """Who a run or a registry change is recorded as: MLOPS_USER, else the login name."""
    try:
        return os.environ.get("MLOPS_USER") or getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
