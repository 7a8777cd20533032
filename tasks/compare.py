"""Compare: the model to be served and the champion, on rows neither of them trained on.

The champion gate and the forgetting gate read this. Two kinds of window: the newest (the test window, where
adapting shows) and the `k` earlier ones of the same length before it (where forgetting shows). In each,
only rows unseen by both models count: a row is unseen by a model when its day lies outside every range the
model trained on, or when its key is held out (`ContinualSpec.holdout`) and the model honoured the same
holdout (recorded on the version). So a refit that trained up to the newest label, or a champion refitted
last week, is still compared fairly: on held-out cards. The earlier windows are also pooled, since a week of
held-out cards holds few frauds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from champion.store import run_logger
from tasks.lineage import in_ranges, trained_on
from tasks.split import earlier_windows, held_out
from tasks.stage import stage
from usecases.vocabulary import HOLDOUT_TAG

if TYPE_CHECKING:
    from tasks.candidate import Candidate
    from tasks.evaluate import ChampionScore
    from tasks.split import Splits
    from usecases.spec import UseCaseSpec


@dataclass(frozen=True)
class Window:
    label: str
    window: tuple[str, str]
    rows: int
    positives: int | None
    candidate: float
    champion: float
    basis: str  # which rows: "held-out keys", "days neither trained on", or both

    @property
    def support(self) -> str:
        return f"{self.rows} rows" + (f", {self.positives} positives" if self.positives is not None else "")


@dataclass(frozen=True)
class Comparison:
    """The served model and the champion on unseen rows: the newest window, each earlier one, and those
    pooled; `skipped` says why there is nothing to compare, `notes` what was left out of each window."""

    newest: Window | None = None
    earlier: list[Window] = field(default_factory=list)
    pooled: Window | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    # Set when the champion trained on days of the test window (refitted after it): per-group comparisons
    # on the whole test window would favour it, so the slice gates only report.
    champion_saw_test: str | None = None

    def table(self) -> str:
        """Markdown, one row per window: what a person deciding a trade-off reads."""
        rows = ["| window | rows | candidate | champion | change |", "|---|---|---:|---:|---:|"]
        for w in [self.newest, *self.earlier, self.pooled]:
            if w is not None:
                change = (w.candidate - w.champion) / max(abs(w.champion), 1e-12)
                rows.append(
                    f"| {w.label} | {w.support} ({w.basis}) | {w.candidate:.4g} | {w.champion:.4g} | "
                    f"{change:+.1%} |"
                )
        return "\n".join(rows)


def unseen(rows: pd.DataFrame, spec: UseCaseSpec, ranges, honoured: bool) -> np.ndarray:
    """Rows a model never trained on: days outside its `ranges`, or held-out keys if it `honoured` them."""
    outside = ~in_ranges(rows[spec.time_column], ranges).to_numpy()
    if honoured:
        return outside | held_out(rows, spec.continual.holdout)
    return outside


def _score(spec: UseCaseSpec, rows: pd.DataFrame, models) -> tuple[float, float]:
    primary = spec.metrics.primary
    return tuple(
        float(spec.metrics.compute(rows, np.asarray(predict(rows), float), context)[primary])
        for predict, context in models
    )


@stage
def compare(
    spec: UseCaseSpec,
    table: pd.DataFrame,
    splits: Splits,
    served: Candidate,
    context: dict,
    champion: ChampionScore,
    k: int,
) -> Comparison:
    """The served model (with the gated candidate's calibration `context`) and the champion on the newest
    window and the `k` earlier ones, each on the rows neither trained on."""
    if champion.version is None:
        return Comparison(skipped="no current champion")
    if champion.error is not None or champion.model is None:
        return Comparison(skipped=f"champion v{champion.version} could not be re-scored")
    holdout = spec.continual.holdout
    both_hold_out = holdout is not None and champion.tags.get(HOLDOUT_TAG) == holdout.label
    mine, theirs = served.trained_on, trained_on(champion.tags)
    models = ((served.predict, context), (champion.model.predict, champion.scored.context))
    notes, windows = [], {}
    spans = [("newest", splits.windows["test"])]
    spans += [
        (f"earlier {i}", w) for i, w in enumerate(earlier_windows(table, spec.split, spec.time_column, k), 1)
    ]
    for name, (lo, hi) in spans:
        rows = table[in_ranges(table[spec.time_column], [(lo, hi)]).to_numpy()]
        if spec.test_filter is not None:
            rows = spec.test_filter(rows, table)
        keep = unseen(rows, spec, mine, both_hold_out) & unseen(rows, spec, theirs, both_hold_out)
        if not keep.any():
            notes.append(f"{name} {lo} .. {hi}: every row trained on by one of the models")
            continue
        windows[name] = (rows[keep].reset_index(drop=True), (lo, hi))
    basis = "held-out keys" if both_hold_out else "days neither trained on"
    out = {
        name: _window(spec, f"{name} {lo} .. {hi}", rows, (lo, hi), models, basis)
        for name, (rows, (lo, hi)) in windows.items()
    }
    earlier = [w for name, w in out.items() if name != "newest" and w is not None]
    pooled = None
    if len(earlier) > 1:
        rows = pd.concat([windows[n][0] for n in windows if n != "newest"], ignore_index=True)
        span = (earlier[-1].window[0], earlier[0].window[1])
        pooled = _window(spec, f"earlier pooled {span[0]} .. {span[1]}", rows, span, models, basis)
    elif earlier:
        pooled = earlier[0]
    test = splits.test[spec.time_column]
    seen = int(in_ranges(test, theirs).sum())
    saw = f"champion v{champion.version} trained on {seen} of the test window's rows" if seen else None
    comparison = Comparison(out.get("newest"), earlier, pooled, None, notes, saw)
    if comparison.newest is None and pooled is None:
        why = "no window with rows neither model trained on: " + "; ".join(notes)
        comparison = Comparison(skipped=why, notes=notes, champion_saw_test=saw)
    return comparison


def _window(spec, label, rows, span, models, basis) -> Window | None:
    positives = int(rows[spec.target].sum()) if spec.problem == "binary" else None
    mine, theirs = _score(spec, rows, models)
    if not (np.isfinite(mine) and np.isfinite(theirs)):
        return None
    return Window(label, span, len(rows), positives, mine, theirs, basis)


def log_comparison(comparison: Comparison, spec: UseCaseSpec, run_id: str) -> None:
    """Each window's two scores and support on the MLflow run (`newest.<primary>`,
    `earlier_pooled.champion_<primary>`, ...), and in the run's log."""
    primary, log = spec.metrics.primary, run_logger()
    stamp = int(pd.Timestamp.now().value // 1_000_000)
    metrics, params = [], []
    named = [("newest", comparison.newest), ("earlier_pooled", comparison.pooled)]
    named += [(f"earlier_window.{i}", w) for i, w in enumerate(comparison.earlier, 1)]
    for key, w in named:
        if w is None:
            continue
        metrics += [
            mlflow.entities.Metric(f"{key}.{primary}", w.candidate, stamp, 0),
            mlflow.entities.Metric(f"{key}.champion_{primary}", w.champion, stamp, 0),
        ]
        params.append(mlflow.entities.Param(key, f"{w.label} ({w.support}, {w.basis})"[:6000]))
    for w in [comparison.newest, *comparison.earlier]:
        if w is not None:
            log.info(
                "%s: candidate %s %.4g, champion %.4g (%s, %s)",
                w.label,
                primary,
                w.candidate,
                w.champion,
                w.support,
                w.basis,
            )
    for note in comparison.notes:
        log.info("compare: %s", note)
    MlflowClient().log_batch(run_id, metrics=metrics, params=params)
