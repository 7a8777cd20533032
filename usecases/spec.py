"""The typed contract between a use case and the generic gated-training flow.

A use case is one module that builds a `UseCaseSpec` from its run parameters: where the data comes from,
which data checks apply, how features are made, how to split, the model, the baselines, the metrics and the
gates. The flow in `flows/gated_training.py` knows nothing else about it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, field_validator

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


class TrainingParams(BaseModel):
    """Parameters every use case accepts; use cases subclass it with their own typed options.

    The Prefect UI renders these as the form behind "Run"; descriptions and bounds show there.
    """

    data: str | None = Field(
        default=None,
        description="Path to a Parquet or CSV file. Empty: the use case's embedded default data.",
    )
    seed: int = Field(default=42, ge=0, description="Seed for data generation, sampling and training.")
    champion_margin: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="How much worse than the current champion (relative, on the primary metric) a candidate "
        "may be and still be promoted. 0 means 'not worse'.",
    )
    dry_run: bool = Field(
        default=False, description="Train, evaluate and gate, but neither register nor promote."
    )
    registered_model: str | None = Field(
        default=None,
        pattern=r"^[\w.-]+$",
        description="Register under this name instead of the use case's (e.g. one model per instrument).",
    )
    init: str = Field(
        default="scratch",
        pattern=r"^(scratch|champion|models:/[^/@]+(/\d+|@[\w-]+))$",
        description="Start from: scratch; champion (the current champion, scratch if none); or a registry "
        "version, models:/NAME/VERSION or models:/NAME@ALIAS. Its feature list must match.",
    )
    update: Literal["continue", "refresh"] = Field(
        default="continue",
        description="From a model: continue boosting on the new training window (early stopping as usual), "
        "or refresh: keep its trees and refit their leaves on the new window.",
    )
    update_rounds: int | None = Field(
        default=None,
        ge=1,
        le=20000,
        description="Continue: at most this many trees added (default: the use case's rounds). "
        "Refresh adds none.",
    )
    earlier_windows: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Forgetting gate: the K windows (as long as the test window) before the test window, "
        "where candidate and champion are scored on the rows neither trained on; 0: off.",
    )
    forgetting_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Forgetting gate: how much worse than the champion on the earlier windows (relative to "
        "the champion there) a candidate may be.",
    )
    adapt_margin: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description="Forgetting gate: a candidate worse on the earlier windows but better than the champion "
        "on the newest by more than this (relative) is a trade-off a person decides; otherwise refused.",
    )
    approval_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 30,
        description="A trade-off waits this long for a person (Prefect form or `mlops approve`), then is "
        "refused. Runs without a Prefect server refuse at once.",
    )
    challenger_on_hold: bool = Field(
        default=True,
        description="A registered candidate that only the champion or forgetting gate refused becomes the "
        "challenger: the model server scores it in shadow and live evidence may promote it.",
    )
    refit: bool = Field(
        default=False,
        description="After the gates' candidate is trained, refit it with the rounds early stopping chose on "
        "every labelled row up to the newest label; the refit is what is registered and served.",
    )
    replay: int | None = Field(
        default=0,
        ge=0,
        description="Replay: this many days (steps) of history before the training window join it, every "
        "positive kept and negatives sampled (replay_negatives); 0: none; empty: all history.",
    )
    replay_negatives: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Replay: the share of older negatives kept (weighted up by its inverse).",
    )
    half_life: float | None = Field(
        default=None,
        gt=0,
        description="Recency: a row this many days (steps) older than the newest training row weighs half; "
        "empty: every row the same.",
    )
    holdout_share: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Held-out keys (the use case's, e.g. cards): this share never trains any model, so "
        "champion and forgetting gates always have rows neither model saw; 0: none.",
    )
    slice_margin: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Slice gate: how much worse (relative, primary metric) than the champion's same group "
        "any group with enough support may be.",
    )
    slice_min_rows: int = Field(
        default=200, ge=1, description="Slice gate: a group with fewer test rows is reported, not gated."
    )
    slice_min_positives: int = Field(
        default=30,
        ge=0,
        description="Slice gate, binary problems: a group with fewer positives is reported, not gated.",
    )
    slice_min_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Disparity gate: the smallest min/max ratio between groups of a slice (recall and "
        "selection rate for classifiers, e.g. 0.8 = four-fifths rule); 0: reported, not gated.",
    )
    executor: Literal["local", "dask"] | None = Field(
        default=None,
        description="Where the data stages run: local (this process) or dask (a Dask cluster: "
        "MLOPS_DASK_ADDRESS, else a LocalCluster of MLOPS_DASK_WORKERS process workers). "
        "Empty: MLOPS_EXECUTOR, else local.",
    )
    params_from: str | None = Field(
        default=None,
        pattern=r"^study:[\w.-]+(#\d+)?$",
        description="Model parameters from a tuning study: study:NAME (its best trial) or study:NAME#TRIAL; "
        "its tuned values replace the spec's. Empty: the spec's own.",
    )

    def gate_options(self) -> dict:
        """The gate settings every `GateSpec` takes from the run's parameters (`GATE_SETTINGS`)."""
        return {name: getattr(self, name) for name in GATE_SETTINGS}

    def continual(self, holdout_key: str | None = None) -> ContinualSpec:
        """How this run keeps learning (`ContinualSpec`), from its parameters; `holdout_key`: the use case's
        column whose values are held out (none: no holdout)."""
        holdout = Holdout(holdout_key, self.holdout_share) if holdout_key and self.holdout_share > 0 else None
        return ContinualSpec(
            refit=self.refit,
            replay=self.replay,
            replay_negatives=self.replay_negatives,
            half_life=self.half_life,
            holdout=holdout,
            approval_timeout=timedelta(hours=self.approval_hours),
        )


def with_default(name: str, value: object):
    """`TrainingParams`' field `name` with another default, for a use case's `Params` (its description and
    bounds kept): e.g. `refit: bool = with_default("refit", True)`."""
    field_info = copy.copy(TrainingParams.model_fields[name])
    field_info.default = value
    return field_info


class MonitorParams(BaseModel):
    """A monitoring run: the champion (or a pinned version) watched on new data. The Prefect UI renders these
    as the monitoring deployment's form; `mlops monitor` as options. Thresholds left empty come from the use
    case's spec (`UseCaseSpec.monitoring`)."""

    data: str | None = Field(
        default=None,
        description="Parquet or CSV of new raw records, with the history their features need before them; "
        "labels may be missing or empty where not known yet.",
    )
    version: str | None = Field(default=None, description="Monitor this registry version (default: --alias).")
    alias: str = Field(default="champion", description="Monitor the version this alias points to.")
    registered_model: str | None = Field(
        default=None, description="Registered model (default: the use case's)."
    )
    since: str | None = Field(
        default=None,
        description="First day monitored (YYYY-MM-DD); earlier rows only feed features. Empty: after the "
        "use case's feature history from the start of the data.",
    )
    psi: float | None = Field(default=None, gt=0, description="Drift: PSI above which a feature moved.")
    drift_share: float | None = Field(
        default=None, gt=0, le=1, description="Drift: share of moved features that means the inputs drifted."
    )
    metric_margin: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Degraded: relative worsening of the primary metric vs its test value.",
    )
    min_rows: int | None = Field(default=None, ge=1, description="Fewer rows: estimates are not trusted.")


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
# Parameters that decide gates or names, not the model: an identical rerun with other values reuses the
# version (the fingerprint is looked up within one registered model anyway).
NON_MODEL_PARAMS = frozenset(
    {"registered_model", "dry_run", "earlier_windows", "approval_hours", "challenger_on_hold", *GATE_SETTINGS}
)


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


class TuneParams(BaseModel):
    """A tuning run (`mlops tune`, the `<use case>-tuning` deployments): the study and its budget. The use
    case's other parameters keep their defaults; the winner is trained with them and the tuned values."""

    data: str | None = Field(
        default=None,
        description="Path to a Parquet or CSV file. Empty: the use case's embedded default data.",
    )
    study: str | None = Field(
        default=None,
        pattern=r"^[\w.-]+$",
        description="Study name: an existing study continues (its trials kept); empty: a new one, "
        "<use case>-<date and time>.",
    )
    trials: int | None = Field(default=None, ge=1, le=10_000, description="Budget: trials this run adds.")
    timeout: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600, description="Budget: seconds; no trial starts after it."
    )
    parallel: int = Field(default=2, ge=1, le=64, description="Trials at once (threads or Dask workers).")
    seed: int = Field(default=42, ge=0, description="Seed of the sampler and of XGBoost.")
    executor: Literal["local", "dask"] | None = Field(
        default=None,
        description="Where trials run: local (threads of this process) or dask (MLOPS_DASK_ADDRESS, else a "
        "LocalCluster of MLOPS_DASK_WORKERS process workers). Empty: MLOPS_EXECUTOR, else local.",
    )
    train_winner: bool = Field(
        default=True,
        description="After the search: train the winner through every gate (when it beats the defaults).",
    )


class CompareParams(BaseModel):
    """A comparison of champion and challenger on live pairs (`mlops compare`, the `<use case>-challenger`
    deployments): which pairs, which labels, and whether the use case's `ChallengerRule` may act."""

    since: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="First day of pairs compared (YYYY-MM-DD, UTC, on the event's time). Empty: every pair "
        "the current champion and challenger scored together.",
    )
    labels: str | None = Field(
        default=None,
        description="Parquet or CSV of labels beside those recorded (POST /labels): the event id and the "
        "label columns as the use case names them (e.g. TRANSACTION_ID, TX_FRAUD), or pair_id and label.",
    )
    decide: bool = Field(
        default=True,
        description="Act on the rule: promote a challenger that is better, retire one that is worse. Off: "
        "report only.",
    )
    registered_model: str | None = Field(
        default=None, pattern=r"^[\w.-]+$", description="Registered model (default: the use case's)."
    )

    @field_validator("since")
    @classmethod
    def _a_real_day(cls, value: str | None) -> str | None:
        if value is not None:
            date.fromisoformat(value)  # 2024-02-30 matches the pattern, yet is no day
        return value


@dataclass(frozen=True)
class UseCaseSpec:
    name: str
    registered_model: str
    problem: Problem
    description: str
    # Data source: params -> raw frame. Raises tasks.ingest.DataReadError when it cannot read.
    load: Callable[[TrainingParams], pd.DataFrame]
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
