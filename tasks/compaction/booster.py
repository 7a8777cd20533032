"""What every compact model shares with its teacher: how an XGBoost booster's output becomes a prediction.

A registered model is an XGBoost booster plus a config (features, target transform, base-margin offset). The
booster's objective decides the link from margin to output; students keep the teacher's objective and compiled
libraries are asked for margins and apply the link themselves. Also here: reading the booster and config out
of a logged model folder, and counting a booster's trees, nodes and depth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.models import Model

from tasks import pyfunc_model

# How each XGBoost objective turns a margin into its output.
LINKS = {
    "binary:logistic": "sigmoid",
    "reg:logistic": "sigmoid",
    "binary:logitraw": "identity",
    "reg:squarederror": "identity",
    "reg:absoluteerror": "identity",
    "reg:pseudohubererror": "identity",
    "reg:squaredlogerror": "identity",
    "reg:quantileerror": "identity",
    "count:poisson": "exp",
    "reg:gamma": "exp",
    "reg:tweedie": "exp",
}
LINK_FUNCTIONS = {"sigmoid": lambda m: 1 / (1 + np.exp(-m)), "identity": lambda m: m, "exp": np.exp}


def objective_of(booster: xgb.Booster) -> str:
    return json.loads(booster.save_config())["learner"]["objective"]["name"]


def is_transformed(config: dict) -> bool:
    """Whether predictions need `tasks/pyfunc_model.py` (a target transform or a base margin)."""
    return config.get("target_transform", "identity") != "identity" or bool(config.get("offset"))


def predict_with(booster: xgb.Booster, frame: pd.DataFrame, config: dict) -> np.ndarray:
    """A booster's predictions in target units, as the registered model makes them (`tasks/pyfunc_model.py`
    for a transform or base margin, else the booster's output)."""
    if is_transformed(config):
        return pyfunc_model.predict(booster, frame, config)
    return booster.inplace_predict(frame[list(config["features"])].to_numpy(np.float32))


def model_files(local: Path) -> tuple[Path, dict]:
    """The booster file and config of a logged model folder: the XGBoost flavor's UBJ file, or the pyfunc's
    `booster` and `config` artifacts (`tasks/register.py`)."""
    meta = Model.load(str(local))
    if "xgboost" in meta.flavors:
        schema = meta.get_input_schema()
        features = list(schema.input_names()) if schema is not None else []
        config = {"features": features, "target_transform": "identity", "offset": None}
        return local / meta.flavors["xgboost"]["data"], config
    artifacts = meta.flavors.get("python_function", {}).get("artifacts", {})
    if "booster" not in artifacts or "config" not in artifacts:
        raise ValueError(f"{local} is neither an XGBoost model nor the factory's pyfunc booster wrapper")
    config = json.loads((local / artifacts["config"]["path"]).read_text())
    return local / artifacts["booster"]["path"], config


def tree_stats(booster: xgb.Booster) -> dict[str, int]:
    """Trees, live nodes and the deepest leaf."""
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    nodes, depth = 0, 0
    for tree in trees:
        nodes += int(tree["tree_param"]["num_nodes"]) - int(tree["tree_param"]["num_deleted"])
        stack = [(0, 0)]
        while stack:
            node, level = stack.pop()
            depth = max(depth, level)
            if tree["left_children"][node] != -1:
                stack += [(tree["left_children"][node], level + 1), (tree["right_children"][node], level + 1)]
    return {"trees": len(trees), "nodes": nodes, "depth": depth}
