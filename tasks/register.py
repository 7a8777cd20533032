"""Register: log the candidate as an MLflow LoggedModel and, when the gates allow, make it a registry version.

The model is stored in XGBoost's native UBJ format (never pickle) with a signature and an input example.
A candidate whose booster output is not yet the prediction (a target transform, a linear base margin) is
logged as a pyfunc "models from code" (`tasks/pyfunc_model.py`) with the UBJ booster and a JSON config as
artifacts, so the registered model applies both itself and still nothing is pickled.
A version is created in one registry call carrying all its lineage tags and its model card, so no consumer
ever sees a version without them; it gets no alias here (promotion is a separate, gated step).
Re-registering the same data, code and parameters returns the existing version instead of a duplicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from champion.store import run_logger
from tasks.stage import mlflow_stage
from tasks.tracking import resumed
from usecases.vocabulary import FINGERPRINT_TAG


@dataclass(frozen=True)
class LoggedCandidate:
    model_id: str
    model_uri: str


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    deduplicated: bool  # an identical earlier registration was reused


def fingerprint(**parts) -> str:
    """A stable hash of what determines a model: data digest, code version, parameters."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def _requirements() -> list[str]:
    """What loading the model needs, pinned to what trained it. Stated rather than inferred: MLflow's
    inference loads the model in a subprocess to watch its imports, seconds per registration."""
    import xgboost as xgb  # lazy: loaded by training already; report and compaction use only the types

    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost=={xgb.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]


def _log_transformed(candidate, example: pd.DataFrame, signature) -> mlflow.models.model.ModelInfo:
    """Booster (UBJ) + config (JSON) as artifacts of the pyfunc defined in `tasks/pyfunc_model.py`."""

    with tempfile.TemporaryDirectory() as tmp:
        booster, config = Path(tmp) / "model.ubj", Path(tmp) / "config.json"
        candidate.booster.save_model(booster)
        config.write_text(json.dumps(candidate.config, indent=2))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"booster": str(booster), "config": str(config)},
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            params={k: str(v) for k, v in candidate.params.items()},
        )


@mlflow_stage
def log_candidate(candidate, example: pd.DataFrame, run_id: str) -> LoggedCandidate:
    example = example[list(getattr(candidate, "input_columns", candidate.features))]
    signature = infer_signature(example, candidate.predict(example))
    with resumed(run_id):
        if getattr(candidate, "transformed", False):
            info = _log_transformed(candidate, example, signature)
            return LoggedCandidate(info.model_id, info.model_uri)
        info = mlflow.xgboost.log_model(
            candidate.booster,
            name="model",
            signature=signature,
            input_example=example,
            model_format="ubj",
            pip_requirements=_requirements(),
            params={k: str(v) for k, v in candidate.params.items()},
        )
    return LoggedCandidate(info.model_id, info.model_uri)


def find_registered(client: MlflowClient, name: str, fingerprint_value: str):
    versions = client.search_model_versions(
        f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint_value}'"
    )
    return min(versions, key=lambda v: int(v.version)) if versions else None


# A database registry holds at most 5,000 characters of a version's description (MLflow's schema).
MAX_DESCRIPTION = 5_000


def fitted_card(client: MlflowClient, card: str, run_id: str) -> str:
    """The card as the version's description; one too long for the registry goes whole to the run as
    `model_card.md` and the description keeps its beginning and says where the rest is."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    client.log_text(run_id, card, "model_card.md")
    note = f"\n\n… longer than the registry holds: the whole card is `model_card.md` of run {run_id}.\n"
    return card[: MAX_DESCRIPTION - len(note)] + note


@mlflow_stage
def register(
    logged: LoggedCandidate,
    registered_model: str,
    model_description: str,
    version_card: str,
    tags: Mapping[str, str],
    run_id: str,
) -> Registration:
    log = run_logger()
    client = MlflowClient()
    try:
        client.get_registered_model(registered_model)
    except mlflow.exceptions.MlflowException:
        # Another run may create it between our lookup and create: that is fine.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.create_registered_model(registered_model, description=model_description)
    existing = find_registered(client, registered_model, tags[FINGERPRINT_TAG])
    if existing is not None:
        log.info(
            "identical data, code and parameters already registered as %s v%s: not creating another version",
            registered_model,
            existing.version,
        )
        return Registration(registered_model, str(existing.version), deduplicated=True)
    version = client.create_model_version(
        registered_model,
        source=logged.model_uri,
        run_id=run_id,
        tags=dict(tags),
        description=fitted_card(client, version_card, run_id),
        model_id=logged.model_id,
    )
    log.info("registered %s v%s", registered_model, version.version)
    return Registration(registered_model, str(version.version), deduplicated=False)
