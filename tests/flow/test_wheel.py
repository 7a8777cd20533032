"""The built wheel, installed into a fresh virtual environment outside the repository, runs every command.

Dependencies are installed at the locked versions (`uv export`), then the wheel itself; every command runs
from a folder that has no project files, so nothing can be imported from the checkout by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ports import end_group

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    ["--help"],
    ["run", "fraud", "--help"],
    ["run", "stock", "--help"],
    ["score", "--help"],
    ["tune", "--help"],
    ["serve-model", "--help"],
    ["status", "--help"],
    ["rollback", "--help"],
    ["deploy", "--help"],
    ["serve", "--help"],
    ["notify-data", "--help"],
    ["server", "status", "--help"],
    ["deploy", "--dry-run"],  # imports the flows and the deployments (infra) from the wheel
]


def _uv() -> list[str]:
    """uv as the Makefile finds it: on PATH, else the module the Makefile bootstrapped into python3."""
    found = shutil.which("uv")
    return [found] if found else [shutil.which("python3") or "python3", "-m", "uv"]


def _spawn(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`command` in a process group of its own, which is ended once it exits (or times out)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = process.communicate(timeout=900)
    finally:
        end_group(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = _spawn(command, **kwargs)
    assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _environment(**settings: str) -> dict[str, str]:
    """The commands' environment: nothing pointing into the checkout. Bytecode is written (the installed
    environment is not compiled at install, unlike `make install`'s): the first command that imports the
    stack compiles it once for the others."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    }
    return {**env, "MLOPS_PREFECT_SERVER": "ephemeral", **settings}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    uv = _uv()
    _run([*uv, "build", "--wheel", "--out-dir", str(tmp / "dist"), str(ROOT)], cwd=ROOT)
    (wheel,) = (tmp / "dist").glob("mlops_factory-*.whl")
    requirements = tmp / "requirements.txt"
    _run(
        [*uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-o", str(requirements)],
        cwd=ROOT,
    )
    venv = tmp / "venv"
    _run([*uv, "venv", "--python", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    _run([*uv, "pip", "install", "--python", str(python), "-r", str(requirements)])
    _run([*uv, "pip", "install", "--python", str(python), "--no-deps", str(wheel)])
    return venv


def test_every_command_runs_from_the_installed_wheel(installed, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _environment(MLOPS_HOME=str(outside / "home"))
    mlops = str(installed / "bin" / "mlops")
    origin = _run(
        [str(installed / "bin" / "python"), "-c", "import flows, infra, cli; print(flows.__file__)"],
        cwd=outside,
        env=env,
    )
    assert str(installed) in origin.stdout  # imported from site-packages, not the checkout
    for args in COMMANDS:
        _run([mlops, *args], cwd=outside, env=env)
    status = _run([mlops, "status", "fraud"], cwd=outside, env=env)
    assert "no registered models" in status.stdout


def test_a_small_run_from_the_installed_wheel(installed, tmp_path):
    from conftest import SMALL_FRAUD_RUN

    env = _environment(MLOPS_HOME=str(tmp_path / "home"))
    done = _spawn([str(installed / "bin" / "mlops"), "run", "fraud", *SMALL_FRAUD_RUN], cwd=tmp_path, env=env)
    # an empty registry and the absolute gates off: the first version is promoted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gates" in done.stdout and "MLflow:" in done.stdout
