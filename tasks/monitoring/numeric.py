"""Numeric conventions every monitoring module shares: columns as float arrays, finite-or-None values,
JSON-safe results, the reference's quantile bins and the short number formats of reasons and reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def column_values(series: pd.Series) -> np.ndarray:
    """A column as float64 with nulls (and +-inf) as NaN; booleans count as 0/1."""
    values = series.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


def finite_values(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """The finite entries of `values`, flattened, as float64."""
    array = np.asarray(values, dtype="float64").ravel()
    return array[np.isfinite(array)]


def finite_float(value: Any) -> float | None:
    """`value` as a float, None when it is NaN or infinite (strict JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def finite_or_none(value: Any) -> float | None:
    """Like `finite_float`, but None for None and for anything that is not a number."""
    if value is None:
        return None
    try:
        return finite_float(value)
    except (TypeError, ValueError):
        return None


def jsonable(obj: Any) -> Any:
    """`obj` with numpy scalars as Python ones and non-finite floats as None, recursively."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return finite_float(obj)
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a person, "–" when there is none."""
    value = finite_or_none(value)
    return "–" if value is None else f"{value:.{digits}g}"


def short(value: float) -> str:
    """A bin edge or value as a short label."""
    return f"{value:.3g}"


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points at the quantiles 1/bins ... (bins-1)/bins, ties collapsed.

    Bins are right-closed, (c[i-1], c[i]], with open outer bins, so a point mass sitting on a cut (many zero
    amounts) stays in one bin, and values outside the training range still land in a bin.
    """
    if len(values) == 0:
        return np.array([], dtype="float64")
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def bin_fractions(edges: Sequence[float] | np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of `values` in each bin cut at `edges` (len(edges) + 1 bins)."""
    edges = np.asarray(edges, dtype="float64")
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)
