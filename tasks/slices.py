"""Slices: the test metrics group by group, for the candidate, the baselines and the champion.

A use case declares its slices (`UseCaseSpec.slices`: a name and a function giving each test row its group,
e.g. fraud's amount band or stock's volatility regime). Every model is scored on each group with the
calibration it got on validation (the same threshold as on the whole window), with the group's support (rows,
positives). Logged as `slice.<slice>.<group>.<metric>` (candidate), `slice.<slice>.<group>.<model>.<metric>`
(baselines, `champion`), `slice.<slice>.<group>.rows` / `.positives`, `slices.json` and `plots/slices.png`.

Disparity between the groups of a slice comes from fairlearn's `MetricFrame` (min/max ratio between groups):
for classifiers recall and selection rate at the threshold (the four-fifths rule reads the latter), for
regression the primary metric; only groups with enough support count. The slice gates are in `tasks/gate.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, selection_rate
from mlflow import MlflowClient
from sklearn.metrics import mean_absolute_error, recall_score

from champion.store import run_logger
from tasks.evaluate import _pyplot
from tasks.split import Splits
from tasks.stage import mlflow_stage

if TYPE_CHECKING:
    from tasks.evaluate import ChampionScore, Evaluation, Scored
    from usecases.spec import GateSpec, Metrics, Schema, Slice, UseCaseSpec

COUNTS = {"tn", "fp", "fn", "tp", "threshold"}


@dataclass(frozen=True)
class SliceReport:
    # slice -> group -> {"support": {"rows", "positives"}, "candidate": metrics, "baselines": {name: metrics},
    # "champion": metrics | None}
    groups: dict[str, dict[str, dict]]
    # slice -> metric -> {"ratio", "difference", "min", "max", "min_group", "max_group", "groups"}
    disparity: dict[str, dict[str, dict]] = field(default_factory=dict)
    champion_version: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def clean(label: object) -> str:
    """A group label usable in an MLflow metric name."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(label)).strip("_") or "empty"


def group_labels(s: Slice, test: pd.DataFrame, train: pd.DataFrame) -> pd.Categorical:
    """The slice's group of every test row, as a categorical of names usable in MLflow metric names (sorted;
    values that clean to the same name are one group). Codes, not a string per row: on a large test window
    the strings were the slices' largest allocation."""
    raw = np.asarray(s.groups(test, train))
    if len(raw) != len(test):
        raise ValueError(f"slice {s.name}: {len(raw)} labels for {len(test)} test rows")
    if raw.dtype == object:  # may hold None or NaN, which np.unique cannot sort
        codes, values = pd.factorize(raw, use_na_sentinel=False)
    else:
        values, codes = np.unique(raw, return_inverse=True)
    names, merged = np.unique(np.asarray([clean(v) for v in values], dtype=object), return_inverse=True)
    return pd.Categorical.from_codes(merged[codes] if len(codes) else codes, categories=names)


def group_metrics(
    frame: pd.DataFrame, models: Sequence[Scored], labels: pd.Categorical, metrics: Metrics
) -> dict[str, list[dict[str, float]]]:
    """group -> `metrics.compute` on the group's rows for each of `models` (same order), each with its own
    calibration. One copy per group of the columns `metrics.reads`, shared by the models."""
    columns = [c for c in metrics.reads if c in frame.columns] if metrics.reads else list(frame.columns)
    out = {}
    for code, group in enumerate(labels.categories):
        rows = np.flatnonzero(labels.codes == code)
        part = frame[columns].take(rows).reset_index(drop=True)
        out[group] = [
            {
                k: float(v)
                for k, v in metrics.compute(part, m.test_predictions[rows], m.context).items()
                if k not in COUNTS
            }
            for m in models
        ]
    return out


def disparity(
    y: np.ndarray,
    predictions: np.ndarray,
    labels: pd.Categorical,
    problem: str,
    threshold: float,
    eligible: Sequence[str],
) -> dict[str, dict]:
    """Between-group spread of recall and selection rate (binary) or MAE (regression), over the groups in
    `eligible` (enough support), by fairlearn's MetricFrame."""
    keep = np.isin(labels.codes, labels.categories.get_indexer(list(eligible)))
    if len(np.unique(labels.codes[keep])) < 2:
        return {}
    names = np.asarray(labels.categories, dtype=object)
    if problem == "binary":
        # MetricFrame hands each metric its group's rows by stacking them one element at a time: on 0.5 M
        # rows that took a minute and ~100 MB. Recall and selection rate depend only on the counts of
        # (group, label, decision), so it gets those as sample weights: the same values, <= 4 rows a group.
        cells = (
            pd.DataFrame(
                {
                    "group": labels.codes[keep],
                    "label": y[keep].astype(int),
                    "decision": (predictions[keep] >= threshold).astype(int),
                }
            )
            .value_counts()
            .reset_index()
        )
        weights = {"sample_weight": cells["count"].to_numpy()}
        frame = MetricFrame(
            metrics={
                "recall": lambda t, p, sample_weight: recall_score(
                    t, p, sample_weight=sample_weight, zero_division=0
                ),
                "selection_rate": selection_rate,
            },
            y_true=cells["label"].to_numpy(),
            y_pred=cells["decision"].to_numpy(),
            sensitive_features=names[cells["group"].to_numpy()],
            sample_params={"recall": weights, "selection_rate": weights},
        )
    else:
        frame = MetricFrame(
            metrics={"mae": mean_absolute_error},
            y_true=y[keep],
            y_pred=predictions[keep],
            sensitive_features=names[labels.codes[keep]],
        )
    ratios, differences = frame.ratio(method="between_groups"), frame.difference(method="between_groups")
    out = {}
    for metric in frame.by_group.columns:
        by_group = frame.by_group[metric].astype(float)
        out[metric] = {
            "ratio": float(ratios[metric]),
            "difference": float(differences[metric]),
            "min": float(by_group.min()),
            "max": float(by_group.max()),
            "min_group": str(by_group.idxmin()),
            "max_group": str(by_group.idxmax()),
            "groups": {str(k): float(v) for k, v in by_group.items()},
        }
    return out


def slice_report(
    slices: Sequence[Slice],
    splits: Splits,
    evaluation: Evaluation,
    champion: ChampionScore | None,
    metrics: Metrics,
    schema: Schema,
    gates: GateSpec,
) -> SliceReport:
    """Every model on every group of every slice (pure: no logging)."""
    test = splits.test
    y = test[schema.target].to_numpy()
    have_champion = champion is not None and champion.scored is not None
    names = list(evaluation.baselines)
    models = [evaluation.candidate, *evaluation.baselines.values()]
    if have_champion:
        models.append(champion.scored)
    groups, disparities, skipped = {}, {}, {}
    for s in slices:
        labels = group_labels(s, test, splits.train)
        if len(labels.categories) < 2:
            only = labels.categories[0] if len(labels.categories) else "no rows"
            skipped[s.name] = f"one group only in the test window ({only})"
            continue
        entries = {}
        for group, computed in group_metrics(test, models, labels, metrics).items():
            mask = labels.codes == labels.categories.get_loc(group)
            support = {"rows": int(mask.sum())}
            if schema.problem == "binary":
                support["positives"] = int(y[mask].sum())
            entries[group] = {
                "support": support,
                "candidate": computed[0],
                "baselines": dict(zip(names, computed[1 : 1 + len(names)], strict=True)),
                "champion": computed[-1] if have_champion else None,
            }
        groups[s.name] = entries
        eligible = [
            g
            for g, e in entries.items()
            if e["support"]["rows"] >= gates.slice_min_rows
            and e["support"].get("positives", gates.slice_min_positives) >= gates.slice_min_positives
        ]
        disparities[s.name] = disparity(
            y,
            evaluation.candidate.test_predictions,
            labels,
            schema.problem,
            evaluation.candidate.context.get("threshold", 0.5),
            eligible,
        )
    return SliceReport(groups, disparities, champion.version if have_champion else None, skipped)


def slices_plot(report: SliceReport, primary: str):
    """One panel per slice: the primary metric per group, candidate, baselines and champion side by side."""
    plt = _pyplot()
    names = list(report.groups)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.8 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        entries = report.groups[name]
        models = ["candidate", *next(iter(entries.values()))["baselines"]]
        if report.champion_version is not None:
            models.append("champion")
        width = 0.8 / len(models)
        positions = np.arange(len(entries))
        for i, model in enumerate(models):
            values = [_value(e, model, primary) for e in entries.values()]
            ax.bar(positions + i * width, values, width, label=model)
        ax.set_xticks(positions + width * (len(models) - 1) / 2)
        ax.set_xticklabels([f"{g}\n{_support(e['support'])}" for g, e in entries.items()], fontsize=8)
        ax.set_ylabel(primary)
        ax.set_title(f"{name}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _value(entry: dict, model: str, primary: str) -> float:
    if model == "candidate":
        return entry["candidate"].get(primary, np.nan)
    if model == "champion":
        return (entry["champion"] or {}).get(primary, np.nan)
    return entry["baselines"][model].get(primary, np.nan)


def _support(support: Mapping[str, int]) -> str:
    return f"{support['rows']} rows" + (f", {support['positives']} pos" if "positives" in support else "")


@mlflow_stage
def evaluate_slices(
    spec: UseCaseSpec, splits: Splits, evaluation: Evaluation, champion: ChampionScore | None, run_id: str
) -> SliceReport:
    """`slice_report` on the use case's slices, logged to the MLflow run: metrics, support, `slices.json`,
    `plots/slices.png`."""
    metrics = spec.metrics
    report = slice_report(spec.slices, splits, evaluation, champion, metrics, spec.schema, spec.gates)
    stamp = int(pd.Timestamp.now().value // 1_000_000)
    logged = []
    for name, entries in report.groups.items():
        for group, entry in entries.items():
            prefix = f"slice.{name}.{group}"
            values = {f"{prefix}.{k}": v for k, v in entry["support"].items()}
            values.update({f"{prefix}.{k}": v for k, v in entry["candidate"].items()})
            for model, per in entry["baselines"].items():
                values.update({f"{prefix}.{model}.{k}": v for k, v in per.items()})
            values.update({f"{prefix}.champion.{k}": v for k, v in (entry["champion"] or {}).items()})
            logged += [
                mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in values.items() if np.isfinite(v)
            ]
        for metric, d in report.disparity.get(name, {}).items():
            if np.isfinite(d["ratio"]):
                logged.append(mlflow.entities.Metric(f"slice.{name}.ratio.{metric}", d["ratio"], stamp, 0))
    client = MlflowClient()
    for i in range(0, len(logged), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=logged[i : i + 1000])
    client.log_dict(
        run_id,
        {
            "champion_version": report.champion_version,
            "groups": report.groups,
            "disparity": report.disparity,
            "skipped": report.skipped,
        },
        "slices.json",
    )
    if report.groups:
        fig = slices_plot(report, metrics.primary)
        client.log_figure(run_id, fig, "plots/slices.png")
        _pyplot().close(fig)
    log = run_logger()
    for name, why in report.skipped.items():
        log.info("slice %s skipped: %s", name, why)
    for name, entries in report.groups.items():
        log.info(
            "slice %s, %s: %s",
            name,
            metrics.primary,
            "; ".join(
                f"{g} candidate {e['candidate'].get(metrics.primary, np.nan):.4g}"
                + (f" champion {e['champion'].get(metrics.primary, np.nan):.4g}" if e["champion"] else "")
                + f" ({_support(e['support'])})"
                for g, e in entries.items()
            ),
        )
    return report
