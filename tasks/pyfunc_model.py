"""An XGBoost booster plus what turns its output into the target: MLflow "models from code", never pickled.

A candidate trained on a transformed target (e.g. `log`) or boosted from a linear base margin (e.g. HAR's
forecast) is only self-contained if the registered model applies both itself. MLflow logs this file as the
model's code with two artifacts, the booster in XGBoost's UBJ format and a small JSON config:

    {"features": [...], "target_transform": "log",
     "offset": {"features": [...], "intercept": 0.1, "coef": [...]}}   # offset optional

so `mlflow.pyfunc.load_model(uri).predict(frame)` returns the forecast in target units:
inverse_transform(offset(frame) + booster margin). Training and evaluation call `predict` below, so the
registered model and the evaluated candidate are the same function. Only numpy, pandas, xgboost and mlflow
are imported: a consumer needs nothing of this project.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb

TRANSFORMS = {"identity": (lambda y: y, lambda z: z), "log": (np.log, np.exp)}


def forward(values: np.ndarray, transform: str) -> np.ndarray:
    """Target units -> the space the booster learns in."""
    return TRANSFORMS[transform][0](np.asarray(values, dtype=np.float64))


def inverse(values: np.ndarray, transform: str) -> np.ndarray:
    """The booster's space -> target units."""
    return TRANSFORMS[transform][1](np.asarray(values, dtype=np.float64))


def offset_margin(frame: pd.DataFrame, offset: Mapping | None) -> np.ndarray | None:
    """The linear base margin `intercept + x . coef` on the offset's feature columns, or None."""
    if not offset:
        return None
    x = frame[list(offset["features"])].to_numpy(dtype=np.float64)
    return float(offset["intercept"]) + x @ np.asarray(offset["coef"], dtype=np.float64)


def predict(booster: xgb.Booster, frame: pd.DataFrame, config: Mapping) -> np.ndarray:
    """Forecast in target units: inverse_transform(offset + booster margin)."""
    matrix = xgb.DMatrix(
        frame[list(config["features"])], base_margin=offset_margin(frame, config.get("offset"))
    )
    return inverse(booster.predict(matrix), config.get("target_transform", "identity"))


class TransformedXGBoost(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads `booster` (UBJ) and `config` (JSON) from the model's artifacts."""

    def load_context(self, context):
        self.booster = xgb.Booster()
        self.booster.load_model(context.artifacts["booster"])
        self.config = json.loads(Path(context.artifacts["config"]).read_text())

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return predict(self.booster, pd.DataFrame(model_input), self.config)


mlflow.models.set_model(TransformedXGBoost())
