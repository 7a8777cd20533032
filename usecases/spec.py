"""The typed contract between a use case and the generic gated-training flow.

A use case is one module that builds a `UseCaseSpec` from its run parameters (`usecases/params.py`, the forms
people fill in): where the data comes from, which data checks apply, how features are made, how to split, the
model, the baselines, the metrics and the gates. The flow in `flows/gated_training.py` knows nothing else
about it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # types only: `Params` must import fast (CLI help, deployment forms)
    import numpy as np
    import pandas as pd

    from usecases.search_space import TuningSpec

Problem = Literal["binary", "regression"]


@dataclass(frozen=True)
class Cadence:
    """When a deployment runs on its own: a cron line, its time zone and the sentence people read."""

    cron: str
    timezone: str
    note: str


@dataclass(frozen=True)
class Baseline:
    """A simple reference model the candidate must beat, fitted on the same training window.

    `fit(train_frame, feature_columns, target) -> predict(frame) -> np.ndarray`: predictions on the same
    scale as the candidate's (probabilities for binary problems, target units for regression).
    """

    name: str
    fit: Callable[[pd.DataFrame, list[str], str], Callable[[pd.DataFrame], np.ndarray]]
    description: str = ""


@dataclass(frozen=True)
class Slice:
    """A partition of the test rows into named groups, scored and gated group by group.

    `groups(frame, train) -> labels`, one per row of `frame`; `train` is the training window, for cut
    points learnt there (e.g. volatility terciles). A slice with one group in the test window is skipped.
    """

    name: str
    groups: Callable[[pd.DataFrame, pd.DataFrame], Sequence[object]]
    description: str = ""


@dataclass(frozen=True)
class Metrics:
    """How a use case scores predictions.

    `compute(frame, predictions, context)` returns metric name -> value for the test window (no prefix;
    the flow adds `test_` and `<baseline>_test_`). `context` carries what was decided on validation, such
    as a decision threshold, so baselines and champions are scored the same way.
    `primary` is the metric gates compare against baselines and the champion.
    """

    compute: Callable[[pd.DataFrame, np.ndarray, Mapping[str, float]], dict[str, float]]
    primary: str
    greater_is_better: bool
    # Decided on the validation window (e.g. a decision threshold), passed to `compute` as `context`.
    calibrate: Callable[[pd.DataFrame, np.ndarray], dict[str, float]] | None = None
    # The columns `compute` reads (those present are passed). Slices hand it each group's rows of only these:
    # a copy of every column per group is what held memory on a large test window. Empty: every column.
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """The XGBoost candidate: booster parameters and training rounds (early stopping on validation)."""

    params: Mapping[str, object]
    num_boost_round: int = 500
    early_stopping_rounds: int = 50
    # Binary problems: weight positives by the negative/positive ratio of the training window.
    balance_classes: bool = False
    # Regression: the booster learns the target through this transform ("log": log(target), predictions
    # exp(...)). The registered model applies the inverse itself (a pyfunc from `tasks/pyfunc_model.py`).
    target_transform: Literal["identity", "log"] = "identity"
    # Regression: a linear base margin, least squares of the (transformed) target on these columns over the
    # training window; the booster learns a correction to it (e.g. boosting from HAR's forecast). The
    # registered model applies it itself.
    offset_features: tuple[str, ...] = ()
    # Walk-forward model selection: every combination of these booster parameters is scored on `folds`
    # rolling-origin folds inside the training window (logged as `model_selection.json`); the best is
    # fitted. Empty or folds=0: `params` as given.
    search: Mapping[str, Sequence[object]] = field(default_factory=dict)
    folds: int = 0


@dataclass(frozen=True)
class Schema:
    """What a stage needs to know about the feature table: the problem, the columns and their roles."""

    problem: Problem
    features: tuple[str, ...]
    target: str
    time_column: str
    id_columns: tuple[str, ...]


# --- split, gates, monitoring, compaction ---------------------------------------------------------------


@dataclass(frozen=True)
class SplitSpec:
    test: int
    validation: int
    gap: int
    # None: everything before the validation window (minus the gap).
    train: int | None = None
    unit: Literal["days", "steps"] = "days"
    # Last day/step of the test window, inclusive; None: the end of the data.
    end: str | None = None
    # Binary problems: each window must contain at least this many positives.
    min_positives: int = 1


@dataclass(frozen=True)
class AbsoluteGate:
    metric: str
    threshold: float
    greater_is_better: bool = True


@dataclass(frozen=True)
class BaselineGate:
    """The candidate's `metric` must beat each named baseline's by `relative_margin` (0.05 = 5 % better)."""

    metric: str
    baselines: tuple[str, ...]
    greater_is_better: bool = True
    relative_margin: float = 0.0


@dataclass(frozen=True)
class GateSpec:
    absolute: tuple[AbsoluteGate, ...] = ()
    baseline: tuple[BaselineGate, ...] = ()
    # Champion gate on the primary metric: the candidate may be at most this much worse (relative).
    champion_margin: float = 0.0
    # Forgetting: (candidate - champion) on the earlier windows may be at most this much below zero, relative
    # to the champion there (a margin in metric units would mean nothing for MAE).
    forgetting_margin: float = 0.05
    # ... unless the candidate gains more than this (relative) on the newest window: then a person decides.
    adapt_margin: float = 0.1
    # Slices: no group with at least these rows (and positives, binary) may be worse than the champion's
    # same group by more than this (relative); groups below the support are reported, not gated.
    slice_margin: float = 0.1
    slice_min_rows: int = 200
    slice_min_positives: int = 30
    # Disparity within a slice (min/max over groups): refused below this; 0 reports it only.
    slice_min_ratio: float = 0.0


@dataclass(frozen=True)
class MonitorThresholds:
    """When a statistic means "moved" or "worse"; defaults are the usual rules of thumb.

    `psi`/`score_psi`: 0.1 is a small shift, > 0.2 a significant one. `ks`: sup distance between CDFs.
    `wasserstein`: mass moved, in units of the reference's standard deviation. `drift_share`: share of drifted
    features that makes the inputs "drifted". `metric_margin`: relative worsening of the primary metric vs the
    version's test value that means "degraded". `min_rows`: fewer scored rows and the estimates are not
    trusted. `absolute_minimum`: the worst acceptable primary metric (a floor when greater is better, a
    ceiling otherwise), or None.
    """

    psi: float = 0.2
    ks: float = 0.1
    wasserstein: float = 0.1
    drift_share: float = 0.3
    score_psi: float = 0.2
    metric_margin: float = 0.1
    min_rows: int = 500
    absolute_minimum: float | None = None
    # One feature past this multiple of its thresholds is drift on its own (new terminals move only the
    # terminal counts; night activity only the night flag), whatever the share of drifted features.
    feature_severity: float = 2.0
    # Features reported but never counted as drifted: those whose share depends on which calendar days a
    # window covers (a weekend flag over a 3-day window), which no retraining would change.
    exempt: tuple[str, ...] = ()


@dataclass(frozen=True)
class Holdout:
    """Keys (fraud: cards) no model trains on, by a salted hash: the same in every run (`label` on the
    version), so every window has rows that models honouring it never saw."""

    key: str
    share: float
    salt: str = "holdout-1"

    @property
    def label(self) -> str:
        return f"{self.key} {self.share:g} {self.salt}"


@dataclass(frozen=True)
class ContinualSpec:
    """How a model keeps learning (the fields of `TrainingParams` of the same names say how each works)."""

    refit: bool = False
    replay: int | None = 0
    replay_negatives: float = 1.0
    half_life: float | None = None
    holdout: Holdout | None = None
    approval_timeout: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class OnlineSpec:
    """Features computed one raw event at a time from per-key state (the model server's POST /transactions):
    each key's events within `history`, kept by `serving/online/`, and the use case's `compute`."""

    event_id: str  # integer id: an event posted twice counts once; labels name it
    time: str
    keys: tuple[str, ...]  # integer columns whose earlier events the features read (fraud: card, terminal)
    values: tuple[str, ...]  # numeric raw columns kept per event for `compute` (fraud: TX_AMOUNT)
    label: str  # arrives late (POST /labels); kept per event, NaN until known
    history: timedelta  # how far back `compute` reads (longest window plus the label delay)
    # (event, {key: that key's earlier events, time-ordered}) -> {feature: value}. Events are NumPy records
    # with `t` (int64 ns), `id`, each of `values` and `label`; "earlier" is (time, id) before the event's.
    compute: Callable[[np.void, Mapping[str, np.ndarray]], Mapping[str, float]]


@dataclass(frozen=True)
class ChallengerRule:
    """When live evidence moves the `challenger` alias (`mlops compare`, the `<use case>-challenger` flow):
    champion and challenger are scored on the same labelled pairs (`tasks/challenger/`).

    Wait below `min_pairs` labelled pairs (binary: or `min_positives` positives). Promote when the challenger
    beats the champion on `metric` by at least `min_gain` (relative) and the `confidence` interval of the
    paired bootstrap of the difference (`resamples`, seeded) lies above zero. Retire when that interval lies
    below zero (significantly worse), or when after `retire_after_pairs` labelled pairs it still is not
    better. `daily`: metrics reported per day beside the window's (empty: `metric`)."""

    metric: str | None = None  # None: the spec's primary metric
    min_pairs: int = 1000
    min_positives: int = 30
    min_gain: float = 0.0
    confidence: float = 0.95
    resamples: int = 1000
    retire_after_pairs: int | None = 20_000  # None: only a significantly worse challenger is retired
    daily: tuple[str, ...] = ()
    seed: int = 42

    def __post_init__(self):
        problems = [
            what
            for what, bad in (
                ("min_pairs >= 1", self.min_pairs < 1),
                ("min_positives >= 0", self.min_positives < 0),
                ("min_gain >= 0", self.min_gain < 0),
                ("0.5 <= confidence < 1", not 0.5 <= self.confidence < 1),
                ("resamples >= 100", self.resamples < 100),
                (
                    "retire_after_pairs >= min_pairs",
                    (self.retire_after_pairs or self.min_pairs) < self.min_pairs,
                ),
            )
            if bad
        ]
        if problems:
            raise ValueError(f"ChallengerRule: needs {', '.join(problems)}")


# The GateSpec fields a run sets from its parameters (same names in `TrainingParams`).
GATE_SETTINGS = tuple(f.name for f in fields(GateSpec) if f.name not in ("absolute", "baseline"))


# --- compaction (tasks/compaction/): gates and plan, the compaction deployment's form --------------------


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


@dataclass(frozen=True)
class UseCaseSpec:
    name: str
    registered_model: str
    problem: Problem
    description: str
    # Data source: the run's parameters (the use case's `Params`, a `usecases.params.TrainingParams`, which
    # sits above this module) -> raw frame. Raises tasks.ingest.DataReadError when it cannot read.
    load: Callable[[BaseModel], pd.DataFrame]
    # Data checks (data_checks/): raw frame -> GX ExpectationSuite, feature frame -> suite.
    raw_suite: Callable[[], object]
    feature_suite: Callable[[], object]
    # raw frame -> feature table (one row per example, with time, id, target and feature columns)
    build_features: Callable[[pd.DataFrame], pd.DataFrame]
    features: tuple[str, ...]
    target: str
    time_column: str
    id_columns: tuple[str, ...]
    split: SplitSpec
    model: ModelSpec
    baselines: tuple[Baseline, ...]
    metrics: Metrics
    gates: GateSpec
    # Optional: filter applied to the test window using the full table (e.g. the fraud handbook removes
    # cards already known to be compromised). (test_frame, full_table, split) -> test_frame
    test_filter: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # Optional: raw frame -> the frame the raw suite validates, with derived columns for cross-row checks
    # (e.g. days since the previous row of the same ticker); the data itself goes on unchanged.
    raw_check_view: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    # Batch scoring and serving: the name of the output column (a probability for binary problems).
    score_column: str = "prediction"
    # How far back `build_features` looks from a row (e.g. the longest rolling window plus a label delay):
    # rows older than this do not change a row's features, so batch scoring can process a time-ordered
    # input in chunks carrying only this much history. None: the input is scored in one piece.
    feature_history: timedelta | None = None
    # Features that read only the rows sharing one key, per key column (fraud: the customer's spending on
    # CUSTOMER_ID, the terminal's risk on TERMINAL_ID); a feature not listed reads only its own row. With it
    # the Dask executor computes features on key shards (every row of some keys, the whole time span) rather
    # than on time chunks carrying `feature_history`, so no task holds more than a share of the table.
    feature_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Batch scoring: the suite an input to score must pass (on `raw_check_view` of it, like the raw suite).
    # None: the raw suite. Set it when the raw suite also asks what only training needs (years of history).
    score_suite: Callable[[], object] | None = None
    # Batch scoring and monitoring: the suite their feature tables must pass. None: the feature suite. Set it
    # when the feature suite also checks the label, which new data may not have yet.
    score_feature_suite: Callable[[], object] | None = None
    # Monitoring thresholds (`tasks/monitoring/`); None: their defaults. The primary metric's absolute gate,
    # when declared, is the floor below which a monitored version is "degraded".
    monitoring: MonitorThresholds | None = None
    # Slices: per-group test metrics for candidate, baselines and champion, and the slice gates.
    slices: tuple[Slice, ...] = ()
    # Refit, replay, recency and held-out keys (`ContinualSpec`); default: none of them.
    continual: ContinualSpec = field(default_factory=ContinualSpec)
    # Real-time scoring from raw events (`OnlineSpec`); None: the model server's POST /transactions says the
    # use case cannot be computed online.
    online: OnlineSpec | None = None
    # Reason codes: (feature, the row's feature values) -> a sentence a person reads ("customer's 1-day
    # spend 4.2x its 30-day average"); None: "<feature> = <value>".
    reason: Callable[[str, Mapping[str, float]], str] | None = None
    # What `mlops tune` searches (`TuningSpec`); None: the use case cannot be tuned.
    tuning: TuningSpec | None = None
    # When live evidence promotes or retires the challenger (`ChallengerRule`).
    challenger: ChallengerRule = field(default_factory=ChallengerRule)

    @property
    def scoring_suites(self) -> tuple[Callable[[], object], Callable[[], object]]:
        """The suites new data to score or monitor must pass: the raw one, then the feature one."""
        return self.score_suite or self.raw_suite, self.score_feature_suite or self.feature_suite

    @property
    def schema(self) -> Schema:
        columns = (tuple(self.features), self.target, self.time_column, tuple(self.id_columns))
        return Schema(self.problem, *columns)
