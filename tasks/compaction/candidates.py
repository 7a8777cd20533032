"""Candidates: smaller boosters made from the teacher, only candidates (the gates decide).

- Distillation (Bucilă, Caruana & Niculescu-Mizil 2006): a booster of few, shallow trees fitted to the
  teacher's margins on the teacher's training window (binary: its log-odds; regression: its prediction in
  the space it learns in, from the same base margin), under the teacher's objective; early stopping on the
  validation window's true labels with the teacher's eval metric.
- Cutting: the teacher's first n trees (`booster[:n]`).
- Pruning: every tree pruned to a smaller depth by XGBoost's `prune` updater, then repacked (deleted nodes
  dropped from the saved model, else the file does not shrink).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xgboost as xgb

from champion.store import run_logger
from tasks import pyfunc_model
from tasks.candidate import OBJECTIVES
from tasks.compaction.booster import (
    LINK_FUNCTIONS,
    LINKS,
    is_transformed,
    objective_of,
    predict_with,
    tree_stats,
)
from tasks.stage import stage

if TYPE_CHECKING:
    from tasks.compaction.teacher import Teacher
    from tasks.split import Splits
    from usecases.spec import CompactPlan, Schema


@dataclass(frozen=True)
class CompactCandidate:
    """A compact booster with the teacher's config. Shaped like `tasks.candidate.Candidate` where
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
        return is_transformed(self.config)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_with(self.booster, frame, self.config)


@dataclass(frozen=True)
class Student:
    """A distilled student's shape and how it is trained."""

    depth: int
    max_trees: int  # early stopping may keep fewer
    eta: float = 0.3
    early_stopping_rounds: int = 20
    seed: int = 42
    eval_metric: str | None = None  # the teacher's; None: the problem's default (tasks.candidate.OBJECTIVES)
    nthread: int = 2


def teacher_margin(booster: xgb.Booster, frame: pd.DataFrame, config: dict) -> np.ndarray:
    """The teacher's raw score before its link: log-odds for binary:logistic; for regression the (transformed)
    target, from the base margin when there is one."""
    matrix = xgb.DMatrix(
        frame[list(config["features"])], base_margin=pyfunc_model.offset_margin(frame, config.get("offset"))
    )
    return booster.predict(matrix, output_margin=True).astype(np.float64)


def distill(
    teacher: xgb.Booster, splits: Splits, config: dict, schema: Schema, student: Student
) -> CompactCandidate:
    """A student of at most `max_trees` trees of depth `depth` fitted to the teacher's margins on the training
    window by squared error ("matching logits", Ba & Caruana 2014; on the handbook students kept 0.99-1.00 of
    the teacher's AP this way, 0.98 with its probabilities as binary:logistic labels). It keeps the teacher's
    objective, so its output goes through the same link (probabilities for binary:logistic). Early stopping on
    the validation window's true labels with the teacher's eval metric."""
    objective = objective_of(teacher)
    if objective not in LINKS:
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
        "eval_metric": student.eval_metric or OBJECTIVES[schema.problem]["eval_metric"],
        "max_depth": student.depth,
        "eta": student.eta,
        "seed": student.seed,
        "nthread": student.nthread,
    }
    if offset[0] is None:  # start from the teacher's mean margin (a base margin replaces base_score)
        params["base_score"] = float(LINK_FUNCTIONS[LINKS[objective]](target.mean()))
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=student.max_trees,
        evals=[(dval, "validation")],
        obj=lambda margin, _: (margin - target, np.ones_like(margin)),  # squared error to the teacher's
        early_stopping_rounds=student.early_stopping_rounds,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    trees = booster.num_boosted_rounds()
    return CompactCandidate(
        f"student-d{student.depth}",
        "distilled",
        f"distilled: {trees} trees of depth <= {student.depth} fitted to the teacher's margins",
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


@stage
def build_candidates(teacher: Teacher, splits: Splits, schema: Schema, plan: CompactPlan) -> list:
    """Students, cuts and depth-pruned teachers, as `plan` asks; only candidates: the gates decide."""
    log = run_logger()
    nthread = int(teacher.training.get("model.nthread", 2))
    eval_metric = teacher.training.get("model.eval_metric")
    candidates = []
    for depth, max_trees in plan.students:
        student = Student(
            int(depth), int(max_trees), plan.student_eta, plan.early_stopping_rounds, plan.seed, eval_metric,
            nthread,
        )  # fmt: skip
        started = time.perf_counter()
        candidates.append(distill(teacher.booster, splits, teacher.config, schema, student))
        log.info("%s in %.1f s", candidates[-1].detail, time.perf_counter() - started)
    total = teacher.booster.num_boosted_rounds()
    for trees in sorted({max(1, round(total * share)) for share in plan.cuts}):
        if trees < total:
            candidates.append(cut(teacher.booster, trees, teacher.config))
    candidates += _pruned(teacher, splits, schema, plan.prune_depths, nthread)
    log.info("%d candidates: %s", len(candidates), ", ".join(c.label for c in candidates))
    return candidates


def _pruned(
    teacher: Teacher, splits: Splits, schema: Schema, depths: tuple[int, ...], nthread: int
) -> list[CompactCandidate]:
    """The teacher pruned to each of `depths` that is shallower than it."""
    deepest = tree_stats(teacher.booster)["depth"]
    y = splits.train[schema.target].to_numpy(dtype=np.float64)
    if schema.problem != "binary":
        y = pyfunc_model.forward(y, teacher.config.get("target_transform", "identity"))
    # The prune updater reads no gradients: a few rows drive its update pass as well as all of them.
    data = xgb.DMatrix(splits.train[list(teacher.features)].head(1000), label=y[:1000])
    return [
        prune_depth(teacher.booster, int(depth), teacher.eta, data, teacher.config, nthread)
        for depth in sorted(set(depths))
        if depth < deepest
    ]
