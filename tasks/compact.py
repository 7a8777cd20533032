"""Compact: a smaller model made from a registered teacher, for small devices and fast single-row serving.

    teacher version → its windows re-cut from its recorded data (digest and windows checked) → candidates:
    distilled students, the teacher cut to fewer rounds, the teacher pruned to a smaller depth → each measured
    on the teacher's test window (primary metric and its ratio to the teacher, size, trees, nodes, single-row
    latency) → gates → the smallest candidate that passes → compiled with TL2cgen for this platform

- Distillation (Bucilă, Caruana & Niculescu-Mizil 2006): a booster of few, shallow trees fitted to the
  teacher's margins on the teacher's training window (binary: its log-odds; regression: its prediction in
  the space it learns in, from the same base margin), under the teacher's objective; early stopping on the
  validation window's true labels with the teacher's eval metric.
- Pruning: the teacher's first n trees (`booster[:n]`), or every tree pruned to a smaller depth by XGBoost's
  `prune` updater (deleted nodes are then dropped from the saved model, else the file does not shrink).
- Compilation: the chosen booster as C, built into a shared library by TL2cgen with quantized thresholds. The
  platform it was built for is recorded beside it; the portable UBJ booster stays the model of record, and
  `open_compact` falls back to it where the platform differs or TL2cgen is missing.

The gates are declared here (`CompactGates`) with overridable defaults: on the teacher's test window the
primary metric must keep `min_ratio` of the teacher's (direction-aware), the teacher's absolute gates still
hold, and the artifact may not grow. Size and latency are always measured and reported.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pandas as pd
import xgboost as xgb
from pydantic import Field

from tasks import pyfunc_model
from tasks.gate import AbsoluteGate, GateResult, GateSpec, GateVerdict, evaluate_gates
from tasks.stage import mlflow_stage, stage
from tasks.tracking import run_logger

if TYPE_CHECKING:
    from tasks.evaluate import Scored
    from tasks.split import Splits
    from usecases.spec import Metrics, Schema, TrainingParams, UseCaseSpec

COMPACT_SUFFIX = "-compact"
COMPILED_DIR = "compiled"  # inside the logged model: the shared library and platform.json
PLATFORM_FILE = "platform.json"


def compact_name(teacher_name: str) -> str:
    return f"{teacher_name}{COMPACT_SUFFIX}"


class TeacherDataChanged(ValueError):
    """The teacher's recorded data source no longer yields the data or windows it was trained on."""


# --- what to build and what must hold -------------------------------------------------------------------


@dataclass(frozen=True)
class CompactGates:
    """Gates on the teacher's test window. Defaults are the factory's policy; every one can be overridden."""

    min_ratio: Annotated[
        float,
        Field(
            gt=0,
            description="Quality: the primary metric must keep this share of the teacher's "
            "(higher-is-better: at least ratio x teacher; lower-is-better such as MAE: at most "
            "teacher / ratio).",
        ),
    ] = 0.98
    max_size_ratio: Annotated[
        float, Field(gt=0, description="Size: the booster file may be at most this share of the teacher's.")
    ] = 1.0
    max_latency_ratio: Annotated[
        float | None,
        Field(
            gt=0, description="Latency: single-row p50 at most this share of the teacher's; empty: reported."
        ),
    ] = None


@dataclass(frozen=True)
class CompactPlan:
    """Which candidates to build."""

    students: Annotated[
        tuple[tuple[int, int], ...],
        Field(description="Distilled students as (max depth, max trees); early stopping picks the trees."),
    ] = ((2, 150), (3, 120), (4, 100))
    student_eta: Annotated[float, Field(gt=0, le=1, description="Students' learning rate.")] = 0.3
    early_stopping_rounds: Annotated[int, Field(ge=1, description="Students: early stopping patience.")] = 20
    cuts: Annotated[
        tuple[float, ...], Field(description="Teacher cut to these shares of its trees (booster[:n]).")
    ] = (0.1, 0.25, 0.5)
    prune_depths: Annotated[
        tuple[int, ...], Field(description="Teacher pruned to these depths (updater=prune).")
    ] = (2, 3, 4)
    compile: Annotated[bool, Field(description="Compile the chosen model with TL2cgen (quantized).")] = True
    latency_calls: Annotated[int, Field(ge=10, description="Single-row predictions timed per model.")] = 500
    seed: int = 42


# --- the teacher ----------------------------------------------------------------------------------------


# How each XGBoost objective turns a margin into its output: students keep the teacher's objective, compiled
# libraries are asked for margins and apply it themselves.
_LINKS = {
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
_LINK_FUNCTIONS = {"sigmoid": lambda m: 1 / (1 + np.exp(-m)), "identity": lambda m: m, "exp": np.exp}


def _transformed(config: dict) -> bool:
    return config.get("target_transform", "identity") != "identity" or bool(config.get("offset"))


def predict_with(booster: xgb.Booster, frame: pd.DataFrame, config: dict) -> np.ndarray:
    """A booster's predictions in target units, as the registered model makes them (`tasks/pyfunc_model.py`
    for a transform or base margin, else the booster's output)."""
    if _transformed(config):
        return pyfunc_model.predict(booster, frame, config)
    return booster.inplace_predict(frame[list(config["features"])].to_numpy(np.float32))


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
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model

    from champion.loading import resolve_version

    mv = resolve_version(name, version, None if version is not None else (alias or "champion"))
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


def model_files(local: Path) -> tuple[Path, dict]:
    """The booster file and config of a logged model folder: the XGBoost flavor's UBJ file, or the pyfunc's
    `booster` and `config` artifacts (`tasks/register.py`)."""
    from mlflow.models import Model

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


@stage
def rebuild_windows(spec: UseCaseSpec, params: TrainingParams, teacher: Teacher) -> Splits:
    """The teacher's training, validation and test windows, cut again from its recorded data source with the
    parameters it was trained with; refused when the data or the windows differ from what it recorded."""
    from tasks import tracking
    from tasks.split import cut_again

    raw = spec.load(params)
    digest, recorded = tracking.content_digest(raw), teacher.tags.get("lineage.data_digest")
    if recorded and digest != recorded:
        raise TeacherDataChanged(
            f"{teacher.name} v{teacher.version} was trained on data {recorded}, but its source "
            f"{raw.attrs.get('source', '?')} now holds {digest}: its windows cannot be rebuilt"
        )
    splits = cut_again(spec, raw)
    rebuilt = {k: f"{lo} .. {hi} ({len(getattr(splits, k))} rows)" for k, (lo, hi) in splits.windows.items()}
    recorded = {k: teacher.training.get(f"window.{k}") for k in rebuilt}
    differs = [
        f"{k}: {recorded[k]} recorded, {rebuilt[k]} now"
        for k in rebuilt
        if recorded[k] not in (None, rebuilt[k])
    ]
    if differs or (teacher.tags.get("lineage.windows") or str(splits.windows)) != str(splits.windows):
        raise TeacherDataChanged(
            f"{teacher.name} v{teacher.version}'s windows cannot be rebuilt as it was trained: "
            + ("; ".join(differs) or f"{teacher.tags['lineage.windows']} recorded, {splits.windows} now")
            + ". The code that builds or filters them changed since "
            f"{teacher.tags.get('lineage.code_version', '?')}: retrain the teacher, then compact it"
        )
    run_logger().info(
        "teacher windows rebuilt from %s (data %s): %s",
        raw.attrs.get("source", "?"),
        digest,
        ", ".join(f"{k} {v}" for k, v in rebuilt.items()),
    )
    return splits


# --- candidates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactCandidate:
    """A compact booster with the teacher's config. Shaped like `tasks.train.Candidate` where
    `tasks.register.log_candidate` reads it (booster, features, params, predict, transformed, config)."""

    label: str  # e.g. "student-d2", "cut-60", "prune-d4"
    method: str  # "distilled" | "cut" | "depth-pruned"
    detail: str
    booster: xgb.Booster
    config: dict
    params: dict  # how it was made; logged with the model

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.config["features"])

    @property
    def input_columns(self) -> tuple[str, ...]:
        extra = [c for c in (self.config.get("offset") or {}).get("features", ()) if c not in self.features]
        return (*self.features, *extra)

    @property
    def transformed(self) -> bool:
        return _transformed(self.config)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_with(self.booster, frame, self.config)


def objective_of(booster: xgb.Booster) -> str:
    return json.loads(booster.save_config())["learner"]["objective"]["name"]


def teacher_margin(booster: xgb.Booster, frame: pd.DataFrame, config: dict) -> np.ndarray:
    """The teacher's raw score before its link: log-odds for binary:logistic; for regression the (transformed)
    target, from the base margin when there is one."""
    matrix = xgb.DMatrix(
        frame[list(config["features"])], base_margin=pyfunc_model.offset_margin(frame, config.get("offset"))
    )
    return booster.predict(matrix, output_margin=True).astype(np.float64)


def distill(
    teacher: xgb.Booster,
    splits: Splits,
    config: dict,
    schema: Schema,
    depth: int,
    max_trees: int,
    eta: float = 0.3,
    early_stopping_rounds: int = 20,
    seed: int = 42,
    eval_metric: str | None = None,
    nthread: int = 2,
) -> CompactCandidate:
    """A student of at most `max_trees` trees of depth `depth` fitted to the teacher's margins on the training
    window by squared error ("matching logits", Ba & Caruana 2014; on the handbook students kept 0.99-1.00 of
    the teacher's AP this way, 0.98 with its probabilities as binary:logistic labels). It keeps the teacher's
    objective, so its output goes through the same link (probabilities for binary:logistic). Early stopping on
    the validation window's true labels with the teacher's eval metric."""
    from tasks.train import OBJECTIVES

    objective = objective_of(teacher)
    if objective not in _LINKS:
        raise ValueError(f"cannot distil a teacher with objective {objective}: its link is unknown")
    target = teacher_margin(teacher, splits.train, config)
    offset = [pyfunc_model.offset_margin(p, config.get("offset")) for p in (splits.train, splits.validation)]
    y_train, y_val = (p[schema.target].to_numpy(dtype=np.float64) for p in (splits.train, splits.validation))
    if schema.problem != "binary":
        y_val = pyfunc_model.forward(y_val, config.get("target_transform", "identity"))
        # Objectives that refit leaves from the labels (reg:absoluteerror's medians) then refit them to the
        # teacher's margins too, not to the truth; logistic labels must stay in [0, 1] and are never read.
        y_train = target
    features = list(config["features"])
    dtrain = xgb.DMatrix(splits.train[features], label=y_train, base_margin=offset[0])
    dval = xgb.DMatrix(splits.validation[features], label=y_val, base_margin=offset[1])
    params = {
        "tree_method": "hist",
        "objective": objective,
        "eval_metric": eval_metric or OBJECTIVES[schema.problem]["eval_metric"],
        "max_depth": depth,
        "eta": eta,
        "seed": seed,
        "nthread": nthread,
    }
    if offset[0] is None:  # start from the teacher's mean margin (a base margin replaces base_score)
        params["base_score"] = float(_LINK_FUNCTIONS[_LINKS[objective]](target.mean()))
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=max_trees,
        evals=[(dval, "validation")],
        obj=lambda margin, _: (margin - target, np.ones_like(margin)),  # squared error to the teacher's
        early_stopping_rounds=early_stopping_rounds,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    trees = booster.num_boosted_rounds()
    return CompactCandidate(
        f"student-d{depth}",
        "distilled",
        f"distilled: {trees} trees of depth <= {depth} fitted to the teacher's margins",
        booster,
        dict(config),
        {**params, "method": "distilled", "loss": "squared error to the teacher's margin", "trees": trees},
    )


def cut(booster: xgb.Booster, trees: int, config: dict) -> CompactCandidate:
    """The teacher's first `trees` trees."""
    total = booster.num_boosted_rounds()
    return CompactCandidate(
        f"cut-{trees}",
        "cut",
        f"the teacher's first {trees} of {total} trees",
        booster[:trees],
        dict(config),
        {"method": "cut", "trees": trees, "teacher_trees": total},
    )


def prune_depth(
    booster: xgb.Booster, depth: int, eta: float, data: xgb.DMatrix, config: dict, nthread: int = 2
) -> CompactCandidate:
    """Every tree of the teacher pruned to `depth` by XGBoost's prune updater: a split below it becomes a leaf
    of eta x its weight. `data` only drives the update pass (the prune updater reads no gradients)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*manually specified the `updater`.*")
        pruned = xgb.train(
            {
                "process_type": "update",
                "updater": "prune",
                "max_depth": depth,
                "eta": eta,
                "gamma": 0.0,
                "nthread": nthread,
            },
            data,
            num_boost_round=booster.num_boosted_rounds(),
            xgb_model=booster.copy(),
        )
    return CompactCandidate(
        f"prune-d{depth}",
        "depth-pruned",
        f"the teacher's {booster.num_boosted_rounds()} trees pruned to depth {depth}",
        repack(pruned),
        dict(config),
        {"method": "depth-pruned", "max_depth": depth, "eta": eta, "trees": booster.num_boosted_rounds()},
    )


_NODE_ARRAYS = (
    "base_weights",
    "default_left",
    "left_children",
    "loss_changes",
    "parents",
    "right_children",
    "split_conditions",
    "split_indices",
    "split_type",
    "sum_hessian",
)


def repack(booster: xgb.Booster) -> xgb.Booster:
    """The same trees without their deleted nodes: XGBoost keeps pruned nodes in the saved model."""
    model = json.loads(booster.save_raw("json"))
    trees = model["learner"]["gradient_booster"]["model"]["trees"]
    for tree in trees:
        if int(tree["tree_param"]["num_deleted"]) == 0 or tree["categories_nodes"]:
            continue  # nothing to drop; categorical splits index nodes elsewhere and are kept as they are
        order, queue = [], [0]
        while queue:  # live nodes, breadth first from the root
            node = queue.pop(0)
            order.append(node)
            if tree["left_children"][node] != -1:
                queue += [tree["left_children"][node], tree["right_children"][node]]
        new = {old: i for i, old in enumerate(order)}
        for key in _NODE_ARRAYS:
            tree[key] = [tree[key][old] for old in order]
        for key in ("left_children", "right_children"):
            tree[key] = [new[c] if c != -1 else -1 for c in tree[key]]
        tree["parents"] = [new.get(p, p) for p in tree["parents"]]  # the root's parent stays the sentinel
        tree["tree_param"]["num_nodes"] = str(len(order))
        tree["tree_param"]["num_deleted"] = "0"
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(model).encode()))
    return out


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


@stage
def build_candidates(teacher: Teacher, splits: Splits, schema: Schema, plan: CompactPlan) -> list:
    """Students, cuts and depth-pruned teachers, as `plan` asks; only candidates: the gates decide."""
    log = run_logger()
    nthread = int(teacher.training.get("model.nthread", 2))
    eval_metric = teacher.training.get("model.eval_metric")
    stats = tree_stats(teacher.booster)
    candidates = []
    for depth, max_trees in plan.students:
        started = time.perf_counter()
        student = distill(
            teacher.booster,
            splits,
            teacher.config,
            schema,
            int(depth),
            int(max_trees),
            plan.student_eta,
            plan.early_stopping_rounds,
            plan.seed,
            eval_metric,
            nthread,
        )
        log.info("%s in %.1f s", student.detail, time.perf_counter() - started)
        candidates.append(student)
    total = teacher.booster.num_boosted_rounds()
    for trees in sorted({max(1, round(total * share)) for share in plan.cuts}):
        if trees < total:
            candidates.append(cut(teacher.booster, trees, teacher.config))
    y = splits.train[schema.target].to_numpy(dtype=np.float64)
    if schema.problem != "binary":
        y = pyfunc_model.forward(y, teacher.config.get("target_transform", "identity"))
    # The prune updater reads no gradients: a few rows drive its update pass as well as all of them.
    data = xgb.DMatrix(splits.train[list(teacher.features)].head(1000), label=y[:1000])
    for depth in sorted(set(plan.prune_depths)):
        if depth < stats["depth"]:
            candidates.append(
                prune_depth(teacher.booster, int(depth), teacher.eta, data, teacher.config, nthread)
            )
    log.info("%d candidates: %s", len(candidates), ", ".join(c.label for c in candidates))
    return candidates


# --- measurement -----------------------------------------------------------------------------------------


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
    label, method, detail, booster, predict, splits, metrics_spec, primary_ref, calls
) -> Measured:
    from tasks.evaluate import score_model

    scored = score_model(predict, splits, metrics_spec)
    value = float(scored.metrics[metrics_spec.primary])
    stats = tree_stats(booster)
    rows = splits.test[list(booster.feature_names or [])].to_numpy(np.float32)[:200]
    p50, p99 = single_row_latency(booster_row_predictor(booster), rows, calls)
    reference = value if primary_ref is None else primary_ref
    return Measured(
        label,
        method,
        detail,
        {k: float(v) for k, v in scored.metrics.items()},
        value,
        value / reference if reference else float("nan"),
        len(booster.save_raw("ubj")) / 1024,
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
    ref = measure_model(
        "teacher",
        "teacher",
        f"{teacher.name} v{teacher.version}",
        teacher.booster,
        teacher.predict,
        splits,
        metrics_spec,
        None,
        calls,
    )
    recorded = teacher.tags.get(f"test_{metrics_spec.primary}")
    if recorded and not math.isclose(float(recorded), ref.primary, rel_tol=1e-4, abs_tol=1e-6):
        run_logger().warning(
            "teacher's %s on the rebuilt test window is %.6g, its version recorded %s",
            metrics_spec.primary,
            ref.primary,
            recorded,
        )
    measured = [
        measure_model(
            c.label, c.method, c.detail, c.booster, c.predict, splits, metrics_spec, ref.primary, calls
        )
        for c in candidates
    ]
    return ref, measured


# --- gates and choice ------------------------------------------------------------------------------------


def quality_threshold(teacher: float, min_ratio: float, greater_is_better: bool) -> float:
    """Higher-is-better: at least min_ratio x the teacher's; lower-is-better: at most teacher / min_ratio."""
    return teacher * min_ratio if greater_is_better else teacher / min_ratio


def judge(
    gates: CompactGates,
    absolute: Sequence[AbsoluteGate],
    primary: str,
    greater_is_better: bool,
    teacher: Measured,
    candidate: Measured,
) -> GateVerdict:
    """Pure: the compact gates and the teacher's absolute gates for one candidate."""
    value, reference = candidate.primary, teacher.primary
    threshold = quality_threshold(reference, gates.min_ratio, greater_is_better)
    ok = not math.isnan(value) and (value >= threshold if greater_is_better else value <= threshold)
    op = ">=" if greater_is_better else "<="
    results = [
        GateResult(
            f"compact.quality.{primary}",
            "compact",
            primary,
            value,
            threshold,
            ok,
            f"{primary} {value:#.4g} {'' if ok else 'not '}{op} {threshold:#.4g} "
            f"({candidate.ratio:.3f} x the teacher's {reference:#.4g}; min ratio {gates.min_ratio:g})",
        )
    ]
    absolute_only = evaluate_gates(
        GateSpec(absolute=tuple(absolute)), candidate.metrics, {}, None, primary, True
    )
    results += [r for r in absolute_only.results if r.kind == "absolute"]
    size_limit = teacher.size_kb * gates.max_size_ratio
    ok = candidate.size_kb <= size_limit
    results.append(
        GateResult(
            "compact.size_kb",
            "compact",
            "size_kb",
            candidate.size_kb,
            size_limit,
            ok,
            f"{candidate.size_kb:.1f} KB {'' if ok else 'not '}<= {size_limit:.1f} KB "
            f"({candidate.size_kb / teacher.size_kb:.2f} x the teacher's {teacher.size_kb:.1f} KB)",
        )
    )
    if gates.max_latency_ratio is not None:
        limit = teacher.p50_us * gates.max_latency_ratio
        ok = candidate.p50_us <= limit
        results.append(
            GateResult(
                "compact.latency_p50_us",
                "compact",
                "latency_p50_us",
                candidate.p50_us,
                limit,
                ok,
                f"p50 {candidate.p50_us:.0f} us {'' if ok else 'not '}<= {limit:.0f} us "
                f"({candidate.p50_us / teacher.p50_us:.2f} x the teacher's {teacher.p50_us:.0f} us)",
            )
        )
    return GateVerdict(tuple(results))


def pick(judged: Sequence[tuple[Measured, GateVerdict]]) -> int | None:
    """Index of the smallest candidate whose gates all passed (then the faster), or None."""
    passing = [i for i, (_, verdict) in enumerate(judged) if verdict.registrable]
    if not passing:
        return None
    return min(passing, key=lambda i: (judged[i][0].size_kb, judged[i][0].p50_us))


@stage
def gate_candidates(
    gates: CompactGates, teacher_gates: GateSpec, metrics_spec: Metrics, teacher: Measured, measured
) -> tuple[list[tuple[Measured, GateVerdict]], int | None]:
    """Every candidate judged; the index of the one chosen, if any passed."""
    judged = [
        (
            m,
            judge(
                gates,
                teacher_gates.absolute,
                metrics_spec.primary,
                metrics_spec.greater_is_better,
                teacher,
                m,
            ),
        )
        for m in measured
    ]
    chosen = pick(judged)
    log = run_logger()
    for m, verdict in judged:
        log.info(
            "%s: %s %.4g (%.3f x teacher), %.1f KB, p50 %.0f us: %s",
            m.label,
            metrics_spec.primary,
            m.primary,
            m.ratio,
            m.size_kb,
            m.p50_us,
            "passed" if verdict.registrable else "; ".join(r.detail for r in verdict.refusals),
        )
    return judged, chosen


def teacher_gate(teacher: Teacher, champion: str | None) -> GateResult:
    """A compact model may stand in for its teacher only while the teacher is the champion."""
    ok = champion == teacher.version
    return GateResult(
        "teacher.champion",
        "champion",
        "teacher",
        float(teacher.version),
        float(champion or "nan"),
        ok,
        f"teacher {teacher.name} v{teacher.version} "
        + ("is champion" if ok else f"is not champion ({teacher.name}@champion: {champion or 'none'})"),
    )


# --- compilation -----------------------------------------------------------------------------------------


def platform_record() -> dict:
    """What a compiled library is tied to. It is plain C loaded through ctypes, so machine, OS and C library
    decide whether it loads; Python and its ABI are recorded for the record."""
    libc = platform.libc_ver()
    return {
        "machine": platform.machine(),
        "system": sys.platform,
        "libc": libc[0] or "",
        "libc_version": libc[1] or "",
        "python": platform.python_version(),
        "abi": sysconfig.get_config_var("SOABI") or "",
    }


def platform_matches(recorded: dict, here: dict | None = None) -> tuple[bool, str]:
    here = here or platform_record()
    differs = [
        f"{k} {recorded.get(k)!r} != {here[k]!r}"
        for k in ("machine", "system", "libc")
        if recorded.get(k) != here[k]
    ]
    return not differs, "; ".join(differs)


def _library_suffix() -> str:
    return {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")


def _toolchain() -> str | None:
    for name in ("gcc", "clang"):
        if shutil.which(name):
            return name
    return None


@dataclass(frozen=True)
class Compiled:
    folder: Path  # holds the library and platform.json
    meta: dict

    @property
    def library(self) -> Path:
        return self.folder / self.meta["library"]


def compile_booster(
    booster: xgb.Booster,
    config: dict,
    folder: Path,
    check: np.ndarray | None = None,
    quantize: bool = True,
    threads: int = 1,
) -> Compiled:
    """`booster` as a shared library (TL2cgen, thresholds quantized) plus platform.json: the platform, the
    toolchain, the library's digest and what turns its margin into a prediction. With `check` rows, the
    library's margins must equal XGBoost's to 1e-5."""
    import tl2cgen
    import treelite

    toolchain = _toolchain()
    if toolchain is None:
        raise RuntimeError("no C compiler (gcc or clang) on PATH")
    objective = objective_of(booster)
    if objective not in _LINKS:
        raise RuntimeError(f"objective {objective} has no known link function")
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / f"model{_library_suffix()}"
    started = time.perf_counter()
    tl2cgen.export_lib(
        treelite.frontend.from_xgboost(booster),
        toolchain=toolchain,
        libpath=str(library),
        params={"quantize": int(quantize), "parallel_comp": max(1, threads)},
        nthread=max(1, threads),
    )
    seconds = time.perf_counter() - started
    n = len(booster.feature_names or config["features"])
    zero = np.zeros((1, n), dtype=np.float32)
    # XGBoost drops base_score when a base margin is given; the library always adds it
    base = float(booster.inplace_predict(zero, predict_type="margin")[0]) - float(
        booster.inplace_predict(zero, predict_type="margin", base_margin=np.zeros(1))[0]
    )
    meta = {
        **platform_record(),
        "library": library.name,
        "sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
        "toolchain": toolchain,
        "treelite": treelite.__version__,
        "tl2cgen": tl2cgen.__version__,
        "quantize": int(quantize),
        "objective": objective,
        "link": _LINKS[objective],
        "base_score_margin": base,
        "config": config,
        "compile_seconds": round(seconds, 2),
        "size_kb": round(library.stat().st_size / 1024, 1),
    }
    compiled = Compiled(folder, meta)
    if check is not None and len(check):
        ours = CompiledModel(compiled).margin(check.astype(np.float32))
        theirs = booster.inplace_predict(check.astype(np.float32), predict_type="margin")
        meta["max_abs_margin_diff"] = float(np.max(np.abs(ours - theirs)))
        if not np.allclose(ours, theirs, rtol=1e-5, atol=1e-5):
            raise RuntimeError(
                f"compiled margins differ from XGBoost's by up to {meta['max_abs_margin_diff']:.3g}"
            )
    (folder / PLATFORM_FILE).write_text(json.dumps(meta, indent=2))
    return compiled


class CompiledModel:
    """A TL2cgen library loaded for prediction; `predict` matches `predict_with` on the same booster."""

    def __init__(self, compiled: Compiled, threads: int = 1):
        import tl2cgen

        self.meta = compiled.meta
        self.config = compiled.meta["config"]
        self._dmatrix = tl2cgen.DMatrix
        self._predictor = tl2cgen.Predictor(str(compiled.library), nthread=threads)

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        """The trees' sum plus base_score, like XGBoost's margin without a base margin."""
        out = self._predictor.predict(self._dmatrix(np.asarray(matrix, dtype=np.float32)), pred_margin=True)
        return np.asarray(out, dtype=np.float64).reshape(len(matrix))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        margin = self.margin(frame[list(self.config["features"])].to_numpy(np.float32))
        offset = pyfunc_model.offset_margin(frame, self.config.get("offset"))
        if offset is not None:
            margin = margin - self.meta["base_score_margin"] + offset
        out = _LINK_FUNCTIONS[self.meta["link"]](margin)
        return pyfunc_model.inverse(out, self.config.get("target_transform", "identity"))


@stage
def compile_compact(
    candidate: CompactCandidate, splits: Splits, folder: Path, calls: int = 500
) -> Compiled | None:
    """The chosen model compiled for this platform, checked against the booster on the test window and timed
    on single rows; None (the booster alone is shipped) when TL2cgen or a compiler is missing or the check
    fails."""
    log = run_logger()
    rows = splits.test[list(candidate.features)].to_numpy()
    try:
        compiled = compile_booster(candidate.booster, candidate.config, folder, rows)
    except Exception as exc:
        log.warning("not compiled (%s: %s): the UBJ booster alone is shipped", type(exc).__name__, exc)
        return None
    p50, p99 = single_row_latency(CompiledModel(compiled).margin, rows[:200].astype(np.float32), calls)
    compiled.meta.update(p50_us=round(p50, 1), p99_us=round(p99, 1))
    (folder / PLATFORM_FILE).write_text(json.dumps(compiled.meta, indent=2))
    c = compiled.meta
    log.info(
        "compiled %s for %s-%s with %s in %.1f s: %.1f KB, single-row p50 %.0f us, margins within %.2g",
        candidate.label, c["machine"], c["system"], c["toolchain"], c["compile_seconds"], c["size_kb"], p50,
        c["max_abs_margin_diff"],
    )  # fmt: skip
    return compiled


# --- consumers -------------------------------------------------------------------------------------------


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


# --- recording -------------------------------------------------------------------------------------------


def fmt_row(m: Measured, primary: str, verdict: GateVerdict | None, chosen: bool) -> list[str]:
    state = (
        "teacher"
        if verdict is None
        else (
            "**chosen**"
            if chosen
            else "passed"
            if verdict.registrable
            else "refused: " + "; ".join(r.detail for r in verdict.refusals)
        )
    )
    return [
        m.label,
        m.detail,
        str(m.trees),
        str(m.nodes),
        f"{m.size_kb:.1f}",
        f"{m.primary:#.4g}",
        f"{m.ratio:.3f}",
        f"{m.p50_us:.0f}",
        f"{m.p99_us:.0f}",
        state,
    ]


TABLE_HEADER = ["model", "what", "trees", "nodes", "KB", "{primary}", "ratio", "p50 us", "p99 us", "verdict"]


def markdown_table(teacher: Measured, judged, chosen: int | None, primary: str) -> str:
    header = [h.format(primary=primary) for h in TABLE_HEADER]
    rows = [fmt_row(teacher, primary, None, False)]
    rows += [fmt_row(m, primary, v, i == chosen) for i, (m, v) in enumerate(judged)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def model_card(
    teacher: Teacher,
    spec: UseCaseSpec,
    splits: Splits,
    teacher_m: Measured,
    judged,
    chosen: int,
    compiled: Compiled | None,
    name: str,
) -> str:
    m, verdict = judged[chosen]
    primary = spec.metrics.primary
    windows = ", ".join(f"{k} {lo} .. {hi}" for k, (lo, hi) in splits.windows.items())
    if compiled is not None:
        c = compiled.meta
        build = (
            f"Compiled with TL2cgen {c['tl2cgen']} (treelite {c['treelite']}, quantize={c['quantize']}, "
            f"{c['toolchain']}) for {c['machine']} {c['system']} {c['libc']} {c['libc_version']} (Python "
            f"{c['python']}, {c['abi']}): `compiled/{c['library']}`, {c['size_kb']} KB, single-row p50 "
            f"{c['p50_us']:.0f} us; elsewhere, or without TL2cgen, the UBJ booster "
            "(`tasks.compact.open_compact`)."
        )
    else:
        build = "Not compiled: the UBJ booster only."
    gates = "; ".join(f"{r.name} {'passed' if r.passed else 'refused'} ({r.detail})" for r in verdict.results)
    return (
        f"# {name}: compact {teacher.name}\n\n"
        f"{m.detail[0].upper() + m.detail[1:]}, from teacher {teacher.name} v{teacher.version} "
        f"(`lineage.teacher`); on the teacher's test window {primary} {m.primary:#.4g} = {m.ratio:.3f} x the "
        f"teacher's {teacher_m.primary:#.4g}, {m.size_kb:.1f} KB ({m.size_kb / teacher_m.size_kb:.2f} x), "
        f"single-row p50 {m.p50_us:.0f} us (teacher {teacher_m.p50_us:.0f} us).\n\n"
        f"Windows rebuilt from the teacher's data ({windows}).\n\n"
        f"{markdown_table(teacher_m, judged, chosen, primary)}\n\n"
        "Latency: one row at a time, in process, XGBoost `inplace_predict` on one thread.\n\n"
        f"Gates: {gates}.\n\n{build}\n\n"
        f"Load with mlflow.pyfunc.load_model('models:/{name}@champion') (XGBoost UBJ, nothing pickled)."
    )


def with_compiled(logged, compiled: Compiled | None) -> None:
    """The compiled library and its platform.json as an optional extra inside the logged model."""
    if compiled is None:
        return
    from mlflow import MlflowClient

    MlflowClient().log_model_artifacts(logged.model_id, str(compiled.folder), artifact_path=COMPILED_DIR)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mlops-compact-"))


def environment() -> dict:
    """Versions that decide what a compiled library is, for the run's params."""
    out = {"xgboost": xgb.__version__, **platform_record()}
    for module in ("treelite", "tl2cgen"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = "missing"
    out["cpu_count"] = os.cpu_count()
    return out


@mlflow_stage
def start_run(use_case: str, teacher: Teacher, name: str, gates: CompactGates, plan: CompactPlan) -> str:
    """The compaction's MLflow run (experiment `<use case>-compaction`). It carries the teacher's `param.*`
    and `window.*`: scoring and monitoring read a version's feature parameters from its run."""
    from dataclasses import asdict

    from mlflow import MlflowClient
    from mlflow.entities import Param
    from prefect import runtime

    from champion.lock import ensure_store
    from tasks import tracking

    client = MlflowClient()
    run = client.create_run(
        ensure_store(f"{use_case}-compaction"),
        run_name=f"{name}-{runtime.flow_run.name or 'local'}",
        tags={
            "use_case": use_case,
            "registered_model": name,
            "lineage.teacher": f"{teacher.name}/{teacher.version}",
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            "code_version": tracking.code_version(),
        },
    )
    inherited = {k: v for k, v in teacher.training.items() if k.startswith(("param.", "window.", "features"))}
    own = {f"gates.{k}": v for k, v in asdict(gates).items()}
    own |= {f"plan.{k}": v for k, v in asdict(plan).items()}
    own |= {f"env.{k}": v for k, v in environment().items()}
    own |= {"teacher": f"{teacher.name}/{teacher.version}", "teacher.run_id": teacher.run_id or ""}
    params = [Param(k, str(v)[:6000]) for k, v in {**inherited, **own}.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def version_tags(
    teacher: Teacher,
    run_id: str,
    m: Measured,
    verdict: GateVerdict,
    compiled: Compiled | None,
    candidate: CompactCandidate,
) -> dict[str, str]:
    """Lineage to the teacher, what was done, the measurements and every gate's verdict."""
    from champion.promotion import FINGERPRINT_TAG
    from tasks import tracking
    from tasks.card import GATES_TAG, gates_summary
    from tasks.register import fingerprint

    lineage = {
        k: v
        for k, v in teacher.tags.items()
        if k in ("lineage.data_digest", "lineage.data_source", "lineage.windows", "validation.raw")
    }
    built = "none"
    if compiled is not None:
        c = compiled.meta
        built = (
            f"{COMPILED_DIR}/{c['library']} for {c['machine']}-{c['system']}-{c['libc']} ({c['size_kb']} KB)"
        )
    return {
        **lineage,
        "lineage.teacher": f"{teacher.name}/{teacher.version}",
        "lineage.teacher_run_id": teacher.run_id or "",
        "lineage.run_id": run_id,
        "lineage.code_version": tracking.code_version(),
        FINGERPRINT_TAG: fingerprint(
            teacher=f"{teacher.name}/{teacher.version}",
            teacher_fingerprint=teacher.tags.get(FINGERPRINT_TAG, ""),
            code=tracking.code_version(),
            candidate={k: str(v) for k, v in candidate.params.items()},
        ),
        "compact.method": candidate.method,
        "compact.detail": m.detail,
        "compact.size_kb": f"{m.size_kb:.1f}",
        "compact.ratio": f"{m.ratio:.4f}",
        "compact.trees": str(m.trees),
        "compact.nodes": str(m.nodes),
        "compact.latency_p50_us": f"{m.p50_us:.0f}",
        "compact.compiled": built,
        **({"compact.compiled_p50_us": f"{compiled.meta['p50_us']:.0f}"} if compiled is not None else {}),
        **{f"test_{k}": f"{v:.6f}" for k, v in m.metrics.items() if k not in ("tn", "fp", "fn", "tp")},
        GATES_TAG: gates_summary(verdict),
    }


@dataclass(frozen=True)
class CompactDecision:
    status: str  # "promoted" | "registered" | "refused" | "dry-run"
    summary: str


def decide(
    name: str, judged, chosen: int | None, verdict: GateVerdict | None, registration, promotion, dry_run: bool
) -> CompactDecision:
    if chosen is None:
        why = (
            "; ".join(f"{m.label}: " + ", ".join(r.detail for r in v.refusals) for m, v in judged)
            or "no candidates were built"
        )
        return CompactDecision(
            "refused", f"no compact candidate passed its gates, nothing registered ({why})"
        )
    label = judged[chosen][0].label
    if dry_run:
        return CompactDecision("dry-run", f"{label} passed; dry run: nothing registered")
    if promotion is not None:
        moved = (
            "already champion" if not promotion.moved else f"previous champion v{promotion.previous or '-'}"
        )
        return CompactDecision("promoted", f"{name} v{promotion.version} ({label}) is champion; {moved}")
    refused = "; ".join(r.detail for r in verdict.refusals) if verdict else ""
    return CompactDecision(
        "registered", f"registered {name} v{registration.version} ({label}), not promoted: {refused}"
    )


@mlflow_stage
def report_compaction(
    use_case: str,
    name: str,
    teacher: Teacher,
    teacher_m: Measured,
    judged,
    chosen: int | None,
    verdict: GateVerdict | None,
    registration,
    promotion,
    compiled: Compiled | None,
    primary: str,
    dry_run: bool,
    run_id: str,
) -> CompactDecision:
    """`compact_report.json` and metrics on the run, a Prefect artifact `compaction-<use case>`, and the event
    `mlops.model.promoted` / `mlops.model.rejected` for `<name>`."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event

    decision = decide(name, judged, chosen, verdict, registration, promotion, dry_run)
    client = MlflowClient()
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"teacher.{k}", v, now, 0)
        for k, v in (
            ("test_" + primary, teacher_m.primary),
            ("size_kb", teacher_m.size_kb),
            ("p50_us", teacher_m.p50_us),
        )
    ]
    for m, _ in judged:
        for key, value in (
            ("test_" + primary, m.primary),
            ("ratio", m.ratio),
            ("size_kb", m.size_kb),
            ("p50_us", m.p50_us),
            ("trees", m.trees),
        ):
            metrics.append(Metric(f"{m.label}.{key}", float(value), now, 0))
    if compiled is not None:
        metrics.append(Metric("compiled.p50_us", compiled.meta["p50_us"], now, 0))
    client.log_batch(run_id, metrics=[m for m in metrics if math.isfinite(m.value)])
    report = {
        "status": decision.status,
        "summary": decision.summary,
        "registered_model": name,
        "teacher": f"{teacher.name}/{teacher.version}",
        "version": registration.version if registration else None,
        "teacher_measured": teacher_m.row(),
        "candidates": [
            {**m.row(), "chosen": i == chosen, "gates": v.as_records()} for i, (m, v) in enumerate(judged)
        ],
        "gates": verdict.as_records() if verdict else None,
        "compiled": compiled.meta if compiled else None,
    }
    client.log_dict(run_id, report, "compact_report.json")
    client.set_tag(run_id, "decision", decision.status)
    client.set_tag(run_id, "decision.summary", decision.summary[:5000])
    if registration is not None:
        client.set_tag(run_id, "registered_version", registration.version)
    create_markdown_artifact(
        key=f"compaction-{use_case}",
        description=f"{name}: {decision.status}",
        markdown=f"# Compaction of {teacher.name} v{teacher.version}: {decision.status}\n\n"
        f"{decision.summary}\n\n{markdown_table(teacher_m, judged, chosen, primary)}\n\n"
        f"MLflow run: `{run_id}`\n",
    )
    promoted = decision.status == "promoted"
    payload = {
        "registered_model": name,
        "use_case": use_case,
        "teacher": f"{teacher.name}/{teacher.version}",
        "status": decision.status,
        "summary": decision.summary,
        "version": registration.version if registration else None,
        "mlflow_run_id": run_id,
    }
    if promoted:
        payload |= {"previous_version": promotion.previous, "moved": promotion.moved}
        payload["metrics"] = dict(judged[chosen][0].metrics)
    else:
        payload["refused"] = [r.name for r in verdict.refusals] if verdict else ["compact"]
    emit_event(
        event="mlops.model.promoted" if promoted else "mlops.model.rejected",
        resource={
            "prefect.resource.id": f"mlflow.registered-model.{name}",
            "prefect.resource.name": name,
            "mlops.use-case": use_case,
        },
        payload=payload,
    )
    return decision
