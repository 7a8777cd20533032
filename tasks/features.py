"""Features: turn the validated raw table into the feature table the model trains on.

The transformation itself belongs to the use case (its spec's `build_features`); this stage runs it and
reports its size. Training and batch scoring call the same function, so there is one feature path.
"""

from __future__ import annotations

import time

import pandas as pd

from champion.store import run_logger
from tasks.stage import stage


@stage
def featurize(raw: pd.DataFrame, build_features) -> pd.DataFrame:
    started = time.perf_counter()
    table = build_features(raw)
    run_logger().info(
        "features: %d rows x %d columns in %.1f s", len(table), table.shape[1], time.perf_counter() - started
    )
    return table
