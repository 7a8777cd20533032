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

import numpy as np
import pandas as pd

from tasks.split import Splits
from tasks.stage import mlflow_stage
from tasks.tracking import run_logger

if TYPE_CHECKING:
    from tasks.evaluate import ChampionScore, Evaluation
    from tasks.gate import GateSpec
    from usecases.spec import Metrics, Schema, Slice

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


def group_metrics(
    frame: pd.DataFrame, predictions: np.ndarray, context: Mapping, labels: np.ndarray, metrics: Metrics
) -> dict[str, dict[str, float]]:
    """`metrics.compute` on each group's rows, with the model's own calibration `context`."""
    out = {}
    for group in sorted(set(labels)):
        mask = labels == group
        computed = metrics.compute(frame[mask].reset_index(drop=True), predictions[mask], context)
        out[group] = {k: float(v) for k, v in computed.items() if k not in COUNTS}
    return out


def disparity(
    y: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    problem: str,
    threshold: float,
    eligible: Sequence[str],
) -> dict[str, dict]:
    """Between-group spread of recall and selection rate (binary) or MAE (regression), over the groups in
    `eligible` (enough support), by fairlearn's MetricFrame."""
    from fairlearn.metrics import MetricFrame, selection_rate
    from sklearn.metrics import mean_absolute_error, recall_score

    keep = np.isin(labels, list(eligible))
    if len(set(labels[keep])) < 2:
        return {}
    if problem == "binary":
        chosen = {
            "recall": lambda t, p: recall_score(t, p, zero_division=0),
            "selection_rate": selection_rate,
        }
        y_pred = (predictions[keep] >= threshold).astype(int)
    else:
        chosen = {"mae": mean_absolute_error}
        y_pred = predictions[keep]
    frame = MetricFrame(metrics=chosen, y_true=y[keep], y_pred=y_pred, sensitive_features=labels[keep])
    ratios, differences = frame.ratio(method="between_groups"), frame.difference(method="between_groups")
    out = {}
    for metric in chosen:
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
    groups, disparities, skipped = {}, {}, {}
    for s in slices:
        labels = np.asarray([clean(v) for v in s.groups(test, splits.train)], dtype=object)
        if len(labels) != len(test):
            raise ValueError(f"slice {s.name}: {len(labels)} labels for {len(test)} test rows")
        if len(set(labels)) < 2:
            skipped[s.name] = f"one group only in the test window ({labels[0] if len(labels) else 'no rows'})"
            continue
        candidate = group_metrics(
            test, evaluation.candidate.test_predictions, evaluation.candidate.context, labels, metrics
        )
        baselines = {
            name: group_metrics(test, b.test_predictions, b.context, labels, metrics)
            for name, b in evaluation.baselines.items()
        }
        theirs = (
            group_metrics(test, champion.scored.test_predictions, champion.scored.context, labels, metrics)
            if have_champion
            else {}
        )
        entries = {}
        for group in candidate:
            mask = labels == group
            support = {"rows": int(mask.sum())}
            if schema.problem == "binary":
                support["positives"] = int(y[mask].sum())
            entries[group] = {
                "support": support,
                "candidate": candidate[group],
                "baselines": {name: per[group] for name, per in baselines.items()},
                "champion": theirs.get(group),
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
    from tasks.evaluate import _pyplot

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
    slices: Sequence[Slice],
    splits: Splits,
    evaluation: Evaluation,
    champion: ChampionScore | None,
    metrics: Metrics,
    schema: Schema,
    gates: GateSpec,
    run_id: str,
) -> SliceReport:
    """`slice_report`, logged to the MLflow run: metrics, support, `slices.json`, `plots/slices.png`."""
    import mlflow
    from mlflow import MlflowClient

    report = slice_report(slices, splits, evaluation, champion, metrics, schema, gates)
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
        from tasks.evaluate import _pyplot

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
