"""Runs that pause for a person's approval, as the tests of `tasks/approval.py` and `mlops approve` start and
watch them (tests/server/test_server_mode.py, tests/flow/test_browser.py).

`command` is the one place that says which run pauses: a real training run whose forgetting gate finds a
true trade-off (tests/trade_off_run.py: a champion, then `mlops run fraud` on a week of a new pattern), with
the exit codes `mlops run` gives after each outcome in `EXIT_CODES`. The tests find the paused run as the
version of NAME that carries `approval.flow_run_id`, whose flow run is Paused (with several runs facing one
champion, the version whose run has the given seed).
Light on purpose (no Prefect, no MLflow): the test modules import it at collection.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
APPROVAL_FLOW = ROOT / "tests" / "approval_flow.py"  # a pause that waits for no approval
TRADE_OFF_RUN = ROOT / "tests" / "trade_off_run.py"


def command(registered_model: str, timeout_seconds: float, *options: str) -> list[str]:
    """The command of a run that asks a person to approve a new version of `registered_model`, waiting at
    most `timeout_seconds`: a champion, then a training run whose forgetting gate finds a true trade-off.
    `options`: tests/trade_off_run.py's others (`--only`, `--world`, `--seed`)."""
    return [
        *(sys.executable, str(TRADE_OFF_RUN)),
        *("--registered-model", registered_model, "--timeout", f"{timeout_seconds:g}", *options),
    ]


EXIT_CODES = {"approved": 0, "rejected": 3, "timed out": 3}  # `mlops run`'s: promoted, or not


@dataclass(frozen=True)
class Paused:
    flow_run_id: str
    registered_model: str
    version: str
    run_id: str  # the MLflow run the version came from


def start(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """A process of its own (its output to `log`, so a full pipe never blocks it)."""
    with log.open("w") as out:
        return subprocess.Popen(
            args,
            env=dict(env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def asked(mlflow: httpx.Client, name: str, seed: int | None = None) -> Paused | None:
    """The version of `name` that asked for approval (it carries `approval.flow_run_id`), in any state; with
    `seed`, the one whose run was trained with it (several runs may ask about one champion)."""
    found = mlflow.get("/model-versions/search", params={"filter": f"name='{name}'"})
    for version in found.json().get("model_versions", []) if found.status_code == 200 else []:
        flow_run_id = tags_of(version).get("approval.flow_run_id")
        if flow_run_id and (seed is None or _seed_of(mlflow, version["run_id"]) == str(seed)):
            return Paused(flow_run_id, name, version["version"], version["run_id"])
    return None


def _seed_of(mlflow: httpx.Client, run_id: str) -> str | None:
    run = mlflow.get("/runs/get", params={"run_id": run_id}).json()["run"]
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}.get("param.seed")


def wait_until_paused(
    mlflow: httpx.Client,
    prefect: httpx.Client,
    name: str,
    process: subprocess.Popen,
    log: Path,
    timeout: float,
    seed: int | None = None,
) -> Paused:
    """The version of `name` waiting for approval, once its flow run is Paused on the Prefect server.

    `mlflow`: a client on `<MLflow>/api/2.0/mlflow`; `prefect`: one on the Prefect API (with its auth)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"{name}: the run ended before pausing (exit {process.returncode}):\n{tail(log)}"
            )
        run = asked(mlflow, name, seed)
        if run is not None and prefect.get(f"/flow_runs/{run.flow_run_id}").json()["state_type"] == "PAUSED":
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: no paused run after {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.5)


def recorded(mlflow: httpx.Client, name: str, version: str, run_id: str) -> tuple[dict, dict]:
    """The `approval*` tags on the version and on its MLflow run."""
    on_version = mlflow.get("/model-versions/get", params={"name": name, "version": version})
    on_run = mlflow.get("/runs/get", params={"run_id": run_id})
    assert on_version.status_code == 200 and on_run.status_code == 200, (on_version.text, on_run.text)
    pick = lambda tags: {k: v for k, v in tags.items() if k.startswith("approval")}  # noqa: E731
    return pick(tags_of(on_version.json()["model_version"])), pick(tags_of(on_run.json()["run"]["data"]))


def tags_of(record: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in record.get("tags", [])}


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
