"""Every benchmark in bench/ runs: each script's `--smoke` mode (tiny simulated data, one repeat), called in
this process through its `main(argv)`, writing its JSON to a temporary folder, never to bench/results/.

The benchmarks that need a fraud champion (scoring, serving, compact, realtime) share one, trained once on the
smoke data; the in-process ones share the session's Prefect test server, and the ones that start `mlops run`
in fresh processes (pipeline, stock, scale) are pointed at it too (MLOPS_BENCH_PREFECT_API_URL), so no
benchmark starts a Prefect server of its own (wall_clock's smoke mode included, whose full runs time the local
server's start).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import needs

BENCH = Path(__file__).resolve().parents[2] / "bench"
RESULTS = BENCH / "results"

pytestmark = pytest.mark.timeout(600)


def bench(name: str):
    """bench/NAME.py as a module (under another name: bench/serving.py must not shadow `serving`)."""
    module = sys.modules.get(f"bench_{name}")
    if module is None:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def check(doc: dict, out: Path, tables: set[str]) -> dict:
    """The run wrote its JSON where it was told, as a smoke run, with every expected table filled."""
    assert out.exists(), out
    written = json.loads(out.read_text())
    assert written["source"] == "smoke" and written["benchmark"] == doc["benchmark"]
    assert tables <= set(written["tables"]), (tables, set(written["tables"]))
    for key in tables:
        t = written["tables"][key]
        assert t["rows"], f"{doc['benchmark']}#{key} has no rows"
        assert all(len(row) == len(t["columns"]) for row in t["rows"]), f"{doc['benchmark']}#{key}"
    rendered = bench("_results").render(written)
    assert rendered.count("|---|") >= len(tables)
    return written


@pytest.fixture(scope="module")
def prefect_url(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def subprocess_prefect(prefect_url, monkeypatch):
    """Benchmarks that run `mlops run` in fresh processes use the session's Prefect server."""
    monkeypatch.setenv("MLOPS_BENCH_PREFECT_API_URL", prefect_url)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-smoke")


@pytest.fixture(scope="module")
def champion_home(smoke_dir, prefect_server):
    """One fraud champion on the smoke data, shared by scoring, serving, compact and realtime (scoring trains
    it)."""
    return smoke_dir / "champion-home"


@pytest.fixture(autouse=True)
def restore_environment():
    """The scripts set MLOPS_HOME, PREFECT_LOGGING_LEVEL and the like in os.environ (some at import): all
    of it undone after each test, since the tests that run next in this process (under pytest-xdist, any
    file) and the processes they start inherit the environment."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_scoring(champion_home, smoke_dir):
    out = smoke_dir / "scoring.json"
    doc = bench("scoring").main(["--smoke", "--home", str(champion_home), "--out", str(out)])
    check(doc, out, {"batch"})


def test_serving(champion_home, smoke_dir):
    out = smoke_dir / "serving.json"
    doc = bench("serving").main(["--smoke", "--home", str(champion_home), "--out", str(out)])
    written = check(doc, out, {"latency"})
    servers = {row[1] for row in written["tables"]["latency"]["rows"]}
    assert servers == {"mlops serve-model", "mlflow models serve"}


def test_compact(champion_home, smoke_dir):
    out = smoke_dir / "compact.json"
    doc = bench("compact").main(["--smoke", "--home", str(champion_home), "--out", str(out)])
    written = check(doc, out, {"fraud"})
    assert written["tables"]["fraud"]["rows"][0][0] == "teacher"


def test_realtime(champion_home, smoke_dir):
    """Two real `mlops serve-model` processes (a private Redis, the embedded store): every answered score
    equals batch scoring."""
    if shutil.which("redis-server") is None:
        needs("redis-server", "not on PATH")
    out = smoke_dir / "realtime.json"
    doc = bench("realtime").main(["--smoke", "--home", str(champion_home), "--out", str(out)])
    written = check(doc, out, {"latency", "parity", "memory", "time"})
    assert [row[4] for row in written["tables"]["parity"]["rows"]] == ["yes"] * 5
    assert {row[1] for row in written["tables"]["latency"]["rows"]} >= {"Redis", "embedded"}


def test_shadow(champion_home, smoke_dir):
    """Two real `mlops serve-model` processes, one with the champion's copy in shadow: every transaction sent
    is paired and read back after a clean stop. (It sets `@challenger` in the shared home: after realtime.)"""
    out = smoke_dir / "shadow.json"
    doc = bench("shadow").main(["--smoke", "--home", str(champion_home), "--out", str(out)])
    written = check(doc, out, {"latency", "pairs"})
    servers = [row[0] for row in written["tables"]["latency"]["rows"]]
    assert servers[:2] == ["challenger in shadow", "no shadow (--no-shadow)"] and len(servers) == 4
    [(_, sent, *_, stop, stored, scored, lost, spools)] = written["tables"]["pairs"]["rows"]
    assert (sent, stop, stored, lost, spools) == (300, "clean", 300, 0, 0) and scored > 0


def test_continual(smoke_dir, prefect_server):
    out = smoke_dir / "continual.json"
    doc = bench("continual").main(["--smoke", "--out", str(out)])
    check(doc, out, {"fraud", "stock"})


def test_monitoring(smoke_dir, prefect_server):
    out = smoke_dir / "monitoring.json"
    doc = bench("monitoring").main(["--smoke", "--out", str(out)])
    check(doc, out, {"simulator", "stock"})


def test_heal(smoke_dir):
    """In-process stages only (`.fn`): no MLflow store, no Prefect server."""
    out = smoke_dir / "heal.json"
    doc = bench("heal").main(["--smoke", "--out", str(out)])
    written = check(doc, out, {"summary", "weekly", "checks"})
    rows = written["tables"]["summary"]["rows"]
    assert {(r[0], r[1]) for r in rows} == {
        (world, strategy)
        for world in ("no drift", "card testing")
        for strategy in ("calendar (today)", "default loop")
    }
    assert all(sum(r[8]) == 3 for r in rows)  # a gate decision for each weekly run R1..R3


def test_pipeline(smoke_dir, subprocess_prefect):
    out = smoke_dir / "pipeline.json"
    doc = bench("pipeline").main(["--smoke", "--out", str(out)])
    check(doc, out, {"summary", "stages"})


def test_stock(smoke_dir, subprocess_prefect):
    out = smoke_dir / "stock.json"
    doc = bench("stock").main(["--smoke", "--out", str(out)])
    check(doc, out, {"volatility"})


def test_scale(smoke_dir, subprocess_prefect):
    out = smoke_dir / "scale.json"
    doc = bench("scale").main(["--smoke", "--out", str(out)])
    written = check(doc, out, {"curve", "stage_peaks", "extrapolation"})
    assert [row[2] for row in written["tables"]["curve"]["rows"]] == ["dask"]


def test_wall_clock(smoke_dir, subprocess_prefect):
    out = smoke_dir / "wall_clock.json"
    doc = bench("wall_clock").main(["--smoke", "--out", str(out)])
    check(doc, out, {"wall", "imports"})


def test_overhead(smoke_dir):
    out = smoke_dir / "overhead.json"
    doc = bench("overhead").main(["--smoke", "--out", str(out)])
    written = check(doc, out, {"start_up", "training"})
    assert len(written["tables"]["training"]["rows"]) == 4  # two policies, with 0 and 1 busy core


def test_smoke_never_writes_results(smoke_dir):
    """A smoke run refuses bench/results/ as its output, and defaults to a temporary folder."""
    results = bench("_results")
    import argparse

    parser = argparse.ArgumentParser()
    results.add_arguments(parser, "scale")
    assert not results.output_path(parser.parse_args(["--smoke"]), "scale").is_relative_to(RESULTS)
    with pytest.raises(SystemExit):
        results.output_path(parser.parse_args(["--smoke", "--out", str(RESULTS / "scale.json")]), "scale")
    assert results.output_path(parser.parse_args([]), "scale") == RESULTS / "scale.json"


def test_results_files_render():
    """Every bench/results file renders, says where its figures come from, and every docs marker names one."""
    import re

    results = bench("_results")
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["benchmark"] == path.stem and (BENCH / f"{path.stem}.py").exists(), path
        assert doc["source"] in ("run", "transcribed") and doc["provenance"], path
        assert results.render(doc).count("|---|") >= len(doc["tables"])
    docs = BENCH.parent / "docs"
    hooks = importlib.util.spec_from_file_location("docs_hooks", docs / "hooks.py")
    module = importlib.util.module_from_spec(hooks)
    hooks.loader.exec_module(module)
    for page in docs.glob("*.md"):
        for name, table_id in module.MARKER.findall(page.read_text()):
            doc = results.load(name)
            assert not table_id or table_id in doc["tables"], (page.name, name, table_id)
    assert not re.search(r"\| *\d[\d.,]* *\|", (BENCH.parent / "README.md").read_text()), "README: figures"


def test_tuning(smoke_dir, prefect_server):
    out = smoke_dir / "tuning.json"
    doc = bench("tuning").main(["--smoke", "--out", str(out)])
    written = check(doc, out, {"quality", "timing"})
    models = [row[0] for row in written["tables"]["quality"]["rows"]]
    assert models == ["spec defaults", "tuned, 1 trials", "tuned, 2 trials"]


def test_suite_time():
    """Two tiny JUnit reports: a row per test file, a column per run."""
    doc = bench("suite_time").main(["--smoke"])
    files = doc["tables"]["files"]
    assert [c["name"] for c in files["columns"][1:]] == ["before s", "after s"]
    assert {row[0]: row[1:] for row in files["rows"]} == {
        "flow/test_b.py": [2.0, 1.0],
        "unit/test_a.py": [2.0, 1.0],
    }
