"""`--executor dask`: the same features, windows and gates on a real Dask `LocalCluster` of process workers.

One cluster (2 process workers, 1 thread each) serves the module; runs connect to it through
MLOPS_DASK_ADDRESS, as a run would to a shared cluster. The fault test comes last: it kills a worker.
"""

import contextlib
import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_FRAUD_RUN, registry_client
from distributed.diagnostics.plugin import SchedulerPlugin

from cli.main import app
from usecases.fraud.features import FEATURES
from usecases.fraud.simulator import simulate_transactions

pytestmark = pytest.mark.usefixtures("prefect_server")
MODEL = "fraud-detector"


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local,
        Client(local, set_as_default=False) as client,
    ):
        yield local, client


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    local, client = cluster
    monkeypatch.setenv("MLOPS_DASK_ADDRESS", local.scheduler_address)
    return client


@pytest.fixture
def mlops(mlops_run):
    return mlops_run


def latest_run(home):
    client = registry_client(home)
    experiment = client.get_experiment_by_name("fraud")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]


def gate_report(home, run) -> dict:
    client = registry_client(home)
    path = client.download_artifacts(run.info.run_id, "gate_report.json", str(home / "dl" / run.info.run_id))
    with open(path) as handle:
        return {g["name"]: g for g in json.load(handle)["gates"]}


def local_and_distributed(on_cluster, spec, scratch, settings):
    """The fraud features of one simulated table built in one piece, and on the cluster from five partitions
    in no time order (shards and chunks must gather their rows from all of them), both in time order."""
    import dask.dataframe as dd

    from tasks.dask.features import featurize_distributed

    raw = simulate_transactions(n_customers=150, n_terminals=300, n_days=80, seed=3)
    shuffled = raw.sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame = on_cluster.persist(dd.from_pandas(shuffled, npartitions=5, sort=False))
    table = featurize_distributed.fn(frame, spec, on_cluster, scratch, settings, labelled=False)
    assert sum(table.attrs["lengths"]) == len(raw)  # written once to the scratch folder, read from there
    assert all(f.startswith(str(scratch)) for f in table.attrs["files"])
    distributed = on_cluster.compute(table).result()
    distributed = distributed.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    local = spec.build_features(raw)
    assert len(distributed) == len(local) == len(raw)
    assert list(distributed.columns) == list(local.columns)
    pd.testing.assert_series_equal(distributed["TRANSACTION_ID"], local["TRANSACTION_ID"])
    pd.testing.assert_series_equal(distributed["TX_DATETIME"], local["TX_DATETIME"])
    return table, distributed, local


def test_features_on_key_shards_equal_the_local_features_row_for_row(on_cluster, tmp_path):
    """Customer features from customer shards, terminal features from terminal shards: bit for bit."""
    from tasks.dask.cluster import DaskSettings
    from usecases.fraud.spec import Params, build_spec

    spec = build_spec(Params())
    settings = DaskSettings(partition_rows=2_000)
    table, distributed, local = local_and_distributed(on_cluster, spec, tmp_path, settings)
    assert table.attrs["shards"] >= 10 and not table.attrs["ordered"]
    pd.testing.assert_frame_equal(distributed, local)


def test_features_on_time_chunks_equal_the_local_features_row_for_row(on_cluster, tmp_path):
    """A use case without feature keys: chunks shorter than the 37-day history (it spans chunks)."""
    import dataclasses

    from tasks.dask.cluster import DaskSettings
    from usecases.fraud.spec import Params, build_spec

    spec = dataclasses.replace(build_spec(Params()), feature_keys={})
    settings = DaskSettings(chunk_days=9)
    table, distributed, local = local_and_distributed(on_cluster, spec, tmp_path, settings)
    assert table.attrs["chunks"] >= 8 and table.attrs["ordered"]
    for name in FEATURES:
        if "AVG_AMOUNT" in name:  # cumulative sums restart where a chunk's history starts: last-bit rounding
            np.testing.assert_allclose(distributed[name], local[name], rtol=1e-12, atol=1e-9, err_msg=name)
        else:  # counts, 0/1 flags and label shares: exact
            np.testing.assert_array_equal(distributed[name].to_numpy(), local[name].to_numpy(), err_msg=name)


def test_validation_merges_partitions_and_finds_a_duplicate_split_across_them(on_cluster):
    import dask.dataframe as dd

    from data_checks import fraud as checks
    from tasks.dask.validate import validate_partitions
    from tasks.validate import validate_frame

    raw = simulate_transactions(n_customers=100, n_terminals=200, n_days=30, seed=5)
    raw.loc[len(raw) - 1, "TRANSACTION_ID"] = raw.loc[0, "TRANSACTION_ID"]  # first and last partition
    raw.loc[10, "TX_AMOUNT"] = -1.0
    frame = on_cluster.persist(dd.from_pandas(raw, npartitions=4, sort=False))

    merged = validate_partitions(frame, checks.raw_suite, on_cluster)
    whole = validate_frame(raw, checks.raw_suite())
    assert not merged.success
    assert [(o.expectation, o.column, o.success) for o in merged.outcomes] == [
        (o.expectation, o.column, o.success) for o in whole.outcomes
    ]
    observed = {(o.expectation, o.column): o.observed for o in merged.outcomes}
    expected = {(o.expectation, o.column): o.observed for o in whole.outcomes}
    assert observed == expected  # counts, examples, row count and the fraud-rate mean, as on the whole table
    assert merged.result["meta"]["uniqueness"] == {"TRANSACTION_ID": "hash shuffle of the counts"}


@pytest.mark.parametrize(
    ("where", "method"),
    [("inside", "partition ranges disjoint"), ("boundary", "hash shuffle of the counts"), (None, None)],
)
def test_ids_growing_with_time_are_checked_by_partition_ranges_without_missing_a_repeat(
    on_cluster, where, method
):
    """Ids in time order: the partitions' ranges are disjoint, so each partition's own repeats are all there
    are. A repeat across a boundary makes two ranges touch, and the shuffle decides; either way the counts
    are the whole table's."""
    import dask.dataframe as dd

    from data_checks import fraud as checks
    from tasks.dask.validate import validate_partitions
    from tasks.validate import validate_frame

    raw = simulate_transactions(n_customers=100, n_terminals=200, n_days=30, seed=5)
    assert raw["TRANSACTION_ID"].is_monotonic_increasing
    frame = dd.from_pandas(raw, npartitions=4, sort=False)
    first_of_third = int(frame.divisions[2])  # a row index: from_pandas cuts the RangeIndex
    if where == "inside":
        raw.loc[5, "TRANSACTION_ID"] = raw.loc[6, "TRANSACTION_ID"]
    elif where == "boundary":
        raw.loc[first_of_third, "TRANSACTION_ID"] = raw.loc[first_of_third - 1, "TRANSACTION_ID"]
    frame = on_cluster.persist(dd.from_pandas(raw, npartitions=4, sort=False))

    merged = validate_partitions(frame, checks.raw_suite, on_cluster)
    whole = validate_frame(raw, checks.raw_suite())
    key = ("expect_column_values_to_be_unique", "TRANSACTION_ID")
    outcome = {(o.expectation, o.column): o for o in merged.outcomes}[key]
    expected = {(o.expectation, o.column): o for o in whole.outcomes}[key]
    assert (outcome.success, outcome.observed) == (expected.success, expected.observed)
    assert outcome.success is (where is None)
    assert merged.result["meta"]["uniqueness"]["TRANSACTION_ID"] == (method or "partition ranges disjoint")


def test_dask_run_promotes_on_the_local_runs_windows(
    mlops, champion_home, on_cluster, tmp_path, capsys, monkeypatch
):
    """Local first (v1, champion: the session's template, trained locally), then the Dask executor on the same
    data: same windows and test rows, so the champion re-scored on the Dask run's test window scores exactly
    what it scored on its own. Whether the Dask model beats it depends on the workers' share of the rows in
    `xgb.dask.train`; the decision must follow its gates either way."""
    local = latest_run(champion_home)
    assert local.data.params["param.executor"] in ("None", "local")

    scratch = tmp_path / "scratch"
    monkeypatch.setenv("MLOPS_DASK_SCRATCH", str(scratch))
    result = mlops(*SMALL_FRAUD_RUN, "--executor", "dask")
    assert scratch.is_dir() and list(scratch.iterdir()) == []  # used, and the run's folder gone with it
    dask_run = latest_run(champion_home)
    assert dask_run.data.params["param.executor"] == "dask"
    assert dask_run.data.params["window.test"] == local.data.params["window.test"]
    # The Dask executor trains on the training window as it is (no replay, recency, holdout nor refit): the
    # same validation days (all cards: the local one leaves the held-out cards out) and the same last training
    # day, where the local run's window reaches back by its replay.
    days = (run.data.params["window.validation"].split(" (")[0] for run in (dask_run, local))
    assert len(set(days)) == 1
    dask_train, local_train = (run.data.params["window.train"].split(" ") for run in (dask_run, local))
    assert dask_train[2] == local_train[2] and local_train[0] < dask_train[0], (dask_train, local_train)
    assert dask_run.data.params["baselines.training_rows"].startswith("all ")  # small: no sampling
    gates = gate_report(champion_home, dask_run)
    # The champion (the local refit) trained through this test window and this model honoured no held-out
    # cards: no row is unseen by both, so the champion gate compares on the test window and the slice gates
    # only report.
    assert "on the same test window" in gates["champion"]["detail"], gates["champion"]
    assert gates["slice.amount"]["detail"].startswith("skipped: champion v1 trained on"), gates[
        "slice.amount"
    ]
    ap_local = local.data.metrics["test_average_precision"]
    ap_dask = dask_run.data.metrics["test_average_precision"]
    assert abs(ap_dask - ap_local) < 0.1, (ap_local, ap_dask)  # other recipes on a small window: loose
    client = registry_client(champion_home)
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    refused = sorted(name for name, gate in gates.items() if not gate["passed"])
    print(
        f"dask run: AP {ap_dask:.4f} vs the local champion's {ap_local:.4f}; refused by {refused}; "
        f"exit {result.exit_code}"
    )
    if not refused:  # every gate passed: registered and promoted
        assert result.exit_code == 0, result.output
        assert versions == ["1", "2"]
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    else:  # a gate refused: the champion stays, and the run says which gate
        assert result.exit_code == 3, result.output
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
        assert all(name in result.output for name in refused), (refused, result.output[-3000:])

    # Batch scoring on the workers: the champion, pinned, on a directory of two files, as scored locally.
    new = tmp_path / "new"
    new.mkdir()
    records = simulate_transactions(n_customers=120, n_terminals=240, n_days=50, seed=9)
    records.iloc[: len(records) // 2].to_parquet(new / "a.parquet")
    records.iloc[len(records) // 2 :].to_parquet(new / "b.parquet")
    outputs = {}
    for executor in ("dask", "local"):
        outputs[executor] = tmp_path / f"scores-{executor}.parquet"
        code = app(
            ["score", "fraud", "-i", str(new), "-o", str(outputs[executor]), "--executor", executor]
            + (["--chunk-rows", "0"] if executor == "local" else []),
            standalone_mode=False,
        )
        assert not code, capsys.readouterr().out
    dask_scores, local_scores = (pd.read_parquet(outputs[e]) for e in ("dask", "local"))
    assert len(dask_scores) == len(records)
    pd.testing.assert_series_equal(dask_scores["TRANSACTION_ID"], local_scores["TRANSACTION_ID"])
    assert (dask_scores["model_version"] == local_scores["model_version"]).all()
    np.testing.assert_allclose(dask_scores["fraud_score"], local_scores["fraud_score"], rtol=0, atol=1e-6)


def test_local_ingest_reads_a_directory_or_a_glob_as_one_table(tmp_path):
    from tasks.ingest import DataReadError, read_table

    frame = simulate_transactions(n_customers=60, n_terminals=120, n_days=20, seed=1)
    frame.iloc[:100].to_parquet(tmp_path / "part-0.parquet")
    frame.iloc[100:].to_parquet(tmp_path / "part-1.parquet")
    for given in (tmp_path, tmp_path / "part-*.parquet"):
        pd.testing.assert_frame_equal(read_table(given), frame.reset_index(drop=True))
    (tmp_path / "extra.csv").write_text("a\n1\n")
    with pytest.raises(DataReadError, match="mixes Parquet and CSV"):
        read_table(tmp_path)
    with pytest.raises(DataReadError, match="no file matches"):
        read_table(tmp_path / "nothing-*.parquet")


def test_a_directory_or_glob_input_is_confined_to_the_data_roots_file_by_file(tmp_path):
    from tasks.ingest import DataPathRefused, confine_to_data_roots

    root = tmp_path / "data"
    (root / "month").mkdir(parents=True)
    (root / "month" / "a.parquet").write_bytes(b"")
    assert confine_to_data_roots(str(root / "month"), [root]) == root / "month"
    assert confine_to_data_roots(str(root / "month" / "*.parquet"), [root]) == root / "month" / "*.parquet"
    (root / "month" / "b.parquet").symlink_to("/etc/hostname")  # one member links out of the roots
    for given in (root / "month", root / "month" / "*.parquet"):
        with pytest.raises(DataPathRefused, match="resolved: /etc/hostname"):
            confine_to_data_roots(str(given), [root])


def test_make_up_dask_starts_a_scheduler_and_workers_that_compute_and_stops_them(tmp_path, monkeypatch):
    from distributed import Client
    from ports import owned_by_group, pick_port

    from infra.servers import dask_cluster
    from infra.servers.processes import Managed, port_open
    from infra.servers.settings import ServerError

    monkeypatch.setenv("MLOPS_DASK_WORKERS", "1")
    refused = []
    try:
        for _ in range(4):  # a picked port may be taken before the scheduler binds it: then another port
            port = pick_port()
            monkeypatch.setenv("MLOPS_DASK_PORT", str(port))
            try:
                env = dask_cluster.up(tmp_path, timeout=120)
                break
            except ServerError as exc:
                refused.append(str(exc))
                for name in dask_cluster.PROCESSES:
                    Managed(name, tmp_path).stop()
        else:
            pytest.fail(f"no port for the scheduler: {refused}")
        scheduler = Managed(dask_cluster.SCHEDULER, tmp_path).pid()
        assert owned_by_group(port, scheduler), f"port {port} is not the started scheduler's"
        assert env == {"MLOPS_DASK_ADDRESS": f"tcp://127.0.0.1:{port}"}
        with Client(env["MLOPS_DASK_ADDRESS"], set_as_default=False) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            assert len(client.scheduler_info()["workers"]) == 1
    finally:
        started = {p.stem: int(p.read_text()) for p in tmp_path.glob("*.pid")}
        stopped = [Managed(name, tmp_path).stop() for name in dask_cluster.PROCESSES]
        for pid in started.values():  # whatever `stop` did not end (a failed test must not leave servers)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    assert stopped == [True, True]
    assert not port_open("127.0.0.1", port)


def test_a_duplicate_across_two_files_stops_a_dask_run_before_training(
    mlops, mlops_home, on_cluster, tmp_path
):
    data = tmp_path / "month"
    data.mkdir()
    raw = simulate_transactions(n_customers=300, n_terminals=600, n_days=70, seed=4)
    half = len(raw) // 2
    raw.loc[len(raw) - 1, "TRANSACTION_ID"] = raw.loc[0, "TRANSACTION_ID"]  # one id in both files
    raw.iloc[:half].to_parquet(data / "a.parquet")
    raw.iloc[half:].to_parquet(data / "b.parquet")
    result = mlops("--data", str(data), "--executor", "dask")
    assert result.exit_code == 2, result.output
    assert "expect_column_values_to_be_unique(TRANSACTION_ID) failed" in result.output
    assert "2 unexpected values" in result.output
    assert registry_client(mlops_home).search_registered_models() == []


def test_bad_executor_setting_is_refused_before_any_work(mlops, mlops_home, monkeypatch):
    monkeypatch.setenv("MLOPS_EXECUTOR", "spark")
    result = mlops(*SMALL_FRAUD_RUN)
    assert result.exit_code == 2, result.output
    assert "unknown executor 'spark'" in result.output
    assert registry_client(mlops_home).search_registered_models() == []


def test_stock_is_refused_on_dask_with_the_reason(mlops, mlops_home, capsys):
    capsys.readouterr()
    code = app(["run", "stock", "--executor", "dask"], standalone_mode=False)
    output = capsys.readouterr().out
    assert code == 2, output
    assert "cannot run on the Dask executor" in output and "splits by steps" in output
    assert registry_client(mlops_home).search_registered_models() == []


class Killer(threading.Thread):
    """Kills the worker process running a feature task, once, as soon as one is running."""

    def __init__(self, client, prefix: str):
        super().__init__(daemon=True)
        self.client, self.prefix = client, prefix
        self.killed: tuple[str, str, int] | None = None  # (task key, worker address, worker pid)
        self.stop = threading.Event()

    def run(self) -> None:
        prefix = self.prefix

        def running(dask_scheduler):
            return [  # a DataFrame task's key is (name, partition)
                (str(key), ts.processing_on.address)
                for key, ts in dask_scheduler.tasks.items()
                if str(key[0] if isinstance(key, tuple) else key).startswith(prefix)
                and ts.processing_on is not None
            ]

        while not self.stop.is_set():
            busy = self.client.run_on_scheduler(running)
            if busy:
                key, address = busy[0]
                pid = self.client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                self.killed = (key, address, pid)
                return
            time.sleep(0.005)


class Recorder(SchedulerPlugin):
    """A scheduler plugin: where each task whose name starts with `prefix` finished (the worker that holds its
    result), which of them erred, and which workers left. Added by `record` on the module's scheduler."""

    name = "mlops-test-recorder"

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.finished: dict[str, list[str]] = {}
        self.erred: list[str] = []
        self.removed: list[str] = []

    def transition(self, key, start, finish, *args, **kwargs):
        if not str(key[0] if isinstance(key, tuple) else key).startswith(self.prefix):
            return
        if finish == "memory" and kwargs.get("worker"):
            self.finished.setdefault(str(key), []).append(kwargs["worker"])
        elif finish == "erred":
            self.erred.append(str(key))

    def remove_worker(self, scheduler=None, worker=None, **kwargs):
        self.removed.append(worker)


def _record(prefix: str, dask_scheduler=None):
    dask_scheduler.add_plugin(Recorder(prefix), name=Recorder.name, idempotent=False)


def _recorded(dask_scheduler=None) -> dict:
    plugin = dask_scheduler.plugins.pop(Recorder.name)
    return {"finished": plugin.finished, "erred": plugin.erred, "removed": plugin.removed}


def test_worker_killed_mid_features_the_run_recomputes_its_tasks_and_completes(
    mlops, mlops_home, on_cluster, monkeypatch
):
    """A worker process SIGKILLed while it builds a feature shard: Dask reruns the lost task (and whatever
    results it held) on another worker (the survivor, or the killed one's replacement), the run completes
    and promotes, and the nanny replaces the killed process. One outcome: a shard is rebuilt from the raw
    partitions, which the scheduler can always recompute (they are read again from their source, never
    scattered), and a single loss is within the scheduler's allowed failures per task (3)."""
    # Shards of 2,000 rows: a feature stage of a dozen tasks or more, each long enough to be caught running.
    monkeypatch.setenv("MLOPS_DASK_PARTITION_ROWS", "2000")
    pids_before = set(on_cluster.run(os.getpid).values())
    assert len(pids_before) == 2
    on_cluster.run_on_scheduler(_record, "features-shard-")
    killer = Killer(on_cluster, "features-shard-")
    killer.start()
    try:
        result = mlops(*SMALL_FRAUD_RUN, "--executor", "dask")
    finally:
        killer.stop.set()
        killer.join(timeout=10)
        recorded = on_cluster.run_on_scheduler(_recorded)
    assert killer.killed is not None, "no feature task was seen running"
    key, address, pid = killer.killed
    finished = recorded["finished"].get(key, [])
    # Two outcomes, both a lost task computed again: the kill caught it running (it finished only elsewhere),
    # or it finished on the worker in the instant between the check and the kill, and its result died with
    # the worker (it finished there first, then elsewhere).
    lost_after_finishing = finished[:1] == [address]
    outcome = "finished there just before the kill, result lost" if lost_after_finishing else "running"
    print(  # the outcome, under -s
        f"worker fault: killed worker {address} (pid {pid}) with {key} {outcome}; the task finished on "
        f"{finished}; the run exited {result.exit_code}"
    )
    assert pid in pids_before
    assert address in recorded["removed"], recorded["removed"]  # the scheduler saw the worker go
    assert recorded["erred"] == []
    # after the kill the task ran again, to completion, on workers other than the killed one
    after_kill = finished[1:] if lost_after_finishing else finished
    assert after_kill and address not in after_kill, (key, outcome, finished)
    assert result.exit_code == 0, result.output
    client = registry_client(mlops_home)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert latest_run(mlops_home).info.status == "FINISHED"
    # The nanny replaced the killed process: two workers again, the killed one's pid gone, one new pid.
    deadline = time.monotonic() + 60
    while len(on_cluster.scheduler_info()["workers"]) < 2:
        assert time.monotonic() < deadline, "the nanny did not replace the killed worker within 60 s"
        time.sleep(0.5)
    pids_after = set(on_cluster.run(os.getpid).values())
    assert pids_before - pids_after == {pid} and len(pids_after - pids_before) == 1, (pids_before, pids_after)
