"""Benchmark: the fraud pipeline's scale curve, local executor next to Dask, 1x to 8x the handbook's size.

The simulator at the handbook's size (5,000 customers, 10,000 terminals, 183 days: ~1.75 M transactions)
times 1, 2, 4, 8 in customers and terminals, same days (~14 M transactions at 8x), written as a directory of
Parquet files (one input, several files). Each size runs `mlops run fraud --data DIR --executor local|dask`
(Dask: a LocalCluster of 2 process workers x 1 thread) in a fresh process against one Prefect server, with a
fresh MLflow store; psutil samples the run's process tree (the driver and every Dask worker) every 0.2 s.

Printed per run: wall time, rows/s, microseconds per row overall and per stage (from the Prefect task runs),
peak RSS of the driver and of the largest worker, the table's in-memory size (the raw frame in pandas), test
average precision and the exit code; then the driver's and the largest worker's peak while each stage ran
(where a process's memory goes); then cost per row against 1x, and the 1 B-row extrapolation.

    uv run python bench/scale.py [--scales 1,2,4,8] [--local-max 4] [--executors dask,local] [--keep DIR]
                                 [--out PATH] [--smoke]

With --keep, the simulated tables stay under DIR and a later run reuses them (each size's summary.json).
The figures also go to bench/results/scale.json (`--out`). `--smoke`: 1x of a tiny world (300 customers,
600 terminals, 70 days) on the Dask executor with one worker, absolute gates off, the JSON to a temporary
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.append(str(Path(__file__).resolve().parent))  # after the project: bench/serving.py is no `serving`

from _harness import ROOT, RUNNER, prefect_server  # noqa: E402
from _results import SMOKE_FRAUD_OPTIONS, add_arguments, document, output_path, table, write  # noqa: E402

HANDBOOK = {"customers": 5000, "terminals": 10000, "days": 183}
ROWS_PER_FILE = 1_000_000
STAGES = ["ingest", "validate", "features", "split", "train"]  # the curve's columns, µs per row
PER_ROW = {"format": ".1f"}
MB = {"format": ",.0f"}

# Simulate in a child process (the generator's memory is not the pipeline's), sorted by time, in files.
SIMULATE = r"""
import json, sys, time
import numpy as np
from usecases.fraud.simulator import simulate_transactions
started = time.perf_counter()
customers, terminals, days, out, per_file = sys.argv[1:6]
frame = simulate_transactions(
    n_customers=int(customers), n_terminals=int(terminals), n_days=int(days), seed=42
)
frame = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable").reset_index(drop=True)
size = int(frame.memory_usage(deep=True).sum())
files = max(len(frame) // int(per_file), 1)
for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
    frame.iloc[part].to_parquet(f"{out}/part-{i:03d}.parquet", index=False)
fraud = float(frame.TX_FRAUD.mean())
seconds = time.perf_counter() - started
summary = {"rows": len(frame), "bytes": size, "files": files, "fraud": fraud, "seconds": seconds}
print("SIM " + json.dumps(summary))
"""

# Stage names as the flow's task runs have them; both executors' names map onto one column.
STAGES = {
    "ingest": "ingest",
    "validate": "validate",
    "featurize": "features",
    "split": "split",
    "train": "train",
    "baseline": "baselines",
    "evaluate": "evaluate",
}


class TreeSampler(threading.Thread):
    """Peak RSS of a process and of each of its descendants, sampled until stopped; and a timeline of the
    driver's and the largest worker's RSS, to tell which stage the peaks fall in."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.every = every
        self.peaks: dict[int, tuple[str, int]] = {}
        self.peak_total = 0
        self.timeline: list[tuple[float, int, int]] = []  # (epoch seconds, driver RSS, largest worker RSS)
        self.done = threading.Event()

    def role(self, process: psutil.Process) -> str:
        if process.pid == self.root.pid:
            return "driver"
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            return "other"
        return "worker" if "spawn_main" in command else "other"  # Dask's process workers are spawned

    def run(self) -> None:
        while not self.done.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            total, now = 0, {"driver": 0, "worker": 0}
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                role, peak = self.peaks.get(process.pid, (None, 0))
                role = role or self.role(process)
                self.peaks[process.pid] = (role, max(peak, rss))
                if role in now:
                    now[role] = max(now[role], rss)
            self.peak_total = max(self.peak_total, total)
            self.timeline.append((time.time(), now["driver"], now["worker"]))
            time.sleep(self.every)

    def peak(self, role: str) -> float:
        values = [rss for r, rss in self.peaks.values() if r == role]
        return max(values) / 2**20 if values else 0.0

    def stage_peaks(self, intervals: list[list]) -> dict[str, tuple[float, float]]:
        """Stage column -> (driver MB, largest worker MB) at their highest while one of its task runs ran."""
        out: dict[str, tuple[float, float]] = {}
        for name, start, end in intervals:
            key = STAGES.get(name.removesuffix("_distributed"), "rest")
            inside = [(d, w) for t, d, w in self.timeline if start <= t <= end]
            if inside:
                driver, worker = out.get(key, (0.0, 0.0))
                out[key] = (
                    max(driver, max(d for d, _ in inside) / 2**20),
                    max(worker, max(w for _, w in inside) / 2**20),
                )
        return out

    def peak_during(self, intervals: list[list]) -> dict[str, str]:
        """Role -> the task runs running when its highest sample was taken ("between tasks": none)."""
        out = {}
        for role, column in (("driver", 1), ("worker", 2)):
            if self.timeline and max(sample[column] for sample in self.timeline):
                at = max(self.timeline, key=lambda sample: sample[column])[0]
                names = sorted({name for name, start, end in intervals if start <= at <= end})
                out[role] = ", ".join(names) or "between tasks"
        return out


def simulate(scale: int, directory: Path, env: dict, base: dict) -> dict:
    """The simulated table in `directory`; one kept from an earlier run (`--keep`) is read again as it is."""
    summary = directory / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    args = [str(base["customers"] * scale), str(base["terminals"] * scale), str(base["days"])]
    done = subprocess.run(
        [sys.executable, "-c", SIMULATE, *args, str(directory), str(ROWS_PER_FILE)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    for line in done.stdout.splitlines():
        if line.startswith("SIM "):
            summary.write_text(line[4:])
            return json.loads(line[4:])
    raise RuntimeError(f"simulation failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def run(
    executor: str, data: Path, env: dict, timeout: float, options: list[str] = (), workers: int = 2
) -> dict:
    fresh = {
        **env,
        "MLOPS_HOME": tempfile.mkdtemp(dir=env["MLOPS_BENCH_TMP"]),
        "MLOPS_EXECUTOR": executor,  # what `--executor` defaults to
        "MLOPS_DASK_WORKERS": str(workers),
        "MLOPS_DASK_THREADS": "1",
    }
    fresh.pop("MLOPS_DASK_ADDRESS", None)  # the run starts its own LocalCluster: its workers are measured
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "fraud", "--data", str(data), *options],
        env=fresh,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    sampler = TreeSampler(process.pid)
    sampler.start()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return {"executor": executor, "error": f"timed out after {timeout:.0f} s"}
    finally:
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - started
    result = None
    for line in out.splitlines():
        if line.startswith("BENCH "):
            result = json.loads(line[6:])
    if result is None:
        return {"executor": executor, "error": f"exit {process.returncode}: {err[-1500:]}"}
    stages: dict[str, float] = {}
    for name, seconds in result["stages"].items():
        key = STAGES.get(name.removesuffix("_distributed"), "rest")
        stages[key] = stages.get(key, 0.0) + seconds
    return {
        "executor": executor,
        "exit_code": result["exit_code"],
        "seconds": result["seconds"],
        "wall_with_imports": wall,
        "stages": stages,
        "driver_mb": sampler.peak("driver"),
        "stage_mb": sampler.stage_peaks(result.get("intervals", [])),
        "peak_during": sampler.peak_during(result.get("intervals", [])),
        "worker_mb": sampler.peak("worker"),
        "workers_seen": sum(1 for r, _ in sampler.peaks.values() if r == "worker"),
        "total_mb": sampler.peak_total / 2**20,
        "ap": result["metrics"].get("test_average_precision", float("nan")),
        "train_rows": result["params"].get("window.train", ""),
        "decision": result["decision"],
        "summary": result["summary"],
    }


def print_table(results: list[dict]) -> None:
    columns = ["ingest", "validate", "features", "split", "train", "baselines", "evaluate", "rest"]
    head = (
        f"{'scale':>5} {'rows':>11} {'exec':>5} {'wall s':>7} {'rows/s':>8} {'us/row':>6} "
        + " ".join(f"{c[:8]:>8}" for c in columns)
        + f" {'driver MB':>9} {'worker MB':>9} {'table MB':>8} {'AP':>6} exit"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['scale']:>4}x {r['rows']:>11,} {r['executor']:>5} {r['error']}")
            continue
        per_row = 1e6 * r["seconds"] / r["rows"]
        stage_cells = " ".join(f"{1e6 * r['stages'].get(c, 0.0) / r['rows']:8.2f}" for c in columns)
        print(
            f"{r['scale']:>4}x {r['rows']:>11,} {r['executor']:>5} {r['seconds']:7.0f} "
            f"{r['rows'] / r['seconds']:8.0f} {per_row:6.1f} {stage_cells} {r['driver_mb']:9.0f} "
            f"{r['worker_mb']:9.0f} {r['table_mb']:8.0f} {r['ap']:6.3f} {r['exit_code']}"
        )
    print("(stages: microseconds per row; peaks: RSS sampled every 0.2 s; table: the raw frame in pandas)")
    print("\npeak MB while each stage ran, driver / largest worker (local: the driver only):")
    print(f"{'scale':>5} {'exec':>5} " + " ".join(f"{c[:11]:>11}" for c in columns))
    for r in results:
        if "error" in r:
            continue
        peaks = (r["stage_mb"].get(c) for c in columns)
        cells = [f"{p[0]:.0f} / {p[1]:.0f}" if p else "" for p in peaks]
        print(f"{r['scale']:>4}x {r['executor']:>5} " + " ".join(f"{c:>11}" for c in cells))
        during = "; ".join(f"{role} during {names}" for role, names in r["peak_during"].items())
        print(f"      highest: {during}")


def summarise(results: list[dict]) -> None:
    ok = [r for r in results if "error" not in r]
    for executor in ("local", "dask"):
        runs = sorted((r for r in ok if r["executor"] == executor), key=lambda r: r["scale"])
        if len(runs) < 2:
            continue
        base = runs[0]["seconds"] / runs[0]["rows"]
        ratios = ", ".join(f"{r['scale']}x {r['seconds'] / r['rows'] / base:.2f}" for r in runs)
        print(f"{executor}: cost per row relative to {runs[0]['scale']}x: {ratios}")
    dask = sorted((r for r in ok if r["executor"] == "dask"), key=lambda r: r["scale"])
    if dask:
        top = dask[-1]
        held = max(top["driver_mb"], top["worker_mb"])
        print(
            f"dask {top['scale']}x: largest process {held:.0f} MB (driver {top['driver_mb']:.0f}, worker "
            f"{top['worker_mb']:.0f}) against the table's {top['table_mb']:.0f} MB: "
            f"{'below' if held < top['table_mb'] else 'NOT below'} the whole table"
        )
        # 1 B rows: the measured cost per row (2 workers x 1 thread = 2 cores) spread over a cluster's cores,
        # assuming the data-parallel stages scale linearly; the train window's share stays 21 of 183 days.
        core_seconds = 2 * top["seconds"] / top["rows"] * 1e9
        per_row = 2 * 1e6 * top["seconds"] / top["rows"]
        for cores in (64, 256, 1024):
            print(
                f"  1 B rows on {cores} cores: ~{core_seconds / cores / 60:.0f} min "
                f"({core_seconds / 3600:.0f} core-hours at the measured {per_row:.1f} core-us per row)"
            )


def _curve(ok: list[dict], base: dict, workers: int) -> dict:
    """Every run: wall time, µs per row overall and per stage, peaks, test AP and exit code."""
    curve = [
        [
            f"{r['scale']}x",
            r["rows"],
            r["executor"],
            r["wall_with_imports"],
            1e6 * r["wall_with_imports"] / r["rows"],
            *(1e6 * r["stages"].get(c, 0.0) / r["rows"] for c in STAGES),
            r["driver_mb"],
            r["worker_mb"] if r["executor"] == "dask" else None,
            r["table_mb"],
            r["ap"],
            r["exit_code"],
        ]
        for r in ok
    ]
    rest = []
    for r in ok:
        others = sum(v for k, v in r["stages"].items() if k not in STAGES)
        rest.append(f"{r['scale']}x {r['executor']}: {1e6 * others / r['rows']:.1f}")
    return table(
        "Scale curve: local executor and Dask, 1x to 8x the handbook's size",
        [
            "scale",
            "rows",
            "executor",
            {"name": "wall s", "format": ".0f"},
            {"name": "µs/row", **PER_ROW},
            *({"name": c, **PER_ROW} for c in STAGES),
            {"name": "driver peak MB", **MB},
            {"name": "largest worker MB", **MB},
            {"name": "table MB", **MB},
            {"name": "test AP", "format": ".3f"},
            "exit",
        ],
        curve,
        units="stages in microseconds per row of the table; peaks in MB of resident memory",
        method=(
            f"the simulator at {base['customers']:,} customers, {base['terminals']:,} terminals and "
            f"{base['days']} days times each scale in customers and terminals, as a directory of "
            "Parquet files of 1 M rows; `mlops run fraud --data DIR` per executor in a fresh process "
            f"(Dask: a LocalCluster of {workers} process worker(s) x 1 thread, started by the run); "
            "psutil samples the run's process tree every 0.2 s; wall time is the whole process, "
            'start-up included; "table" is the raw table in pandas'
        ),
        excluded="the Prefect server's start (one server for the benchmark)",
        notes=[
            f"the rest of each run (baselines, evaluation, champion, registry), µs/row: {'; '.join(rest)}"
        ]
        if rest
        else [],
    )  # fmt: skip


def _stage_peaks(ok: list[dict]) -> dict:
    """The largest scale: each process's peak while each stage ran."""
    top = max(r["scale"] for r in ok)
    columns = [*STAGES, "baselines", "evaluate", "rest"]
    rows, notes = [], []
    for r in (r for r in ok if r["scale"] == top):
        roles = (("Dask driver", 0), ("Dask, largest worker", 1)) if r["executor"] == "dask" else (
            ("local process", 0),)  # fmt: skip
        for label, i in roles:
            whole = r["driver_mb"] if i == 0 else r["worker_mb"]
            rows.append([label, *((r["stage_mb"].get(c) or (None, None))[i] for c in columns), whole])
        for role, names in r["peak_during"].items():
            notes.append(f"{r['executor']} {role}: highest during {names}")
    return table(
        f"{top}x, peak MB while each stage ran",
        ["peak MB", *({"name": c, **MB} for c in columns), {"name": "whole run", **MB}],
        rows,
        method="the highest sample of each process while one of the stage's task runs ran",
        notes=notes,
    )


def _cost(ok: list[dict]) -> dict:
    """Each executor's cost per row at each scale, against its smallest scale's."""
    cost_rows = []
    scales = sorted({r["scale"] for r in ok})
    for executor in ("dask", "local"):
        runs = {r["scale"]: r for r in ok if r["executor"] == executor}
        if runs:
            first = runs[min(runs)]
            unit = first["wall_with_imports"] / first["rows"]
            relative = [
                runs[s]["wall_with_imports"] / runs[s]["rows"] / unit if s in runs else None for s in scales
            ]
            cost_rows.append([executor, *relative])
    return table(
        "Cost per row against the smallest scale",
        ["executor", *({"name": f"{s}x", "format": ".2f"} for s in scales)],
        cost_rows,
    )


def _extrapolation(dask: list[dict]) -> dict:
    """1 B rows on a cluster, from the largest Dask run's cost per row."""
    biggest = max(dask, key=lambda r: r["scale"])
    core_us = 2 * 1e6 * biggest["wall_with_imports"] / biggest["rows"]  # 2 workers x 1 thread
    core_hours = core_us * 1e-6 * 1e9 / 3600
    return table(
        "1 B rows on a cluster, from the largest Dask run",
        ["cores", {"name": "minutes", "format": ".0f"}, {"name": "core-hours", "format": ".0f"},
         {"name": "core-µs per row", "format": ".0f"}],
        [[cores, core_hours * 60 / cores, core_hours, core_us] for cores in (64, 256, 1024)],
        method=(
            f"the {biggest['scale']}x Dask run's cost per row on 2 cores, assuming the data-parallel "
            "stages scale linearly"
        ),
    )  # fmt: skip


def tables(results: list[dict], base: dict, workers: int = 2) -> dict:
    """The docs' tables: the curve, the largest scale's peak per stage, cost per row, 1 B rows."""
    ok = [r for r in results if "error" not in r]
    out = {"curve": _curve(ok, base, workers)}
    if ok:
        out["stage_peaks"] = _stage_peaks(ok)
        out["cost"] = _cost(ok)
        dask = [r for r in ok if r["executor"] == "dask"]
        if dask:
            out["extrapolation"] = _extrapolation(dask)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Fraud pipeline scale curve, local and Dask executors.")
    parser.add_argument("--scales", default="1,2,4,8", help="multiples of the handbook's size")
    parser.add_argument("--local-max", type=int, default=4, help="largest scale run on the local executor")
    parser.add_argument("--executors", default="dask,local", help="which executors to run, in this order")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument(
        "--keep", default=None, help="keep the simulated data under this directory (and reuse what is there)"
    )
    parser.add_argument("--base", default=None, help="CUSTOMERS,TERMINALS,DAYS at 1x (a smoke test)")
    add_arguments(parser, "scale")
    args = parser.parse_args(argv)
    out = output_path(args, "scale")
    base = dict(HANDBOOK)
    options: list[str] = []
    if args.smoke:  # the smallest run that takes the Dask path (the local one is pipeline.py's)
        args.base = args.base or "300,600,70"
        args.scales = "1"
        args.executors = "dask"
        options = SMOKE_FRAUD_OPTIONS
    if args.base:
        base = dict(zip(("customers", "terminals", "days"), map(int, args.base.split(",")), strict=True))
    scales = [int(s) for s in args.scales.split(",")]

    results = []
    with prefect_server() as (env, boot):
        print(
            f"Prefect server start (excluded): {boot:.1f} s; {psutil.cpu_count()} CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB\n",
            flush=True,
        )
        root = Path(args.keep) if args.keep else Path(env["MLOPS_BENCH_TMP"]) / "data"
        for scale in scales:
            data = root / f"x{scale}"
            sim = simulate(scale, data, env, base)
            print(
                f"{scale}x: {sim['rows']:,} rows in {sim['files']} files, {sim['bytes'] / 2**20:.0f} MB in "
                f"pandas, fraud {sim['fraud']:.2%} (simulated in {sim['seconds']:.0f} s)",
                flush=True,
            )
            for executor in args.executors.split(","):
                if executor == "local" and scale > args.local_max:
                    print(f"  local {scale}x: not run (--local-max {args.local_max})", flush=True)
                    continue
                result = run(executor, data, env, args.timeout, options, workers=1 if args.smoke else 2)
                result.update(scale=scale, rows=sim["rows"], table_mb=sim["bytes"] / 2**20)
                results.append(result)
                print("  " + json.dumps(result), flush=True)
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)
    print()
    print_table(results)
    print()
    summarise(results)
    command = "uv run python bench/scale.py" + (" --smoke" if args.smoke else f" --scales {args.scales}")
    doc = document("scale", command, tables(results, base, 1 if args.smoke else 2), smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    main()
