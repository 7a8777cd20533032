"""Ingest: read the raw table a use case trains on, from Parquet or CSV by extension.

Anything that keeps the file from being read as a non-empty table is a DataReadError naming the file and the
reason, so the run stops (exit 2) before any data check, training or registry write.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.stage import stage

READERS = {".parquet": pd.read_parquet, ".pq": pd.read_parquet, ".csv": pd.read_csv}


class DataReadError(ValueError):
    """The input could not be read as a non-empty table."""


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataReadError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .csv")
    if not path.is_file():
        raise DataReadError(f"{path}: no such file")
    try:
        frame = reader(path)
    except Exception as exc:  # any parser failure is an unreadable input, reported as such
        raise DataReadError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from exc
    if frame.empty:
        raise DataReadError(f"{path}: the table has no rows")
    return frame


@stage
def ingest(load, params) -> pd.DataFrame:
    """Run the use case's data source (a file or its embedded default)."""
    return load(params)
