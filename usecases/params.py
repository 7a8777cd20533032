"""The parameter forms people fill in: every use case's run parameters (`TrainingParams`, which each use case
subclasses as its `Params`) and the forms of the monitoring, tuning and comparison commands.

The CLI's options and the Prefect deployments' forms are these models; what a use case declares with them (its
schema, model, split, gates, ...) is `usecases/spec.py`. Like it, this module imports no stage.
"""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from usecases.spec import GATE_SETTINGS, ContinualSpec, Holdout


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


# Parameters that decide gates or names, not the model: an identical rerun with other values reuses the
# version (the fingerprint is looked up within one registered model anyway).
NON_MODEL_PARAMS = frozenset(
    {"registered_model", "dry_run", "earlier_windows", "approval_hours", "challenger_on_hold", *GATE_SETTINGS}
)


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
