"""The teacher: the registered version a compact model is made from, and the windows it was trained on.

`load_teacher` reads the version's booster, config and training run's params; `rebuild_windows` cuts its
training, validation and test windows again from its recorded data source and refuses when the data or the
windows differ from what the version recorded (the compact model is gated on the teacher's own test window).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.models import Model

from champion.loading import resolve_version
from champion.store import run_logger
from tasks import tracking
from tasks.compaction.booster import model_files, predict_with
from tasks.split import cut_again
from tasks.stage import mlflow_stage, stage
from usecases.vocabulary import CHAMPION, COMPACT_SUFFIX

if TYPE_CHECKING:
    from tasks.split import Splits
    from usecases.params import TrainingParams
    from usecases.spec import UseCaseSpec


def compact_name(teacher_name: str) -> str:
    """The registry name of a teacher's compact stand-in."""
    return f"{teacher_name}{COMPACT_SUFFIX}"


class TeacherDataChanged(ValueError):
    """The teacher's recorded data source no longer yields the data or windows it was trained on."""


@dataclass(frozen=True)
class Teacher:
    name: str
    version: str
    run_id: str | None
    booster: xgb.Booster
    config: dict  # features, target_transform, offset: what tasks/pyfunc_model.py needs besides the booster
    flavor: str  # "xgboost" | "pyfunc"
    tags: dict
    training: dict  # the training run's params (`model.eta`, `param.*`, ...)
    size_bytes: int

    # Shown like a candidate where models are measured and tabled.
    label = "teacher"
    method = "teacher"

    @property
    def detail(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.config["features"])

    @property
    def eta(self) -> float:
        """The learning rate the teacher's leaves were scaled by (prune turns a node into a leaf as
        eta x its weight); XGBoost's default if the run did not record it."""
        for key in ("model.eta", "model.learning_rate"):
            if key in self.training:
                return float(self.training[key])
        return 0.3

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_with(self.booster, frame, self.config)


@mlflow_stage
def load_teacher(name: str, version: str | None, alias: str | None) -> Teacher:
    """The teacher version's booster (UBJ) and config from its logged model, and its training run's params."""
    mv = resolve_version(name, version, None if version is not None else (alias or CHAMPION))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}"))
    booster_file, config = model_files(local)
    booster = xgb.Booster()
    booster.load_model(booster_file)
    training = {}
    if mv.run_id:
        try:
            training = dict(MlflowClient().get_run(mv.run_id).data.params)
        except Exception:  # a deleted run: the windows cannot be rebuilt, which rebuild_windows says
            training = {}
    flavor = "xgboost" if "xgboost" in Model.load(str(local)).flavors else "pyfunc"
    run_logger().info(
        "teacher %s v%s: %d trees, %.1f KB (%s)",
        name,
        mv.version,
        booster.num_boosted_rounds(),
        booster_file.stat().st_size / 1024,
        flavor,
    )
    return Teacher(
        name,
        str(mv.version),
        mv.run_id,
        booster,
        config,
        flavor,
        dict(mv.tags),
        training,
        booster_file.stat().st_size,
    )


@stage
def rebuild_windows(spec: UseCaseSpec, params: TrainingParams, teacher: Teacher) -> Splits:
    """The teacher's training, validation and test windows, cut again from its recorded data source with the
    parameters it was trained with; refused when the data or the windows differ from what it recorded."""
    raw = spec.load(params)
    digest, recorded = tracking.content_digest(raw), teacher.tags.get("lineage.data_digest")
    if recorded and digest != recorded:
        raise TeacherDataChanged(
            f"{teacher.name} v{teacher.version} was trained on data {recorded}, but its source "
            f"{raw.attrs.get('source', '?')} now holds {digest}: its windows cannot be rebuilt"
        )
    splits = cut_again(spec, raw)
    rebuilt = {k: f"{lo} .. {hi} ({len(getattr(splits, k))} rows)" for k, (lo, hi) in splits.windows.items()}
    _check_windows(teacher, rebuilt, str(splits.windows))
    run_logger().info(
        "teacher windows rebuilt from %s (data %s): %s",
        raw.attrs.get("source", "?"),
        digest,
        ", ".join(f"{k} {v}" for k, v in rebuilt.items()),
    )
    return splits


def _check_windows(teacher: Teacher, rebuilt: dict[str, str], windows: str) -> None:
    """Refuse windows that differ from the ones the teacher's run and version recorded."""
    recorded = {k: teacher.training.get(f"window.{k}") for k in rebuilt}
    differs = [
        f"{k}: {recorded[k]} recorded, {rebuilt[k]} now"
        for k in rebuilt
        if recorded[k] not in (None, rebuilt[k])
    ]
    if differs or (teacher.tags.get("lineage.windows") or windows) != windows:
        raise TeacherDataChanged(
            f"{teacher.name} v{teacher.version}'s windows cannot be rebuilt as it was trained: "
            + ("; ".join(differs) or f"{teacher.tags['lineage.windows']} recorded, {windows} now")
            + ". The code that builds or filters them changed since "
            f"{teacher.tags.get('lineage.code_version', '?')}: retrain the teacher, then compact it"
        )
