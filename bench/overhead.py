"""What every process pays on this machine before it does any work, and what two settings change.

1. Start-up: a fresh interpreter importing the stack (MLflow, Prefect, pandas, XGBoost, Great Expectations),
   with the bytecode `make install` compiles (`uv sync --compile-bytecode`) against compiling from source, as
   every process did where PYTHONDONTWRITEBYTECODE is set (CI) and nothing was compiled at install.
2. XGBoost beside busy cores: the fraud candidate's training (hist, depth 6, 2 threads) on a table of its
   size, with OpenMP's default wait policy (threads spin) against OMP_WAIT_POLICY=PASSIVE (they sleep),
   with no load added and beside one or two processes that keep a core busy, as servers and other tests do.

Each measurement is a fresh process, the variants interleaved repeat by repeat. Prints a table per part.

    uv run python bench/overhead.py [--repeats 5] [--smoke] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import add_arguments, document, output_path, table, write  # noqa: E402

IMPORTS = "import mlflow, prefect, pandas, xgboost, great_expectations"
TRAINING = """
import sys, time, numpy as np, xgboost as xgb
rows, rounds = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.normal(size=(rows, 15))
y = (x[:, 0] + rng.normal(size=rows) > 2).astype(int)
data = xgb.DMatrix(x, label=y)
params = {"objective": "binary:logistic", "eval_metric": "aucpr", "tree_method": "hist", "max_depth": 6,
          "eta": 0.1, "nthread": 2, "seed": 42}
started = time.perf_counter()
xgb.train(params, data, rounds, evals=[(data, "validation")], verbose_eval=False)
print(time.perf_counter() - started)
"""
BUSY = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass\n"


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _wall(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def start_up(repeats: int, imports: str = IMPORTS) -> dict:
    """Wall seconds of `python -c IMPORTS`: compiled bytecode vs compiling from source every time."""
    with tempfile.TemporaryDirectory() as empty:
        variants = {
            "bytecode compiled at install": (
                [sys.executable, "-c", imports],
                _env(PYTHONDONTWRITEBYTECODE="1"),
            ),
            # an empty pycache prefix: no compiled file is found, and none is written
            "compiled from source (PYTHONDONTWRITEBYTECODE, nothing compiled)": (
                [sys.executable, "-X", f"pycache_prefix={empty}", "-c", imports],
                _env(PYTHONDONTWRITEBYTECODE="1"),
            ),
        }
        _wall(*variants["bytecode compiled at install"])  # the files into the page cache, for both
        seconds = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (args, env) in variants.items():
                seconds[name].append(_wall(args, env))
    rows = [[name, statistics.median(s), max(s)] for name, s in seconds.items()]
    return table(
        "A fresh interpreter importing the stack",
        ["bytecode", {"name": "median s", "format": ".1f"}, {"name": "max s", "format": ".1f"}],
        rows,
        method=f"`python -c '{imports}'`, wall time of the whole process, {repeats} repeats interleaved",
        notes=[
            "Every `mlops` process, server, Prefect flow-run process and Dask worker pays this once; the "
            "test suite starts well over a hundred of them."
        ],
    )


LOADS = (("no load added", 0), ("one core kept busy", 1), ("both cores kept busy", 2))


def training(repeats: int, rows: int, rounds: int, loads=LOADS) -> dict:
    """Wall seconds of one training, per wait policy, idle and beside busy cores (`loads`)."""
    policies = {"default (spin)": None, "PASSIVE (sleep)": "PASSIVE"}
    seconds: dict[tuple[str, str], list[float]] = {}
    for load, busy_cores in loads:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy_cores)]
        try:
            for _ in range(repeats):
                for policy, value in policies.items():
                    done = subprocess.run(
                        [sys.executable, "-c", TRAINING, str(rows), str(rounds)],
                        env=_env(OMP_WAIT_POLICY=value),
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    seconds.setdefault((load, policy), []).append(float(done.stdout))
        finally:
            for process in busy:
                process.kill()
                process.wait()
    table_rows = [[load, policy, statistics.median(s), max(s)] for (load, policy), s in seconds.items()]
    return table(
        "XGBoost training, 2 threads, by OpenMP wait policy",
        [
            "machine",
            "OMP_WAIT_POLICY",
            {"name": "median s", "format": ".2f"},
            {"name": "max s", "format": ".2f"},
        ],
        table_rows,
        method=f"{rows:,} rows x 15 features, {rounds} rounds, hist, depth 6, nthread 2 (the fraud "
        f"candidate's settings and size in the tests); {repeats} repeats interleaved; "
        "the busy core: a Python loop",
        excluded="the process start and the imports (the training call only)",
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    add_arguments(parser, "overhead")
    args = parser.parse_args(argv)
    repeats = 1 if args.smoke else args.repeats
    rows, rounds = (2_000, 20) if args.smoke else (12_366, 140)
    # smoke: pandas alone proves the path in a few seconds, and one busy core the load's (no core kept busy
    # for long beside the other tests)
    imports = "import pandas" if args.smoke else IMPORTS
    loads = LOADS[:2] if args.smoke else LOADS
    tables = {"start_up": start_up(repeats, imports), "training": training(repeats, rows, rounds, loads)}
    doc = document("overhead", "uv run python bench/overhead.py", tables, smoke=args.smoke)
    from bench._results import render

    print(render(doc))
    write(output_path(args, "overhead"), doc)
    return doc


if __name__ == "__main__":
    main()
