"""Who may do what (issue 15), without servers: the generated secrets and who gets which, the model service's
bearer token, and the data roots that confine runs started through a deployment.

The servers themselves (Prefect's 401, the runner's MLflow user, no secret in logs or runs) are checked
end to end by tests/server/test_server_mode.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from infra.servers.processes import Managed
from infra.servers.settings import INHERITED_SECRETS, SECRETS, Settings, read_env_file
from serving.app import create_app
from serving.auth import TokenError, bearer_ok, load_token
from serving.follower import ChampionFollower, Served
from tasks.ingest import DataPathRefused, confine_to_data_roots, data_roots

ROOT = Path(__file__).resolve().parents[2]


# -- secrets ------------------------------------------------------------------------------------------------
def settings_in(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"MLOPS_SERVERS_DIR": str(tmp_path), "MLOPS_ENV_FILE": "", **env})


def test_every_secret_is_generated_once_and_kept_private(tmp_path):
    first = settings_in(tmp_path).with_secrets(generate=True)
    again = settings_in(tmp_path).with_secrets(generate=True)
    stored = read_env_file(first.credentials_file)
    assert set(stored) == set(SECRETS)
    assert oct(first.credentials_file.stat().st_mode)[-3:] == "600"
    for name, attribute in SECRETS.items():
        value = getattr(first, attribute)
        assert value and len(value) >= 24 and value == getattr(again, attribute) == stored[name]
    assert len({stored[name] for name in SECRETS}) == len(SECRETS)  # four different secrets


def test_secrets_set_in_the_environment_are_not_written(tmp_path):
    settings = settings_in(tmp_path, PREFECT_SERVER_API_AUTH_STRING="from-env").with_secrets(generate=True)
    assert settings.prefect_auth_string == "from-env"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in read_env_file(settings.credentials_file)


def test_the_shell_is_the_admin_and_the_runner_is_not(tmp_path):
    settings = settings_in(tmp_path, MLOPS_DATA_ROOTS="/srv/data").with_secrets(generate=True)
    client, runner = settings.client_env(), settings.runner_env()
    assert (
        client["PREFECT_API_AUTH_STRING"] == runner["PREFECT_API_AUTH_STRING"] == settings.prefect_auth_string
    )
    assert client["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert client["MLFLOW_TRACKING_PASSWORD"] == settings.mlflow_admin_password
    assert runner["MLFLOW_TRACKING_USERNAME"] == "mlops-runner"
    assert runner["MLFLOW_TRACKING_PASSWORD"] == settings.mlflow_runner_password
    assert settings.mlflow_admin_password not in settings.serve_env().values()
    assert settings.serve_env()["MLOPS_DATA_ROOTS"] == "/srv/data"
    prefect = settings.prefect_env()
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"] == settings.prefect_auth_string
    assert settings.mlflow_admin_password not in prefect.values()
    assert settings.prefect_auth_string not in settings.mlflow_env(tmp_path / "auth.ini").values()
    assert settings.prefect_headers()["Authorization"].startswith("Basic ")


def test_the_runner_user_is_not_the_admin(tmp_path):
    with pytest.raises(Exception, match="must differ"):
        settings_in(tmp_path, MLOPS_MLFLOW_RUNNER_USERNAME="admin").with_secrets(generate=True)


def test_started_processes_do_not_inherit_secrets(tmp_path, monkeypatch):
    """`up` may run with the admin password in its environment (.env, CI); the runner must not get it."""
    for name in INHERITED_SECRETS:
        monkeypatch.setenv(name, f"leaked-{name}")
    process = Managed("serve", tmp_path)  # marker "cli.main": the command line below carries it
    pid = process.start(
        [sys.executable, "-c", "import os, time; print(sorted(os.environ)); time.sleep(30)", "cli.main"],
        {"MLFLOW_TRACKING_PASSWORD": "runner-password"},
    )
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    finally:
        process.stop(timeout=5)
    assert "MLFLOW_TRACKING_PASSWORD=runner-password" in environ
    assert "leaked-" not in environ


# -- the model service's token ------------------------------------------------------------------------------
class FakeModel:
    name, version, run_id = "toy", "3", "run"
    columns = ("amount",)
    column_types = {"amount": "double"}
    required = frozenset({"amount"})

    def predict_matrix(self, matrix):
        return np.asarray(matrix)[:, 0] / 100


def client(token: str | None) -> TestClient:
    follower = ChampionFollower("toy")
    follower.served = Served(FakeModel(), "now")
    return TestClient(create_app(follower, start_following=False, token=token))


PAYLOAD = {"dataframe_records": [{"amount": 50.0}]}


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_predictions_need_the_bearer_token(path):
    service = client("s3cr3t-token")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cr3t-token"}):
        refused = service.post(path, json=PAYLOAD, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "s3cr3t-token" not in refused.text
    answer = service.post(path, json=PAYLOAD, headers={"Authorization": "Bearer s3cr3t-token"})
    assert answer.status_code == 200 and answer.json()["predictions"] == [0.5]


def test_probes_stay_open_and_no_token_means_open():
    service = client("s3cr3t-token")
    assert service.get("/health").status_code == 200
    assert service.get("/ping").status_code == 200
    assert client(None).post("/predict", json=PAYLOAD).status_code == 200


def test_bearer_comparison():
    assert bearer_ok("Bearer abc", "abc") and bearer_ok("bearer abc", "abc")
    assert not bearer_ok(None, "abc") and not bearer_ok("Bearer abcd", "abc") and not bearer_ok("abc", "abc")


def test_token_from_file_or_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert load_token(token_file, env={"MLOPS_SERVE_TOKEN": "from-env"}) == "from-file"
    assert load_token(None, env={"MLOPS_SERVE_TOKEN": " from-env "}) == "from-env"
    assert load_token(None, env={}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        load_token(tmp_path / "empty", env={})
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing", env={})


def test_serve_model_help_offers_the_token_and_shows_no_secret():
    env = {**os.environ, "MLOPS_SERVE_TOKEN": "never-shown-token", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve-model", "--help"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--token-file" in done.stdout and "MLOPS_SERVE_TOKEN" in done.stdout
    assert "never-shown-token" not in done.stdout + done.stderr


# -- data roots ---------------------------------------------------------------------------------------------
def test_default_roots_are_the_home_and_project_data_folders(tmp_path):
    roots = data_roots({"MLOPS_HOME": str(tmp_path / "home")})
    assert roots == [(tmp_path / "home" / "data").resolve(), (ROOT / "data").resolve()]
    configured = data_roots({"MLOPS_DATA_ROOTS": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])})
    assert configured == [tmp_path / "a", tmp_path / "b"]


def test_paths_outside_the_roots_are_refused(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "new.parquet"
    assert confine_to_data_roots(str(inside), [root]) == inside
    for outside in ("/etc/passwd.parquet", str(root / ".." / "elsewhere.parquet"), str(tmp_path)):
        with pytest.raises(DataPathRefused) as refused:
            confine_to_data_roots(outside, [root])
        assert outside in str(refused.value) and str(root) in str(refused.value)
    (root / "link.parquet").symlink_to("/etc/hostname")  # a link inside a root to a file outside
    with pytest.raises(DataPathRefused, match="resolved: /etc/hostname"):
        confine_to_data_roots(str(root / "link.parquet"), [root])


def test_training_through_a_deployment_is_confined(tmp_path, monkeypatch):
    """The flow body refuses before anything trains; outside a deployment (the local CLI) it does not."""
    import flows.training as training

    trained = []
    outcome = SimpleNamespace(decision=SimpleNamespace(status="promoted", summary="ok"))
    monkeypatch.setattr(
        training, "gated_training", SimpleNamespace(fn=lambda spec, params: trained.append(params) or outcome)
    )
    monkeypatch.setattr(training, "deployment", SimpleNamespace(id="a-deployment"))
    monkeypatch.setenv("MLOPS_DATA_ROOTS", str(tmp_path / "data"))
    flow = training.TRAINING_FLOWS["fraud"]
    with pytest.raises(DataPathRefused, match="/etc/passwd.parquet"):
        flow.fn(data="/etc/passwd.parquet")
    assert not trained
    flow.fn(data=str(tmp_path / "data" / "new.parquet"))
    assert len(trained) == 1
    monkeypatch.setattr(training, "deployment", SimpleNamespace(id=None))  # a local run: not confined
    flow.fn(data="/elsewhere/new.parquet")
    assert len(trained) == 2
