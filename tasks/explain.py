"""Reason codes: why a model scored a row as it did, from XGBoost's own contributions (exact TreeSHAP).

`booster.predict(DMatrix, pred_contribs=True)` gives each row one contribution per feature plus the bias
(last column); they sum to the row's margin (log-odds for a binary model, whose score is the logistic of
it). The shap package is not used: it misreads the base score of XGBoost >= 3.1 models (shap#4184).

Three consumers: the model server per request (`top_reasons`, one row in a few ms: NumPy only, no pandas),
batch scoring (`reason_columns`, `mlops score --explain K`) and the model card's global picture
(`mean_abs_contributions`, overall and per slice group; `log_global_picture` logs it to the run). Only
versions whose booster can be reached are explained: a pyfunc version (a target transform or base margin
around the booster) raises `ExplainUnsupported`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow import MlflowClient

if TYPE_CHECKING:
    from tasks.split import Splits
    from usecases.spec import UseCaseSpec

Reason = Callable[[str, Mapping[str, float]], str]
# Up to this many rows a DMatrix is built on one thread: spawning OpenMP threads for one row costs more
# than the row (and on a loaded machine, milliseconds).
SMALL_MATRIX_ROWS = 1024
# The card's global picture reads at most this many test rows (a seeded sample): exact TreeSHAP costs about
# a millisecond per row for 300 depth-6 trees, and the card is written while the champion lock is held.
GLOBAL_PICTURE_ROWS = 10_000


class ExplainUnsupported(ValueError):
    """A model whose contributions cannot be read (no XGBoost booster reachable): no reason codes."""


def explainable(model) -> tuple[xgb.Booster, tuple[str, ...]]:
    """The booster to ask and its input columns in order: a `ScoringModel` of the xgboost flavour, or a
    training `Candidate` (its trees; a linear offset around them is not part of the contributions)."""
    booster = getattr(model, "booster", None)
    if isinstance(booster, xgb.Booster):
        columns = getattr(model, "columns", None) or model.features
        return booster, tuple(columns)
    raise ExplainUnsupported(
        f"model {_which(model)} cannot be explained: it is loaded as a "
        f"{getattr(model, 'flavor', 'non-XGBoost')} model (a target transform or base margin wrapped around "
        "the booster), whose XGBoost booster is not reachable; reason codes need an xgboost-flavoured version"
    )


def _which(model) -> str:
    return f"{getattr(model, 'name', type(model).__name__)} v{getattr(model, 'version', '?')}"


def contributions(model, matrix: np.ndarray) -> np.ndarray:
    """(n, len(columns) + 1) float32: each feature's contribution to the margin, then the bias; every row
    sums to the model's margin for that row (to float32 rounding)."""
    booster, columns = explainable(model)
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != len(columns):
        raise ValueError(
            f"a matrix of {len(columns)} columns ({', '.join(columns)}) is needed, got shape {matrix.shape}"
        )
    names = list(columns) if booster.feature_names is not None else None
    data = xgb.DMatrix(matrix, feature_names=names, nthread=1 if len(matrix) <= SMALL_MATRIX_ROWS else -1)
    try:
        out = booster.predict(data, pred_contribs=True)
    except (
        xgb.core.XGBoostError
    ) as exc:  # e.g. a leaf-refreshed booster with empty nodes TreeSHAP cannot walk
        reason = str(exc).splitlines()[0][:200]
        raise ExplainUnsupported(
            f"model {_which(model)} cannot be explained: TreeSHAP failed ({reason})"
        ) from None
    if out.ndim != 2:  # multi-class: one set per class
        raise ExplainUnsupported(
            f"model {_which(model)} gives contributions of shape {out.shape}: only single-output models "
            "(binary, regression) are explained"
        )
    return out


def default_reason(feature: str, row: Mapping[str, float]) -> str:
    """`<feature> = <value>`, for a use case without sentences of its own."""
    return f"{feature} = {format_value(row.get(feature))}"


def format_value(value) -> str:
    """Integers as such (with thousands separators), other numbers to 6 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    value = float(value)
    return f"{int(value):,}" if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _top(contrib: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the `k` largest absolute feature contributions, largest first (ties:
    column order)."""
    features = contrib[:, :-1]
    k = max(0, min(int(k), features.shape[1]))
    return np.argsort(-np.abs(features), axis=1, kind="stable")[:, :k]


def _plain(value: float) -> float | None:
    """JSON-safe: NaN (a missing feature) becomes None."""
    return None if value != value else value


def top_reasons(model, matrix: np.ndarray, k: int, reason: Reason | None = None) -> list[list[dict]]:
    """Per row of `matrix` (columns: the model's, in order), its `k` strongest reasons, largest |contribution|
    first: {"feature", "value", "contribution", "reason"}; `reason(feature, row values by name)` writes the
    sentence (the use case's `UseCaseSpec.reason`), default `<feature> = <value>`."""
    _, columns = explainable(model)
    values = np.asarray(matrix)
    contrib = contributions(model, values)
    index = _top(contrib, k)
    write = reason or default_reason
    out = []
    for r, picked in enumerate(index.tolist()):
        row = dict(zip(columns, values[r].tolist(), strict=True))
        out.append(
            [
                {
                    "feature": columns[j],
                    "value": _plain(row[columns[j]]),
                    "contribution": float(contrib[r, j]),
                    "reason": write(columns[j], row),
                }
                for j in picked
            ]
        )
    return out


def reason_column_names(k: int) -> list[str]:
    """The columns `mlops score --explain K` adds, in order."""
    return [f"reason_{i}{part}" for i in range(1, k + 1) for part in ("", "_feature", "_contribution")]


def reason_columns(model, matrix: np.ndarray, k: int, reason: Reason | None = None) -> dict[str, list]:
    """Batch scoring's reason columns (`reason_column_names(k)`): per rank i the sentence, the feature and
    its contribution; ranks beyond the model's feature count are empty (None, NaN)."""
    _, columns = explainable(model)
    values = np.asarray(matrix)
    contrib = contributions(model, values)
    index = _top(contrib, k)
    n, ranks = len(values), index.shape[1]
    names = np.asarray(columns, dtype=object)
    out: dict[str, list] = {}
    for i in range(k):
        column = f"reason_{i + 1}"
        if i < ranks:
            out[f"{column}_feature"] = names[index[:, i]].tolist()
            out[f"{column}_contribution"] = contrib[np.arange(n), index[:, i]].astype(np.float64).tolist()
        else:
            out[f"{column}_feature"], out[f"{column}_contribution"] = [None] * n, [math.nan] * n
        out[column] = [None] * n
    write = reason or default_reason
    for r in range(n):  # one dict per row, not per row and rank: the sentences read the whole row
        row = dict(zip(columns, values[r].tolist(), strict=True))
        for i in range(ranks):
            out[f"reason_{i + 1}"][r] = write(columns[index[r, i]], row)
    return {name: out[name] for name in reason_column_names(k)}


def mean_abs_contributions(
    model, frame: pd.DataFrame, groups: Mapping[str, Sequence] | None = None
) -> pd.DataFrame:
    """The global picture: mean |contribution| of each feature (rows, largest overall first) over `frame`'s
    rows ("overall") and over each group of each slice in `groups` (slice -> each row's group label; columns
    `<slice>: <group>`). `attrs["rows"]`: the rows behind each column."""
    _, columns = explainable(model)
    magnitude = np.abs(contributions(model, frame[list(columns)].to_numpy(np.float32))[:, :-1]).astype(
        np.float64
    )
    table = {"overall": _mean(magnitude)}
    rows = {"overall": len(magnitude)}
    for name, labels in (groups or {}).items():
        if len(labels) != len(frame):
            raise ValueError(f"slice {name}: {len(labels)} labels for {len(frame)} rows")
        codes, uniques = pd.factorize(pd.Series(labels), sort=True)  # unlabelled rows (NaN): no group
        for code, group in enumerate(uniques):
            mask = codes == code
            table[f"{name}: {group}"] = _mean(magnitude[mask])
            rows[f"{name}: {group}"] = int(mask.sum())
    result = pd.DataFrame(table, index=pd.Index(columns, name="feature"))
    result = result.sort_values("overall", ascending=False, kind="stable")
    result.attrs["rows"] = rows
    return result


def _mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=0) if len(values) else np.full(values.shape[1], np.nan)


def contributions_plot(table: pd.DataFrame):
    """Horizontal bars: mean |contribution| per feature overall, and per group of each slice beside it."""
    # lazy: matplotlib only when the card is drawn; the model server imports this module for reason codes
    from tasks.evaluate import _pyplot

    plt = _pyplot()
    panels = {"overall": ["overall"]}
    for column in table.columns[1:]:
        panels.setdefault(column.split(": ", 1)[0], []).append(column)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5 * ncols, nrows * (0.3 * len(table) + 1.5)), sharey=True, squeeze=False
    )
    positions = np.arange(len(table))[::-1]  # the largest overall at the top
    for ax, (title, columns) in zip(axes.flat, panels.items(), strict=False):
        height = 0.8 / len(columns)
        for i, column in enumerate(columns):
            label = column.split(": ", 1)[-1]
            offset = (i - (len(columns) - 1) / 2) * height  # a feature's groups centred on its row
            ax.barh(positions - offset, table[column].to_numpy(), height, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("mean |contribution|")
        if len(columns) > 1:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_yticks(positions)
        row[0].set_yticklabels(table.index, fontsize=7)
    fig.tight_layout()
    return fig


def log_global_picture(
    spec: UseCaseSpec, splits: Splits, model, run_id: str | None, max_rows: int = GLOBAL_PICTURE_ROWS
) -> pd.DataFrame:
    """`mean_abs_contributions` on the test window (a seeded sample of at most `max_rows` rows), overall and
    per group of the spec's slices (those with two groups or more), logged to run `run_id` as
    `contributions.json` and `plots/contributions.png`."""
    # lazy: slices (fairlearn) and matplotlib only for the card; the model server imports this module
    from tasks.evaluate import _pyplot
    from tasks.slices import group_labels

    test = splits.test
    keep = np.arange(len(test))
    if len(test) > max_rows:
        keep = np.sort(np.random.default_rng(0).choice(len(test), max_rows, replace=False))
    groups = {}
    for s in spec.slices:
        labels = group_labels(s, test, splits.train)
        if len(labels.categories) >= 2:
            groups[s.name] = np.asarray(labels)[keep]
    table = mean_abs_contributions(model, test.iloc[keep], groups)
    table.attrs["sampled_from"] = len(test)
    if run_id:
        client = MlflowClient()
        client.log_dict(
            run_id,
            {
                "rows": table.attrs["rows"],
                "test_rows": len(test),
                "mean_abs_contribution": {c: table[c].to_dict() for c in table.columns},
            },
            "contributions.json",
        )
        fig = contributions_plot(table)
        client.log_figure(run_id, fig, "plots/contributions.png")
        _pyplot().close(fig)
    return table
