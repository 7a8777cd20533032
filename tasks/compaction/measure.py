"""Measurement: the teacher and every candidate on the teacher's test window.

For each: the use case's metrics (thresholds calibrated on validation, as evaluation does), the primary
metric's ratio to the teacher's, the size of its UBJ booster (the model of record), its trees, live nodes and
depth, and its single-row latency in process (XGBoost `inplace_predict` on one thread).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import xgboost as xgb

from champion.store import run_logger
from tasks.compaction.booster import tree_stats
from tasks.evaluate import score_model
from tasks.stage import stage

if TYPE_CHECKING:
    from tasks.compaction.candidates import CompactCandidate
    from tasks.compaction.teacher import Teacher
    from tasks.evaluate import Scored
    from tasks.split import Splits
    from usecases.spec import Metrics


def single_row_latency(predict_row: Callable[[np.ndarray], object], rows: np.ndarray, calls: int):
    """p50 and p99 in microseconds of `predict_row` on one row at a time, cycling through `rows`."""
    for i in range(min(20, calls)):  # warm-up: first calls allocate
        predict_row(rows[i % len(rows) : i % len(rows) + 1])
    times = np.empty(calls)
    for i in range(calls):
        row = rows[i % len(rows) : i % len(rows) + 1]
        started = time.perf_counter_ns()
        predict_row(row)
        times[i] = time.perf_counter_ns() - started
    return float(np.percentile(times, 50)) / 1e3, float(np.percentile(times, 99)) / 1e3


def booster_row_predictor(booster: xgb.Booster) -> Callable[[np.ndarray], np.ndarray]:
    """One thread: a single row gains nothing from more, and the threads' start-up costs latency."""
    single = booster.copy()
    single.set_param({"nthread": 1})
    return lambda row: single.inplace_predict(row)


@dataclass(frozen=True)
class Measured:
    label: str
    method: str
    detail: str
    metrics: dict
    primary: float
    ratio: float  # primary / the teacher's primary
    size_kb: float  # the UBJ booster, the model of record
    trees: int
    nodes: int
    depth: int
    p50_us: float  # single row, XGBoost inplace_predict, one thread
    p99_us: float
    scored: Scored | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "scored"}


def measure_model(
    model: Teacher | CompactCandidate,
    splits: Splits,
    metrics_spec: Metrics,
    reference: float | None,
    calls: int,
) -> Measured:
    """One model measured; `reference` is the teacher's primary metric (None: this is the teacher)."""
    scored = score_model(model.predict, splits, metrics_spec)
    value = float(scored.metrics[metrics_spec.primary])
    stats = tree_stats(model.booster)
    rows = splits.test[list(model.booster.feature_names or [])].to_numpy(np.float32)[:200]
    p50, p99 = single_row_latency(booster_row_predictor(model.booster), rows, calls)
    reference = value if reference is None else reference
    return Measured(
        model.label,
        model.method,
        model.detail,
        {k: float(v) for k, v in scored.metrics.items()},
        value,
        value / reference if reference else float("nan"),
        len(model.booster.save_raw("ubj")) / 1024,
        stats["trees"],
        stats["nodes"],
        stats["depth"],
        p50,
        p99,
        scored,
    )


@stage
def measure(
    teacher: Teacher,
    candidates: Sequence[CompactCandidate],
    splits: Splits,
    metrics_spec: Metrics,
    calls: int = 500,
) -> tuple[Measured, list[Measured]]:
    """The teacher and every candidate on the teacher's test window (thresholds calibrated on validation
    for each, as evaluation does)."""
    ref = measure_model(teacher, splits, metrics_spec, None, calls)
    recorded = teacher.tags.get(f"test_{metrics_spec.primary}")
    if recorded and not math.isclose(float(recorded), ref.primary, rel_tol=1e-4, abs_tol=1e-6):
        run_logger().warning(
            "teacher's %s on the rebuilt test window is %.6g, its version recorded %s",
            metrics_spec.primary,
            ref.primary,
            recorded,
        )
    measured = [measure_model(c, splits, metrics_spec, ref.primary, calls) for c in candidates]
    return ref, measured
