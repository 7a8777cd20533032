"""Real-time scoring benchmark: the handbook's September replayed through a running `mlops serve-model fraud`,
one raw transaction per request, with the state in Redis and in the server process.

    uv run python bench/realtime.py [--home DIR] [--limit N] [--out PATH] [--smoke]

Per state store: a real server on a loopback port (Redis: a private `redis-server`, no persistence) with the
fraud champion of --home (bench/scoring.py trains one if needed), warmed with `--history` (the 37 days before
September 1), and the month replayed in time order over one keep-alive connection: every transaction once,
every other one with `?explain=3` (both kinds meet the same state and load), labels posted between requests
once a label delay old (`POST /labels`, not in the latency). Then `/predict` with the batch features of the
same rows. Prints and writes (bench/results/realtime.json, `--out`) events/s, p50/p99, the state's memory,
start-up and warm start, and parity: every answered score against `mlops score` on the same rows.
`--limit N`: the first N transactions per store. `--smoke`: bench/scoring.py's smoke champion and data.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`

import _results as results  # noqa: E402
from _harness import free_port  # noqa: E402
from scoring import MODEL, ensure_champion  # noqa: E402  (also the benchmarks' environment defaults)

RAW = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
EVENT = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
HANDBOOK_MONTH = "2018-09-01"  # September: 287,873 transactions
EXPLAIN, TARGET_P99_MS = 3, 5.0
PROGRESS_EVERY, LABEL_BATCH = 10_000, 10_000  # a progress line every ..., labels per POST at most
JSON = {"content-type": "application/json"}
MIB = {"format": ".1f", "scale": 1 / 2**20}
STORE_NAMES = {"redis": "Redis", "embedded": "embedded"}
PREDICT = ("POST /predict (batch features)", "none (features sent)")
PATHS = {"plain": "/transactions", "explain": f"/transactions?explain={EXPLAIN}"}
KINDS = (*PATHS, "predict")


@dataclass
class Replay:
    """What is replayed, and the files the server and `mlops score` read."""

    month: pd.DataFrame  # the replayed transactions, in (time, id) order
    pending: pd.DataFrame  # TRANSACTION_ID, TX_FRAUD, t (ns): the labels posted during the replay, by time
    features: pd.DataFrame  # the batch features of `month` (the model's columns), for /predict
    history: Path  # warm start: the feature history before the month, the newest labels not known yet
    batch_input: Path  # history with every label + month: what `mlops score` scores
    delay_ns: int
    history_days: float


@dataclass
class Served:
    """One server's run: timings, latencies (s) and scores per request kind, memory (bytes)."""

    store: str
    startup: float = 0.0
    warm: float | None = None
    warmed: int | None = None
    replay: float = 0.0
    label_posts: int = 0
    labels: int = 0
    label_seconds: float = 0.0
    unknown: int = 0
    predict_seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    scores: dict[str, dict[int, float]] = field(default_factory=lambda: {k: {} for k in KINDS})
    memory: dict[str, int] = field(default_factory=dict)


# --- data and processes ------------------------------------------------------------------------------------


def prepare(data: Path, limit: int | None, folder: Path, model, spec) -> Replay:
    """The month replayed (the handbook's September; in other data, the first day after a full feature history
    on) and the feature history before it, read with filters; the files the server and batch scoring read."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    history = spec.online.history
    first = pd.Timestamp(pc.min(pq.read_table(data, columns=["TX_DATETIME"])["TX_DATETIME"]).as_py())
    begin = pd.Timestamp(HANDBOOK_MONTH if data == results.HANDBOOK else first.normalize() + history)
    filters = [("TX_DATETIME", ">=", begin - history), ("TX_DATETIME", "<", begin + timedelta(days=30))]
    frame = pq.read_table(data, columns=RAW, filters=filters).to_pandas()
    frame = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    times = frame["TX_DATETIME"]
    past, month = frame[times < begin], frame[times >= begin].head(limit or len(frame))
    if month.empty:
        raise SystemExit(f"no transactions in {data} from {begin}")
    delay = timedelta(days=spec.split.gap)
    known_by = month["TX_DATETIME"].iloc[0] - delay  # a label is known once it is `delay` old
    old = past["TX_DATETIME"] <= known_by
    past.assign(TX_FRAUD=past["TX_FRAUD"].astype(float).where(old)).to_parquet(folder / "history.parquet")
    both = pd.concat([past, month], ignore_index=True)
    both.to_parquet(folder / "batch-input.parquet")
    posted = pd.concat([past[~old], month])
    pending = posted[["TRANSACTION_ID", "TX_FRAUD"]].reset_index(drop=True)
    pending["t"] = posted["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
    features = spec.build_features(both).set_index("TRANSACTION_ID").loc[month["TRANSACTION_ID"]]
    features = features[list(model.columns)].astype(float)
    files = folder / "history.parquet", folder / "batch-input.parquet"
    delay_ns, days = int(delay.total_seconds() * 10**9), history.total_seconds() / 86_400
    return Replay(month.reset_index(drop=True), pending, features, *files, delay_ns, days)


@contextlib.contextmanager
def redis_server(folder: Path):
    """A private `redis-server` on a free loopback port (data in `folder`, no persistence); yields its URL."""
    import redis

    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"redis-server on port {port} did not answer in 10 s")
        client.close()
        yield url
    finally:
        stop(process)


def spawn(home: Path, replay: Replay, store: str, url: str | None, folder: Path) -> tuple:
    """Start `mlops serve-model fraud` on a free port, warmed with the history: (process, port, when, log)."""
    env = {**os.environ, "MLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    for name in ("MLOPS_REDIS_URL", "MLOPS_SERVE_TOKEN", "PREFECT_API_URL"):  # isolated: polls the registry
        env.pop(name, None)
    port, log = free_port(), folder / f"serve-{store}.log"
    command = [sys.executable, "-m", "cli.main", "serve-model", "fraud", "--port", str(port)]
    command += ["--history", str(replay.history)] + (["--state", url] if url else [])
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, port, started, log


@contextlib.contextmanager
def model_server(process: subprocess.Popen, port: int, started: float, log: Path):
    """A spawned server, once it answers; yields (keep-alive client, seconds from spawning it to its first
    200 on /health, its RSS sampled meanwhile as (epoch s, bytes)); stops it on the way out."""
    import httpx
    import psutil

    client, rss = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60), []
    try:
        while True:
            with contextlib.suppress(psutil.Error):
                rss.append((time.time(), psutil.Process(process.pid).memory_info().rss))
            if process.poll() is not None:
                raise RuntimeError(f"serve-model exited ({process.returncode}): {log.read_text()[-3000:]}")
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"serve-model did not answer /health in 900 s; see {log}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    break
            time.sleep(0.05)
        yield client, time.perf_counter() - started, rss
    finally:
        client.close()
        stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()  # nothing if it has already ended
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def warm_start_of(log: Path) -> tuple[float, float, int] | None:
    """When the model was loaded (epoch s), the seconds from then to the state filled, and the events kept
    (from the server's log)."""
    text = log.read_text()
    stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO mlops\.serving: "
    loaded = re.search(stamp + r".*now serving v", text, re.MULTILINE)
    warmed = re.search(stamp + r"real-time state: .*?warmed with ([\d,]+) events", text, re.MULTILINE)
    if not (loaded and warmed):
        return None
    at = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() for m in (loaded, warmed)]
    return at[0], at[1] - at[0], int(warmed.group(2).replace(",", ""))


def redis_memory(url: str) -> tuple[int, int, int]:
    """(INFO memory used_memory, MEMORY USAGE summed over the service's keys, number of keys)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter("mlops:*", count=1000))
        usage = sum(client.memory_usage(k, samples=0) or 0 for k in keys)
        return int(client.info("memory")["used_memory"]), int(usage), len(keys)
    finally:
        client.close()


# --- the replay --------------------------------------------------------------------------------------------


def post(client, path: str, body: object) -> tuple[dict, float]:
    """POST `body` (encoded before the clock starts); the answer and the seconds it took."""
    content = orjson.dumps(body)
    started = time.perf_counter()
    response = client.post(path, content=content, headers=JSON)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:500]}")
    return orjson.loads(response.content), seconds


def post_labels(client, replay: Replay, run: Served, confirmed: int, now_ns: int) -> int:
    """POST /labels with every pending label a delay old at `now_ns` (the next transaction's time)."""
    pending = replay.pending
    due = int(pending["t"].searchsorted(now_ns - replay.delay_ns, side="right"))
    for start in range(confirmed, due, LABEL_BATCH):
        part = pending.iloc[start : min(due, start + LABEL_BATCH)]
        answer, seconds = post(client, "/labels", part[["TRANSACTION_ID", "TX_FRAUD"]].to_dict("records"))
        run.label_posts, run.labels = run.label_posts + 1, run.labels + len(part)
        run.label_seconds += seconds
        run.unknown += len(answer["unknown"])
    return max(due, confirmed)


def replay_month(client, replay: Replay, run: Served) -> None:
    """Every transaction once, in time order, one per request (every other one with ?explain=3), the labels
    that came due posted before it."""
    month = replay.month
    times = month["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
    events = month[list(EVENT)].assign(TX_DATETIME=month["TX_DATETIME"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    confirmed, began, mark = 0, time.perf_counter(), time.perf_counter()
    for i, values in enumerate(events.itertuples(index=False, name=None)):
        confirmed = post_labels(client, replay, run, confirmed, int(times[i]))
        kind = "explain" if i % 2 else "plain"
        answer, seconds = post(client, PATHS[kind], dict(zip(EVENT, values, strict=True)))
        result = answer["results"][0]
        if result["duplicate"] or (kind == "explain" and len(result["reasons"]) != EXPLAIN):
            raise RuntimeError(f"unexpected answer to transaction {values[0]}: {result}")
        run.latencies[kind].append(seconds)
        run.scores[kind][values[0]] = result["score"]
        if (i + 1) % PROGRESS_EVERY == 0:
            rate, mark = PROGRESS_EVERY / (time.perf_counter() - mark), time.perf_counter()
            print(f"  {run.store}: {i + 1:,} transactions, {rate:,.0f}/s (labels included)", flush=True)
    run.replay = time.perf_counter() - began


def predict_pass(client, replay: Replay, run: Served) -> None:
    """POST /predict with the batch features of the same rows, one row per request."""
    features, began = replay.features, time.perf_counter()
    cols = list(features.columns)  # one record at a time: all at once would hold the month twice
    for tx, row in zip(features.index.tolist(), features.itertuples(index=False, name=None), strict=True):
        answer, seconds = post(client, "/predict", {"dataframe_records": [dict(zip(cols, row, strict=True))]})
        run.latencies["predict"].append(seconds)
        run.scores["predict"][tx] = answer["predictions"][0]
    run.predict_seconds = time.perf_counter() - began


def serve_and_replay(home: Path, replay: Replay, store: str, url: str | None, folder: Path, spawned=None):
    """One server's run: start-up (warm start included), the replay, memory; then /predict (Redis run)."""
    import psutil

    run = Served(store)
    print(f"\n{store}: mlops serve-model fraud --history ({replay.history_days:g} days)", flush=True)
    empty = redis_memory(url) if url else (0, 0, 0)
    process, port, started, log = spawned or spawn(home, replay, store, url, folder)
    with model_server(process, port, started, log) as (client, startup, samples):
        loaded, run.warm, run.warmed = warm_start_of(log) or (None, None, None)
        run.startup, before = startup, [b for t, b in samples if loaded and t <= loaded]
        print(f"  up in {startup:.1f} s (warm start {run.warm or 0:.1f} s, {run.warmed or 0:,} events)")
        rss = psutil.Process(process.pid)
        # before: the last sample before the warm start
        run.memory.update(
            rss_warm=rss.memory_info().rss, used_empty=empty[0], rss_before=(before or [None])[-1]
        )
        if url:
            run.memory.update(zip(("used_warm", "usage_warm", "keys_warm"), redis_memory(url), strict=True))
        gc.collect()
        gc.freeze()  # the client's own garbage collection kept out of the timings
        replay_month(client, replay, run)
        run.memory["rss_end"] = rss.memory_info().rss
        if url:
            run.memory.update(zip(("used_end", "usage_end", "keys_end"), redis_memory(url), strict=True))
            predict_pass(client, replay, run)
        gc.unfreeze()
    return run


def batch_scores(replay: Replay, folder: Path, score_column: str) -> tuple[pd.Series, float]:
    """`mlops score fraud` on the history plus the replayed rows, in this process: (scores by id, seconds)."""
    from cli.main import app

    out = folder / "batch-scores.parquet"
    began = time.perf_counter()
    code = app(["score", "fraud", "-i", str(replay.batch_input), "-o", str(out)], standalone_mode=False)
    if code:
        raise SystemExit(f"mlops score exited {code}")
    return pd.read_parquet(out).set_index("TRANSACTION_ID")[score_column], time.perf_counter() - began


# --- figures -----------------------------------------------------------------------------------------------


def kinds(runs: dict[str, Served]):
    """(request, state, latencies, scores) of every measured kind, in table order."""
    for store, run in runs.items():
        for kind in ("plain", "explain"):
            yield f"POST {PATHS[kind]}", STORE_NAMES[store], run.latencies[kind], run.scores[kind]
    for run in runs.values():
        if run.latencies["predict"]:
            yield *PREDICT, run.latencies["predict"], run.scores["predict"]


def latency_table(runs: dict[str, Served], version: str, replayed: str) -> dict:
    rows = []
    for request, state, seconds, _ in kinds(runs):
        ms = np.asarray(seconds) * 1000
        rows.append([request, state, len(ms), 1000 / ms.mean(), np.percentile(ms, 50), np.percentile(ms, 99)])
    redis_p99 = rows[0][5]
    verdict = "met" if redis_p99 <= TARGET_P99_MS else "not met"
    ms = [{"name": f"{p} ms", "format": ".2f"} for p in ("p50", "p99")]
    return results.table(
        "Real-time scoring, one transaction per request",
        ["request", "state", "transactions", {"name": "events/s", "format": ",.0f"}, *ms],
        rows,
        units="milliseconds per request, client side; events/s: 1 / the mean latency (one sequential client)",
        method=(
            f"`{MODEL}` v{version} in a real `mlops serve-model fraud` on a loopback port; one keep-alive "
            f"httpx client, sequential; {replayed} in time order, each once, every other one with "
            f"`?explain={EXPLAIN}`; the latency includes parsing, the feature update and the state round "
            f"trips; then `/predict` with the batch features of the same rows; {os.cpu_count()} CPUs"
        ),
        excluded=(
            "posting labels (between requests, timed apart: see the wall-time table), server start-up and "
            "warm start, the client's JSON encoding of each request and decoding of each answer"
        ),
        notes=[f"Target p99 <= {TARGET_P99_MS:g} ms with Redis: {verdict} ({redis_p99:.2f} ms)."],
    )


def parity_table(runs: dict[str, Served], batch: pd.Series, batch_seconds: float) -> dict:
    rows = []
    for request, state, _, scores in kinds(runs):
        gap = float(np.abs(np.fromiter(scores.values(), float) - batch.loc[list(scores)].to_numpy()).max())
        rows.append([request, state, len(scores), gap, "yes" if gap <= 1e-6 else "NO"])
    return results.table(
        "Parity with batch scoring",
        ["request", "state", "scores compared", {"name": "max abs difference", "format": ".1e"}, "<= 1e-6"],
        rows,
        method=(
            "every answered score against `mlops score fraud` on the warm-start history plus the replayed "
            f"transactions with every label ({batch_seconds:.0f} s, in no figure above): batch features read "
            "only labels a delay old, and the replay posts each label once it is that old"
        ),
    )


def memory_table(runs: dict[str, Served], replay: Replay) -> dict:
    redis = runs["redis"].memory
    empty = redis["used_empty"]
    # fmt: off
    rows = [
        ["Redis", "`INFO memory` used_memory, minus the empty server's", redis["used_warm"] - empty,
         redis["used_end"] - empty, redis["keys_end"]],
        ["Redis", "`MEMORY USAGE` summed over the service's keys (`mlops:*`)", redis["usage_warm"],
         redis["usage_end"], redis["keys_end"]],
    ]
    for store, what in (("embedded", "server process"), ("redis", "Redis-backed server (for comparison)")):
        memory = runs[store].memory
        delta = [None if memory["rss_before"] is None else memory[k] - memory["rss_before"]
                 for k in ("rss_warm", "rss_end")]
        rows.append([STORE_NAMES[store], f"RSS of the {what}, minus its RSS just before the warm start",
                     *delta, None])
    columns = ["state", "measured as", {"name": "after warm start MiB", **MIB},
               {"name": "after the replay MiB", **MIB}, "keys after the replay"]
    # fmt: on
    return results.table(
        "Memory of the state",
        columns,
        rows,
        method=(
            "the state keeps each transaction's raw event (time, id, amount, label, score, version: 48 "
            f"bytes) under its card and under its terminal for the {replay.history_days:g} days the features "
            "read plus the lateness (1 h), and a per-day index of the transactions waiting for a label. RSS "
            "is sampled every 50 ms during start-up ('just before the warm start': the last sample before the"
            " server logged the model loaded); its delta includes the warm start's peak (tables, imports), "
            "which the allocator keeps, as the Redis-backed server's row shows: the embedded store itself "
            "holds the bytes Redis reports plus Python's per-key overhead"
        ),
    )


def time_table(runs: dict[str, Served], prepared: float, batch_seconds: float) -> dict:
    rows = []
    for store, run in runs.items():
        n = sum(len(run.latencies[k]) for k in ("plain", "explain"))
        rows.append([STORE_NAMES[store], run.startup, run.warm, run.warmed, run.replay, n / run.replay,
                     [run.label_posts, run.labels], run.label_seconds, run.startup + run.replay])  # fmt: skip
    seconds = [{"name": f"{name} s", "format": ".1f"} for name in ("start-up", "warm start", "replay")]
    unknown = sum(run.unknown for run in runs.values())
    return results.table(
        "Wall time",
        ["state", *seconds[:2], "events warmed", seconds[2], {"name": "events/s", "format": ",.0f"},
         {"name": "label posts / labels", "format": "{:,.0f} / {:,.0f}"},
         {"name": "labels s", "format": ".1f"}, {"name": "wall s", "format": ".1f"}],
        rows,
        units="seconds of wall time",
        method=(
            "start-up: from spawning `mlops serve-model fraud --history PATH` to its first 200 on /health, "
            "warm start included (warm start: from the model loaded to the state filled, by the server's "
            "log); replay: every transaction and the labels posted between them; wall: start-up + replay, "
            "what a user waits for; events/s: transactions / replay s"
        ),
        excluded=(
            f"reading the data and the batch features for /predict ({prepared:.0f} s), the /predict "
            f"pass ({runs['redis'].predict_seconds:.0f} s), `mlops score` for the parity check "
            f"({batch_seconds:.0f} s)"
        ),
        notes=[f"Labels the service did not know (should be none): {unknown:,}."],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / ".mlops" / "bench", help="MLOPS_HOME to use")
    parser.add_argument("--data", type=Path, default=None, help="default: the handbook file")
    parser.add_argument("--limit", type=int, default=None, help="transactions per state store (default: all)")
    results.add_arguments(parser, "realtime")
    args = parser.parse_args(argv)
    out = results.output_path(args, "realtime")
    if args.smoke:
        data = args.data or results.smoke_fraud_data(Path(tempfile.gettempdir()) / "mlops-bench-smoke")
        limit, options = args.limit or 300, results.SMOKE_FRAUD_OPTIONS
    else:
        data, limit, options = args.data or results.HANDBOOK, args.limit, ()
    if not data.exists():
        sys.exit(f"no data at {data}")
    home = args.home.resolve()
    version = ensure_champion(home, data, options)
    from champion.loading import load_scoring_model, spec_for

    spec = spec_for("fraud", model := load_scoring_model(MODEL, version=version))
    with tempfile.TemporaryDirectory(prefix="mlops-bench-realtime-") as tmp:
        folder, began = Path(tmp), time.perf_counter()
        replay = prepare(data, limit, folder, model, spec)
        prepared, first = time.perf_counter() - began, replay.month["TX_DATETIME"].iloc[0]
        print(f"\n{MODEL} v{version}: {len(replay.month):,} transactions from {first} ({prepared:.0f} s)")
        # --smoke: the second server starts beside the first (its figures mean nothing; the test is faster)
        early = spawn(home, replay, "embedded", None, folder) if args.smoke else None
        try:
            with redis_server(folder) as url:
                runs = {"redis": serve_and_replay(home, replay, "redis", url, folder)}
            runs["embedded"] = serve_and_replay(home, replay, "embedded", None, folder, early)
        finally:
            if early:
                stop(early[0])
        print("\nmlops score on the history and the replayed rows, for parity", flush=True)
        batch, batch_seconds = batch_scores(replay, folder, spec.score_column)
    replayed = f"{len(replay.month):,} transactions from {first:%Y-%m-%d}"
    replayed = f"the first {replayed} (--limit)" if limit else replayed
    tables = {
        "latency": latency_table(runs, version, replayed),
        "parity": parity_table(runs, batch, batch_seconds),
        "memory": memory_table(runs, replay),
        "time": time_table(runs, prepared, batch_seconds),
    }
    flag = " --smoke" if args.smoke else f" --limit {limit}" if limit else ""
    command = f"uv run python bench/realtime.py{flag}"
    doc = results.document("realtime", command, tables, smoke=args.smoke)
    print("\n" + results.render(doc))
    results.write(out, doc)
    return doc


if __name__ == "__main__":
    main()
