"""The local Prefect server that outlives a command: started once, reused, shared by concurrent starters,
moved off a port someone else holds, replaced when its process died, and stopped by `mlops server stop`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import bound_socket, end_group

ROOT = Path(__file__).resolve().parents[2]
ENSURE = (
    "import json, os; from infra.prefect_local import ensure_api, running; url = ensure_api(); "
    "print(json.dumps({'url': url, 'pid': running().pid}))"
)


@pytest.fixture
def squatter():
    """Another program on the port the local server would prefer: a socket bound and listening all along."""
    with bound_socket() as held:
        yield held


@pytest.fixture
def env(tmp_path, squatter):
    port = squatter.getsockname()[1]  # taken: the server must move off it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        MLOPS_HOME=str(tmp_path / "home"),
        MLOPS_SERVERS_DIR=str(tmp_path / "servers"),  # no `make up` here
        MLOPS_PREFECT_SERVER="background",
        MLOPS_LOCAL_PREFECT_PORT=str(port),
    )
    yield env
    subprocess.run([sys.executable, "-m", "cli.main", "server", "stop"], env=env, cwd=ROOT, timeout=120)


def _ensure(env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", ENSURE],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the server it starts has a session of its own (infra/servers/processes.py)
    )


def _result(process: subprocess.Popen) -> dict:
    try:
        out, _ = process.communicate(timeout=240)
    finally:
        assert not end_group(process.pid), "the command left a process behind in its group"
    assert process.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def _cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_started_once_shared_reused_and_stopped(env):
    preferred = int(env["MLOPS_LOCAL_PREFECT_PORT"])  # held by the `squatter` fixture's socket
    first, second = _ensure(env), _ensure(env)  # two commands starting at once
    a, b = _result(first), _result(second)
    assert a == b, "two concurrent commands must share one server"
    assert a["url"].startswith("http://127.0.0.1:") and f":{preferred}/" not in a["url"]

    again = _result(_ensure(env))  # a later command reuses it
    assert again == a
    status = _cli(env, "server", "status")
    assert status.returncode == 0 and f"pid {a['pid']}" in status.stdout and a["url"] in status.stdout

    os.killpg(a["pid"], signal.SIGKILL)  # the server dies; its pid file stays behind
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{a['pid']}").exists():
        time.sleep(0.2)
    replaced = _result(_ensure(env))
    assert replaced["pid"] != a["pid"]

    stopped = _cli(env, "server", "stop")
    assert "stopped" in stopped.stdout
    assert _cli(env, "server", "status").returncode == 3  # not running


def test_ephemeral_mode_starts_nothing(env):
    env = {**env, "MLOPS_PREFECT_SERVER": "ephemeral"}
    done = subprocess.run(
        [sys.executable, "-c", "from infra.prefect_local import ensure_api; print(ensure_api())"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "None"
    assert not (Path(env["MLOPS_HOME"]) / "prefect" / "prefect.pid").exists()


def test_status_and_help_do_not_touch_prefect(env):
    for args in (["status", "fraud"], ["--help"], ["rollback", "--help"]):
        done = _cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert not (Path(env["MLOPS_HOME"]) / "prefect").exists()
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, cli.main, champion.lifecycle; print('prefect' in sys.modules)"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False"
