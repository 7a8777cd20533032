"""Ingest: read the raw table a use case trains on, from Parquet or CSV by extension: one file, a directory
of files or a glob.

Anything that keeps the file from being read as a non-empty table is a DataReadError naming the file and the
reason, so the run stops (exit 2) before any data check, training or registry write.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from tasks.stage import stage

READERS = {".parquet": pd.read_parquet, ".pq": pd.read_parquet, ".csv": pd.read_csv}


class DataReadError(ValueError):
    """The input could not be read as a non-empty table."""


def input_files(path: str | Path) -> list[Path]:
    """The files one input names: a file, the .parquet/.csv files of a directory, or a glob's matches (one
    kind, read as one table in name order)."""
    text = str(path)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise DataReadError(f"{text}: no file matches")
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in READERS)
        if not files:
            raise DataReadError(f"{text}: the directory holds no .parquet or .csv file")
    else:
        files = [Path(text)]
    for file in files:
        if file.suffix.lower() not in READERS:
            raise DataReadError(f"{file}: unsupported file type {file.suffix!r}; use .parquet or .csv")
        if not file.is_file():
            raise DataReadError(f"{file}: no such file")
    if len({READERS[f.suffix.lower()] for f in files}) > 1:
        raise DataReadError(f"{text}: mixes Parquet and CSV files; give one kind")
    return files


def read_table(path: str | Path) -> pd.DataFrame:
    frames = []
    for file in input_files(path):
        try:
            frames.append(READERS[file.suffix.lower()](file))
        except Exception as exc:  # any parser failure is an unreadable input, reported as such
            raise DataReadError(f"{file}: cannot be read as {file.suffix[1:]}: {exc}") from exc
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise DataReadError(f"{path}: the table has no rows")
    return frame


@stage
def ingest(load, params) -> pd.DataFrame:
    """Run the use case's data source (a file or its embedded default)."""
    return load(params)
