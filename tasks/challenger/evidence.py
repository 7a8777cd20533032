"""Paired evidence: the champion and the challenger scored on the same labelled live events.

    the pairs both current versions scored ⋈ the labels (recorded by POST /labels, plus a file) on pair_id
    → the use case's test population (`spec.test_filter`) → the spec's metrics for both on the same rows,
    each version at its own operating threshold → alert rates, disagreement and McNemar's exact test at the
    thresholds (binary problems) → a seeded paired bootstrap of the rule's metric's difference → per day

Everything a use case decides comes through its spec: the metrics (`spec.metrics.compute`), the target and
time columns, the event id and label names (`spec.online`) and the rule (`spec.challenger`); the rows a
version is scored on are never chosen by its scores, so both are judged on exactly the same events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from champion import store
from champion.challenger import current_challenger
from champion.loading import resolve_version, training_params
from champion.promotion import current_champion
from tasks.challenger.pairs import read_labels, read_pairs
from tasks.ingest import DataReadError, read_table
from tasks.stage import stage
from usecases import spec_module
from usecases.spec import ChallengerRule, UseCaseSpec
from usecases.vocabulary import CHALLENGER, CHAMPION

ROLES = ("champion", "challenger")
THRESHOLD_METRIC = "test_threshold"  # a binary version's operating threshold, as its evaluation logged it


class ComparisonInputError(ValueError):
    """Nothing to compare (no challenger, an unknown model) or a labels file that does not fit: nothing was
    compared or moved."""


@dataclass(frozen=True)
class Evidence:
    """What the pairs say. `metrics[role]` are the spec's metrics on the compared rows; `gain` is the rule's
    metric's improvement of the challenger (positive: better, whichever way the metric points), with its
    paired-bootstrap `interval` at `rule.confidence` and `win_share` (resamples where the challenger won)."""

    use_case: str
    registered_model: str
    champion: str
    challenger: str
    since: str | None
    problem: str
    metric: str
    greater_is_better: bool
    rule: ChallengerRule
    counts: dict[str, int]  # recorded, scored (by both), labelled, compared, positives
    thresholds: dict[str, float] = field(default_factory=dict)  # binary: each role's operating threshold
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    gain: float | None = None
    relative_gain: float | None = None
    interval: tuple[float, float] | None = None
    win_share: float | None = None
    mcnemar: dict[str, float] | None = None
    disagreement: float | None = None
    daily: list[dict] = field(default_factory=list)
    window: tuple[str, str] | None = None  # first and last compared event

    @property
    def compared(self) -> int:
        return self.counts.get("compared", 0)

    @property
    def positives(self) -> int | None:
        return self.counts.get("positives") if self.problem == "binary" else None

    def to_dict(self) -> dict:
        return asdict(self)


# --- which versions, which spec --------------------------------------------------------------------------


def current_pair(client: MlflowClient, name: str) -> tuple[str, str]:
    """The current champion and challenger of `name`; `ComparisonInputError` when either is missing."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ComparisonInputError(f"there is no registered model {name!r}") from None
    champion, challenger = current_champion(client, name), current_challenger(client, name)
    if champion is None or challenger is None:
        missing = " and ".join(a for a, v in ((CHAMPION, champion), (CHALLENGER, challenger)) if v is None)
        raise ComparisonInputError(
            f"{name} has no @{missing}: nothing to compare (make one with `mlops challenge`)"
        )
    return champion, challenger


def comparison_spec(use_case: str, name: str, champion: str) -> UseCaseSpec:
    """The use case's spec as the champion was trained with it (the target, metrics and population its test
    metrics had). A champion whose parameters cannot be read is an error naming it
    (`TrainingParamsUnreadable`, exit 2), never a comparison under the defaults."""
    module = spec_module(use_case)
    params = training_params(module, name, champion, resolve_version(name, champion).run_id)
    return module.build_spec(params.model_copy(update={"registered_model": name}))


def operating_threshold(client: MlflowClient, name: str, version: str) -> float:
    """A binary version's decision threshold: its `test_threshold` tag, else its run's `test_threshold`
    metric (calibrated on validation, `tasks/evaluate.py`), else 0.5."""
    found = client.get_model_version(name, version)
    if THRESHOLD_METRIC in found.tags:
        return float(found.tags[THRESHOLD_METRIC])
    if found.run_id:
        value = client.get_run(found.run_id).data.metrics.get(THRESHOLD_METRIC)
        if value is not None and np.isfinite(value):
            return float(value)
    return 0.5


# --- the rows: pairs of these versions, labelled -----------------------------------------------------------


def _as_ids(values: pd.Series) -> pd.Series:
    """Event ids as the text a pair records: integral numbers without a decimal point."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all() and (numbers % 1 == 0).all():
        return numbers.astype("int64").astype(str)
    return values.astype(str)


def label_file(spec: UseCaseSpec, path: str) -> pd.DataFrame:
    """`pair_id`, `label` from a Parquet or CSV file naming them as the use case does (the event id and
    label of `spec.online`, the target) or as pairs do (`pair_id`, `label`)."""
    frame = read_table(path)
    ids = ["pair_id", *((spec.online.event_id,) if spec.online else ())]
    labels = ["label", *((spec.online.label,) if spec.online else ()), spec.target]
    id_column = next((c for c in ids if c in frame.columns), None)
    label_column = next((c for c in labels if c in frame.columns), None)
    if id_column is None or label_column is None:
        raise DataReadError(
            f"{path}: a labels file needs an id column ({' or '.join(ids)}) and a label column "
            f"({' or '.join(dict.fromkeys(labels))}); it has {', '.join(map(str, frame.columns))}"
        )
    out = pd.DataFrame({"pair_id": _as_ids(frame[id_column]), "label": frame[label_column]})
    return out[out["label"].notna()]


def _labels(spec: UseCaseSpec, name: str, path: str | None) -> pd.DataFrame:
    """The latest label per pair: recorded ones, then the file's (which win: they were given explicitly)."""
    recorded = read_labels(name)[["pair_id", "label"]]
    parts = [recorded.assign(pair_id=recorded["pair_id"].astype(str))]
    if path:
        parts.append(label_file(spec, path))
    labels = pd.concat(parts, ignore_index=True).dropna(subset=["label"])
    return labels.drop_duplicates("pair_id", keep="last")


def _check_labels(spec: UseCaseSpec, labels: pd.Series) -> pd.Series:
    values = pd.to_numeric(labels, errors="coerce")
    if spec.problem == "binary":
        bad = ~values.isin([0, 1])
        if bad.any():
            shown = ", ".join(map(str, labels[bad].unique()[:5]))
            raise DataReadError(f"{int(bad.sum())} labels are not 0 or 1 ({shown})")
        return values.astype("int64")
    if values.isna().any():
        raise DataReadError(f"{int(values.isna().sum())} labels are not numbers")
    return values.astype("float64")


def labelled_pairs(
    spec: UseCaseSpec, pair: tuple[str, str], since: str | None, labels_path: str | None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows to compare (time-ordered: the event's fields, `champion_score`, `challenger_score`, the label
    as `spec.target`, the use case's population) and how many pairs each step kept."""
    name, (champion, challenger) = spec.registered_model, pair
    start = datetime.fromisoformat(since).replace(tzinfo=UTC) if since else None
    pairs = read_pairs(name, since=start)
    ours = (pairs["champion_version"].astype(str) == champion) & (
        pairs["challenger_version"].astype(str) == challenger
    )
    recorded = pairs[ours.to_numpy()]
    scored = recorded[recorded["champion_score"].notna() & recorded["challenger_score"].notna()]
    scored = scored.assign(pair_id=scored["pair_id"].astype(str)).sort_values("scored_at", kind="stable")
    scored = scored.drop_duplicates("pair_id", keep="last")  # an event posted twice counts once
    frame = scored.merge(_labels(spec, name, labels_path), on="pair_id", how="inner", validate="1:1")
    frame[spec.target] = _check_labels(spec, frame.pop("label"))
    time = spec.time_column
    if time not in frame.columns or frame[time].isna().all():
        frame[time] = frame["event_time"]
    times = pd.to_datetime(frame[time], utc=True, format="ISO8601")  # naive times are UTC, as pairs say
    frame[time] = times.dt.tz_localize(None)
    frame = frame.sort_values(time, kind="stable").reset_index(drop=True)
    labelled = len(frame)
    if spec.test_filter is not None and len(frame):
        frame = spec.test_filter(frame, frame).reset_index(drop=True)  # e.g. fraud: known cards left out
    counts = {
        "recorded": len(recorded),
        "scored": len(scored),
        "labelled": labelled,
        "compared": len(frame),
    }
    if spec.problem == "binary":
        counts["positives"] = int(frame[spec.target].sum()) if len(frame) else 0
    return frame, counts


# --- the statistics ---------------------------------------------------------------------------------------


def weighted_metric(metric: str, y: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float] | None:
    """`metric` (as `tasks.evaluate` defines it) of `scores` with a weight per row, for a bootstrap resample
    given as counts per row: O(n) per resample where recomputing the spec's metrics would take 100x longer.
    None for a metric without such a form (the spec's metrics are then computed on each resample)."""
    if metric in ("mae", "rmse"):
        error = np.abs(np.asarray(scores, dtype="float64") - y)
        if metric == "mae":
            return lambda w: float(np.dot(w, error) / w.sum())
        return lambda w: float(np.sqrt(np.dot(w, error**2) / w.sum()))
    if metric != "average_precision":
        return None
    # scikit-learn's average precision with sample weights: thresholds at each distinct score, descending
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked, positive = np.asarray(scores)[order], np.asarray(y, dtype="float64")[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]

    def average_precision(w: np.ndarray) -> float:
        weights = w[order]
        tp = np.cumsum(weights * positive)[last]
        seen = np.cumsum(weights)[last]
        if tp[-1] <= 0:
            return float("nan")
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        return float(np.sum(np.diff(tp / tp[-1], prepend=0.0) * precision))

    return average_precision


def paired_bootstrap(
    value: Callable[[str, np.ndarray, np.ndarray], float],
    n: int,
    greater_is_better: bool,
    rule: ChallengerRule,
) -> tuple[tuple[float, float], float, int]:
    """The challenger's gain over the champion on `rule.resamples` resamples of the same rows for both
    (`value(role, rows, counts)`): its percentile interval at `rule.confidence`, the share of resamples the
    challenger won, and how many resamples had a defined value."""
    rng = np.random.default_rng(rule.seed)
    sign = 1.0 if greater_is_better else -1.0
    gains = np.empty(rule.resamples)
    for i in range(rule.resamples):
        rows = rng.integers(0, n, n)
        counts = np.bincount(rows, minlength=n).astype("float64")
        gains[i] = sign * (value("challenger", rows, counts) - value("champion", rows, counts))
    gains = gains[np.isfinite(gains)]
    if not len(gains):
        return (float("nan"), float("nan")), float("nan"), 0
    tail = (1 - rule.confidence) / 2
    low, high = np.quantile(gains, [tail, 1 - tail])
    return (float(low), float(high)), float(np.mean(gains > 0)), len(gains)


def mcnemar(y: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of two classifiers' decisions on the same rows: the discordant pairs (only the
    champion right, only the challenger right) against an even split (two-sided binomial)."""
    from scipy.stats import binomtest  # lazy: scipy only when a comparison is tested

    champion_right, challenger_right = champion == y, challenger == y
    b = int(np.sum(champion_right & ~challenger_right))
    c = int(np.sum(challenger_right & ~champion_right))
    p = binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    return {"champion_only_right": b, "challenger_only_right": c, "p_value": float(p)}


def _metrics(spec: UseCaseSpec, frame: pd.DataFrame, scores: np.ndarray, context: Mapping) -> dict:
    try:
        metrics = spec.metrics.compute(frame, scores, context)
    except KeyError as exc:
        raise ComparisonInputError(
            f"the pairs' events lack {exc}, which the {spec.name} metrics read "
            f"({', '.join(spec.metrics.reads)})"
        ) from None
    return {k: float(v) for k, v in metrics.items() if v is not None}


def _daily(spec: UseCaseSpec, frame: pd.DataFrame, contexts: Mapping, names: tuple[str, ...]) -> list[dict]:
    days = frame[spec.time_column].dt.strftime("%Y-%m-%d").to_numpy()
    out = []
    for day in pd.unique(days):
        rows = frame[days == day]
        entry = {"day": str(day), "rows": len(rows)}
        if spec.problem == "binary":
            entry["positives"] = int(rows[spec.target].sum())
        for role in ROLES:
            metrics = _metrics(spec, rows, rows[f"{role}_score"].to_numpy("float64"), contexts[role])
            entry[role] = {m: metrics.get(m, float("nan")) for m in names}
        out.append(entry)
    return out


def compare_rows(spec: UseCaseSpec, frame: pd.DataFrame, thresholds: Mapping[str, float]) -> dict:
    """The statistics of `frame` (from `labelled_pairs`): every field of `Evidence` it decides."""
    rule, y = spec.challenger, frame[spec.target].to_numpy()
    metric = rule.metric or spec.metrics.primary
    scores = {role: frame[f"{role}_score"].to_numpy("float64") for role in ROLES}
    contexts = {role: {"threshold": thresholds[role]} if thresholds else {} for role in ROLES}
    metrics = {role: _metrics(spec, frame, scores[role], contexts[role]) for role in ROLES}
    if metric not in metrics["champion"]:
        raise ComparisonInputError(f"the rule's metric {metric!r} is not one of {spec.name}'s metrics")
    out: dict = {"metrics": metrics, "metric": metric}
    if thresholds:
        decisions = {role: (scores[role] >= thresholds[role]).astype("int64") for role in ROLES}
        for role in ROLES:
            metrics[role]["alert_rate"] = float(decisions[role].mean())
        out["disagreement"] = float(np.mean(decisions["champion"] != decisions["challenger"]))
        out["mcnemar"] = mcnemar(y, decisions["champion"], decisions["challenger"])
    sign = 1.0 if spec.metrics.greater_is_better else -1.0
    gain = sign * (metrics["challenger"][metric] - metrics["champion"][metric])
    base = abs(metrics["champion"][metric])
    out.update(gain=gain, relative_gain=gain / base if base else (np.inf if gain > 0 else 0.0))
    fast = {role: weighted_metric(metric, y, scores[role]) for role in ROLES}

    def value(role: str, rows: np.ndarray, counts: np.ndarray) -> float:
        if fast[role] is not None:
            return fast[role](counts)
        chosen = frame.iloc[rows].reset_index(drop=True)
        return _metrics(spec, chosen, scores[role][rows], contexts[role]).get(metric, float("nan"))

    interval, wins, _ = paired_bootstrap(value, len(frame), spec.metrics.greater_is_better, rule)
    out.update(interval=interval, win_share=wins)
    out["daily"] = _daily(spec, frame, contexts, rule.daily or (metric,))
    return out


@stage
def gather_evidence(use_case: str, name: str, since: str | None, labels: str | None) -> Evidence:
    """The evidence about `name`'s current champion and challenger (see the module docstring)."""
    client = MlflowClient()
    pair = current_pair(client, name)
    spec = comparison_spec(use_case, name, pair[0])
    rule = spec.challenger
    thresholds = {}
    if spec.problem == "binary":
        thresholds = {role: operating_threshold(client, name, v) for role, v in zip(ROLES, pair, strict=True)}
    frame, counts = labelled_pairs(spec, pair, since, labels)
    store.run_logger().info(
        "%s v%s (champion) vs v%s (challenger): %s",
        name,
        *pair,
        ", ".join(f"{k} {v:,}" for k, v in counts.items()),
    )
    found = dict(metric=rule.metric or spec.metrics.primary)
    binary_ok = spec.problem != "binary" or 0 < counts["positives"] < len(frame)
    if len(frame) >= 2 and binary_ok:
        found = compare_rows(spec, frame, thresholds)
    times = frame[spec.time_column]
    return Evidence(
        use_case=use_case,
        registered_model=name,
        champion=pair[0],
        challenger=pair[1],
        since=since,
        problem=spec.problem,
        greater_is_better=spec.metrics.greater_is_better,
        rule=rule,
        counts=counts,
        thresholds=thresholds,
        window=(str(times.min()), str(times.max())) if len(frame) else None,
        **found,
    )
