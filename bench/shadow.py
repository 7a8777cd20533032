"""Shadow scoring benchmark: the answer's latency with a challenger in shadow against without, on the same
transactions through two running `mlops serve-model fraud`, and no pair lost on a clean stop.

    uv run python bench/shadow.py [--home DIR] [--limit N] [--repeats R] [--out PATH] [--smoke]

The challenger is the champion's model registered again (a second version from the same source, with its gate
and lineage tags, made `@challenger`): the same scoring cost as a real challenger of that size. Per repeat,
two fresh servers on loopback ports, embedded state, warmed with `--history` as in bench/realtime.py, one
`--shadow` and one `--no-shadow`; the first N transactions from the handbook's September go, one per request
and in time order, to both alternately (A, B, A, B, ...; who goes first alternates per repeat), each over
its own keep-alive connection, so both see the same machine load. No labels are posted. Then the shadow
server's /health, a SIGTERM (a clean stop flushes), and its pairs read back with `read_pairs`. Prints and
writes (bench/results/shadow.json, `--out`) p50/p99/p99.9/max per server and repeat, the p99 ratio against
the 10 % target, and the pairs. `--smoke`: bench/scoring.py's smoke champion and data, 300 transactions,
one repeat, its own MLOPS_HOME under the temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`

import _results as results  # noqa: E402
from _harness import free_port  # noqa: E402
from realtime import EVENT, PROGRESS_EVERY, model_server, post, prepare, stop  # noqa: E402
from scoring import MODEL, ensure_champion  # noqa: E402  (also the benchmarks' environment defaults)

from tasks.challenger.pairs import PAIRS_URL_ENV, pairs_dir, read_pairs  # noqa: E402

TARGET = 0.10  # the answer's p99 with a challenger in shadow at most 10 % over without
FLAGS = {"shadow": "--shadow", "none": "--no-shadow"}
NAMES = {"shadow": "challenger in shadow", "none": "no shadow (--no-shadow)"}


def ensure_challenger(champion: str) -> str:
    """`@challenger`: a copy of the champion's model (reused when it already is one)."""
    from mlflow import MlflowClient

    from champion.challenger import current_challenger, set_challenger
    from usecases.vocabulary import CHALLENGER_TAG, PROMOTION_TAG

    client = MlflowClient()
    original = client.get_model_version(MODEL, champion)
    current = current_challenger(client, MODEL)
    if current not in (None, champion) and client.get_model_version(MODEL, current).source == original.source:
        return current
    tags = {k: v for k, v in original.tags.items() if k not in (PROMOTION_TAG, CHALLENGER_TAG)}
    copy = client.create_model_version(
        MODEL,
        original.source,
        run_id=original.run_id,
        tags=tags,
        model_id=getattr(original, "model_id", None),
        description=f"bench/shadow.py: v{champion}'s model again, scored as the challenger",
    )
    set_challenger(MODEL, str(copy.version), f"bench/shadow.py: v{champion}'s model", by="bench/shadow.py")
    return str(copy.version)


def spawn(home: Path, pairs_home: Path, history: Path, variant: str) -> tuple:
    """`mlops serve-model fraud FLAG` on a free port, the registry of `home`, its pairs under `pairs_home`."""
    import subprocess

    env = {
        **os.environ,
        "MLOPS_HOME": str(pairs_home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    # embedded state, no token, polls the registry, pairs to Parquet under `pairs_home` (read back below)
    for name in ("MLOPS_REDIS_URL", "MLOPS_SERVE_TOKEN", "PREFECT_API_URL", PAIRS_URL_ENV):
        env.pop(name, None)
    port, log = free_port(), pairs_home / f"serve-{variant}.log"
    pairs_home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "cli.main", "serve-model", "fraud", "--port", str(port)]
    command += ["--history", str(history), FLAGS[variant]]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, port, started, log


def replay(clients: dict, month) -> dict[str, np.ndarray]:
    """Every transaction once, in time order, to each server in turn: client wall seconds per request."""
    events = month[list(EVENT)].assign(TX_DATETIME=month["TX_DATETIME"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    seconds: dict[str, list[float]] = {variant: [] for variant in clients}
    for i, values in enumerate(events.itertuples(index=False, name=None)):
        body = dict(zip(EVENT, values, strict=True))
        for variant, client in clients.items():
            answer, took = post(client, "/transactions", body)
            if answer["results"][0]["duplicate"]:
                raise RuntimeError(f"{variant}: transaction {values[0]} answered as a duplicate")
            seconds[variant].append(took)
        if (i + 1) % PROGRESS_EVERY == 0:
            print(f"  {i + 1:,} transactions to each server", flush=True)
    return {variant: np.asarray(s) for variant, s in seconds.items()}


def one_repeat(home: Path, folder: Path, replayed, challenger: str, order: tuple[str, ...]) -> dict:
    """Two fresh servers, the interleaved replay, the shadow's /health, a clean stop, the pairs read back."""
    pairs_home = folder / "home"
    spawned = {variant: spawn(home, pairs_home / variant, replayed.history, variant) for variant in order}
    with contextlib.ExitStack() as servers:
        for process, *_ in spawned.values():
            servers.callback(stop, process)  # both, even when one does not come up
        clients, startup = {}, {}
        for variant in order:
            clients[variant], startup[variant], _ = servers.enter_context(model_server(*spawned[variant]))
        before = {variant: client.get("/health").json()["shadow"] for variant, client in clients.items()}
        if before["shadow"].get("challenger_version") != challenger or before["none"]["enabled"]:
            raise RuntimeError(f"not one server with v{challenger} in shadow and one without: {before}")
        gc.collect()
        gc.freeze()  # the client's own garbage collection kept out of the timings
        began = time.perf_counter()
        seconds = replay(clients, replayed.month)
        wall = time.perf_counter() - began
        gc.unfreeze()
        health = clients["shadow"].get("/health").json()["shadow"]
        process = spawned["shadow"][0]
        stop(process)  # SIGTERM: the server drains the queue and writes the last batch
    with mock.patch.dict(os.environ, {"MLOPS_HOME": str(pairs_home / "shadow")}):
        os.environ.pop(PAIRS_URL_ENV, None)
        pairs = read_pairs(MODEL)
        spools = len(list((pairs_dir(MODEL) / "spool").glob("*.spool")))
    sent = set(replayed.month["TRANSACTION_ID"].astype(str))
    # uvicorn raises the signal again after its graceful shutdown: -SIGTERM is a clean stop, -SIGKILL was not
    stopped = "clean" if process.returncode in (0, -signal.SIGTERM) else f"exit {process.returncode}"
    return {
        "seconds": seconds, "startup": startup, "wall": wall, "health": health, "stop": stopped,
        "stored": len(pairs), "lost": len(sent - set(pairs["pair_id"])), "spools": spools,
        "scored": int(pairs["challenger_score"].notna().sum()),
    }  # fmt: skip


def ms(seconds: np.ndarray) -> list[float]:
    return [float(np.percentile(seconds, q)) * 1000 for q in (50, 99, 99.9)] + [float(seconds.max()) * 1000]


def latency_table(runs: list[dict], versions: tuple[str, str], replayed: str) -> dict:
    rows = [
        [NAMES[variant], r + 1, len(run["seconds"][variant]), *ms(run["seconds"][variant])]
        for r, run in enumerate(runs)
        for variant in FLAGS
    ]
    p99 = {variant: statistics.median(ms(run["seconds"][variant])[1] for run in runs) for variant in FLAGS}
    ratio = p99["shadow"] / p99["none"]
    verdict = "met" if ratio <= 1 + TARGET else "not met"
    rows += [
        [f"{NAMES[v]}, median of the repeats' p99", "median", None, None, p99[v], None, None] for v in FLAGS
    ]
    each = ", ".join(f"{ms(run['seconds']['shadow'])[1] / ms(run['seconds']['none'])[1]:.3f}" for run in runs)
    columns = [{"name": f"{p} ms", "format": ".2f"} for p in ("p50", "p99", "p99.9", "max")]
    return results.table(
        "The answer's latency with and without a challenger in shadow",
        ["server", "repeat", "requests", *columns],
        rows,
        units="milliseconds per POST /transactions (one transaction), client side",
        method=(
            f"`{MODEL}` v{versions[0]} answering; v{versions[1]}, the same model registered again, as "
            f"`@challenger`. Per repeat, two fresh `mlops serve-model fraud` processes on loopback ports "
            f"(embedded state, warmed with `--history`), one `--shadow`, one `--no-shadow`; {replayed}, "
            f"in time order, each POSTed to both in turn (A, B, A, B; who goes first alternates per repeat), "
            f"one keep-alive httpx client per server, sequential; client wall time of one request; "
            f"{os.cpu_count()} CPUs shared by the client and both servers"
        ),
        excluded=(
            "server start-up and warm start, the client's JSON encoding of each request and decoding of each "
            "answer, the stop and the last flush"
        ),
        notes=[
            f"p99 with / without: {ratio:.3f} on the median of the repeats' p99 (each repeat: {each}); "
            f"target <= {1 + TARGET:.2f}: {verdict}.",
            "The --no-shadow server shares the cores with the shadow server's worker (the challenger scored "
            "in batches beside the answers): CPU taken from the machine weighs on both; what only the "
            "shadow server's answers pay is the hand-off (a lock, one spool write, a queue put) and the "
            "worker's share of that process's interpreter lock.",
        ],
    )


def pairs_table(runs: list[dict]) -> dict:
    rows = []
    for r, run in enumerate(runs):
        h, sent = run["health"], len(run["seconds"]["shadow"])
        counts = [
            h[k]
            for k in ("pairs_recorded", "pending", "pairs_dropped", "pairs_timed_out", "pairs_not_scored")
        ]
        rows.append([r + 1, sent, *counts, *(run[k] for k in ("stop", "stored", "scored", "lost", "spools"))])
    return results.table(
        "Pairs recorded by the shadow server, and after a clean stop",
        ["repeat", "transactions sent", "/health: recorded", "pending", "dropped", "timed out", "not scored",
         "SIGTERM", "pairs read back", "with a challenger score", "lost", "spools left"],
        rows,
        method=(
            "/health's `shadow` counts right after the replay (pending: not yet written); then SIGTERM "
            "(clean: the server exited on it after its shutdown, not killed 20 s later), and the pairs under "
            "its MLOPS_HOME read with `tasks.challenger.pairs.read_pairs`; lost: transactions sent with no "
            "pair read back; spools left: spool files a clean stop should have removed"
        ),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=None, help="MLOPS_HOME of the registry (default "
                        ".mlops/bench; with --smoke, one under the temporary folder)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=None, help="default: the handbook file")
    parser.add_argument("--limit", type=int, default=None, help="transactions per repeat (default 20,000)")
    parser.add_argument("--repeats", type=int, default=None, help="fresh servers, same replay (default 3)")
    results.add_arguments(parser, "shadow")
    args = parser.parse_args(argv)
    out = results.output_path(args, "shadow")
    smoke = Path(tempfile.gettempdir()) / "mlops-bench-smoke"
    if args.smoke:
        data, home = args.data or results.smoke_fraud_data(smoke), args.home or smoke / "shadow-home"
        limit, repeats, options = args.limit or 300, args.repeats or 1, results.SMOKE_FRAUD_OPTIONS
    else:
        data, home = args.data or results.HANDBOOK, args.home or ROOT / ".mlops" / "bench"
        limit, repeats, options = args.limit or 20_000, args.repeats or 3, ()
    if not data.exists():
        sys.exit(f"no data at {data}")
    if limit < 1 or repeats < 1:
        sys.exit("--limit and --repeats must be at least 1")
    home = home.resolve()
    version = ensure_champion(home, data, options)
    challenger = ensure_challenger(version)
    from champion.loading import load_scoring_model, spec_for

    spec = spec_for("fraud", model := load_scoring_model(MODEL, version=version))
    runs = []
    with tempfile.TemporaryDirectory(prefix="mlops-bench-shadow-") as tmp:
        replayed = prepare(data, limit, Path(tmp), model, spec)
        first = replayed.month["TX_DATETIME"].iloc[0]
        print(f"\n{MODEL} v{version}, challenger v{challenger}: {len(replayed.month):,} transactions")
        for r in range(repeats):
            order = tuple(FLAGS) if r % 2 == 0 else tuple(reversed(FLAGS))
            print(f"\nrepeat {r + 1}/{repeats}: {' and '.join(FLAGS[v] for v in order)}", flush=True)
            runs.append(one_repeat(home, Path(tmp) / f"repeat-{r + 1}", replayed, challenger, order))
            up = ", ".join(f"{FLAGS[v]} {s:.1f} s" for v, s in runs[-1]["startup"].items())
            print(f"  up in {up}; replay {runs[-1]['wall']:.1f} s", flush=True)
    words = f"the first {len(replayed.month):,} transactions from {first:%Y-%m-%d}"
    tables = {
        "latency": latency_table(runs, (version, challenger), words),
        "pairs": pairs_table(runs),
    }
    flag = " --smoke" if args.smoke else f" --limit {limit} --repeats {repeats}"
    doc = results.document("shadow", f"uv run python bench/shadow.py{flag}", tables, smoke=args.smoke)
    print("\n" + results.render(doc))
    results.write(out, doc)
    return doc


if __name__ == "__main__":
    main()
