"""Server mode: deployments as code, the native servers, and the whole thing end to end.

The integration test (`-m server`) does what an operator and the UI do, against real servers:

1. `python -m infra.servers up` (what `make up` runs): MLflow (basic auth) and Prefect (API auth string),
   both on fresh Postgres databases with unique names, on free loopback ports, plus `mlops serve` as the
   non-admin MLflow user `mlops-runner`; anonymous requests to either API get 401;
2. `mlops deploy`, then reads the deployment back as the UI does (schedule, typed parameter form,
   concurrency limit, tags, the `mlops.data.arrived` automation);
3. a "Custom run" through the REST API the UI uses, with small custom parameters (an out-of-bounds one is
   refused first);
4. `mlops notify-data fraud FILE` while that run trains: the event starts a second run, which waits for
   the first (one run at a time per registered model);
5. checks through MLflow's REST API that `fraud-detector@champion` exists with its lineage tags and that
   the custom parameters reached the run, and through Prefect's event API that `mlops.model.promoted` was
   emitted with version, previous version, metrics and gates; that the runner user owns (MANAGE) what it
   created and is no admin;
6. monitoring's alert starts a retraining run (cancelled once running); a custom run with `data` outside
   MLOPS_DATA_ROOTS fails with the reason and trains nothing;
7. no secret (MLflow admin and runner passwords, Flask key, Prefect auth string) appears in any log file under
   the servers' folder, any command's output or `--help`, MLflow runs' parameters and tags, or Prefect's
   flow runs (parameters), artifacts, deployments and run logs.

Teardown stops every process it started and drops the databases, also when a step fails.

`test_a_paused_run_is_approved_rejected_or_timed_out` uses the same stack: runs that ask a person for approval
(tests/approval_runs.py) pause, and `mlops approve` answers them, or the timeout refuses.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import approval_runs
import httpx
import pytest
from conftest import needs
from ports import owned_by_group, pick_port

from infra.servers.processes import Managed
from infra.servers.settings import QUIET, SECRETS, Settings, read_env_file
from infra.servers.stack import discard_stack
from usecases import spec_module
from usecases.params import TrainingParams

ROOT = Path(__file__).resolve().parents[2]
MLOPS = [sys.executable, "-m", "cli.main"]
SMALL = {"customers": 300, "terminals": 600, "days": 70}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# -- deployments as code: fast, no servers ------------------------------------------------------------------
def test_every_use_case_gets_a_training_deployment():
    from prefect.utilities.importtools import import_object

    from flows.training import TRAINING_FLOWS
    from infra.deployments import ONE_AT_A_TIME, training_plans
    from usecases import SPEC_MODULES
    from usecases.vocabulary import DATA_ARRIVED, dataset_resource

    plans = {plan.use_case: plan for plan in training_plans()}
    assert set(plans) == set(TRAINING_FLOWS) == set(SPEC_MODULES)
    for use_case, plan in plans.items():
        assert plan.flow is TRAINING_FLOWS[use_case]
        assert plan.full_name == f"{use_case}-training/{plan.registered_model}"
        assert import_object(plan.entrypoint) is plan.flow  # what a work-pool worker imports
        assert plan.timing is not None and plan.concurrency == ONE_AT_A_TIME
        assert {"mlops", "training", f"use-case:{use_case}", f"model:{plan.registered_model}"} == set(
            plan.tags
        )
        (trigger,) = [t for t in plan.triggers if DATA_ARRIVED in t.expect]  # also: mlops.model.degraded
        assert trigger.expect == {DATA_ARRIVED}
        assert trigger.match.root == {"prefect.resource.id": dataset_resource(use_case)}
        assert trigger.parameters == {"data": "{{ event.payload.path }}"}


def test_schedules():
    from infra.deployments import training_plans

    plans = {plan.flow_name: plan for plan in training_plans()}
    assert plans["fraud-training"].timing.cron == "0 2 * * 1"  # weekly: a week of new labels per run
    stock = plans["stock-training"].timing  # weekdays, after the 16:00 New York close, across DST
    assert stock.cron.endswith("* * 1-5") and stock.timezone == "America/New_York"
    hour, minute = int(stock.cron.split()[1]), int(stock.cron.split()[0])
    assert (hour, minute) >= (16, 0)


def test_deployment_parameters_render_as_a_typed_form():
    from infra.deployments import training_plans

    for plan in training_plans():
        deployment = plan.to_deployment()
        assert deployment.enforce_parameter_schema
        assert deployment.entrypoint == plan.entrypoint
        assert deployment.work_pool_name is None  # served by `mlops serve`
        schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
        fields = schema["properties"]  # one form field per `Params` field, not one nested group
        Params = spec_module(plan.use_case).Params  # noqa: N806
        assert set(fields) == set(Params.model_fields), plan.full_name
        # the spec's order: data, the use case's own fields as declared, then the generic ones
        order = sorted(fields, key=lambda name: fields[name]["position"])
        own = [n for n in Params.__annotations__ if n != "data" and n not in TrainingParams.model_fields]
        assert order[0] == "data" and order[1 : 1 + len(own)] == own, order
        assert all(field.get("description") for field in fields.values()), plan.full_name
        bounded = [f for f in fields.values() if "minimum" in f or "maximum" in f]
        assert bounded and all(" to " in f["description"] or "≥" in f["description"] for f in bounded)
        # an optional text field is a plain text field: no type switch, empty means "not set"
        assert fields["data"]["type"] == "string" and "anyOf" not in fields["data"]
        assert not schema.get("required")


def test_data_arrived_event_matches_the_trigger():
    from prefect.events import Event

    from infra.deployments import data_arrived_event, training_plans

    for plan in training_plans():
        event = Event(**data_arrived_event(plan.use_case, "/data/new.parquet"))
        (trigger,) = [t for t in plan.triggers if event.event in t.expect]
        assert event.event in trigger.expect
        assert trigger.match.matches(event.resource)
        assert event.payload == {"use_case": plan.use_case, "path": "/data/new.parquet"}


def test_settings_and_auth_config(tmp_path):
    settings = Settings.from_env({"MLOPS_SERVERS_DIR": str(tmp_path), "MLOPS_ENV_FILE": ""})
    assert settings.mlflow_url == "http://127.0.0.1:5000"
    assert settings.prefect_api_url == "http://127.0.0.1:4200/api"
    assert settings.mlflow_backend_store_uri == "postgresql+psycopg2://postgres@127.0.0.1:5432/mlops_mlflow"
    assert settings.prefect_database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/mlops_prefect"

    first = settings.with_secrets(generate=True)
    again = settings.with_secrets(generate=True)  # generated once, then reused: the admin user keeps working
    assert first.mlflow_admin_password and first.mlflow_admin_password == again.mlflow_admin_password
    assert first.prefect_auth_string and first.prefect_auth_string == again.prefect_auth_string
    assert oct(settings.credentials_file.stat().st_mode)[-3:] == "600"
    assert first.client_env()["MLFLOW_TRACKING_PASSWORD"] == first.mlflow_admin_password
    assert first.client_env()["PREFECT_API_AUTH_STRING"] == first.prefect_auth_string

    odd = Settings.from_env(
        {"MLOPS_SERVERS_DIR": str(tmp_path), "MLOPS_ENV_FILE": "", "MLOPS_POSTGRES": "u:p%40ss@db:5432"}
    )
    parser = configparser.ConfigParser()  # as MLflow reads it: `%` must survive interpolation
    parser.read(odd.render_auth_config())
    assert parser["mlflow"]["database_uri"] == "postgresql+psycopg2://u:p%40ss@db:5432/mlops_mlflow_auth"
    assert "password" not in parser["mlflow"]
    assert parser["mlflow"]["auth_cache_ttl_seconds"] == "60"  # not a slow password check per request
    assert first.mlflow_env(Path("auth.ini"))["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_env_file_fills_what_the_environment_does_not(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nMLOPS_MLFLOW_PORT=5055\nexport MLOPS_PREFECT_PORT='4242'\n")
    settings = Settings.from_env({"MLOPS_ENV_FILE": str(env_file), "MLOPS_PREFECT_PORT": "4300"})
    assert (settings.mlflow_port, settings.prefect_port) == (5055, 4300)


@pytest.mark.parametrize("command", ["deploy", "serve", "notify-data"])
def test_commands_explain_themselves(command):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "PREFECT_API_URL" in result.output or "mlops.data.arrived" in result.output


def test_server_commands_refuse_without_a_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(QUIET, PREFECT_HOME=str(tmp_path), PREFECT_API_URL="")
    result = subprocess.run(
        [*MLOPS, "deploy"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "PREFECT_API_URL is not set" in result.stderr


# -- the integration test ------------------------------------------------------------------------------------
def _postgres_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", 5432)) == 0


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]  # a client's environment: PREFECT_API_URL, MLFLOW_TRACKING_* ...
    up_output: str
    data_dir: Path  # MLOPS_DATA_ROOTS of the runner
    secrets: dict[str, str] = field(default_factory=dict)  # name -> value, looked for everywhere at the end
    outputs: list[str] = field(default_factory=list)  # every command's stdout and stderr
    timeline: list[str] = field(default_factory=list)
    clock: float = field(default_factory=time.monotonic)

    def step(self, what: str) -> None:
        """Record progress (printed with -s, and shown with the logs when a step fails)."""
        self.timeline.append(f"{time.monotonic() - self.clock:6.1f} s  {what}")
        print(self.timeline[-1], flush=True)

    def run(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            list(args), env=env or self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        self.outputs.append(f"$ {' '.join(args)}\n{done.stdout}\n{done.stderr}")
        return done

    def logs(self) -> str:
        return (
            "\n".join(self.timeline)
            + "\n"
            + "\n".join(
                f"--- {name}.log (tail)\n{Managed(name, self.settings.state_dir).tail(40)}"
                for name in ("serve", "prefect", "mlflow")
            )
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail("CI needs PostgreSQL on 127.0.0.1:5432 for the server-mode test")
        needs("PostgreSQL", "nothing answers at 127.0.0.1:5432")
    base = tmp_path_factory.mktemp("server-mode")
    data_dir = base / "data"
    data_dir.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        # nor the tests' MLOPS_PREFECT_SERVER=ephemeral: as in an operator's shell, runs pause for approval
        if not k.startswith(
            ("PREFECT_", "MLFLOW_", "MLOPS_MLFLOW_RUNNER_", "MLOPS_DATA_ROOTS", "MLOPS_PREFECT_SERVER")
        )
    }
    env.update(
        QUIET,
        MLOPS_ENV_FILE="",
        MLOPS_POSTGRES="postgres@127.0.0.1:5432",
        MLOPS_MLFLOW_WORKERS="1",
        MLOPS_HOME=str(base / "mlops-home"),
        PREFECT_HOME=str(base / "prefect-home"),
        MLFLOW_AUTH_ADMIN_USERNAME="admin",
        MLFLOW_AUTH_ADMIN_PASSWORD=secrets.token_urlsafe(16),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(16),
        # The runner's MLflow password and the Prefect auth string are left to `up` to generate.
        # Runs started through the deployments may read only the module's data folder.
        MLOPS_DATA_ROOTS=str(data_dir),
        # Quicker turns than production needs: the runner polls every 2 s, a queued run retries every 5 s.
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
    )
    # Ports picked free, then checked to be the started servers' (another program may take a picked port
    # before a server binds it: `up` then refuses, or the server exits, and the stack starts again elsewhere).
    failures = []
    for attempt in range(3):
        env.update(
            MLOPS_SERVERS_DIR=str(base / f"servers-{attempt}"),
            MLOPS_DB_PREFIX=f"mlops_it_{uuid.uuid4().hex[:12]}",
            MLOPS_MLFLOW_PORT=str(pick_port()),
            MLOPS_PREFECT_PORT=str(pick_port()),
            MLOPS_REDIS_PORT=str(pick_port()),
        )
        settings = Settings.from_env(env)
        stack = Stack(settings, dict(env), "", data_dir)
        try:
            up = subprocess.run(
                [sys.executable, "-m", "infra.servers", "up", "--timeout", "150"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=420,
            )
            ours = {
                name: owned_by_group(port, Managed(name, settings.state_dir).pid() or -1)
                for name, port in (("mlflow", settings.mlflow_port), ("prefect", settings.prefect_port))
            }
            if up.returncode == 0 and all(ours.values()):
                break
            failures.append(f"up exited {up.returncode}, ports ours: {ours}\n{up.stdout}\n{up.stderr}")
            assert "is taken by another program" in up.stdout + up.stderr or not all(ours.values()), (
                f"up failed:\n{failures[-1]}\n{stack.logs()}"
            )
        except BaseException:
            discard_stack(settings, env)
            raise
        discard_stack(settings, env)
    else:
        pytest.fail("the stack did not start on ports of its own:\n" + "\n".join(failures))
    try:
        stack.up_output = up.stdout
        stack.outputs.append(up.stdout + up.stderr)
        # A person's shell after `source .mlops/servers/client.env`.
        stack.env.update(read_env_file(settings.state_dir / "client.env"))
        stored = read_env_file(settings.credentials_file)
        stack.secrets = {name: env.get(name) or stored[name] for name in SECRETS}
        stack.step("servers and `mlops serve` up")
        yield stack
    finally:
        stack.step("tearing down")
        discard_stack(settings, env)
        stack.step("servers stopped, databases dropped")


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _wait(fetch, done, timeout: float, what: str, stack: Stack, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: gave up after {timeout:.0f} s (last: {value!r:.500})\n{stack.logs()}")
        time.sleep(interval)


@pytest.mark.server
@pytest.mark.timeout(1200)
def test_server_mode_end_to_end(stack, tmp_path):
    settings = stack.settings
    started = datetime.now(UTC).isoformat()
    auth_string = stack.env["PREFECT_API_AUTH_STRING"]
    api = httpx.Client(base_url=settings.prefect_api_url, headers=_basic(auth_string), timeout=30)
    auth = (stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"])
    mlflow = httpx.Client(base_url=f"{settings.mlflow_url}/api/2.0/mlflow", auth=auth, timeout=30)
    users = httpx.Client(base_url=f"{settings.mlflow_url}/api", auth=auth, timeout=30)
    runner = settings.mlflow_runner_username

    # `make up` told the operator where things are (not the secrets), and running it again changes nothing.
    assert f"Prefect UI  {settings.prefect_url}" in stack.up_output
    assert f"source {settings.state_dir / 'client.env'}" in stack.up_output
    for name in ("client.env", "runner.env", "credentials.env"):
        assert oct((settings.state_dir / name).stat().st_mode)[-3:] == "600", name
    assert auth_string == stack.secrets["PREFECT_SERVER_API_AUTH_STRING"]
    assert stack.env["MLFLOW_TRACKING_USERNAME"] == "admin"  # the person's shell; the runner is not admin
    again = stack.run(sys.executable, "-m", "infra.servers", "up", "--timeout", "60")
    assert again.returncode == 0 and again.stdout.count("already running") == 4, again.stdout + again.stderr
    stack.step("`up` again: nothing to do")

    # MLflow runs the basic-auth app on Postgres; Prefect's API wants the auth string (but for health probes).
    assert (
        httpx.get(f"{settings.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    )
    anonymous = httpx.Client(base_url=settings.prefect_api_url, timeout=30)
    assert anonymous.get("/health").status_code == 200
    assert anonymous.post("/flow_runs/filter", json={"limit": 1}).status_code == 401
    assert anonymous.get("/deployments/name/fraud-training/fraud-detector").status_code == 401
    wrong = _basic("admin:guess")
    assert anonymous.post("/flow_runs/filter", json={"limit": 1}, headers=wrong).status_code == 401
    assert api.post("/flow_runs/filter", json={"limit": 1}).status_code == 200
    without = {k: v for k, v in stack.env.items() if k != "PREFECT_API_AUTH_STRING"}
    refused = stack.run(*MLOPS, "deploy", env=without)
    assert refused.returncode == 2 and "refused no auth string" in refused.stderr, refused.stderr
    stack.step("Prefect: 401 without the auth string, 200 with it")

    # The runner has its own MLflow user, made by the admin through the auth API, and it is no admin.
    account = users.get("/2.0/mlflow/users/get", params={"username": runner})
    assert account.status_code == 200 and account.json()["user"]["is_admin"] is False, account.text
    as_runner = (runner, stack.secrets["MLOPS_MLFLOW_RUNNER_PASSWORD"])
    grab = {"username": "intruder", "password": secrets.token_urlsafe(12)}
    assert users.post("/2.0/mlflow/users/create", json=grab, auth=as_runner).status_code == 403

    # `mlops deploy` registers the deployments; read one back as the UI does.
    deployed = stack.run(*MLOPS, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "fraud-training/fraud-detector" in deployed.stdout
    stack.step("`mlops deploy` done")
    deployment = api.get("/deployments/name/fraud-training/fraud-detector").json()
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * 1"]
    limit = deployment.get("global_concurrency_limit") or {}
    assert deployment.get("concurrency_limit") == 1 or limit.get("limit") == 1, deployment
    assert {"mlops", "training", "use-case:fraud", "model:fraud-detector"} <= set(deployment["tags"])
    assert deployment["enforce_parameter_schema"]
    schema = deployment["parameter_openapi_schema"]
    customers = schema["properties"]["customers"]
    assert customers["description"] and customers["minimum"] == 50
    automations = api.get(f"/automations/related-to/prefect.deployment.{deployment['id']}").json()
    assert any(a["trigger"]["expect"] == ["mlops.data.arrived"] for a in automations), automations
    # A promotion of fraud-detector starts its compaction (the trigger is read back here); the compaction
    # runs themselves are tested in tests/flow/test_compact.py, and here they would only take the 2 cores
    # from the runs this test waits for: the trigger is switched off, as an operator can in the UI.
    compaction = api.get("/deployments/name/fraud-compaction/fraud").json()
    (compacting,) = api.get(f"/automations/related-to/prefect.deployment.{compaction['id']}").json()
    assert compacting["trigger"]["expect"] == ["mlops.model.promoted"], compacting
    promoted_model = {"prefect.resource.id": "mlflow.registered-model.fraud-detector"}
    assert compacting["trigger"]["match"] == promoted_model, compacting
    assert api.patch(f"/automations/{compacting['id']}", json={"enabled": False}).status_code == 204

    # The UI's "Custom run": the form's values are validated against the schema, then the run is created.
    create = f"/deployments/{deployment['id']}/create_flow_run"
    refused = api.post(create, json={"parameters": {**SMALL, "customers": 10}})
    assert refused.status_code in (409, 422), refused.text
    custom = api.post(create, json={"parameters": SMALL, "state": {"type": "SCHEDULED"}})
    assert custom.status_code == 201, custom.text
    first = custom.json()["id"]
    stack.step(f"custom run {first} created")

    def flow_run(run_id: str) -> dict:
        return api.get(f"/flow_runs/{run_id}").json()

    _wait(
        lambda: flow_run(first)["state_type"],
        lambda state: state == "RUNNING" or state in TERMINAL,
        120,
        "the custom run to start",
        stack,
    )

    # New data arrives while it trains: the event starts a second run, which waits for the first.
    data = stack.data_dir / "fraud-new.parquet"
    from usecases.fraud.simulator import simulate_transactions

    simulate_transactions(n_customers=300, n_terminals=600, n_days=70, seed=7).to_parquet(data)
    stack.step("custom run running")
    notified = stack.run(*MLOPS, "notify-data", "fraud", str(data))
    assert notified.returncode == 0, notified.stdout + notified.stderr
    stack.step("`mlops notify-data` sent")

    def triggered_runs() -> list[dict]:
        runs = api.post(
            "/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}, "limit": 50}
        ).json()
        return [r for r in runs if (r.get("created_by") or {}).get("type") == "AUTOMATION"]

    (second,) = _wait(triggered_runs, bool, 90, "a run started by mlops.data.arrived", stack)
    assert second["parameters"] == {"data": str(data)}
    stack.step(f"event-triggered run {second['id']} created")

    done = _wait(lambda: flow_run(first), lambda r: r["state_type"] in TERMINAL, 360, "the custom run", stack)
    assert done["state_type"] == "COMPLETED", f"{done['state']}\n{stack.logs()}"
    # the badge on the run's page is the decision, and the state message says it in a sentence
    decision = done["state"]["message"].split(":", 1)[0]
    assert decision in ("promoted", "registered", "rejected"), done["state"]
    assert done["state_name"] == decision.capitalize(), done["state"]
    stack.step("custom run completed")
    later = _wait(lambda: flow_run(second["id"]), lambda r: r["state_type"] in TERMINAL, 360, "run 2", stack)
    assert later["state_type"] == "COMPLETED", f"{later['state']}\n{stack.logs()}"
    stack.step("event-triggered run completed")
    # One training of fraud-detector at a time: the event's run started after the custom run ended.
    assert _iso(later["start_time"]) >= _iso(done["end_time"]), (done["end_time"], later["start_time"])

    # MLflow (REST, with credentials): the champion exists, with its lineage; the custom parameters arrived.
    champion = mlflow.get("/registered-models/alias", params={"name": "fraud-detector", "alias": "champion"})
    assert champion.status_code == 200, champion.text
    version = champion.json()["model_version"]
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    for key in ("lineage.data_digest", "lineage.code_version", "lineage.fingerprint", "gates"):
        assert tags.get(key), f"champion v{version['version']} lacks {key}: {tags}"
    assert f"| MLflow run | `{version['run_id']}` |" in version["description"]  # the card names its run
    lineage_run = mlflow.get("/runs/get", params={"run_id": version["run_id"]}).json()["run"]
    assert lineage_run["info"]["status"] == "FINISHED"
    experiment = mlflow.get("/experiments/get-by-name", params={"experiment_name": "fraud"}).json()
    custom_runs = mlflow.post(
        "/runs/search",
        json={
            "experiment_ids": [experiment["experiment"]["experiment_id"]],
            "filter": "params.`param.customers` = '300' and params.`param.days` = '70'",
        },
    ).json()
    assert custom_runs.get("runs"), "the custom parameters did not reach the MLflow run"

    # Prefect events: the promotion (and the event that started run 2), for consumers to trigger on.
    def events() -> list[dict]:
        query = {"filter": {"event": {"prefix": ["mlops."]}, "occurred": {"since": started}}, "limit": 50}
        return api.post("/events/filter", json=query).json()["events"]

    seen = _wait(
        events,
        lambda es: sum(e["event"] in ("mlops.model.promoted", "mlops.model.rejected") for e in es) >= 2,
        60,
        "a decision event from each run",
        stack,
    )
    promoted = [
        e
        for e in seen
        if e["event"] == "mlops.model.promoted" and e["payload"]["registered_model"] == "fraud-detector"
    ]
    assert promoted, [e["event"] for e in seen]
    payload = max(promoted, key=lambda e: e["occurred"])["payload"]
    assert payload["registered_model"] == "fraud-detector"
    assert payload["version"] == version["version"]
    assert "previous_version" in payload
    assert payload["metrics"]["average_precision"] > 0 and payload["gates"]
    stack.step("MLflow champion and Prefect events checked")
    arrived = [e for e in seen if e["event"] == "mlops.data.arrived"]
    assert [e["payload"] for e in arrived] == [{"use_case": "fraud", "path": str(data)}]

    # The runner trained, registered and moved the alias as `mlops-runner`: it owns (MANAGE) what it made.
    for resource_type, resource_id in (
        ("registered_model", "fraud-detector"),
        ("experiment", experiment["experiment"]["experiment_id"]),
    ):
        granted = users.get(
            "/3.0/mlflow/users/permissions/get",
            params={"username": runner, "resource_type": resource_type, "resource_id": resource_id},
        )
        assert granted.status_code == 200 and granted.json()["permission"] == "MANAGE", granted.text
    stack.step("runner user owns the experiment and the registered model")

    # Monitoring closes the loop: drifted data -> `mlops monitor` (exit 4) -> mlops.model.degraded -> the
    # training deployment's trigger starts a retraining run on the monitored data.
    monitoring = api.get("/deployments/name/fraud-monitoring/fraud").json()
    assert [s["schedule"]["cron"] for s in monitoring["schedules"]] == ["0 1 * * *"]
    automations = api.get(f"/automations/related-to/prefect.deployment.{deployment['id']}").json()
    assert any(a["trigger"]["expect"] == ["mlops.model.degraded"] for a in automations), automations
    from usecases.fraud.simulator import Drift

    drifted = stack.data_dir / "fraud-drifted.parquet"
    simulate_transactions(
        n_customers=300,
        n_terminals=600,
        n_days=70,
        seed=7,
        drift=Drift(start="2018-05-20", amount_factor=2.5),
    ).to_parquet(drifted)
    watched = stack.run(*MLOPS, "monitor", "fraud", "--data", str(drifted), "--since", "2018-05-20")
    assert watched.returncode == 4, watched.stdout + watched.stderr
    assert "TX_AMOUNT (PSI" in watched.stdout and "sent mlops.model.degraded" in watched.stdout
    stack.step("`mlops monitor` found the drift")

    def retraining_runs() -> list[dict]:
        return [r for r in triggered_runs() if r["parameters"] == {"data": str(drifted)}]

    (retraining,) = _wait(retraining_runs, bool, 90, "a run started by mlops.model.degraded", stack)
    stack.step(f"retraining run {retraining['id']} created by the alert")
    # It starts like the runs above (which trained to the end); cancelled once running, as from the UI, to
    # free the deployment's slot for the next run without training a third time.
    state = _wait(
        lambda: flow_run(retraining["id"])["state_type"],
        lambda state: state == "RUNNING" or state in TERMINAL,
        120,
        "the retraining run to start",
        stack,
    )
    assert state == "RUNNING", state
    cancel = {"state": {"type": "CANCELLING", "message": "the test has seen it start"}}
    assert api.post(f"/flow_runs/{retraining['id']}/set_state", json=cancel).json()["status"] == "ACCEPT"
    cancelled = _wait(
        lambda: flow_run(retraining["id"]), lambda r: r["state_type"] in TERMINAL, 120, "the cancel", stack
    )
    assert cancelled["state_type"] == "CANCELLED", f"{cancelled['state']}\n{stack.logs()}"
    stack.step("retraining run started, then cancelled from the API")

    # A custom run naming a file outside the data roots fails with the reason; nothing is trained.
    def versions() -> list[str]:
        found = mlflow.get("/model-versions/search", params={"filter": "name='fraud-detector'"}).json()
        return sorted(v["version"] for v in found.get("model_versions", []))

    def mlflow_runs() -> int:
        query = {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000}
        return len(mlflow.post("/runs/search", json=query).json().get("runs", []))

    before = (versions(), mlflow_runs())
    outside = tmp_path / "outside-the-roots.parquet"  # a real data file, only in the wrong place
    shutil.copy(data, outside)
    elsewhere = api.post(
        create,
        json={"parameters": {**SMALL, "data": str(outside)}, "state": {"type": "SCHEDULED"}},
    )
    assert elsewhere.status_code == 201, elsewhere.text
    ended = _wait(
        lambda: flow_run(elsewhere.json()["id"]), lambda r: r["state_type"] in TERMINAL, 240, "refusal", stack
    )
    message = ended["state"]["message"] or ""
    assert ended["state_type"] == "FAILED", f"{ended['state']}\n{stack.logs()}"
    assert str(outside) in message and str(stack.data_dir) in message, message
    assert "MLOPS_DATA_ROOTS" in message
    assert (versions(), mlflow_runs()) == before
    stack.step("data path outside the roots refused, nothing trained")

    # No secret anywhere it could leak: logs, command output and --help, MLflow runs, Prefect's records.
    for args in ((*MLOPS, "serve", "--help"), (sys.executable, "-m", "infra.servers", "up", "--help")):
        assert stack.run(*args).returncode == 0
    places = {**_log_files(settings.state_dir), "command output": "\n".join(stack.outputs)}
    places.update(_mlflow_records(mlflow))
    places.update(_prefect_records(api))
    assert any("param.customers" in text for text in places.values())  # the records were read
    leaks = [
        f"{name} in {place}"
        for place, text in places.items()
        for name, value in stack.secrets.items()
        if value in text
    ]
    assert not leaks, leaks
    stack.step(f"no secret in {len(places)} logs and records")
    stack.step("flow runs: " + "; ".join(_flow_runs(api)))


def _flow_runs(api: httpx.Client) -> list[str]:
    """Each flow run that started: its name, state and run time (printed with -s: where the time went)."""
    started = {"flow_runs": {"start_time": {"is_null_": False}}, "limit": 200, "sort": "START_TIME_ASC"}
    runs = api.post("/flow_runs/filter", json=started).json()
    return [f"{r['name']} {r['state_name']} {r.get('total_run_time', 0):.0f} s" for r in runs]


def _basic(credentials: str) -> dict[str, str]:
    """The header Prefect's clients send for an auth string."""
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _log_files(folder: Path) -> dict[str, str]:
    return {str(path): path.read_text(errors="replace") for path in sorted(folder.rglob("*.log"))}


def _mlflow_records(mlflow: httpx.Client) -> dict[str, str]:
    """Every experiment and run (parameters, tags), registered model and version (tags), as JSON text."""
    records = {}
    experiments = mlflow.post("/experiments/search", json={"max_results": 1000}).json()["experiments"]
    records["mlflow experiments"] = json.dumps(experiments)
    for experiment in experiments:
        query = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}
        runs = mlflow.post("/runs/search", json=query).json().get("runs", [])
        records[f"mlflow runs of {experiment['name']}"] = json.dumps([run["data"] for run in runs])
    records["mlflow registered models"] = json.dumps(mlflow.get("/registered-models/search").json())
    records["mlflow model versions"] = json.dumps(mlflow.get("/model-versions/search").json())
    return records


def _prefect_records(api: httpx.Client) -> dict[str, str]:
    """Every flow run (parameters), artifact, deployment and flow/task run log line, as JSON text."""
    records = {}
    for kind in ("flow_runs", "artifacts", "deployments", "logs"):
        items, offset = [], 0
        while True:
            page = api.post(f"/{kind}/filter", json={"limit": 200, "offset": offset})
            assert page.status_code == 200, page.text
            items += page.json()
            if len(page.json()) < 200:
                break
            offset += 200
        records[f"prefect {kind}"] = json.dumps(items)
    return records


# -- a trade-off decided by a person: the pause, `mlops approve`, the timeout -------------------------------
@pytest.mark.server
@pytest.mark.timeout(1500)  # the servers' start (minutes, shared with the module) counts when run alone
def test_a_paused_run_is_approved_rejected_or_timed_out(stack, tmp_path):
    """Runs that ask for approval (tests/approval_runs.py says which) pause on the real servers: `mlops
    approve` approves one by its Prefect flow run id and rejects one by its MLflow run id, a third given 3 s
    times out and is refused, each outcome on the version and the run; wrong answers exit 2 (another use
    case, an unknown run, a run no longer paused, a pause for something else). The three runs face one
    champion (trained first) side by side, as runs waiting for people do: each pause holds no lock. They and
    the two answers are processes of their own (each costs seconds of imports); the wrong answers run
    in-process."""
    api = httpx.Client(
        base_url=stack.settings.prefect_api_url,
        headers=_basic(stack.env["PREFECT_API_AUTH_STRING"]),
        timeout=30,
    )
    auth = (stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"])
    mlflow = httpx.Client(base_url=f"{stack.settings.mlflow_url}/api/2.0/mlflow", auth=auth, timeout=30)
    name = f"approval-{uuid.uuid4().hex[:6]}"
    seeds = {"approve": 42, "reject": 43, "timeout": 44}  # each run's seed tells its version apart
    logs = {case: tmp_path / f"{case}.log" for case in ("champion", *seeds, "other")}
    world = tmp_path / "world.parquet"
    started: dict[str, subprocess.Popen] = {}
    try:
        other_pause = [sys.executable, str(approval_runs.APPROVAL_FLOW), "--timeout", "1500"]
        started["other"] = approval_runs.start(other_pause, stack.env, logs["other"])  # resumed at the end
        champion = approval_runs.command(name, 0, "--only", "champion", "--world", str(world))
        started["champion"] = approval_runs.start(champion, stack.env, logs["champion"])
        assert started["champion"].wait(600) == 0, approval_runs.tail(logs["champion"])
        stack.step("approval: the champion trained")
        for case, seconds in (("approve", 300), ("reject", 300), ("timeout", 3)):
            options = ("--only", "run", "--world", str(world), "--seed", str(seeds[case]))
            started[case] = approval_runs.start(
                approval_runs.command(name, seconds, *options), stack.env, logs[case]
            )
        paused = {
            case: approval_runs.wait_until_paused(
                mlflow, api, name, started[case], logs[case], 600, seeds[case]
            )
            for case in ("approve", "reject")
        }
        for run in paused.values():
            _waits_for_approval(api, run.flow_run_id)
        stack.step("approval: two runs paused on the server, waiting for the approval form")
        other = _paused_flow_run(api, "other-pause", started["other"], logs["other"])
        code = started["timeout"].wait(120)
        assert code == approval_runs.EXIT_CODES["timed out"], approval_runs.tail(logs["timeout"])
        timed_out = approval_runs.asked(mlflow, name, seeds["timeout"])
        stack.step("approval: the run given 3 s timed out")

        answers = {
            "approve": ("--run", paused["approve"].flow_run_id, "--reason", "newest week wins"),
            "reject": ("--run", paused["reject"].run_id, "--reject", "--reason", "old weeks count"),
        }
        sending = {
            case: subprocess.Popen(
                [*MLOPS, "approve", "fraud", *args],
                env=stack.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for case, args in answers.items()
        }
        _wrong_answers_exit_2(stack, paused["approve"].flow_run_id, timed_out.flow_run_id, other)
        for case, process in sending.items():
            out, _ = process.communicate(timeout=180)
            stack.outputs.append(out)
            verb = {"approve": "approved", "reject": "rejected"}[case]
            assert process.returncode == 0 and f"sent: {verb}" in out, out
        stack.step("approval: `mlops approve` sent two answers (and refused four wrong ones)")

        _outcomes_recorded(api, mlflow, {**paused, "timeout": timed_out}, started, logs)
        assert api.post(f"/flow_runs/{other}/resume", json={}).json()["status"] == "ACCEPT"
        assert started["other"].wait(60) == 0, approval_runs.tail(logs["other"])
        stack.step("approval: approved, rejected, timed out: each recorded on the version and its run")
    finally:
        for process in started.values():  # only what this test started, should a step have failed
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def _waits_for_approval(api: httpx.Client, flow_run_id: str) -> None:
    """Paused on the server with a deadline, waiting for the approval form (its saved schema's fields)."""
    state = api.get(f"/flow_runs/{flow_run_id}").json()["state"]
    assert state["type"] == "PAUSED" and state["state_details"]["pause_timeout"], state
    keyset = state["state_details"]["run_input_keyset"]
    schema = api.get(f"/flow_runs/{flow_run_id}/input/{keyset['schema']}").json()
    assert {"approve", "reason", "decided_by"} == set(schema["properties"]), schema
    assert "reason" in schema.get("required", []), schema


def _paused_flow_run(api: httpx.Client, flow: str, process: subprocess.Popen, log: Path) -> str:
    query = {"flows": {"name": {"any_": [flow]}}, "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
    deadline = time.monotonic() + 240
    while not (found := api.post("/flow_runs/filter", json=query).json()):
        assert process.poll() is None, approval_runs.tail(log)
        assert time.monotonic() < deadline, f"no paused {flow} run\n{approval_runs.tail(log)}"
        time.sleep(0.5)
    return found[0]["id"]


def _wrong_answers_exit_2(stack: Stack, waiting: str, finished: str, other: str) -> None:
    """`mlops approve` in this process, as a person's shell on the stack (the CLI's own parser): each wrong
    answer exits 2 and says why, and sends nothing."""
    import mlflow
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from cli.main import app

    wrong = {
        "a fraud model, not stock": ("stock", "--run", waiting),
        "unknown run": ("fraud", "--run", str(uuid.uuid4())),
        "not paused": ("fraud", "--run", finished),
        "paused, but not for an approval": ("fraud", "--run", other),
    }
    prefect = {
        PREFECT_API_URL: stack.env["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: stack.env["PREFECT_API_AUTH_STRING"],
    }
    with pytest.MonkeyPatch.context() as patch, temporary_settings(updates=prefect):
        for key in (
            "PREFECT_API_URL",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        ):
            patch.setenv(key, stack.env[key])
        try:
            for says, args in wrong.items():
                result = CliRunner().invoke(app, ["approve", *args, "--reason", "x"], env={"COLUMNS": "300"})
                stack.outputs.append(result.output)
                assert result.exit_code == 2 and says in result.output, (args, result.output)
        finally:
            mlflow.set_tracking_uri(None)


def _outcomes_recorded(
    api: httpx.Client, mlflow: httpx.Client, runs: dict, started: dict, logs: dict
) -> None:
    """Each run ended (Completed: the timed-out one too, set Running again after Prefect failed its expired
    pause) and its outcome, reason and decider are on the version and on its MLflow run alike."""
    expected = {
        "approve": ("approved", "newest week wins", "mlops approve ("),
        "reject": ("rejected", "old weeks count", "mlops approve ("),
        "timeout": ("timed out", "no answer within 0:00:03: refused", "timeout"),
    }
    for case, run in runs.items():
        outcome, reason, by = expected[case]
        assert started[case].wait(120) == approval_runs.EXIT_CODES[outcome], approval_runs.tail(logs[case])
        on_version, on_run = approval_runs.recorded(mlflow, run.registered_model, run.version, run.run_id)
        assert on_version == on_run, (on_version, on_run)
        assert (on_version["approval"], on_version["approval.reason"]) == (outcome, reason), on_version
        assert on_version["approval.by"].startswith(by), on_version
        assert on_version["approval.flow_run_id"] == run.flow_run_id
        assert api.get(f"/flow_runs/{run.flow_run_id}").json()["state_type"] == "COMPLETED", case


# -- champion and challenger on live traffic -----------------------------------------------------------------
# [from, to): the replayed days of handbook traffic: 57,456 transactions, past the 50,000 labelled pairs after
# which the fraud rule retires a challenger that is not better, so `mlops compare` always decides
HANDBOOK_DAYS = ("2018-08-06", "2018-08-12")
TWO_RUNS = """
import sys
from cli.main import app
common = ["run", "fraud", "--data", sys.argv[1], "--registered-model", sys.argv[2],
          "--min-roc-auc", "0", "--min-average-precision", "0"]
champion = app(common, standalone_mode=False) or 0
# a shallower candidate: held back by the champion or forgetting gate, it becomes the challenger by itself;
# it may also win on this data (the test then makes the version it replaced challenger by hand)
weaker = ["--max-depth", "3", "--rounds", "15", "--learning-rate", "0.3", "--slice-margin", "1"]
sys.exit(10 * champion + (app([*common, *weaker], standalone_mode=False) or 0))
"""


@pytest.mark.server
@pytest.mark.timeout(900)
def test_a_challenger_in_shadow_is_judged_on_live_traffic(stack, tmp_path):
    """The issue's whole loop on the real servers: a champion and a held-back challenger (two training runs in
    one process), `mlops serve-model` answering six replayed days of handbook transactions with the champion
    while the challenger scores them in shadow into PostgreSQL, their labels arriving through /labels,
    a clean stop losing no pair, `mlops compare` deciding on the paired evidence, and the decision reaching a
    webhook through the Prefect automations."""
    from conftest import HANDBOOK
    from webhook import receiving

    if not HANDBOOK.exists():
        needs("the handbook data", f"{HANDBOOK} is missing")
    import pandas as pd

    from usecases.fraud.simulator import simulate_transactions

    name = f"shadow-{uuid.uuid4().hex[:6]}"
    auth = (stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"])
    mlflow = httpx.Client(base_url=f"{stack.settings.mlflow_url}/api/2.0/mlflow", auth=auth, timeout=30)

    def aliases() -> dict[str, str]:
        found = mlflow.get("/registered-models/get", params={"name": name}).json()["registered_model"]
        return {a["alias"]: a["version"] for a in found.get("aliases", [])}

    world = stack.data_dir / "shadow-world.parquet"
    simulate_transactions(n_customers=300, n_terminals=600, n_days=70, seed=11).to_parquet(world)
    trained = stack.run(sys.executable, "-c", TWO_RUNS, str(world), name, timeout=420)
    assert trained.returncode in (0, 3), trained.stdout[-3000:] + trained.stderr[-3000:]  # v1 promoted
    champion = aliases()["champion"]
    other = {"1": "2", "2": "1"}[champion]
    if trained.returncode == 3:  # v2 lost to v1: its gates held it back, and it became challenger by itself
        assert aliases() == {"champion": "1", "challenger": "2"}, aliases()
        how = "held back by its gates and made challenger by the run"
    else:  # v2 won: the version it replaced is tried in shadow instead, by hand
        made = stack.run(*MLOPS, "challenge", "fraud", "--registered-model", name, "--version", other)
        assert made.returncode == 0, made.stdout + made.stderr
        assert aliases() == {"champion": "2", "challenger": "1"}, aliases()
        how = "v2 promoted, v1 made challenger by `mlops challenge`"
    stack.step(f"shadow: champion v{champion}, challenger v{other} ({how})")

    with receiving() as receiver, _as_client(stack):
        from infra.notifications import configure_notifications, remove_notifications

        configure_notifications(receiver.url)
        try:
            days = _handbook_days(pd.read_parquet(HANDBOOK), *HANDBOOK_DAYS)
            sent = _replay(stack, name, days, tmp_path, champion, other)
            stack.step(f"shadow: {sent:,} handbook transactions answered, labels posted, server stopped")

            from tasks.challenger.pairs import read_labels, read_pairs

            url = stack.env["MLOPS_PAIRS_URL"]
            pairs = read_pairs(name, url=url)
            assert len(pairs) == sent, f"{sent - len(pairs)} pairs lost on a clean stop"
            assert set(pairs["champion_version"]) == {champion}, set(pairs["champion_version"])
            assert set(pairs["challenger_version"]) == {other}, set(pairs["challenger_version"])
            scored = pairs["challenger_score"].notna()
            assert scored.mean() > 0.99, pairs.loc[~scored, "challenger_error"].value_counts().head()
            assert len(read_labels(name, url=url)) == sent

            compared = stack.run(*MLOPS, "compare", "fraud", "--registered-model", name, "--json")
            assert compared.returncode == 0, compared.stdout[-3000:] + compared.stderr[-3000:]
            record = json.loads(compared.stdout.strip().splitlines()[-1])
            outcome = record["decision"]["outcome"]
            stack.step(f"shadow: `mlops compare`: {outcome}: {record['decision']['reason']}")
            assert outcome in ("promoted", "retired"), record["decision"]
            if outcome == "promoted":
                assert aliases() == {"champion": other}, aliases()
                receiver.wait_for(f"{name} v{other} is the champion")
            else:
                assert aliases() == {"champion": champion}, aliases()
                receiver.wait_for(f"{name}: challenger v{other} retired")
            run = mlflow.get("/runs/get", params={"run_id": record["mlflow_run_id"]}).json()["run"]
            assert {t["key"]: t["value"] for t in run["data"]["tags"]}["decision"] == outcome
            stack.step("shadow: the decision moved the aliases, and the webhook heard it")
        finally:
            remove_notifications()


def _handbook_days(frame, start: str, end: str):
    times = frame["TX_DATETIME"]
    week = frame[(times >= start) & (times < end)].sort_values(["TX_DATETIME", "TRANSACTION_ID"])
    return week[["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]]


def _replay(stack: Stack, name: str, week, tmp_path: Path, champion: str, challenger: str) -> int:
    """`mlops serve-model` on the stack's environment (pairs to its PostgreSQL): the transactions in
    time order, then their labels, then a clean stop (SIGTERM). Returns how many transactions it answered."""
    port = pick_port()
    log = tmp_path / "serve-model.log"
    command = [*MLOPS, "serve-model", "fraud", "--model", name, "--port", str(port)]
    command += ["--history", "none", "--poll-seconds", "2"]
    with log.open("w") as out:
        server = subprocess.Popen(command, env=stack.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: _health(base),
            lambda h: (
                h.get("version") == champion
                and (h.get("shadow") or {}).get("challenger_version") == challenger
            ),
            120,
            f"the model server answering with v{champion}, v{challenger} in shadow",
            stack,
        )
        answered, batch = 0, 2000
        records = week.drop(columns="TX_FRAUD").assign(TX_DATETIME=week["TX_DATETIME"].astype(str))
        for start in range(0, len(records), batch):
            rows = records.iloc[start : start + batch].to_dict("records")
            reply = httpx.post(f"{base}/transactions", json=rows, timeout=120)
            assert reply.status_code == 200, reply.text[:500]
            assert {r["model_version"] for r in reply.json()["results"]} == {champion}  # it answers
            answered += len(reply.json()["results"])
        labels = week[["TRANSACTION_ID", "TX_FRAUD"]].to_dict("records")
        for start in range(0, len(labels), 10 * batch):
            reply = httpx.post(f"{base}/labels", json=labels[start : start + 10 * batch], timeout=120)
            assert reply.status_code == 200, reply.text[:500]
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down (the app's shutdown drains and flushes the shadow), then re-raises the signal
        assert server.wait(120) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        stack.outputs.append(log.read_text())
        return answered
    finally:
        if server.poll() is None:
            server.kill()


def _health(base: str) -> dict:
    try:
        return httpx.get(f"{base}/health", timeout=5).json()
    except httpx.HTTPError:
        return {}


class _as_client:
    """This process as a person's shell on the stack: its MLflow and Prefect settings, undone on exit."""

    KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL")

    def __init__(self, stack: Stack):
        self.stack = stack

    def __enter__(self):
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        self.patch = pytest.MonkeyPatch()
        for key in self.KEYS:
            self.patch.setenv(key, self.stack.env[key])
        self.settings = temporary_settings(
            updates={
                PREFECT_API_URL: self.stack.env["PREFECT_API_URL"],
                PREFECT_API_AUTH_STRING: self.stack.env["PREFECT_API_AUTH_STRING"],
            }
        )
        self.settings.__enter__()
        return self

    def __exit__(self, *exc):
        import mlflow

        self.settings.__exit__(*exc)
        self.patch.undo()
        mlflow.set_tracking_uri(None)
