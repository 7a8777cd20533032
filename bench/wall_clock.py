"""Benchmark: what a user waits for, end to end, start-up included.

Side by side in one run, each as a fresh process the way a person starts it:
- `mlops run fraud --data <handbook>`: the first run in a fresh MLOPS_HOME (it starts the local Prefect
  server) and then repeated runs that reuse it (best of `--repeat`);
- `bench/handwritten.py` on the same data: the same features, training and MLflow logging, no gates, no
  orchestration (best of `--repeat`);
- `mlops status fraud` and `mlops --help`;
- the import time of what `mlops run`, `mlops score` and `mlops status` load before working.

Everything is wall clock of the whole process (interpreter start, imports, server connection, work, exit).
Nothing is excluded except the data file's first read into the page cache (a warm-up read happens first).

    uv run python bench/wall_clock.py [--data PATH] [--repeat 2] [--before REV] [--out PATH] [--smoke]

With `--before REV` (e.g. the commit before the foundation rework), the same figures for that revision's code
are measured in the same run, from a temporary git worktree with this environment's packages.

The figures also go to bench/results/wall_clock.json (`--out`). `--smoke`: a tiny simulated file (absolute
gates off), the first run only and one hand-written run, one import timed once, the JSON to a temporary
folder; with MLOPS_BENCH_PREFECT_API_URL set (the smoke tests) the runs use that Prefect server instead of
starting the local one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`

from _results import (  # noqa: E402
    HANDBOOK,
    SMOKE_FRAUD_OPTIONS,
    add_arguments,
    document,
    output_path,
    smoke_fraud_data,
    table,
    write,
)

# What each command imports before it does its work (measured in a fresh interpreter each).
IMPORTS = {
    "mlops run": "import cli.main, flows.training",
    "mlops score": "import cli.main, flows.scoring, tasks.validate",
    "mlops status": "import cli.main, champion.lifecycle",
    "mlops --help": "import cli.main",
}
# The same, before the rework (flows/cli.py held the app; the lifecycle lived in tasks/).
IMPORTS_BEFORE = {
    "mlops run": "import flows.cli, flows.training",
    "mlops score": "import flows.cli, flows.scoring, tasks.validate",
    "mlops status": "import flows.cli, tasks.lifecycle",
    "mlops --help": "import flows.cli",
}


def timed(command: list[str], env: dict, check: bool = True, cwd: Path = ROOT) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if check and done.returncode not in (0, 3):
        raise RuntimeError(
            f"{command[:4]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds


@dataclass(frozen=True)
class Timings:
    """Every figure of one run, in seconds; the `*_before` ones are None (or empty) without `--before`."""

    imports: dict
    imports_before: dict
    status_empty: float
    status_before: float | None
    first: float
    runs: list
    hands: list
    runs_before: list
    status: float
    helps: float


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="default: the handbook file")
    parser.add_argument("--repeat", type=int, default=None, help="later runs and hand-written runs (2)")
    parser.add_argument("--before", default=None, help="Also measure this git revision's code.")
    add_arguments(parser, "wall_clock")
    return parser


def fill_defaults(args: argparse.Namespace) -> list[str]:
    """--data and --repeat filled in; returns the `mlops run` options smoke mode adds."""
    gates: list[str] = []
    if args.smoke:
        args.data = args.data or str(smoke_fraud_data(Path(tempfile.gettempdir()) / "mlops-bench-smoke"))
        args.repeat = args.repeat or 1
        gates = SMOKE_FRAUD_OPTIONS
    args.data = args.data or str(HANDBOOK)
    args.repeat = args.repeat or 2
    return gates


def environment(tmp: str, smoke: bool) -> dict:
    """The runs' environment: a fresh MLOPS_HOME and its own local Prefect server (or the smoke tests')."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env.update(
        MLOPS_HOME=str(Path(tmp) / "home"),
        MLOPS_LOCAL_PREFECT_PORT=str(4300 + os.getpid() % 500),
        MLOPS_PREFECT_SERVER="background",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
    )
    shared = os.environ.get("MLOPS_BENCH_PREFECT_API_URL")
    if smoke and shared:  # the smoke tests' one Prefect server: no local server started here
        env["PREFECT_API_URL"] = shared
    return env


def import_times(env: dict, old: _Before | None, smoke: bool, tries: int) -> tuple[dict, dict]:
    """Each command's imports in a fresh interpreter, best of `tries`, now and (with `old`) before."""
    imports, imports_before = {}, {}
    # smoke: the cheapest import only (the code path is the same for every command)
    for name, code in ({"mlops --help": IMPORTS["mlops --help"]} if smoke else IMPORTS).items():
        now, was = [], []
        for _ in range(tries):
            now.append(timed([sys.executable, "-c", code], env))
            if old:
                was.append(old.timed([sys.executable, "-c", IMPORTS_BEFORE[name]]))
        imports[name], imports_before[name] = min(now), min(was) if was else None
    return imports, imports_before


def measure(args: argparse.Namespace, gates: list[str], tries: int) -> Timings:
    """Every contender, interleaved, so the load of a shared machine hits each alike."""
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(tmp, args.smoke)
        mlops = [str(BIN / "mlops")]
        run = [*mlops, "run", "fraud", "--data", args.data, *gates]
        hand = [sys.executable, "bench/handwritten.py", args.data]
        old = _Before(args.before, env, tmp) if args.before else None
        try:
            imports, imports_before = import_times(env, old, args.smoke, tries)
            status_empty = timed([*mlops, "status", "fraud"], env)
            status_before = old.timed([sys.executable, "-c", old.app, "status", "fraud"]) if old else None
            first = timed(run, env)  # starts the local Prefect server
            runs, hands, runs_before = [], [], []
            for _ in range(args.repeat):
                if not args.smoke:  # smoke: the first run is the one `mlops run` measured
                    runs.append(timed(run, env))
                hands.append(timed(hand, {**env, "MLOPS_BENCH_TMP": tmp}))
                if old:
                    runs_before.append(
                        old.timed([sys.executable, "-c", old.app, "run", "fraud", "--data", args.data])
                    )
            status = timed([*mlops, "status", "fraud"], env)
            helps = timed([*mlops, "--help"], env)
        finally:
            subprocess.run([*mlops, "server", "stop"], env=env, cwd=ROOT, capture_output=True)
            if old:
                old.close()
    return Timings(
        imports, imports_before, status_empty, status_before, first, runs, hands, runs_before, status, helps
    )


def report(args: argparse.Namespace, t: Timings) -> None:
    best_run, best_hand = min(t.runs or [t.first]), min(t.hands)
    print(f"data: {args.data}; best of {args.repeat}; wall clock of the whole process, start-up included\n")
    print(f"{'':48}{'seconds':>10}")
    print(f"{'mlops run fraud, first run (starts Prefect)':48}{t.first:10.1f}")
    every = ", ".join(f"{r:.1f}" for r in t.runs)
    print(f"{'mlops run fraud, later runs (best)':48}{best_run:10.1f}   all: {every}")
    every = ", ".join(f"{h:.1f}" for h in t.hands)
    print(f"{'hand-written script (best)':48}{best_hand:10.1f}   all: {every}")
    print(f"{'ratio, later run / hand-written':48}{best_run / best_hand:10.2f}   (target <= 1.5)")
    print(f"{'first-run cost of the local Prefect server':48}{t.first - best_run:10.1f}")
    print(f"{'mlops status fraud (empty registry)':48}{t.status_empty:10.1f}")
    print(f"{'mlops status fraud (one model)':48}{t.status:10.1f}")
    print(f"{'mlops --help':48}{t.helps:10.1f}")
    print("\nimport time before a command works (fresh interpreter, best of 2):")
    for name, seconds in t.imports.items():
        was = f"   before: {t.imports_before[name]:.2f}" if args.before else ""
        print(f"  {name:46}{seconds:10.2f}{was}")
    if args.before:
        print(
            f"\nbefore ({args.before}), same run, interleaved: each command starts Prefect's temporary server"
        )
        every = ", ".join(f"{r:.1f}" for r in t.runs_before)
        print(f"{'mlops run fraud (best)':48}{min(t.runs_before):10.1f}   all: {every}")
        print(f"{'ratio to the hand-written script':48}{min(t.runs_before) / best_hand:10.2f}")
        print(f"{'mlops status fraud (empty registry)':48}{t.status_before:10.1f}")


def tables(args: argparse.Namespace, t: Timings, tries: int) -> dict:
    """The docs' tables: what a user waits for, and the import times."""
    best_run, best_hand = min(t.runs or [t.first]), min(t.hands)
    rev = args.before
    before = [rev] if rev else []  # a third column only when an earlier revision was measured

    def also(value):
        return [value] if rev else []

    wall = table(
        "What a user waits for",
        [
            "command",
            {"name": "seconds", "format": ".1f"},
            *({"name": f"before ({r})", "format": ".1f"} for r in before),
        ],
        [
            ["`mlops run fraud`, first run (starts the local Prefect server)", t.first, *also(None)],
            [
                f"`mlops run fraud`, later runs (best of {args.repeat})",
                best_run,
                *also(rev and min(t.runs_before)),
            ],
            [f"hand-written script (best of {args.repeat})", best_hand, *also(None)],
            [
                "ratio, later run / hand-written (target ≤ 1.5)",
                best_run / best_hand,
                *also(rev and min(t.runs_before) / best_hand),
            ],
            ["`mlops status fraud`, empty registry", t.status_empty, *also(t.status_before)],
            ["`mlops status fraud`, one model", t.status, *also(None)],
            ["`mlops --help`", t.helps, *also(None)],
        ],
        method=(
            "wall clock of the whole process (interpreter start, imports, server connection, work, exit) on "
            f"`{Path(args.data).name}`, every contender interleaved in one run"
            + (
                f"; `before` is revision {rev}, from a worktree with this environment's packages"
                if rev
                else ""
            )
        ),
        excluded="nothing but the data file's first read into the page cache",
    )
    imports = table(
        "Import time before a command works",
        [
            "command",
            {"name": "seconds", "format": ".2f"},
            *({"name": f"before ({r})", "format": ".2f"} for r in before),
        ],
        [[f"`{name}`", seconds, *also(t.imports_before[name])] for name, seconds in t.imports.items()],
        method=f"a fresh interpreter importing what the command loads, best of {tries}",
    )
    return {"wall": wall, "imports": imports}


def main(argv: list[str] | None = None) -> dict:
    args = arguments().parse_args(argv)
    out = output_path(args, "wall_clock")
    gates = fill_defaults(args)
    tries = 1 if args.smoke else 2
    if not Path(args.data).exists():
        sys.exit(f"benchmark data not found: {args.data}")
    Path(args.data).read_bytes()  # page cache warm for every contender alike
    timings = measure(args, gates, tries)
    report(args, timings)
    command = "uv run python bench/wall_clock.py" + (" --smoke" if args.smoke else "")
    doc = document("wall_clock", command, tables(args, timings, tries), smoke=args.smoke)
    write(out, doc)
    return doc


class _Before:
    """An earlier revision's code in a temporary worktree, run with this environment's packages (its
    folders first on sys.path)."""

    app = "import sys; from flows.cli import app; sys.exit(app(sys.argv[1:]))"

    def __init__(self, rev: str, env: dict, tmp: str):
        self.tree = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(self.tree), rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        self.env = {**env, "MLOPS_HOME": str(Path(tmp) / "home-before"), "PYTHONPATH": str(self.tree)}

    def timed(self, command: list[str]) -> float:
        return timed(command, self.env, cwd=self.tree)

    def close(self) -> None:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(self.tree)], cwd=ROOT, capture_output=True
        )


if __name__ == "__main__":
    main()
