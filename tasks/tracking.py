"""Where MLflow records go, how stages write to the flow's run, and where their log lines go.

Embedded default: one project-local folder (`MLOPS_HOME`, default `./.mlops`) holding a SQLite tracking and
registry store (`mlflow.db`) and the artifacts (`artifacts/`). `MLFLOW_TRACKING_URI`, when set, wins (e.g. an
MLflow server on Postgres); the registry follows the tracking URI unless `MLFLOW_REGISTRY_URI` is set.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

DEFAULT_HOME = ".mlops"


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run (its lines show in the UI), else `mlops`'s own.

    Stages and the champion protocol log through this, so they also run outside Prefect (unit tests, the
    lifecycle commands) and never import Prefect just to log.
    """
    if "prefect" in sys.modules:
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() or FlowRunContext.get():
            from prefect import get_run_logger

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
    import mlflow

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
    return (
        f"Gated training of the {name} use case: one run per training flow run, with its parameters, "
        "dataset, metrics, plots, validation results, gate report and decision (tag `decision`)."
    )


def experiment_id(name: str) -> str:
    """The experiment for a use case (marked as model development, with a description); embedded stores keep
    its artifacts under MLOPS_HOME."""
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


@contextmanager
def resumed(run_id: str):
    """Make `run_id` the active run for fluent MLflow calls (log_model, log_input) inside a stage.

    Stages may run in worker threads where the flow's run is not active; resuming does not end it.
    """
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield active
        return
    run = mlflow.start_run(run_id=run_id)
    try:
        yield run
    finally:
        # Leave the run RUNNING: the flow sets its final status.
        mlflow.end_run(status="RUNNING")


def content_digest(frame) -> str:
    """A digest of every value, column name and dtype of a frame (vectorised: ~0.1 s per million rows)."""
    import hashlib

    import pandas as pd

    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    header = "|".join(f"{c}:{t}" for c, t in frame.dtypes.items()).encode()
    return hashlib.sha256(header + hashed.tobytes()).hexdigest()[:16]


def user() -> str:
    """Who a run or a registry change is recorded as: MLOPS_USER, else the login name."""
    import getpass

    try:
        return os.environ.get("MLOPS_USER") or getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def code_version() -> str:
    """The git commit of the code that trained (with `-dirty` when the tree has local changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"mlops-factory=={version('mlops-factory')}"


def record_input(
    run_id: str, name: str, frame, source: str, digest: str, windows: dict, rows: dict, **extra
) -> None:
    """The input as an MLflow dataset (schema from `frame`, its source, `digest` of every row), each
    window's bounds and row count as `window.<name>` params, `extra` as params, and the digest as a tag.

    The windows are recorded as bounds and row counts rather than as three more datasets: they are
    functions of the input and the split parameters, both already recorded."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Param

    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
    with resumed(run_id):
        mlflow.log_input(dataset, context="raw")
    params = [Param(f"window.{w}", f"{lo} .. {hi} ({rows[w]} rows)") for w, (lo, hi) in windows.items()]
    params += [Param(k, str(v)) for k, v in extra.items()]
    client = MlflowClient()
    client.log_batch(run_id, params=params)
    client.set_tag(run_id, "data_digest", digest)
