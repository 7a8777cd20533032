"""Loading a registry version for scoring and serving: pinned to one version, checked against its signature.

`mlops score`, `mlops monitor`, the model server and the champion re-scoring in training all load models
through `load_scoring_model`, so every consumer resolves an alias the same way (once, to a version number)
and predicts from the signature's input columns in the signature's order. XGBoost-flavoured versions predict
in place on a float matrix (no DMatrix, no pandas round trip); pyfunc versions (a target transform or base
margin) through MLflow's pyfunc wrapper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import Model
from pydantic import ValidationError

from usecases import spec_module
from usecases.vocabulary import CHAMPION, PARAM_PREFIX, recorded_params


class ModelNotFoundError(LookupError):
    """The requested registered model, version or alias does not exist."""


@dataclass
class ScoringModel:
    """One registry version, loaded once; predicts from its signature's input columns."""

    name: str
    version: str
    run_id: str | None
    columns: tuple[str, ...]
    column_types: dict[str, str]
    required: frozenset[str]
    flavor: str  # "xgboost" (native booster, in-place prediction) or "pyfunc"
    source: str
    _model: object = field(repr=False, default=None)

    @property
    def booster(self):
        """The XGBoost Booster of an xgboost-flavoured version (reason codes read its contributions); None for
        a pyfunc version, whose booster sits behind MLflow's wrapper."""
        return self._model if self.flavor == "xgboost" else None

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for a float matrix whose columns are `columns`, in that order (already checked)."""
        if self.flavor == "xgboost":
            return self._model.inplace_predict(matrix)
        frame = pd.DataFrame(np.asarray(matrix, dtype=np.float64), columns=list(self.columns))
        for column, kind in self.column_types.items():  # the signature's integer and boolean columns as such
            if kind in ("long", "integer") and column in frame and frame[column].notna().all():
                frame[column] = frame[column].astype("int64" if kind == "long" else "int32")
            elif kind == "boolean" and column in frame and frame[column].notna().all():
                frame[column] = frame[column] != 0  # MLflow will not cast float to bool itself
        return self.predict(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"model {self.name} v{self.version} needs columns the input lacks: {missing}")
        if self.flavor == "xgboost":
            return self._model.inplace_predict(frame[list(self.columns)].to_numpy(np.float32))
        return np.asarray(self._model.predict(frame[list(self.columns)])).ravel()


def resolve_version(name: str, version: str | int | None = None, alias: str | None = None):
    """The registry version to use: `version`, else the version `alias` (default `champion`) points to."""
    client = MlflowClient()
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, alias or CHAMPION)
    except mlflow.exceptions.MlflowException as exc:
        what = f"version {version}" if version is not None else f"alias @{alias or 'champion'}"
        raise ModelNotFoundError(f"registered model {name!r} has no {what}: {exc.message}") from exc


def load_scoring_model(name: str, version: str | int | None = None, alias: str | None = None) -> ScoringModel:
    """Load one registry version (by number, or where `alias` points now), pinned to that version."""
    import xgboost as xgb  # lazy: xgboost only to load a model; importers using the errors or params skip it

    mv = resolve_version(name, version, alias)
    uri = f"models:/{name}/{mv.version}"
    local = Path(mlflow.artifacts.download_artifacts(uri))
    meta = Model.load(str(local))
    schema = meta.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ValueError(f"{uri} has no named input signature: cannot check or order its inputs")
    columns = tuple(schema.input_names())
    types = {c.name: str(c.type).split(".")[-1].lower() for c in schema.inputs}
    required = frozenset(c.name for c in schema.inputs if getattr(c, "required", True))
    model, flavor = None, "pyfunc"
    if "xgboost" in meta.flavors:
        loaded = mlflow.xgboost.load_model(str(local))
        if isinstance(loaded, xgb.Booster):
            loaded.set_param("nthread", os.cpu_count() or 1)
            model, flavor = loaded, "xgboost"
    if model is None:
        model = mlflow.pyfunc.load_model(str(local))
    return ScoringModel(
        name, str(mv.version), mv.run_id, columns, types, required, flavor, mv.source, _model=model
    )


class TrainingParamsUnreadable(ModelNotFoundError):
    """A version's training parameters cannot be read back, so its features cannot be rebuilt as trained."""


def training_params(module, name: str, version: str, run_id: str | None):
    """The use case's `Params` as version `version` of `name`'s training run recorded them (`param.<name>`).

    A field the run did not record (added to `Params` after the version was trained) takes its default. A run
    that cannot be read, or records no parameters, or records values `Params` refuses, is an error: scoring,
    monitoring and compaction must not rebuild features with parameters the version was not trained with.
    """
    where = f"{name} v{version}"
    if not run_id:
        raise TrainingParamsUnreadable(f"{where} names no training run: its training parameters are unknown")
    try:
        logged = MlflowClient().get_run(run_id).data.params
    except mlflow.exceptions.MlflowException as exc:
        raise TrainingParamsUnreadable(
            f"{where}: its training run {run_id} cannot be read ({exc.message}); its training parameters "
            "are unknown"
        ) from exc
    recorded = recorded_params(logged)
    if not recorded:
        raise TrainingParamsUnreadable(
            f"{where}: its training run {run_id} records no training parameters ({PARAM_PREFIX}*)"
        )
    known = {k: v for k, v in recorded.items() if k in module.Params.model_fields}
    try:
        return module.Params.model_validate(known)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TrainingParamsUnreadable(
            f"{where}: its training run {run_id} records parameters the use case refuses ({problems})"
        ) from exc


def spec_for(use_case: str, model: ScoringModel):
    """The use case's spec with the parameters `model` was trained with: one feature path for training,
    scoring, serving and monitoring."""
    module = spec_module(use_case)
    params = training_params(module, model.name, model.version, model.run_id)
    return module.build_spec(params)
