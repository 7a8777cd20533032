"""Static checks of docker-compose.yml: no Docker engine runs in CI, so the file is interpolated the way
`docker compose` does (with `.env.example`), validated against the Compose Specification JSON schema that
Docker Compose itself embeds (vendored in infra/compose/), and checked for what the servers need: health
checks, restart policies, Postgres-backed MLflow and Prefect, MLflow basic auth, Prefect's API auth string,
the runner's own non-admin MLflow user and its data root, Redis for the model server's feature state, no
secrets in the repo. The commands the containers run are the ones `make up` runs natively (infra/servers/);
the settings they derive from the compose environment are checked here too. When a `docker compose` CLI is
available, its own `config` validation runs as well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from infra.servers import redis_server
from infra.servers.settings import (
    MLFLOW_SECRETS,
    PLACEHOLDER,
    PREFECT_SECRETS,
    RUNNER_SECRETS,
    ServerError,
    Settings,
    read_env_file,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "infra" / "compose" / "compose-spec.json"
APP_SERVICES = ("mlflow", "prefect", "runner", "mlflow-setup", "dask-scheduler", "dask-worker")
ONE_SHOT = ("mlflow-setup",)  # runs once, then exits: restarts on failure, others wait for its success
SECRET_KEY = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN")

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|"
    r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


class MissingVariable(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose-spec interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}, ${VAR:+alternative}, ${VAR+alternative}, and $$ for a literal $.

    A re-implementation, not the code under test, and deliberately so: the real interpolation is Docker
    Compose's (Go, compose-go), which the project neither ships nor calls, and CI has no compose CLI. What is
    under test is docker-compose.yml; this function only reads it the way Compose would, and
    `test_interpolation_is_compose_s` pins it to the Compose specification's documented examples.
    Where a compose CLI is installed, `test_docker_compose_config_accepts_it` runs Compose's own loader.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["plain"] or match["name"]
        op, arg = match["op"], interpolate(match["arg"] or "", env)
        is_set, current = name in env, env.get(name, "")
        if op in (":-", "-"):
            use_default = not current if op == ":-" else not is_set
            return arg if use_default else current
        if op in (":?", "?"):
            if (op == ":?" and not current) or not is_set:
                raise MissingVariable(f"{name}: {arg}")
            return current
        if op in (":+", "+"):
            return arg if (current if op == ":+" else is_set) else ""
        return current

    return _VARIABLE.sub(substitute, value)


def variables_used(text: str) -> set[str]:
    return {m["plain"] or m["name"] for m in _VARIABLE.finditer(text) if not m["escaped"]}


def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def filled_env() -> dict[str, str]:
    """.env.example as an operator fills it in: placeholders replaced by secrets."""
    return {k: f"secret-{k.lower()}" if v == PLACEHOLDER else v for k, v in example_env().items()}


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, filled_env())


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_matches_the_compose_specification_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == "compose_spec.json"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_schema_check_catches_mistakes(compose):
    """The check is not vacuous: a misspelt key or a wrong type fails it."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["mlflow"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["prefect"]["restart"] = ["always"]
    assert len(list(validator.iter_errors(broken))) >= 2


def test_interpolation_is_compose_s():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == "x d  d $SET x"
    assert interpolate("${SET:+alt}${EMPTY:+alt}${EMPTY+alt}", env) == "altalt"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?must be set}", env)


def test_every_service_is_healthchecked_and_restarts(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "on-failure", name
            continue
        assert service.get("restart") in ("unless-stopped", "always"), name
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, f"{name} should wait for {dependency}"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}
    assert set(services["prefect"]["depends_on"]) == {"postgres"}
    assert services["mlflow-setup"]["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert set(services["runner"]["depends_on"]) == {"mlflow", "mlflow-setup", "prefect", "redis"}


def test_named_volumes_hold_the_state(compose):
    volumes = compose["volumes"]
    mounts = {name: service.get("volumes", []) for name, service in compose["services"].items()}
    assert "postgres-data:/var/lib/postgresql/data" in mounts["postgres"]
    assert "postgres-data" in volumes
    artifacts = environment(compose["services"]["mlflow"])["MLFLOW_ARTIFACTS_DESTINATION"]
    assert f"mlflow-artifacts:{artifacts}" in mounts["mlflow"]
    assert "mlflow-artifacts" in volumes


def test_app_services_share_one_image_built_from_infra_with_uv(compose):
    images = {compose["services"][name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = compose["services"][name]["build"]
        assert build["context"] == "."
        assert (ROOT / build["dockerfile"]).is_file()
        assert build["dockerfile"].startswith("infra/")
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert "uv sync --locked --no-dev" in dockerfile
    assert re.search(r"uv==\$\{UV_VERSION\}", dockerfile) and re.search(r"ARG UV_VERSION=\d", dockerfile)
    assert "USER mlops" in dockerfile
    ignored = (ROOT / "infra" / "Dockerfile.dockerignore").read_text().split()
    assert {".env", ".mlops", ".venv", ".git"} <= set(ignored)


def test_mlflow_container_runs_the_native_command_with_basic_auth_on_postgres(compose):
    service = compose["services"]["mlflow"]
    assert service["command"] == ["python", "-m", "infra.servers", "exec", "mlflow"]
    settings = Settings.from_env(environment(service)).with_secrets(generate=False, names=MLFLOW_SECRETS)
    command = settings.mlflow_command()
    assert command[1:4] == ["server", "--app-name", "basic-auth"]
    assert "--serve-artifacts" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert any(p.endswith(f":{port}") for p in service["ports"])
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and "@postgres:5432/" in backend
    assert settings.mlflow_auth_database_uri.startswith("postgresql+psycopg2://")
    assert command[command.index("--artifacts-destination") + 1] == "/var/lib/mlflow/artifacts"
    env = settings.mlflow_env(Path("/tmp/basic_auth.ini"))
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] and env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow:*" in allowed and "localhost:*" in allowed  # called by name from the runner, by browsers


def test_prefect_container_runs_the_native_command_on_postgres(compose):
    service = compose["services"]["prefect"]
    assert service["command"] == ["python", "-m", "infra.servers", "exec", "prefect"]
    settings = Settings.from_env(environment(service))
    command = settings.prefect_command()
    assert command[1:3] == ["server", "start"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert any(p.endswith(f":{port}") for p in service["ports"])
    assert settings.prefect_database_url.startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in settings.prefect_database_url
    ui_api = settings.prefect_env()["PREFECT_SERVER_UI_API_URL"]
    published = service["ports"][0].split(":")[1]
    assert ui_api == f"http://localhost:{published}/api"
    # Basic auth on the API: the server gets the auth string (health stays open for the health check).
    settings = settings.with_secrets(generate=False, names=PREFECT_SECRETS)
    assert settings.prefect_env()["PREFECT_SERVER_API_AUTH_STRING"] == "secret-prefect_server_api_auth_string"
    assert "/api/health" in " ".join(service["healthcheck"]["test"])


def test_mlflow_setup_creates_the_runner_user_as_the_admin(compose):
    services = compose["services"]
    setup, mlflow = environment(services["mlflow-setup"]), environment(services["mlflow"])
    assert services["mlflow-setup"]["command"] == ["python", "-m", "infra.servers", "mlflow-setup"]
    settings = Settings.from_env(setup).with_secrets(generate=False, names=RUNNER_SECRETS)
    assert settings.mlflow_url == "http://mlflow:5000"
    assert settings.mlflow_admin_username == mlflow["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert settings.mlflow_admin_password == mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert settings.mlflow_runner_username == "mlops-runner" != settings.mlflow_admin_username
    assert "PREFECT_SERVER_API_AUTH_STRING" not in setup  # each service gets only the secrets it uses


def test_runner_reaches_both_servers_with_its_own_credentials(compose):
    services = compose["services"]
    runner, mlflow = environment(services["runner"]), environment(services["mlflow"])
    setup, prefect = environment(services["mlflow-setup"]), environment(services["prefect"])
    assert services["runner"]["command"] == ["mlops", "serve"]
    assert runner["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert runner["PREFECT_API_AUTH_STRING"] == prefect["PREFECT_SERVER_API_AUTH_STRING"]
    assert runner["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The runner user mlflow-setup creates, never the admin; the admin password is nowhere in its environment.
    assert runner["MLFLOW_TRACKING_USERNAME"] == setup["MLOPS_MLFLOW_RUNNER_USERNAME"]
    assert runner["MLFLOW_TRACKING_PASSWORD"] == setup["MLOPS_MLFLOW_RUNNER_PASSWORD"]
    assert runner["MLFLOW_TRACKING_USERNAME"] != mlflow["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] not in runner.values()
    # Deployment-started runs read `data` only from the mounted data folder.
    assert runner["MLOPS_DATA_ROOTS"] == "/data"
    assert any(str(v).endswith(":/data:ro") for v in services["runner"]["volumes"])
    assert runner["PREFECT_RUNNER_SERVER_ENABLE"] == "true"
    assert runner["PREFECT_RUNNER_SERVER_PORT"] in " ".join(services["runner"]["healthcheck"]["test"])
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "true"
        assert env["MLFLOW_ENABLE_TELEMETRY"] == "false"


def test_dask_cluster_is_a_profile_the_runner_reaches_and_workers_read_the_data(compose):
    services = compose["services"]
    scheduler, worker = services["dask-scheduler"], services["dask-worker"]
    assert scheduler["profiles"] == worker["profiles"] == ["dask"]  # opt-in: the default stack is unchanged
    port = scheduler["command"][scheduler["command"].index("--port") + 1]
    assert environment(services["runner"])["MLOPS_DASK_ADDRESS"] == f"tcp://dask-scheduler:{port}"
    assert f"tcp://dask-scheduler:{port}" in worker["command"]
    # Workers read the training files themselves: the runner's data folder, at the same path.
    assert [v for v in worker["volumes"] if v.endswith(":/data:ro")] == [
        v for v in services["runner"]["volumes"] if v.endswith(":/data:ro")
    ]
    assert worker["depends_on"] == {"dask-scheduler": {"condition": "service_healthy"}}
    # The features a run writes once are read by the workers and the runner: one shared scratch volume.
    scratch = environment(services["runner"])["MLOPS_DASK_SCRATCH"]
    assert (
        f"dask-scratch:{scratch}" in worker["volumes"]
        and f"dask-scratch:{scratch}" in services["runner"]["volumes"]
    )
    assert "dask-scratch" in compose["volumes"]


def test_redis_keeps_the_feature_state_with_make_up_s_settings(compose):
    """The official image, on a named volume, with the persistence and memory settings of `make up`'s own
    Redis (appendonly, fsync each second, maxmemory, noeviction); the runner, and so the model servers started
    as `docker compose run runner mlops serve-model`, reach it through MLOPS_REDIS_URL."""
    services = compose["services"]
    service = services["redis"]
    assert service["image"] == "redis:7"
    assert "redis-cli ping" in " ".join(service["healthcheck"]["test"])
    command = service["command"]
    assert command[0] == "redis-server" and len(command) % 2 == 1
    options = {key.removeprefix("--"): value for key, value in zip(command[1::2], command[2::2], strict=True)}
    native = Settings.from_env({"MLOPS_ENV_FILE": ""})
    assert options == redis_server.config(native.redis_maxmemory)  # the same settings as `make up`'s Redis
    assert options["maxmemory-policy"] == "noeviction" and options["appendfsync"] == "everysec"
    # Its data on a named volume at the image's working directory (where redis-server writes by default).
    assert "redis-data:/data" in service["volumes"] and "redis-data" in compose["volumes"]
    assert "ports" not in service  # only the services reach it
    assert environment(services["runner"])["MLOPS_REDIS_URL"] == "redis://redis:6379/0"
    assert services["runner"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_compose_workers_run_with_the_settings_local_clusters_get():
    """`tasks.dask.cluster.WORKER_CONFIG` and `WORKER_ENVIRON` (the shuffle buffer, Arrow's allocator) reach
    the compose workers as environment, and `make up DASK=1`'s through `worker_environment`."""
    from tasks.dask.cluster import WORKER_CONFIG, WORKER_ENVIRON, worker_environment

    compose = yaml.safe_load(COMPOSE.read_text())
    env = environment(compose["services"]["dask-worker"])
    expected = worker_environment()
    assert {k: env.get(k) for k in expected} == expected
    assert expected["DASK_DISTRIBUTED__P2P__COMM__BUFFER"] == WORKER_CONFIG["distributed.p2p.comm.buffer"]
    assert WORKER_ENVIRON.items() <= expected.items()


def test_ports_are_published_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_no_secrets_in_the_repository(raw):
    """Secrets are references to the environment, required (`:?`), and .env.example holds placeholders."""
    text = COMPOSE.read_text()
    for service in raw["services"].values():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), f"{key} must come from the environment"
    for url in re.findall(r"postgresql\+\w+://[^\s]+", text):
        assert "${POSTGRES_PASSWORD" in url, url
    example = example_env()
    for key, value in example.items():
        if SECRET_KEY.search(key):
            assert value == PLACEHOLDER, f".env.example must not hold a real {key}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize(
    "secret", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLOPS_MLFLOW_RUNNER_PASSWORD", "PREFECT_SERVER_API_AUTH_STRING"]
)
def test_compose_refuses_to_start_without_secrets(raw, secret):
    env = {k: v for k, v in filled_env().items() if k != secret}
    with pytest.raises(MissingVariable, match=secret):
        interpolate(raw, env)


def test_servers_refuse_the_placeholder(raw):
    services = interpolate(raw, example_env())["services"]
    for service, names in (
        ("mlflow", MLFLOW_SECRETS),
        ("prefect", PREFECT_SECRETS),
        ("mlflow-setup", RUNNER_SECRETS),
    ):
        env = environment(services[service])
        assert PLACEHOLDER in env.values()
        with pytest.raises(ServerError, match="placeholder"):
            Settings.from_env(env).with_secrets(generate=False, names=names)


def test_every_variable_is_documented_in_env_example(raw):
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    used = variables_used(COMPOSE.read_text()) - {"MLOPS_IMAGE_TAG"}
    assert used <= documented, f"document in .env.example: {sorted(used - documented)}"


def _compose_cli() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_config_accepts_it(tmp_path):
    """Docker Compose's own loader, where a compose CLI is installed (it needs no engine for `config`)."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI here; the schema test above covers the file")
    result = subprocess.run(
        [*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
