"""Benchmark figures as data: each script writes `bench/results/<script>.json`, the docs render it as tables.

One file per script, the same structure whether a run wrote it or it was transcribed:

    {
      "benchmark": "scale",                        # the script: bench/scale.py
      "command": "uv run python bench/scale.py",   # what produced (or regenerates) it
      "source": "run" | "transcribed" | "smoke",
      "provenance": "...",                         # in words: where the figures come from
      "measured_at": "...", "commit": "...", "machine": {...},   # a run's context (absent when transcribed)
      "tables": {
        "<id>": {
          "title": "...",
          "columns": ["model", {"name": "p50 ms", "format": ".1f"}, ...],
          "rows": [["mlops serve-model", 1.3, ...], ...],
          "units": "...", "method": "...", "excluded": "...",   # optional, shown under the table
          "provenance": "...",                                  # optional, when a table's differs
          "notes": ["...", ...]                                 # optional, a list under the table
        }
      }
    }

A column is a name, or `{"name", "format", "scale"}`: a cell that is a number is multiplied by `scale` and
formatted with `format` (a format spec such as ".3f", or a template such as "{:.2f} M"; a list cell fills a
template's fields, e.g. "{:.0f} / {:.0f}"); `null` is shown as "–"; strings as they are. Integers get
thousands separators unless a format says otherwise.

`render(doc, table_id)` turns a file (or one of its tables) into markdown; `docs/hooks.py` calls it for every
`<!-- bench:NAME -->` or `<!-- bench:NAME#TABLE -->` marker in the docs. A script's `--smoke` run writes to a
temporary folder, never here (`output_path`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HANDBOOK = ROOT.parent / "shared/data/fraud-handbook/transactions.parquet"
# Smoke mode's simulated fraud data and its `mlops run fraud` options: the absolute gates off (a sample this
# small may not pass them) and at most 30 trees; the smoke runs prove the code paths, not the model.
SMOKE_SIMULATION = {"n_customers": 300, "n_terminals": 600, "n_days": 70, "seed": 42}
SMOKE_FRAUD_OPTIONS = ["--min-roc-auc", "0", "--min-average-precision", "0", "--rounds", "30"]
# ... and the stock runs': a shorter history, no walk-forward selection.
SMOKE_STOCK_OPTIONS = ["--train-steps", "750", "--test-steps", "250", "--folds", "0"]


# --- command line ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """`--out PATH` (default bench/results/NAME.json) and `--smoke` (tiny simulated data, one repeat, the
    JSON to a temporary folder)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where the figures go as JSON (default: bench/results/{name}.json; with --smoke a temporary "
        "folder)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a smoke run: tiny simulated data, one repeat, results to a temporary folder (proves the code "
        "path; the figures mean nothing)",
    )


def output_path(args: argparse.Namespace, name: str) -> Path:
    """Where this run's JSON goes; a smoke run never writes into bench/results/."""
    if args.out is not None:
        out = Path(args.out).resolve()
        if args.smoke and out.is_relative_to(RESULTS.resolve()):
            raise SystemExit(f"--smoke writes no figures into {RESULTS}: give --out elsewhere")
        return out
    if args.smoke:
        return Path(tempfile.gettempdir()) / "mlops-bench-smoke" / f"{name}.json"
    return RESULTS / f"{name}.json"


def smoke_fraud_data(folder: Path) -> Path:
    """A tiny simulated fraud file for smoke runs (the handbook's schema), written once per folder."""
    path = Path(folder) / "smoke-transactions.parquet"
    if not path.exists():
        from usecases.fraud.simulator import simulate_transactions

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        simulate_transactions(**SMOKE_SIMULATION).to_parquet(partial)
        partial.replace(path)  # whole or absent, for other smoke runs reading it
    return path


# --- writing -----------------------------------------------------------------------------------------------


# What a table may say under it besides notes, in the order the JSON keeps them.
ABOUT = ("units", "method", "excluded", "provenance")


def table(
    title: str,
    columns: Sequence[str | Mapping[str, Any]],
    rows: Iterable[Sequence[Any]],
    *,
    notes: Sequence[str] = (),
    **about: str | None,
) -> dict:
    """One table of a results file; `about` holds the optional lines under it (`ABOUT`: units, method,
    excluded, provenance), an empty one left out."""
    unknown = set(about) - set(ABOUT)
    if unknown:
        raise TypeError(f"table() got unexpected keyword arguments {sorted(unknown)} (allowed: {ABOUT})")
    out: dict[str, Any] = {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}
    for key in ABOUT:
        if about.get(key):
            out[key] = about[key]
    if notes:
        out["notes"] = list(notes)
    return out


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine() -> dict:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except (ImportError, OSError):
        pass
    return info


def document(
    name: str, command: str, tables: Mapping[str, dict], *, smoke: bool = False, provenance: str | None = None
) -> dict:
    """A run's results: its tables with when, where and from which commit they were measured."""
    when = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    commit = _commit()
    return {
        "benchmark": name,
        "command": command,
        "source": "smoke" if smoke else "run",
        "provenance": provenance
        or (
            f"smoke run of `{command}` (tiny simulated data; the figures mean nothing)"
            if smoke
            else f"measured by `{command}` on {when[:10]} at commit {commit or 'unknown'}"
        ),
        "measured_at": when,
        "commit": commit,
        "machine": machine(),
        "tables": dict(tables),
    }


def carried_over(path: Path) -> dict:
    """The tables of the results file at `path` (none if there is none), each stamped with where it came
    from: a run of some parts of a benchmark keeps the other parts' tables and says they are older."""
    path = Path(path)
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    return {
        key: {**t, "provenance": t.get("provenance") or old.get("provenance", "an earlier run")}
        for key, t in old.get("tables", {}).items()
    }


def write(path: Path, doc: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=_plain) + "\n")
    tmp.replace(path)
    print(f"\nfigures written to {path}")
    return path


def _plain(value: Any) -> Any:
    """numpy scalars and the like as plain JSON."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --- rendering ---------------------------------------------------------------------------------------------


def _column(column: str | Mapping[str, Any]) -> tuple[str, str | None, float | None]:
    if isinstance(column, str):
        return column, None, None
    return column["name"], column.get("format"), column.get("scale")


def cell(value: Any, fmt: str | None = None, scale: float | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, list | tuple):
        values = [v * scale if scale and isinstance(v, int | float) else v for v in value]
        if fmt and "{" in fmt:
            return fmt.format(*values)
        return " / ".join(cell(v, fmt) for v in values)
    if isinstance(value, int | float):
        if scale:
            value = value * scale
        if fmt and "{" in fmt:
            return fmt.format(value)
        if fmt:
            return format(value, fmt)
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_table(t: Mapping[str, Any], *, where: str | None = None, provenance: str | None = None) -> str:
    specs = [_column(c) for c in t["columns"]]
    lines = [
        "| " + " | ".join(name.replace("|", "\\|") for name, _, _ in specs) + " |",
        "|" + "---|" * len(specs),
    ]
    for row in t["rows"]:
        cells = [cell(v, fmt, scale) for v, (_, fmt, scale) in zip(row, specs, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    below = []
    for key, label in (("units", "Units"), ("method", "How measured"), ("excluded", "Excluded")):
        if t.get(key):
            below.append(f"{label}: {t[key]}")
    source = t.get("provenance") or provenance
    if source or where:
        below.append("Source: " + ": ".join(s for s in (where, source) if s))
    text = "\n".join(lines)
    if t.get("notes"):
        text += "\n\n" + "\n".join(f"- {n}" for n in t["notes"])
    if below:
        text += "\n\n" + "\n".join(f"*{line}*  " for line in below).rstrip()
    return text


def render(doc: Mapping[str, Any], table_id: str | None = None) -> str:
    """Markdown for one table of a results file, or for all of them (each under its title, in bold)."""
    where = f"`bench/results/{doc['benchmark']}.json`"
    provenance = doc.get("provenance")
    tables = doc["tables"]
    if table_id is not None:
        if table_id not in tables:
            raise KeyError(f"{where} has no table {table_id!r} (it has {', '.join(tables)})")
        return render_table(tables[table_id], where=where, provenance=provenance)
    return "\n\n".join(
        f"**{t['title']}**\n\n" + render_table(t, where=where, provenance=provenance) for t in tables.values()
    )


def load(name: str, folder: Path = RESULTS) -> dict:
    return json.loads((Path(folder) / f"{name}.json").read_text())


def sources(folder: Path = RESULTS) -> str:
    """Markdown: every table of every results file and where its figures come from (run or transcribed)."""
    lines = ["| file | table | run or transcribed | where the figures come from |", "|---|---|---|---|"]
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text())
        for key, t in doc["tables"].items():
            provenance = t.get("provenance") or doc.get("provenance", "")
            kind = "transcribed" if provenance.startswith("transcribed") else doc.get("source", "run")
            lines.append(f"| `{path.name}` | {key} | {kind} | {cell(provenance)} |")
    return "\n".join(lines)
