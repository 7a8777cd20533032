"""Ingest: read the raw table a use case trains on, from Parquet or CSV by extension: one file, a directory
of files or a glob.

Anything that keeps the file from being read as a non-empty table is a DataReadError naming the file and the
reason, so the run stops (exit 2) before any data check, training or registry write.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
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


# --- data roots: what runs started through a deployment may read -------------------------------------------

DATA_ROOTS_ENV = "MLOPS_DATA_ROOTS"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataPathRefused(ValueError):
    """A run started through a deployment named a `data` file outside the data roots."""


def data_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """Folders whose files runs started through a deployment may read: MLOPS_DATA_ROOTS (separated by
    os.pathsep), by default `<MLOPS_HOME>/data` and the project's `data/` folder. Resolved."""
    env = os.environ if env is None else env
    raw = env.get(DATA_ROOTS_ENV, "")
    if raw.strip():
        roots = [Path(p.strip()).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    else:
        home = Path(env.get("MLOPS_HOME") or ".mlops").expanduser()
        roots = [home / "data", PROJECT_ROOT / "data"]
    return list(dict.fromkeys(root.resolve() for root in roots))


def confine_to_data_roots(path: str, roots: Iterable[Path] | None = None) -> Path:
    """`path` resolved (links followed, so a link inside a root to a file outside is refused) when it lies in
    one of the data roots; else DataPathRefused naming the path and the roots."""
    roots = list(data_roots() if roots is None else roots)
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        # A directory or a glob is one input of several files: each must lie there too (links followed).
        glob_chars = any(c in str(path) for c in "*?[")
        if glob_chars or resolved.is_dir():
            members = glob.glob(str(resolved)) if glob_chars else [str(p) for p in resolved.iterdir()]
            for member in members:
                confine_to_data_roots(member, roots)
        return resolved
    shown = path if str(resolved) == path else f"{path} (resolved: {resolved})"
    raise DataPathRefused(
        f"refused data path {shown}: it is outside the data roots ({', '.join(map(str, roots))}). Runs "
        f"started through a deployment (UI, schedule, events) read only files under {DATA_ROOTS_ENV}; put "
        "the file there, or add its folder to MLOPS_DATA_ROOTS where the runner runs. Nothing was trained."
    )
