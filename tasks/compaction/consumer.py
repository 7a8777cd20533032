"""What a service loads: a logged compact model folder, predicting in process.

`open_compact` uses the compiled library where it was built for this platform and is intact and loadable,
else the UBJ booster (the model of record); `CompactPredictor.backend` says which, `reason` why not compiled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from tasks.compaction.booster import model_files, predict_with
from tasks.compaction.compile import COMPILED_DIR, PLATFORM_FILE, Compiled, CompiledModel, platform_matches


@dataclass
class CompactPredictor:
    """A compact model for in-process prediction: the compiled library where it was built for this platform,
    else the UBJ booster. `backend` says which, `reason` why not compiled."""

    backend: str  # "compiled" | "booster"
    reason: str
    config: dict
    booster: xgb.Booster
    compiled: CompiledModel | None = None

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled.predict(frame)
        return predict_with(self.booster, frame, self.config)


def open_compact(model_dir: str | Path, here: dict | None = None) -> CompactPredictor:
    """A logged compact model folder, e.g. `mlflow.artifacts.download_artifacts("models:/x-compact/1")`."""
    model_dir = Path(model_dir)
    booster_file, config = model_files(model_dir)
    booster = xgb.Booster()
    booster.load_model(booster_file)
    meta_file = model_dir / COMPILED_DIR / PLATFORM_FILE
    if not meta_file.exists():
        return CompactPredictor("booster", "no compiled library", config, booster)
    meta = json.loads(meta_file.read_text())
    ok, differs = platform_matches(meta, here)
    if not ok:
        return CompactPredictor("booster", f"compiled for another platform: {differs}", config, booster)
    library = meta_file.parent / meta["library"]
    if not library.exists() or hashlib.sha256(library.read_bytes()).hexdigest() != meta.get("sha256"):
        return CompactPredictor("booster", "compiled library missing or altered", config, booster)
    try:
        compiled = CompiledModel(Compiled(meta_file.parent, meta))
    except Exception as exc:  # TL2cgen not installed, or the library does not load here
        return CompactPredictor(
            "booster", f"compiled library not loadable: {type(exc).__name__}: {exc}", config, booster
        )
    return CompactPredictor("compiled", "", config, booster, compiled)
